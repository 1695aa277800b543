"""Errors that end a command with one clear line instead of a traceback."""


class ResourceBusyError(RuntimeError):
    """A local resource (spool folder, Qdrant local-mode folder) is held by another process."""


class ServiceUnavailableError(RuntimeError):
    """A service a command needs (the embedded PostgreSQL, say) cannot be started or reached."""
