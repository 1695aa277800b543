"""Secret redaction before anything is stored or sent to an LLM."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractors.redact import redact, redact_candidate, redact_json, redact_with_counts
from schemas.redact import _redact_all
from tests.secrets_corpus import JWT, SECRETS
from tests.unit.test_extract_support import candidate


@pytest.mark.parametrize(("text", "secret", "kind"), SECRETS)
def test_secrets_are_replaced_by_their_kind(text: str, secret: str, kind: str) -> None:
    out, counts = redact_with_counts(text)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out
    assert counts[kind] >= 1


@pytest.mark.parametrize(
    "code",
    [
        "password = getpass.getpass()",
        "password: str = Field(...)",
        "token = os.environ['GH_TOKEN']",
        "api_key = settings.api_key",
        "GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}",
        "password = None",
        "max_tokens = 1024",
        "tokens_output=236",
        "the token: is kept in the keyring",
        "https://user@example.com/path",
        "pwd = os.getcwd()",
    ],
)
def test_code_and_prose_are_left_alone(code: str) -> None:
    assert redact(code) == code


def test_redaction_is_idempotent() -> None:
    text = f"password=hunter2 postgresql://u:pw1234@h/db {JWT} sk-abcdefghijklmnopqrstuv"
    once = redact(text)
    assert redact(once) == once
    assert redact_with_counts(once)[1].total() == 0


def test_redact_candidate_covers_query_response_and_payload() -> None:
    c = candidate(
        query="Why does password=hunter2 fail?",
        response="Use `Authorization: Bearer abcdefghijklmnop123` instead.",
        payload={"context": {"env": ["API_KEY=sk-abcdefghijklmnopqrstuvwx"]}, "n": 3},
    )
    from collections import Counter

    counts: Counter[str] = Counter()
    r = redact_candidate(c, counts)
    dumped = r.model_dump_json()
    for secret in ("hunter2", "abcdefghijklmnop123", "sk-abcdefghijklmnopqrstuvwx"):
        assert secret not in dumped
    assert r.interaction.payload["n"] == 3
    assert counts == Counter({"password": 1, "bearer_token": 1, "api_key": 1})
    assert "hunter2" in c.model_dump_json()  # the original is untouched


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(st.text(max_size=12), st.sampled_from([t for t, _, _ in SECRETS])), max_size=5
    )
)
def test_the_prefilter_never_hides_a_secret(parts: list[str]) -> None:
    text = " ".join(parts)
    assert redact_with_counts(text) == _redact_all(text)


@pytest.mark.parametrize(("text", "secret", "kind"), SECRETS)
def test_json_documents_are_redacted_and_stay_json(text: str, secret: str, kind: str) -> None:
    doc = {"event_type": "completion", "response": text, "context": {"env": [text]}}
    for raw in (json.dumps(doc).encode(), json.dumps(doc, ensure_ascii=False).encode()):
        counts: Counter[str] = Counter()
        out = redact_json(raw, counts)
        assert secret not in out.decode()
        back = json.loads(out)
        assert back["event_type"] == "completion" and set(back) == set(doc)
        assert counts[kind] >= 2
    clean = json.dumps({"event_type": "completion", "response": "no secrets here"}).encode()
    assert redact_json(clean) is clean


def test_values_of_keys_that_name_a_secret_are_redacted() -> None:
    from extractors.redact import redact_data

    counts: Counter[str] = Counter()
    doc = {
        "api_key": "abc123xyz",
        "context": {"DB_PASSWORD": "hunter2", "client_secret": "s3", "pwd": "/home/me"},
        "max_tokens": "512",
        "token": "os.environ['TOKEN']",
        "tokens_input": 450,
    }
    out = redact_data(doc, counts)
    assert out["api_key"] == "[REDACTED:api_key]"
    assert out["context"] == {
        "DB_PASSWORD": "[REDACTED:password]",
        "client_secret": "[REDACTED:secret]",
        "pwd": "/home/me",  # a working directory, not a password
    }
    assert out["max_tokens"] == "512" and out["tokens_input"] == 450
    assert out["token"] == "os.environ['TOKEN']"  # code, not a secret
    assert sum(counts.values()) == 3
