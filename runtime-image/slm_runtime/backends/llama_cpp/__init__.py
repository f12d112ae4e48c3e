"""GGUF models through llama.cpp: native handles, the batch scheduler, sampling, chat, embeddings."""

from slm_runtime.backends.llama_cpp.backend import LlamaCppBackend

__all__ = ["LlamaCppBackend"]
