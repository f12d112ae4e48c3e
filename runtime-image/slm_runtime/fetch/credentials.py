"""Credentials for a model source: request headers read from files, sent to the source's host only.

The operator mounts each Secret key that an SLMDeployment names (spec.model.headersFrom,
spec.model.hfTokenSecretRef) as a file and passes `--headers-from` with the paths, so the values
exist only in this process. They go with every request to the source's origin and never with a
redirect elsewhere: Hugging Face sends LFS downloads to a CDN under a presigned URL, where an
Authorization header would leak the token (and S3 refuses a presigned request that carries one).
httpx itself drops only Authorization, and only across origins; the request hook here decides for
every credential header, on every request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx

from slm_runtime.redact import register_secret
from slm_runtime.settings import HeaderFile

# Headers the fetcher sets itself (resumption, encoding, target) or that frame the connection:
# never taken from a file. The operator's API refuses the same list (FETCHER_OWNED_HEADERS there).
FETCHER_OWNED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "range",
        "if-range",
        "accept-encoding",
    }
)
HTTP_SCHEMES = ("http", "https", "hf")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# A header value: one line of visible ASCII, spaces and tabs (what HTTP/1.1 and httpx send as is).
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")


class CredentialsError(ValueError):
    """A credential header cannot be used; the message names its file and Secret, never its value."""


@dataclass(frozen=True)
class CredentialHeader:
    """A request header carrying a credential."""

    name: str
    value: str = field(repr=False)
    origin: str  # where the value comes from, for messages: a Secret and its file, or HF_TOKEN


def _named(entry: HeaderFile) -> str:
    if not entry.secret:
        return f"file {entry.file}"
    key = f", key {entry.key}" if entry.key else ""
    return f"Secret {entry.secret}{key} (file {entry.file})"


def read_header_file(entry: HeaderFile) -> CredentialHeader:
    """The header `entry` describes, its value read from its file less one trailing newline."""
    where = _named(entry)
    if not _HEADER_NAME.match(entry.header):
        raise CredentialsError(
            f"header name {entry.header!r} (for {where}) is not an HTTP token: use letters, digits and "
            "!#$%&'*+.^_`|~- only"
        )
    if entry.header.lower() in FETCHER_OWNED_HEADERS:
        raise CredentialsError(
            f"header {entry.header} (for {where}) is one the fetcher sets itself; a Secret cannot set it"
        )
    if not _HEADER_VALUE.match(entry.prefix):
        raise CredentialsError(f"the prefix of header {entry.header} must be one line of printable ASCII")
    try:
        raw = entry.file.read_bytes()
    except OSError as exc:
        raise CredentialsError(
            f"cannot read header {entry.header} from {where}: {exc.strerror or exc}; check that the Secret "
            "and the key exist and that the file is mounted readable for this user"
        ) from None
    text = raw.decode("ascii", errors="replace")  # "\ufffd" marks non-ASCII bytes, refused below
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    # Checked here, never left to the HTTP library: its error would quote the value.
    if "\n" in text or "\r" in text:
        raise CredentialsError(
            f"{where} holds a line break inside the value of header {entry.header}: a header value is one "
            "line (only one trailing newline is dropped); store the credential alone, e.g. "
            "kubectl create secret generic NAME --from-literal=KEY=VALUE"
        )
    if not _HEADER_VALUE.match(text):
        raise CredentialsError(
            f"{where} holds control or non-ASCII characters in the value of header {entry.header}: a header "
            "value is printable ASCII"
        )
    if not text.strip():
        raise CredentialsError(f"{where} is empty: header {entry.header} needs a value")
    register_secret(text)
    return CredentialHeader(entry.header, entry.prefix + text, where)


def load_credentials(
    entries: Sequence[HeaderFile], *, hf_token: str, scheme: str
) -> tuple[CredentialHeader, ...]:
    """The credential headers for a source of `scheme`: the files' and, for hf://, the HF token's."""
    if entries and scheme not in HTTP_SCHEMES:
        raise CredentialsError(
            f"{scheme or 'this'}:// sources take no request headers (only http://, https:// and hf:// do); "
            "drop headers_from"
        )
    headers: list[CredentialHeader] = []
    if scheme == "hf" and hf_token:
        register_secret(hf_token)
        headers.append(CredentialHeader("Authorization", f"Bearer {hf_token}", "HF_TOKEN"))
    headers += [read_header_file(entry) for entry in entries]
    seen: dict[str, CredentialHeader] = {}
    for header in headers:
        first = seen.setdefault(header.name.lower(), header)
        if first is not header:
            raise CredentialsError(
                f"header {header.name} is given twice (from {first.origin} and {header.origin}); send it once"
            )
    return tuple(headers)


def receives_credentials(url: httpx.URL, origin: httpx.URL) -> bool:
    """Whether a request to `url` may carry credentials given for `origin`.

    The same host and port; or the same host upgraded from http to https on the default ports (as
    httpx allows for Authorization). Not another port on the same host: that is another service.
    """
    if url.host.lower() != origin.host.lower():
        return False
    if (url.scheme, url.port) == (origin.scheme, origin.port):
        return True
    return origin.scheme == "http" and url.scheme == "https" and origin.port is None and url.port is None


def credentials_hook(origin: str, credentials: Iterable[CredentialHeader]) -> Callable[[httpx.Request], None]:
    """An httpx request hook: the credential headers on requests to `origin`, on no other.

    It runs for every request a client sends, redirects included; a redirect starts from a copy of
    the previous request's headers, so they are removed where they must not go.
    """
    bound = httpx.URL(origin)
    headers = tuple(credentials)

    def attach(request: httpx.Request) -> None:
        allowed = receives_credentials(request.url, bound)
        for header in headers:
            if allowed:
                request.headers[header.name] = header.value
            elif header.name in request.headers:
                del request.headers[header.name]

    return attach


def credentialed_client(
    origin: str,
    credentials: Sequence[CredentialHeader],
    *,
    timeout: httpx.Timeout | float,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """An httpx client that follows redirects and sends `credentials` to `origin` only."""
    hooks = {"request": [credentials_hook(origin, credentials)]} if credentials else {}
    return httpx.Client(timeout=timeout, follow_redirects=True, headers=headers, event_hooks=hooks)


def refusal(
    response: httpx.Response, what: str, origin: str, credentials: Sequence[CredentialHeader], *, hf: bool
) -> str:
    """Why a 401 or 403 happened and what to check, naming where each credential came from."""
    status, bound, final = response.status_code, httpx.URL(origin), response.url
    if credentials and not receives_credentials(final, bound):
        return (
            f"HTTP {status} {what}: refused by {final.host}, where {bound.host} redirected the request; the "
            f"credentials go to {bound.host} only, never to a redirect target, so {bound.host}'s redirect "
            "must carry its own authorization (e.g. a signed URL)"
        )
    if credentials:
        sent = "; ".join(f"the {header.name} header from {header.origin}" for header in credentials)
        return (
            f"HTTP {status} {what} with {sent}: check that the Secret holds a valid, unexpired credential for "
            f"{bound.host} that grants access to this file, in the header and prefix the server expects"
        )
    if hf:
        hint = "gated or private repositories need a token: spec.model.hfTokenSecretRef, or HF_TOKEN when run by hand"
    else:
        hint = "the source needs credentials: spec.model.headersFrom sends request headers from a Secret"
    return f"HTTP {status} {what} ({hint})"
