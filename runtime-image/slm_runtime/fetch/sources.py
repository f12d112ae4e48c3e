"""Which files a source URI names: parse it, read its credentials, and plan by scheme.

https:// and http:// name one file; hf:// is planned in huggingface.py; pvc:// and file:// in
local.py, a pvc:// path never leaving its claim's mount.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from slm_runtime.fetch.credentials import CredentialHeader, CredentialsError, load_credentials
from slm_runtime.fetch.errors import FetchError
from slm_runtime.fetch.huggingface import hf_plan
from slm_runtime.fetch.local import local_plan
from slm_runtime.fetch.plan import FetchPlan, Source
from slm_runtime.redact import redact_url
from slm_runtime.settings import FetchSettings


def plan_fetch(settings: FetchSettings) -> FetchPlan:
    """Which files the source names and where each goes under dest."""
    uri = settings.source.strip()
    display = redact_url(uri)
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    credentials: tuple[CredentialHeader, ...] = ()
    if scheme in ("http", "https", "hf", "pvc", "file"):  # read first: a bad Secret fails before any request
        try:
            credentials = load_credentials(settings.headers_from, hf_token=settings.hf_token, scheme=scheme)
        except CredentialsError as exc:
            raise FetchError(str(exc)) from None
    if scheme in ("http", "https"):
        name = Path(unquote(parsed.path)).name
        if not name:
            raise FetchError(f"an http source must name a file, got {display!r}")
        return FetchPlan(display, [Source("http", uri, name, credentials, display=display)], False)
    if scheme == "hf":
        return hf_plan(settings, uri, credentials)
    if scheme == "pvc":
        claim, path = parsed.netloc, unquote(parsed.path).lstrip("/")
        if not claim or not path:
            raise FetchError(f"pvc source must look like pvc://claim/path, got {display!r}")
        root = settings.pvc_root.resolve()
        # The claim's own mount is the bound: the fetch Job mounts only that claim under the root.
        claim_root = (root / claim).resolve()
        local = (claim_root / path).resolve()
        if root not in claim_root.parents or claim_root not in local.parents:
            raise FetchError(f"pvc path {display!r} leaves the mount root {claim_root}")
        return local_plan(local, display, claim_root)
    if scheme == "file":
        return local_plan(Path(unquote(parsed.path)), display)
    if scheme == "s3":
        raise FetchError("s3:// sources are not supported by this runtime build; use https:// or hf://")
    raise FetchError(f"unsupported source scheme {scheme or '(none)'!r} in {display!r}")
