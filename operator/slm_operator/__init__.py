"""slm-operator: places and serves Small Language Models on Kubernetes."""
