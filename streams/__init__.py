"""The Faust app and its agents, and the producers that publish into the streams."""
