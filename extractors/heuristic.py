"""The deterministic extractor: a `Pattern` from a candidate's text, without any model.

- name: the query's first sentence without question phrasing ("How do I ...?" -> "...");
- description: the first prose paragraph of the response (outside code blocks), two sentences;
- steps: the response's numbered or bulleted items, else its prose sentences;
- example: the fenced code blocks, fences and language kept;
- prerequisites: third-party imports in the code (Python, JS/TS, Rust) and the tools used;
- tags: the source, code languages, languages of modified files, tools, known keywords.

The same candidate always yields the same pattern (timestamps are the event's time).
"""

from __future__ import annotations

import re
import sys
from pathlib import PurePosixPath

from extractors.patterns import (
    MAX_EXAMPLE_CHARS,
    MAX_PREREQUISITES,
    MAX_STEPS,
    clean_tags,
    pattern_id_for,
    source_query,
    union,
)
from schemas.interaction import ScoredInteraction
from schemas.pattern import Pattern

MAX_NAME = 80
MAX_DESCRIPTION = 400
MAX_STEP = 300

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+(.+?)\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\[\"'])")
_LEADING = re.compile(
    r"""(?ix)^(?:
        please\s+
      | (?:how|what)\s+(?:do|can|should|would|could)\s+(?:i|we|you|one)\s+
      | how\s+to\s+
      | (?:can|could|would|will)\s+you\s+(?:please\s+)?(?:show\s+me\s+how\s+to\s+)?
      | (?:i|we)\s+(?:want|need|would\s+like)\s+to\s+
      | help\s+me\s+(?:to\s+)?
      | is\s+there\s+a\s+way\s+to\s+
      | show\s+me\s+how\s+to\s+
      | tell\s+me\s+how\s+to\s+
    )"""
)
_MD = re.compile(r"\*\*|__|(?<!\w)_(?=\w)|(?<=\w)_(?!\w)")

_LANGS = {
    "py": "python",
    "python3": "python",
    "sh": "shell",
    "bash": "shell",
    "zsh": "shell",
    "shell": "shell",
    "console": "shell",
    "js": "javascript",
    "jsx": "javascript",
    "mjs": "javascript",
    "ts": "typescript",
    "tsx": "typescript",
    "yml": "yaml",
    "rs": "rust",
    "golang": "go",
    "psql": "sql",
    "postgresql": "sql",
    "dockerfile": "docker",
    "hcl": "terraform",
    "tf": "terraform",
}
_EXT_LANGS = {
    ".py": "python",
    ".rs": "rust",
    ".go": "go",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".js": "javascript",
    ".jsx": "javascript",
    ".nix": "nix",
    ".sql": "sql",
    ".sh": "shell",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".java": "java",
    ".kt": "kotlin",
    ".rb": "ruby",
    ".c": "c",
    ".h": "c",
    ".cpp": "cpp",
    ".tf": "terraform",
}
_KEYWORDS = {
    "python": "python",
    "pytest": "pytest",
    "kafka": "kafka",
    "faust": "faust",
    "redpanda": "redpanda",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "sql": "sql",
    "sqlite": "sqlite",
    "nixos": "nixos",
    "nix": "nix",
    "docker": "docker",
    "kubernetes": "kubernetes",
    "k8s": "kubernetes",
    "git": "git",
    "rust": "rust",
    "typescript": "typescript",
    "javascript": "javascript",
    "react": "react",
    "fastapi": "fastapi",
    "django": "django",
    "flask": "flask",
    "qdrant": "qdrant",
    "vscode": "vscode",
    "systemd": "systemd",
    "networkd": "systemd",
    "asyncio": "asyncio",
    "pydantic": "pydantic",
    "numpy": "numpy",
    "pandas": "pandas",
    "torch": "pytorch",
    "pytorch": "pytorch",
    "lora": "lora",
    "regex": "regex",
    "terraform": "terraform",
    "redis": "redis",
    "graphql": "graphql",
    "grpc": "grpc",
    "mypy": "mypy",
    "ruff": "ruff",
    "nginx": "nginx",
    "bash": "shell",
    "linux": "linux",
    "borrow": "borrow-checker",
    "async": "async",
    "mock": "mocking",
    "fixture": "testing",
    "test": "testing",
    "tests": "testing",
}
_WORD = re.compile(r"[a-z0-9][a-z0-9+#-]*")
_PY_IMPORT = re.compile(
    r"^\s*(?:from\s+([A-Za-z_][\w.]*)\s+import\b|import\s+([A-Za-z_][\w.]*))", re.M
)
_JS_IMPORT = re.compile(
    r"""(?:require\(\s*|\bfrom\s+|^\s*import\s+)['"]([^'"./][^'"]*)['"]""", re.M
)
_RS_USE = re.compile(r"^\s*(?:pub\s+)?use\s+([A-Za-z_]\w*)::", re.M)
_RS_BUILTIN = {"std", "core", "alloc", "crate", "self", "super"}


_CODE_LINE = re.compile(
    r"^(?:\s{2,}\S|\s*(?:def|class|import|from|return|fn|let|const|var|if|for|while|yield|"
    r"async|await|pub|use|func|package|#include)\b|\s*@\w)|[;{}():=,\]]\s*$"
)


def is_bare_code(text: str) -> bool:
    """True for a response that is code without fences (e.g. an editor completion)."""
    if "```" in text:
        return False
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    return sum(1 for ln in lines if _CODE_LINE.search(ln)) * 2 >= len(lines)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a markdown text: (language or "", code), in order.

    A response that is bare code (no fences) is one block without a language.
    """
    text = text or ""
    if is_bare_code(text):
        return [("", text.strip("\n").rstrip())]
    return [(m.group(1).lower(), m.group(2).rstrip()) for m in _FENCE.finditer(text)]


def prose(text: str) -> str:
    """A markdown text with its fenced code blocks removed (nothing left of bare code)."""
    text = text or ""
    if is_bare_code(text):
        return ""
    return _FENCE.sub("\n", text)


def _first_sentence(text: str) -> str:
    for raw in text.splitlines():
        line = raw.strip().lstrip("#>").strip()
        if line:
            return _SENTENCE_END.split(line)[0]
    return ""


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:-") + "\u2026"


def _plain(text: str) -> str:
    return _MD.sub("", text).strip()


def name_from(query: str | None, response: str | None, fallback: str) -> str:
    """A short imperative name for the pattern, from the query (else the response)."""
    for text in (query, prose(response or "")):
        sentence = _first_sentence(text or "")
        previous = None
        while sentence and sentence != previous:
            previous = sentence
            sentence = _LEADING.sub("", sentence).strip()
        sentence = sentence.rstrip(" ?.!:;,")
        if sentence:
            name = _truncate(_plain(sentence), MAX_NAME)
            return name[0].upper() + name[1:]
    return fallback


def _paragraphs(text: str) -> list[str]:
    paras = [p.strip() for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if p]


def description_from(response: str | None, name: str) -> str:
    """The first two sentences of the response's first prose paragraph (not a list)."""
    for para in _paragraphs(prose(response or "")):
        lines = [ln for ln in para.splitlines() if ln.strip()]
        if lines and all(_LIST_ITEM.match(ln) for ln in lines):
            continue
        sentences = _SENTENCE_END.split(" ".join(ln.strip() for ln in lines))
        return _truncate(_plain(" ".join(sentences[:2])), MAX_DESCRIPTION)
    return f"{name}."


def steps_from(response: str | None) -> list[str]:
    """The response's list items, else the sentences of its prose; at most `MAX_STEPS`."""
    text = prose(response or "")
    items = [m.group(1) for ln in text.splitlines() if (m := _LIST_ITEM.match(ln))]
    if len(items) < 2:
        items = []
        for para in _paragraphs(text):
            flat = " ".join(ln.strip() for ln in para.splitlines())
            items.extend(s for s in _SENTENCE_END.split(flat) if s.strip())
    steps = [_truncate(_plain(s), MAX_STEP) for s in items]
    return [s for s in steps if s][:MAX_STEPS]


def example_from(response: str | None) -> str | None:
    """The response's code blocks as fenced markdown, or None without code."""
    blocks = [(lang, code) for lang, code in code_blocks(response or "") if code.strip()]
    if not blocks:
        return None
    text = "\n\n".join(f"```{lang}\n{code}\n```" for lang, code in blocks)
    if len(text) > MAX_EXAMPLE_CHARS:
        text = text[: MAX_EXAMPLE_CHARS - 5].rstrip() + "\n```"
    return text


def _language(lang: str) -> str:
    return _LANGS.get(lang, lang)


def prerequisites_from(response: str | None, tools: list[str]) -> list[str]:
    """Third-party packages the code imports, and the tools the interaction used."""
    found: list[str] = []
    for lang, code in code_blocks(response or ""):
        language = _language(lang)
        if language in ("python", ""):
            for m in _PY_IMPORT.finditer(code):
                top = (m.group(1) or m.group(2)).split(".")[0]
                if top not in sys.stdlib_module_names and top != "__future__":
                    found.append(f"python package: {top}")
        if language in ("javascript", "typescript", ""):
            for m in _JS_IMPORT.finditer(code):
                name = m.group(1)
                parts = name.split("/")
                pkg = "/".join(parts[:2]) if name.startswith("@") else parts[0]
                if not pkg.startswith("node:"):
                    found.append(f"npm package: {pkg}")
        if language in ("rust", ""):
            for m in _RS_USE.finditer(code):
                if m.group(1) not in _RS_BUILTIN:
                    found.append(f"rust crate: {m.group(1)}")
    found.extend(f"tool: {t}" for t in tools if t.strip())
    return union(found, [], MAX_PREREQUISITES)


def tags_from(candidate: ScoredInteraction) -> list[str]:
    """Source, code languages, languages of modified files, tools and known keywords."""
    i = candidate.interaction
    tags: list[str] = [i.source.value]
    tags.extend(_language(lang) for lang, _ in code_blocks(i.response or "") if lang)
    for path in i.files_modified:
        lang = _EXT_LANGS.get(PurePosixPath(path).suffix.lower())
        if lang:
            tags.append(lang)
    words = set(_WORD.findall(f"{i.query or ''}\n{prose(i.response or '')}".lower()))
    tags.extend(sorted({tag for word, tag in _KEYWORDS.items() if word in words}))
    tags.extend(i.tools_used)
    return clean_tags(tags)


def heuristic_pattern(candidate: ScoredInteraction) -> Pattern:
    """The deterministic pattern of a (redacted) candidate; ``extractor="heuristic"``."""
    i = candidate.interaction
    fallback = f"{i.source.value} {i.event_type}".replace("_", " ").capitalize()
    name = name_from(i.query, i.response, fallback)
    query = source_query(i.query)
    return Pattern(
        pattern_id=pattern_id_for(query, name),
        name=name,
        description=description_from(i.response, name),
        prerequisites=prerequisites_from(i.response, i.tools_used),
        steps=steps_from(i.response),
        tags=tags_from(candidate),
        example=example_from(i.response),
        source_query=query,
        source_event_ids=[i.event_id],
        created_at=i.timestamp,
        updated_at=i.timestamp,
        extractor="heuristic",
    )
