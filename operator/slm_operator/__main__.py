"""`python -m slm_operator`: run the operator against the current kubeconfig (or in-cluster)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

import slm_operator.handlers as handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slm_operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    parser.add_argument(
        "--peering",
        default="",
        help="Kopf peering name for leader election between replicas; empty = --standalone (one replica)",
    )
    parser.add_argument("--metrics-port", type=int, default=8081, help="Prometheus /metrics port; 0 = off")
    parser.add_argument("--health-port", type=int, default=8080, help="liveness endpoint /healthz; 0 = off")
    parser.add_argument("--log-format", choices=("json", "plain"), default="json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("slm_operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        # Kopf logs every handler run per object; at thousands of objects that is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="0.0.0.0", registry=handlers.state.metrics.registry)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    # Peers with equal priority pause each other; a distinct priority per replica makes
    # exactly one of them (the highest) active and the others stand by.
    identity = os.environ.get("SLM_OPERATOR_POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    priority = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big") % 1_000_000 + 1
    try:
        asyncio.run(
            kopf.operator(
                namespaces=list(args.namespace),
                clusterwide=not args.namespace,
                standalone=not args.peering,
                peering_name=args.peering or None,
                liveness_endpoint=liveness,
                priority=priority,
            )
        )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
