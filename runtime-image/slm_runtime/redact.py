"""Credentials out of URLs before they reach a record, a log line or a termination message.

A model source may carry its credentials in the URL itself: userinfo (`https://user:pass@host/…`)
or a presigned query string (S3's `X-Amz-Signature`, Azure's `sig`, GCS's `X-Goog-Signature`,
`token=` …). The fetch record and the termination message end up in the model's status, readable by
anyone who can read the resource, so every source written anywhere goes through `redact_url`.
Credentials read from files (request headers from Secrets) are registered with `register_secret`,
and `redact_text` masks them wherever they would appear, should a library ever quote one.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# Query parameters whose values are secrets (compared case-insensitively).
SENSITIVE_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "sig",
        "signature",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "client_secret",
        "auth",
    }
)
# A URL inside free text (an error message): scheme://… up to whitespace or a closing quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# Secret values this process holds (register_secret). Shorter ones are not masked: they would
# mask ordinary words, and no real credential is that short.
_SECRETS: set[str] = set()
_MIN_SECRET_LENGTH = 4


def _redact_query(query: str) -> str:
    # Edited as text, not parsed and re-encoded, so everything but the secret values stays as given.
    parts = []
    for item in query.split("&"):
        name, sep, _ = item.partition("=")
        parts.append(f"{name}={MASK}" if sep and name.strip().lower() in SENSITIVE_PARAMS else item)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """`url` with userinfo replaced by `***` and the values of sensitive query parameters by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL: hide everything after the scheme
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}{MASK}" if sep else url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _redact_query(parts.query)
    fragment = _redact_query(parts.fragment)  # OAuth-style `#access_token=…`
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url  # untouched: keep the exact spelling
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def register_secret(value: str) -> None:
    """From now on `redact_text` masks `value` (a credential this process read)."""
    value = value.strip()
    if len(value) >= _MIN_SECRET_LENGTH:
        _SECRETS.add(value)


def redact_text(text: str) -> str:
    """Every URL inside `text` redacted and every registered secret masked (for messages that may
    quote a URL or a header, e.g. a library's error)."""
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    for secret in sorted(_SECRETS, key=len, reverse=True):  # longest first: one may contain another
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with its URLs redacted (httpx logs each request's full URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Adds one RedactingFilter to each named logger (idempotent)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
