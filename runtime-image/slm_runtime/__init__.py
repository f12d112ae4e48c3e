"""slm-runtime: one inference server for GGUF and ONNX models speaking the Ollama and OpenAI APIs."""

__version__ = "0.1.0"
