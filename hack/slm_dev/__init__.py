"""Development tools of the repository: the local cluster and its real node, the images, the demo.

Run from a checkout (``pip install -e .`` makes this package importable); the operator and runtime
images never ship it (their Dockerfiles copy only their own folders). The modules that start and
stop the control plane (``cluster`` and what it imports) use only the standard library, so
``make cluster-down`` works without the virtual environment.
"""
