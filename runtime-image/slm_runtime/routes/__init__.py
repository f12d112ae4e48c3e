"""HTTP routes: Ollama API, OpenAI API, health and metrics."""
