"""hf:// sources: the Hugging Face Hub client (listings, resolve URLs) and which files a source names.

A file path is one file; a folder (or the repository root) is every file under it, listed through
the Hub API (`/api/models/<repo>/tree/<rev>/<path>`, paginated); an `.onnx` file brings its external
data and the nearest tokenizer and config files. Credentials go to the endpoint's host only, never
to the CDN it redirects downloads to.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from slm_runtime.fetch.credentials import CredentialHeader, credentialed_client, refusal
from slm_runtime.fetch.errors import FetchError, SourceUnauthorizedError
from slm_runtime.fetch.plan import ONNX_COMPANIONS, FetchPlan, Source
from slm_runtime.integrity import SHA256_HEX
from slm_runtime.redact import redact_url
from slm_runtime.settings import FetchSettings


class _HfRepo:
    """Hugging Face Hub file listing and download URLs for one repository revision."""

    def __init__(
        self, settings: FetchSettings, repo: str, revision: str, credentials: tuple[CredentialHeader, ...]
    ) -> None:
        self.endpoint = settings.hf_endpoint.rstrip("/")
        self.repo = repo
        self.revision = revision
        self.credentials = credentials  # for the endpoint's host only, never the CDN it redirects to
        self.timeout = settings.timeout_seconds
        self.retries = settings.retries
        self.backoff = settings.backoff_seconds

    def url(self, path: str) -> str:
        return f"{self.endpoint}/{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(path)}"

    def listing(self, folder: str, *, recursive: bool) -> list[dict[str, Any]]:
        """Entries under folder ("" = root), following pagination; retried like downloads."""
        base = f"{self.endpoint}/api/models/{self.repo}/tree/{quote(self.revision, safe='')}/{quote(folder)}"
        url: str | None = base.rstrip("/") + ("?recursive=true" if recursive else "")
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        with credentialed_client(base, self.credentials, timeout=self.timeout) as http:
            while url and url not in seen:  # a cursor that repeats must not loop forever
                seen.add(url)
                response = self._get(http, url)
                try:
                    page = response.json()
                except ValueError as exc:
                    raise FetchError(f"listing from {redact_url(url)} is not JSON ({exc})") from exc
                if not isinstance(page, list):
                    raise FetchError(f"unexpected listing from {redact_url(url)}: not a list")
                for entry in page:
                    # A malformed entry is an error, not skipped: a model folder missing a file fails later, obscurely.
                    if not (
                        isinstance(entry, dict)
                        and isinstance(entry.get("type"), str)
                        and isinstance(entry.get("path"), str)
                        and entry["path"]
                    ):
                        shown = json.dumps(entry)[:200]
                        raise FetchError(f"malformed entry in the listing from {redact_url(url)}: {shown}")
                    entries.append(entry)
                url = response.links.get("next", {}).get("url")
        return entries

    def _get(self, client: httpx.Client, url: str) -> httpx.Response:
        shown = redact_url(url)
        for attempt in range(self.retries + 1):
            try:
                response = client.get(url)
            except httpx.TransportError as exc:
                error: str = str(exc)
            except httpx.HTTPError as exc:  # TooManyRedirects and the like: retrying will not help
                raise FetchError(f"listing {shown} failed: {type(exc).__name__}: {exc}") from exc
            else:
                if response.status_code == 200:
                    return response
                if response.status_code in (401, 403):
                    raise SourceUnauthorizedError(
                        refusal(response, f"listing {shown}", self.endpoint, self.credentials, hf=True)
                    )
                if response.status_code < 500 and response.status_code not in (408, 429):
                    raise FetchError(f"HTTP {response.status_code} listing {shown}")
                error = f"HTTP {response.status_code}"
            if attempt < self.retries:
                time.sleep(self.backoff * (2**attempt))
        raise FetchError(f"giving up listing {shown}: {error}")

    def source(self, entry: dict[str, Any], relative: str, display: str) -> Source:
        lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else None
        sha256 = (
            str(lfs["oid"]).lower() if lfs and SHA256_HEX.match(str(lfs.get("oid", "")).lower()) else None
        )
        git_sha1 = None if lfs else (str(entry["oid"]) if entry.get("oid") else None)
        size = entry.get("size")
        return Source(
            "http",
            self.url(str(entry["path"])),
            relative,
            self.credentials,
            display=f"{display} ({entry['path']})",
            sha256=sha256,
            git_sha1=git_sha1,
            size=int(size) if isinstance(size, int) else None,
        )


def _looks_like_file(path: str) -> bool:
    return "." in path.rsplit("/", 1)[-1]


def hf_plan(settings: FetchSettings, uri: str, credentials: tuple[CredentialHeader, ...]) -> FetchPlan:
    """The files `hf://org/repo[/path][@revision]` names."""
    display = redact_url(uri)
    rest = uri[len("hf://") :]
    revision = "main"
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2 or not revision:
        raise FetchError(f"hf source must look like hf://org/repo[/path][@revision], got {display!r}")
    repo = _HfRepo(settings, "/".join(parts[:2]), revision, credentials)
    path = "/".join(parts[2:])
    if path and _looks_like_file(path) and not path.endswith(".onnx"):
        return FetchPlan(
            display, [Source("http", repo.url(path), Path(path).name, credentials, display)], False
        )
    if path.endswith(".onnx"):
        return FetchPlan(display, _hf_onnx_file(repo, path, display), True)
    entries = [e for e in repo.listing(path, recursive=True) if e.get("type") == "file"]
    prefix = f"{path}/" if path else ""
    files = [
        repo.source(e, str(e["path"])[len(prefix) :], display)
        for e in entries
        if str(e["path"]).startswith(prefix) and not Path(str(e["path"])).name.startswith(".")
    ]
    if not files:
        raise FetchError(f"{display} lists no files")
    return FetchPlan(display, files, True)


def _hf_onnx_file(repo: _HfRepo, path: str, display: str) -> list[Source]:
    """The .onnx file, its external data files, and the nearest tokenizer and config files."""
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    here = {str(e["path"]): e for e in repo.listing(folder, recursive=False) if e.get("type") == "file"}
    if path not in here:
        raise FetchError(f"{display}: {path} is not in the repository listing")
    chosen = {Path(p).name: e for p, e in here.items() if p.startswith(path)}  # model.onnx(.data|_data)
    directory: str | None = folder
    while directory is not None:
        listing = (
            here
            if directory == folder
            else {
                str(e["path"]): e for e in repo.listing(directory, recursive=False) if e.get("type") == "file"
            }
        )
        for entry_path, entry in listing.items():
            name = Path(entry_path).name
            if name in ONNX_COMPANIONS and name not in chosen:
                chosen[name] = entry
        directory = None if not directory else (directory.rsplit("/", 1)[0] if "/" in directory else "")
    return [repo.source(entry, name, display) for name, entry in sorted(chosen.items())]
