"""Reaching an SLMDeployment's Service from the user's machine.

`forward(ctx, obj)` is what the commands use (`run`, `bench`): a context manager that yields the
local base URL of the model's API for as long as the `with` block runs. It forwards in-process
(podforward.py, no kubectl needed), or through a `kubectl port-forward` child process: when
--kubectl is given, when SLM_PORT_FORWARD=kubectl, or as the fallback when the in-process one
cannot start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from slm_operator.cli import podforward
from slm_operator.cli.commands import Context
from slm_operator.cli.errors import CliError
from slm_operator.cli.output import getpath
from slm_operator.naming import service_name

PORT_FORWARD_TIMEOUT = 30.0
MODE_VARIABLE = "SLM_PORT_FORWARD"
MODES = ("auto", "native", "kubectl")
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


def find_kubectl(explicit: str | None, kubeconfig: str | None) -> str:
    """--kubectl, else $SLM_KUBECTL, else kubectl on PATH, else the one beside the kubeconfig's cluster."""
    for candidate in (explicit, os.environ.get("SLM_KUBECTL")):
        if candidate:
            found = shutil.which(candidate)
            if found is None:
                raise CliError(f"kubectl {candidate} is not an executable file: fix --kubectl or SLM_KUBECTL")
            return found
    found = shutil.which("kubectl")
    if found:
        return found
    config = kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0]
    if config:
        folder = Path(config).expanduser().parent
        candidates = [folder / "kubectl"]
        try:  # a local cluster (python -m slm_dev.cluster) records where its binaries are
            bin_dir = json.loads((folder / "cluster.json").read_text()).get("bin_dir")
            if bin_dir:
                candidates.append(Path(bin_dir) / "kubectl")
        except (OSError, ValueError, AttributeError):
            pass
        for path in candidates:
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    raise CliError("no kubectl on PATH nor beside the kubeconfig: install it, or pass --kubectl PATH")


def port_forward_command(
    kubectl: str,
    namespace: str,
    service: str,
    port: int,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> list[str]:
    """`kubectl port-forward -n NS svc/NAME :PORT`: kubectl picks a free local port."""
    command = [kubectl]
    if kubeconfig:
        command += ["--kubeconfig", kubeconfig]
    if context:
        command += ["--context", context]
    return [*command, "port-forward", "-n", namespace, f"svc/{service}", f":{port}"]


class PortForward:
    """A `kubectl port-forward` child process for as long as the `with` block runs."""

    def __init__(self, command: Sequence[str], timeout: float = PORT_FORWARD_TIMEOUT) -> None:
        self.command = list(command)
        self.timeout = timeout
        self.local_port = 0
        self._process: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def __enter__(self) -> PortForward:
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as error:
            raise CliError(f"cannot start {self.command[0]}: {error.strerror}") from error
        try:
            self.local_port = self._wait_port(self._process)
        except BaseException:
            self.close()
            raise
        # Keep both pipes drained: kubectl writes a line per connection.
        for stream, sink in ((self._process.stdout, None), (self._process.stderr, self._stderr)):
            threading.Thread(target=_drain, args=(stream, sink), daemon=True).start()
        return self

    def _wait_port(self, process: subprocess.Popen[str]) -> int:
        assert process.stdout is not None and process.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ, "out")
        selector.register(process.stderr, selectors.EVENT_READ, "err")
        deadline = time.monotonic() + self.timeout
        try:
            while time.monotonic() < deadline:
                for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    line = key.fileobj.readline()  # type: ignore[union-attr]
                    if not line:
                        selector.unregister(key.fileobj)
                        continue
                    if key.data == "err":
                        self._stderr.append(line.strip())
                        continue
                    match = _FORWARDING.search(line)
                    if match:
                        return int(match.group(1))
                if not selector.get_map():
                    break
        finally:
            selector.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(2)  # both pipes closed: kubectl is exiting
        problem = next((line for line in reversed(self._stderr) if line), "")
        if process.returncode is not None:
            raise CliError(
                f"kubectl port-forward failed ({problem or f'exit code {process.returncode}'}): "
                f"command {' '.join(self.command)}"
            )
        raise CliError(f"kubectl port-forward named no local port within {self.timeout:.0f}s: {problem}")

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _drain(stream: Any, sink: list[str] | None) -> None:
    try:
        for line in stream:
            if sink is not None:
                sink.append(line.strip())
    except (OSError, ValueError):
        pass


def forward_command(ctx: Context, obj: Mapping[str, Any]) -> list[str]:
    """The `kubectl port-forward` that `slm run` starts for this SLMDeployment's Service."""
    kubeconfig = getattr(ctx.args, "kubeconfig", None)
    return port_forward_command(
        find_kubectl(getattr(ctx.args, "kubectl", None), kubeconfig),
        str(obj["metadata"]["namespace"]),
        service_name(str(obj["metadata"]["name"])),
        int(getpath(obj, "spec", "api", "port", default=8080) or 8080),
        kubeconfig=kubeconfig,
        context=getattr(ctx.args, "context", None),
    )


def forward_mode(ctx: Context) -> str:
    """$SLM_PORT_FORWARD: native, kubectl, or auto (the default: native, kubectl when --kubectl is given)."""
    mode = (os.environ.get(MODE_VARIABLE) or "auto").strip().lower()
    if mode not in MODES:
        raise CliError(f"{MODE_VARIABLE}={mode} is not one of {', '.join(MODES)}: fix it or unset it")
    if mode == "auto" and getattr(ctx.args, "kubectl", None):
        return "kubectl"  # an explicit --kubectl means: use it
    return mode


@contextlib.contextmanager
def forward(ctx: Context, obj: Mapping[str, Any]) -> Iterator[str]:
    """The base URL (http://127.0.0.1:PORT) of the model's API while the block runs."""
    mode = forward_mode(ctx)
    meta = obj["metadata"]
    with contextlib.ExitStack() as stack:
        url, problem = None, ""
        if mode != "kubectl":
            try:
                url = stack.enter_context(
                    podforward.native_forward(
                        ctx.kube(),
                        str(meta["namespace"]),
                        str(meta["name"]),
                        int(getpath(obj, "spec", "api", "port", default=8080) or 8080),
                        ctx.warn,
                    )
                )
            except podforward.ForwardUnavailableError as error:
                if mode == "native":
                    raise CliError(
                        f"{error.message}; unset {MODE_VARIABLE}=native to fall back on kubectl port-forward"
                    ) from error
                problem = error.message
        if url is None:
            try:
                command = forward_command(ctx, obj)
            except CliError as error:
                if problem:
                    raise CliError(
                        f"{problem}, and kubectl, the fallback, is missing: {error.message}"
                    ) from error
                raise
            if problem:
                ctx.warn(f"in-process port-forward unavailable ({problem}); using kubectl port-forward")
            url = stack.enter_context(PortForward(command)).url
        yield url
