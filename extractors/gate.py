"""The substance gate: only candidates with reusable content become patterns and examples.

A high value score says an interaction went well, not that it taught anything: "tell me a
joke" answered with "I can help with that." scores as high as a fixed bug. `assess` decides,
with measurable rules and no model, whether a (redacted) candidate's response carries reusable
content:

- **substance** (passes): code (a fenced block, a bare code completion, or an inline code span
  that reads as code, such as ``enable.idempotence=true``, next to a few informative words), a
  command (a shell line such as ``$ git rebase -i HEAD~3``, a command at the start of a line,
  or an inline code span that is a command line or has flags), at least two list steps with
  informative words each, or a concrete explanation: at least ``min_informative_tokens``
  informative words that the question does not already contain;
- **filler** (refused, with a reason), checked in this order: ``empty`` (no response),
  ``echo`` (the response repeats the question), ``repetition`` (the same sentence again and
  again: at least ``max_repetition`` of the sentences are repeats), then, when what is left
  after removing the stock phrases has fewer than ``min_informative_tokens`` new informative
  words: ``refusal`` ("I can't help with that"), ``apology`` ("Sorry, ..."),
  ``acknowledgement`` ("I can help with that.", "Sure!", "Happy to help"), ``echo`` (most of
  its words are the question's), else ``too_short``.

Informative words are lower-cased word tokens (any script; in Chinese and Japanese each
character) of two or more characters that are neither English stop words nor part of the stock
filler vocabulary; technical tokens (with a digit, ``_``, ``.``, ``/``, ``-`` inside, or
camelCase) always count.
The same candidate always gets the same verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from extractors.heuristic import code_blocks, prose
from schemas.interaction import ScoredInteraction
from schemas.pattern import RefusalReason

DEFAULT_MIN_INFORMATIVE_TOKENS = 8
DEFAULT_MAX_REPETITION = 0.5
DEFAULT_MAX_ECHO_OVERLAP = 0.7


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOPWORDS = _words(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing done down during each few for
    from further had has have having he her here hers herself him himself his how i if in into
    is it its itself just me more most my myself no nor not now of off on once only or other
    our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself
    yourselves ll re ve don doesn didn isn aren wasn weren won wouldn shouldn couldn can't
    cannot it's i'm you're that's there's here's let's what's don't doesn't isn't i've i'd
    i'll you'll we'll they're we're get got one two may might must shall us via per etc
    """
)
# Words of stock chit-chat: they never make an answer informative.
_FILLER_WORDS = _words(
    """
    help helps helping helped happy glad sure certainly absolutely course okay ok yes yeah yep
    great good nice awesome perfect excellent question questions thanks thank welcome please
    sorry apologize apologies apology unfortunately afraid unable able assist assistance
    anything something else know let need needs want wants like feel free hope hopes today
    provide answer answers info information thing things way ready here there problem
    problems worries glad fine right alright hello hi hey understand understood got see
    """
)
_REFUSAL = re.compile(
    r"(?ix)\b(?:"
    r"(?:i|we)\s*(?:can'?t|cannot|can\s+not|am\s+unable\s+to|'m\s+unable\s+to|am\s+not\s+able\s+to"
    r"|'m\s+not\s+able\s+to|won'?t|will\s+not|do\s+not|don'?t)\s+"
    r"(?:help|assist|do\s+that|provide|answer|comply|share|discuss|write|support)"
    r"|as\s+an\s+ai\b|i'?m\s+(?:just\s+)?(?:an?\s+)?(?:ai|language\s+model)\b"
    r"|not\s+(?:able|allowed|permitted)\s+to\s+(?:help|answer|do|provide)"
    r"|outside\s+(?:of\s+)?my\s+(?:scope|capabilities)"
    r")"
)
_APOLOGY = re.compile(
    r"(?ix)\b(?:sorry|apologi[sz]e|apologies|my\s+(?:mistake|bad)|pardon|unfortunately)\b"
)
_ACKNOWLEDGEMENT = re.compile(
    r"(?ix)(?:"
    r"\b(?:i|we)\s*(?:can|could|'d\s+be\s+glad\s+to|would\s+be\s+happy\s+to|'ll)\s+help\b"
    r"|\b(?:happy|glad)\s+to\s+help\b|\bhere\s+to\s+help\b|\bhow\s+can\s+i\s+help\b"
    r"|\bsure(?:\s+thing)?\b|\bof\s+course\b|\bcertainly\b|\babsolutely\b|\bno\s+problem\b"
    r"|\bgreat\s+question\b|\bgood\s+question\b|\blet\s+me\s+know\b|\bhope\s+(?:this|that)\s+helps\b"
    r"|\byou'?re\s+welcome\b|\bthanks?\b|\bthank\s+you\b|\bgot\s+it\b|\bokay\b|\bok\b"
    r"|\bhere\s+you\s+go\b|\bdone\b|\bnoted\b|\bunderstood\b"
    r")"
)
_TOKEN = re.compile(r"[\w$@][\w.+#/$'-]*[\w+#$]|\w")
# Scripts written without spaces: each character counts as a token.
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")
_INLINE = re.compile(r"`([^`\n]+)`")
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+(.+?)\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_SHELL_LINE = re.compile(r"^\s*(?:\$|#)\s+\S")
_NORMALIZE = re.compile(r"[\W_]+")
_CAMEL = re.compile(r"[a-z][A-Z]")
_CODEISH = re.compile(r"[(){}\[\];=<>|\\]|->|::|\w\.\w|^\s*[@#$]")
_COMMANDS = _words(
    """
    apt apt-get brew cargo cd chmod chown cmake conda cp curl docker docker-compose dotnet
    export find gcc gh git go gradle grep helm journalctl kafka-topics kafka-console-consumer
    kafka-consumer-groups kcat kubectl ls make mkdir mv mvn nix nix-shell nixos-rebuild node
    npm npx pip pip3 pipx pnpm poetry psql pytest python python3 rm rpk ruff rustc rustup scp
    sed sh ssh ss sudo systemctl tar terraform tail touch uv wget yarn mypy lsof kill ps top
    """
)


@dataclass(frozen=True)
class GateSettings:
    """The gate's thresholds (from ``LEARNSTREAM_EXTRACT__GATE_*``)."""

    min_informative_tokens: int = DEFAULT_MIN_INFORMATIVE_TOKENS
    max_repetition: float = DEFAULT_MAX_REPETITION
    max_echo_overlap: float = DEFAULT_MAX_ECHO_OVERLAP


@dataclass(frozen=True)
class Verdict:
    """The gate's decision on one candidate.

    ``passed`` with ``basis`` (what made it substantive: code, commands, steps, explanation),
    or refused with ``reason`` and a ``detail`` sentence; ``measures`` are the numbers behind.
    """

    passed: bool
    reason: RefusalReason | None = None
    detail: str = ""
    basis: tuple[str, ...] = ()
    measures: dict[str, float] = field(default_factory=dict)


def _normalized(text: str) -> str:
    return _NORMALIZE.sub(" ", text.lower()).strip()


def is_technical(token: str) -> bool:
    """A token that names something: digits, ``_ . / -`` inside, or camelCase."""
    core = token.strip(".-'")
    return (
        bool(re.search(r"\d", core) or re.search(r"\w[_./-]\w", core) or _CAMEL.search(core))
        and len(core) >= 2
    )


def informative_tokens(text: str) -> list[str]:
    """The informative tokens of a text, lower-cased, in order (with repeats).

    Stop words and the filler vocabulary are left out, and so are one-letter tokens;
    technical tokens (see `is_technical`) and inline code always count.
    """
    out: list[str] = []
    for raw in _TOKEN.findall(_CJK.sub(r" \1 ", text)):
        token = raw.lower().strip("'")
        long_enough = len(token) >= 2 or bool(_CJK.match(token))
        plain = long_enough and token not in _STOPWORDS and token not in _FILLER_WORDS
        if plain or is_technical(raw):
            out.append(token)
    return out


def repetition_ratio(text: str) -> tuple[float, int]:
    """(share of sentences that repeat an earlier one, number of sentences) of a text."""
    units = [_normalized(s) for s in _SENTENCE.split(text)]
    units = [u for u in units if u]
    if len(units) < 2:
        return 0.0, len(units)
    return 1.0 - len(set(units)) / len(units), len(units)


def _is_command(span: str) -> bool:
    words = span.strip().lstrip("$ ").split()
    if not words:
        return False
    first = words[0].lower()
    if first in _COMMANDS and len(words) >= 2:
        return True
    return len(words) >= 2 and any(w.startswith("-") and len(w) > 1 for w in words[1:])


def commands_in(text: str) -> list[str]:
    """Command lines of a response outside code blocks: ``$ ...`` lines, command spans."""
    found: list[str] = []
    outside = prose(text)
    for line in outside.splitlines():
        if _SHELL_LINE.match(line):
            found.append(line.strip())
    found.extend(span for span in _INLINE.findall(outside) if _is_command(span))
    for line in outside.splitlines():  # "git rebase -i HEAD~3" at the start of a line
        bare = _INLINE.sub(" ", line).strip()
        if bare and bare.split()[0].lower() in _COMMANDS and _is_command(bare):
            found.append(bare)
    return found


def _code(text: str) -> list[str]:
    blocks = [code for _, code in code_blocks(text) if code.strip()]
    if blocks:
        return [b for b in blocks if _CODEISH.search(b) or len(informative_tokens(b)) >= 2]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # a short completion of one to three code lines ("useDHCP = false;")
    if 0 < len(lines) <= 3 and all(_CODEISH.search(ln) and "`" not in ln for ln in lines):
        prose_words = sum(1 for t in _TOKEN.findall(text) if t.isalpha() and len(t) > 3)
        if prose_words <= 2 * len(lines) + 2:
            return ["\n".join(lines)]
    return []


def steps_in(text: str) -> list[str]:
    """List items of a response (outside code) with at least two informative tokens each."""
    items = [m.group(1) for ln in prose(text).splitlines() if (m := _LIST_ITEM.match(ln))]
    good = [item for item in items if len(informative_tokens(item)) >= 2]
    return list(dict.fromkeys(_normalized(s) for s in good))


def _strip_stock(text: str) -> str:
    for pattern in (_REFUSAL, _APOLOGY, _ACKNOWLEDGEMENT):
        text = pattern.sub(" ", text)
    return text


def assess(candidate: ScoredInteraction, settings: GateSettings | None = None) -> Verdict:
    """Whether a (redacted) candidate carries reusable content; a pure function."""
    s = settings or GateSettings()
    i = candidate.interaction
    response = (i.response or "").strip()
    query = (i.query or "").strip()
    if not response:
        return Verdict(False, "empty", "the interaction has no response")
    norm_response, norm_query = _normalized(response), _normalized(query)
    if norm_response and norm_query and f" {norm_response} " in f" {norm_query} ":
        return Verdict(False, "echo", "the response is the question (or part of it) again")

    code = _code(response)
    snippets = [span for span in _INLINE.findall(response) if _CODEISH.search(span)]
    commands = commands_in(response)
    steps = steps_in(response)
    text = prose(response)
    query_tokens = set(informative_tokens(query))
    tokens = informative_tokens(_strip_stock(text))
    novel = [t for t in dict.fromkeys(tokens) if t not in query_tokens]
    ratio, sentences = repetition_ratio(text)
    measures = {
        "informative_tokens": float(len(set(tokens))),
        "novel_tokens": float(len(novel)),
        "repetition_ratio": round(ratio, 4),
        "sentences": float(sentences),
        "code_blocks": float(len(code)),
        "code_spans": float(len(snippets)),
        "commands": float(len(commands)),
        "steps": float(len(steps)),
    }
    basis = tuple(
        name
        for name, present in (
            ("code", bool(code) or (bool(snippets) and len(novel) >= 2)),
            ("commands", bool(commands)),
            ("steps", len(steps) >= 2),
        )
        if present
    )
    if basis:
        return Verdict(True, basis=basis, measures=measures)

    if sentences >= 2 and ratio >= s.max_repetition:
        return Verdict(
            False,
            "repetition",
            f"{ratio:.0%} of its {sentences} sentences repeat an earlier one "
            f"(limit {s.max_repetition:.0%})",
            measures=measures,
        )
    if len(novel) < s.min_informative_tokens:
        all_tokens = set(informative_tokens(text))
        overlap = len(all_tokens & query_tokens) / len(all_tokens) if all_tokens else 0.0
        measures["echo_overlap"] = round(overlap, 4)
        few = (
            f"{len(novel)} informative word(s) beyond the question "
            f"(needs {s.min_informative_tokens}), no code, commands or steps"
        )
        if _REFUSAL.search(text):
            return Verdict(False, "refusal", f"a refusal: {few}", measures=measures)
        if _APOLOGY.search(text):
            return Verdict(False, "apology", f"an apology: {few}", measures=measures)
        if _ACKNOWLEDGEMENT.search(text):
            return Verdict(False, "acknowledgement", f"a stock phrase: {few}", measures=measures)
        if all_tokens and overlap >= s.max_echo_overlap:
            return Verdict(
                False,
                "echo",
                f"{overlap:.0%} of its informative words are the question's: {few}",
                measures=measures,
            )
        return Verdict(False, "too_short", f"too short to teach anything: {few}", measures=measures)
    return Verdict(True, basis=("explanation",), measures=measures)
