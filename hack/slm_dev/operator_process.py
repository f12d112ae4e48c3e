"""The operator as a local process, ``python -m slm_operator``, against a cluster's kubeconfig: the
one the k8s tests run (their ``slm_operator`` fixture, peering and RBAC tests) and the one the scale
benchmark measures. Its output goes to a log file, its /metrics to a free loopback port, and
``stop`` ends it with SIGTERM (Kopf's graceful shutdown), then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from slm_dev.paths import REPO_ROOT
from slm_dev.processes import free_port


class Memory(NamedTuple):
    peak_kib: int  # VmHWM: the most resident memory the process ever had
    rss_kib: int  # VmRSS: now


class OperatorProcess:
    """``python -m slm_operator ARGS`` with KUBECONFIG set; ``args`` choose the scope (``--namespace
    NS``, ``--all-namespaces``) and anything else (``--peering NAME``). The metrics port is its own,
    the health port is off."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_format: str = "plain",
        new_session: bool = False,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = list(args)
        # Extra environment (operator settings), over this process's and KUBECONFIG.
        self.env = dict(env or {})
        self.log_format = log_format
        # A session of its own: Ctrl-C reaches only the caller, which stops the operator in order.
        self.new_session = new_session
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "slm_operator", *self.args, "--log-format", self.log_format,
            "--metrics-port", str(self.metrics_port), "--health-port", "0",
        ]  # fmt: skip

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"the operator is already running (pid {self.pid})")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                start_new_session=self.new_session,
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metrics(self, timeout: float = 5) -> str:
        """The operator's /metrics text; "" while it is not serving (yet)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout
            ) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def memory(self) -> Memory:
        """Its peak and current resident memory, from /proc; zeros when it is not running."""
        values = {"VmHWM:": 0, "VmRSS:": 0}
        if self.alive():
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                text = ""
            for line in text.splitlines():
                fields = line.split()  # "VmHWM:", "12345", "kB"
                if len(fields) >= 2 and fields[0] in values:
                    values[fields[0]] = int(fields[1])
        return Memory(peak_kib=values["VmHWM:"], rss_kib=values["VmRSS:"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or "(no log)"

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing when it is not running."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
