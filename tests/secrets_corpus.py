"""Secret shapes learnstream must never store: (text holding a secret, the secret, its kind).

Shared by the redaction unit tests and the end-to-end secrets test (tests/integration).
"""

from __future__ import annotations

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4\nabcDEF123==\n"
    "-----END RSA PRIVATE KEY-----"
)
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)

SECRETS: list[tuple[str, str, str]] = [
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
    ("# .env\nSTRIPE_SECRET=rk_live_51Habcdefghijklmnop\n", "rk_live_51Hab", "secret"),
    ("DATABASE_URL=mysql://app:Pa55w0rd!x@10.0.0.5/app", "Pa55w0rd", "url_password"),
]
