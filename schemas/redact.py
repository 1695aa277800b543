"""Secret redaction, applied before anything is stored or leaves the edge: by the producer
SDK on every event it sends (``LEARNSTREAM_PRODUCER__REDACT``, on by default), by the score
stage on every interaction before the history, PostgreSQL and the downstream topics
(``LEARNSTREAM_SCORE__REDACT``), and by the extractors on every candidate and pattern.
Dead letters keep their original bytes, so that an event can be replayed after a fix.

Each secret is replaced by ``[REDACTED:<kind>]``. Kinds: ``private_key`` (PEM blocks), ``jwt``,
``url_password`` (``scheme://user:pass@host``; the user is kept), ``api_key`` (``sk-...``),
``github_token``, ``aws_access_key``, ``slack_token``, ``google_api_key``, ``bearer_token``,
``basic_auth``, and for ``name=value`` / ``name: value`` / ``"name": "value"`` assignments
whose name ends in password, secret, token, api key, ...: ``password``, ``token``,
``api_key`` or ``secret``. Assignments whose value is plainly code (a call, an attribute, an
environment variable, a type name such as ``str``) are left alone, so code examples stay usable.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from schemas.interaction import Interaction, ScoredInteraction
from schemas.pattern import Pattern

MARK = "[REDACTED:{}]"


def _mark(kind: str) -> str:
    return MARK.format(kind)


# (kind, pattern, replacement); applied in order.
_SIMPLE: list[tuple[str, re.Pattern[str], str]] = [
    (
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
            r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.DOTALL,
        ),
        _mark("private_key"),
    ),
    (
        "jwt",
        re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        _mark("jwt"),
    ),
    (
        "url_password",
        re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@?#\[\]]*):([^\s/@?#\[][^\s/@?#]*)@"),
        r"\1:" + _mark("url_password") + "@",
    ),
    (
        "api_key",
        re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{16,}"),
        _mark("api_key"),
    ),
    (
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
        _mark("github_token"),
    ),
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), _mark("aws_access_key")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), _mark("slack_token")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), _mark("google_api_key")),
    (
        "bearer_token",
        re.compile(r"\b([Bb]earer|BEARER)\s+[A-Za-z0-9._~+/-]{8,}=*"),
        r"\1 " + _mark("bearer_token"),
    ),
    (
        "basic_auth",
        re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic)\s+[A-Za-z0-9+/]{6,}=*"),
        r"\1 " + _mark("basic_auth"),
    ),
]

_ASSIGN = re.compile(
    r"""(?ix)
    (?P<name>(?<![\w.-])[\w.-]*?
        (?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key
          |private[_-]?key|secret[_-]?key|signing[_-]?key|client[_-]?secret|auth[_-]?key))
    (?P<sep>["']?\s*(?::|=|:=)\s*)
    (?:
        (?P<q>["'])(?P<qval>[^"'\n]{1,512})(?P=q)
      | (?P<val>[^\s"'&,;)}\]<>]+)
    )
    """
)
_SECRET_NAME = (
    r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"
    r"|private[_-]?key|secret[_-]?key|signing[_-]?key|client[_-]?secret|auth[_-]?key)"
)
# A JSON key that names a secret: its string value is one (``{"api_key": "..."}``); not
# ``pwd``, which as a key is a working directory more often than a password.
_KEY_NAME = _SECRET_NAME.replace("|pwd|", "|")
_SECRET_KEY = re.compile(r"(?i)(?:^|[_.-])" + _KEY_NAME + r"$")
_CODE_VALUE = re.compile(
    r"""(?x)^(?:
        [A-Za-z_][\w]*\(.*                            # a call
      | (?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*(?:\(.*|\[.*)?  # an attribute (or call, subscript)
      | [A-Za-z_]\w*\[.*                              # a subscript
      | \$\{?[A-Za-z_]\w*\}?                          # an environment variable
      | \$?\{\{.*                                     # a template expression
      | %\(?\w*\)?s | \{\w*\}                         # a format placeholder
      | \*+ | x{3,} | \.{3} | <[^>]*>                 # already masked or a placeholder
    )$"""
)
_CODE_WORDS = frozenset(
    {
        "none",
        "null",
        "nil",
        "true",
        "false",
        "str",
        "string",
        "bytes",
        "int",
        "bool",
        "secretstr",
        "optional",
        "required",
        "undefined",
        "any",
        "self",
        "env",
        "os",
        # prose: "the token: is ...", "password: must ..."
        "is",
        "are",
        "was",
        "the",
        "a",
        "an",
        "and",
        "or",
        "to",
        "of",
        "in",
        "for",
        "with",
        "from",
        "must",
        "should",
        "will",
        "can",
    }
)


def _assign_kind(name: str) -> str:
    low = name.lower()
    if "pass" in low or "pwd" in low:
        return "password"
    if "token" in low:
        return "token"
    if "api" in low or "access" in low:
        return "api_key"
    return "secret"


def _looks_like_code(value: str) -> bool:
    return (
        value.lower() in _CODE_WORDS
        or value.startswith("[REDACTED")
        or bool(_CODE_VALUE.match(value))
        or (value.isdigit() and len(value) < 4)
    )


# Literals one of which every match of a pattern contains (checked with `in`, at C speed):
# a pattern runs only on text holding one of its anchors, so that text without secrets (most
# of it) costs a few substring checks instead of a dozen regex scans (the SDK's hot path).
_ANCHORS: dict[str, tuple[tuple[str, ...], bool]] = {  # kind -> (anchors, on lower-cased text)
    "private_key": (("-----BEGIN",), False),
    "jwt": (("eyJ",), False),
    "url_password": (("://",), False),
    "api_key": (("sk-",), False),
    "github_token": (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), False),
    "aws_access_key": (("AKIA", "ASIA"), False),
    "slack_token": (("xox",), False),
    "google_api_key": (("AIza",), False),
    "bearer_token": (("earer", "EARER"), False),
    "basic_auth": (("basic",), True),
}
# Every name `_ASSIGN` takes ends with one of these (lower-cased); a separator must follow.
_ASSIGN_WORDS = ("pass", "pwd", "secret", "token", "key")
_SEP_AFTER = re.compile(r"[\w.-]*[\"']?\s*[:=]")


def _assignment_possible(low: str) -> bool:
    for word in _ASSIGN_WORDS:
        at = low.find(word)
        while at >= 0:
            if _SEP_AFTER.match(low, at + len(word)):
                return True
            at = low.find(word, at + 1)
    return False


# Every anchor and assignment word, lower-cased: the prefilter (a superset of the gates).
_PREFILTER = tuple(
    sorted({a.lower() for anchors, _ in _ANCHORS.values() for a in anchors} | set(_ASSIGN_WORDS))
)


def may_hold_secret(text: str) -> bool:
    """False when ``text`` certainly holds nothing `redact` would replace (a few substring
    checks on the lower-cased text)."""
    low = text.lower()
    for anchor in _PREFILTER:  # noqa: SIM110 - a plain loop: any() of a generator is slower
        if anchor in low:
            return True
    return False


def redact_with_counts(text: str) -> tuple[str, Counter[str]]:
    """``text`` with secrets replaced, and how many of each kind were replaced."""
    if not may_hold_secret(text):
        return text, Counter()
    return _redact(text, gated=True)


def _redact_all(text: str) -> tuple[str, Counter[str]]:
    """Every pattern on the whole text, ungated: what `redact_with_counts` must equal."""
    return _redact(text, gated=False)


def _redact(text: str, *, gated: bool) -> tuple[str, Counter[str]]:
    counts: Counter[str] = Counter()
    low = text.lower()
    for kind, pattern, replacement in _SIMPLE:
        anchors, lower = _ANCHORS[kind]
        if gated and not any(a in (low if lower else text) for a in anchors):
            continue
        text, n = pattern.subn(replacement, text)
        if n:
            counts[kind] += n
            low = text.lower()

    def _assignment(m: re.Match[str]) -> str:
        quoted = m.group("qval")
        value = quoted if quoted is not None else m.group("val")
        if value is None or _looks_like_code(value.strip()):
            return m.group(0)
        kind = _assign_kind(m.group("name"))
        counts[kind] += 1
        q = m.group("q") or ""
        return f"{m.group('name')}{m.group('sep')}{q}{_mark(kind)}{q}"

    if not gated or _assignment_possible(low):
        text = _ASSIGN.sub(_assignment, text)
    return text, counts


def redact(text: str) -> str:
    """``text`` with every recognized secret replaced by ``[REDACTED:<kind>]``."""
    return redact_with_counts(text)[0]


def _may_name_secret(key: str) -> bool:
    low = key.lower()
    for word in _ASSIGN_WORDS:  # noqa: SIM110 - a plain loop: any() of a generator is slower
        if word in low:
            return True
    return False


def _redact_value(value: Any, fn: Callable[[str], str], tally: Counter[str] | None = None) -> Any:
    if isinstance(value, str):
        return fn(value) if may_hold_secret(value) else value
    if isinstance(value, list):
        return [_redact_value(v, fn, tally) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if (
                isinstance(v, str)
                and isinstance(k, str)
                and _may_name_secret(k)
                and _SECRET_KEY.search(k)
                and v
                and not _looks_like_code(v.strip())
            ):
                kind = _assign_kind(k)
                out[k] = _mark(kind)
                if tally is not None:
                    tally[kind] += 1
            else:
                out[k] = _redact_value(v, fn, tally)
        return out
    return value


def _counting(tally: Counter[str]) -> Callable[[str], str]:
    """`redact` that adds what it replaced to ``tally``."""

    def fn(text: str) -> str:
        out, n = redact_with_counts(text)
        if n:
            tally.update(n)
        return out

    return fn


def redact_data(value: Any, counts: Counter[str] | None = None) -> Any:
    """A copy of decoded JSON with every string redacted (keys are kept)."""
    tally: Counter[str] = Counter()
    fn = _counting(tally)

    out = _redact_value(value, fn, tally)
    if counts is not None:
        counts.update(tally)
    return out


def redact_json(raw: bytes, counts: Counter[str] | None = None, *, decoded: Any = None) -> bytes:
    """A JSON document with the secrets in its strings replaced; the same bytes if none.

    Only a document whose text passes the prefilter is redacted value by value (``decoded``:
    the document already decoded, when the caller has it; else it is decoded here), so a
    secret inside an escaped string, e.g. JSON within JSON, is found too; then encoded again.
    """
    if decoded is None:
        if not may_hold_secret(raw.decode("utf-8")):
            return raw
        decoded = json.loads(raw)
    tally: Counter[str] = Counter()
    data = redact_data(decoded, tally)
    if not tally:
        return raw
    if counts is not None:
        counts.update(tally)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def redact_interaction(interaction: Interaction, counts: Counter[str] | None = None) -> Interaction:
    """A copy of ``interaction`` whose query, response and raw payload strings are redacted
    (the same object when nothing was found)."""
    tally: Counter[str] = Counter()
    fn = _counting(tally)

    i = interaction
    update = {
        "query": fn(i.query) if i.query is not None else None,
        "response": fn(i.response) if i.response is not None else None,
        "payload": _redact_value(i.payload, fn, tally),
    }
    if counts is not None:
        counts.update(tally)
    return i.model_copy(update=update) if tally else i


def redact_candidate(
    candidate: ScoredInteraction, counts: Counter[str] | None = None
) -> ScoredInteraction:
    """A copy of ``candidate`` whose query, response and raw payload strings are redacted.

    ``counts``, when given, is increased by the redactions made, per kind.
    """
    interaction = redact_interaction(candidate.interaction, counts)
    return candidate.model_copy(update={"interaction": interaction})


def redact_pattern(pattern: Pattern, counts: Counter[str] | None = None) -> Pattern:
    """A copy of ``pattern`` with every text field redacted (a second line of defence)."""
    tally: Counter[str] = Counter()
    fn = _counting(tally)

    update: dict[str, Any] = {
        "name": fn(pattern.name),
        "description": fn(pattern.description),
        "prerequisites": [fn(s) for s in pattern.prerequisites],
        "steps": [fn(s) for s in pattern.steps],
        "tags": [fn(s) for s in pattern.tags],
        "example": fn(pattern.example) if pattern.example is not None else None,
        "source_query": fn(pattern.source_query) if pattern.source_query is not None else None,
    }
    if counts is not None:
        counts.update(tally)
    return pattern.model_copy(update=update)
