"""Secret redaction before anything is stored or sent to an LLM."""

from __future__ import annotations

import pytest

from extractors.redact import redact, redact_candidate, redact_with_counts
from tests.unit.test_extract_support import candidate

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4\nabcDEF123==\n"
    "-----END RSA PRIVATE KEY-----"
)
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)


@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        ("export OPENAI_API_KEY=sk-proj-abcdefghijklmnop1234567890", "sk-proj-abc", "api_key"),
        ("key sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAA", "sk-ant-api03", "api_key"),
        ("git clone with ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_", "github_token"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuv", "github_pat_", "github_token"),
        ("aws_access_key_id AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
        ("curl -H 'Authorization: Bearer abc123def456ghi789'", "abc123def456", "bearer_token"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpw", "basic_auth"),
        ("connect with password=hunter2 now", "hunter2", "password"),
        ("DB_PASSWORD: 'correct horse battery'", "correct horse", "password"),
        ('{"token": "abc123tokenvalue"}', "abc123tokenvalue", "token"),
        ("https://example.com/cb?token=9f8e7d6c5b4a", "9f8e7d6c5b4a", "token"),
        ("postgresql://admin:s3cr3t@db.local:5432/app", "s3cr3t", "url_password"),
        ("redis://:p4ssw0rd@cache:6379/0", "p4ssw0rd", "url_password"),
        (PEM, "MIIEowIBAAKCAQEAx4", "private_key"),
        (f"session {JWT} expired", "eyJhbGci", "jwt"),
        ("SECRET_KEY = 'django-insecure-abc'", "django-insecure", "secret"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI", "api_key"),
        ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890", "slack_token"),
    ],
)
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
