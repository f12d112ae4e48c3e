"""The operator's Kubernetes I/O: the API client (`client`) and the watch-fed cache of children (`cache`)."""
