"""Inference backends: llama.cpp for GGUF, ONNX Runtime for ONNX."""
