"""`slm`: Ollama's and Foundry Local's commands for a whole cluster (SLMDeployments, slm.dev/v1alpha1)."""
