"""What a fetch transfers: the files a source names, and where each goes under dest."""

from __future__ import annotations

from dataclasses import dataclass

from slm_runtime.fetch.credentials import CredentialHeader


@dataclass
class Source:
    """One file to transfer into dest."""

    kind: str  # http | local
    location: str  # URL or local path
    filename: str  # path under dest
    # Sent only to the origin of `location` (credentials.credentials_hook).
    credentials: tuple[CredentialHeader, ...] = ()
    display: str = ""
    sha256: str | None = None  # digest known before the transfer (Hugging Face LFS oid)
    git_sha1: str | None = None  # git blob id of a small non-LFS Hugging Face file
    size: int | None = None


@dataclass
class FetchPlan:
    display: str
    files: list[Source]
    folder: bool  # the model is dest itself (an ONNX folder) rather than one file in it


# Files an ONNX model file needs beside it: its tokenizer and configuration (looked up in the
# file's folder, then its parents, as Hugging Face repositories keep them at the root).
ONNX_COMPANIONS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
