"""An in-process `kubectl port-forward svc/NAME`: no kubectl needed.

A listening socket on 127.0.0.1 (localforward.py); every connection accepted there gets a stream of
its own to a Ready Pod behind the Service: a websocket to the API server's pods/portforward
subresource, opened with the synchronous `kubernetes` client's credentials and TLS settings. The
Pod is chosen again when the chosen one is gone or its port failed, so a replaced Pod only breaks
the connections it carried.

kubernetes.stream.portforward's own socket proxy is not used: it drops the data that arrives just
before the websocket closes (the end of a response), so PodStream reads the channels itself.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slm_operator.cli.errors import CliError
from slm_operator.cli.kube import REQUEST_TIMEOUT, Kube, api_error
from slm_operator.cli.localforward import LocalForwarder
from slm_operator.naming import service_name

DATA_CHANNEL, ERROR_CHANNEL = 0, 1  # of the one port a stream forwards (v4.channel.k8s.io)


class ForwardUnavailableError(CliError):
    """The in-process forward cannot work from here (no websocket support, the upgrade refused)."""


class PodGoneError(CliError):
    """The chosen Pod no longer exists: choose again."""


def rbac_hint(namespace: str) -> str:
    return (
        f"the port-forward needs RBAC `get services`, `list pods` and `create pods/portforward` "
        f"in namespace {namespace}"
    )


@dataclass(frozen=True)
class PodTarget:
    namespace: str
    pod: str
    port: int

    def __str__(self) -> str:
        return f"Pod {self.namespace}/{self.pod} port {self.port}"


# ---------------------------------------------------------------------------------------------
# Service -> Pod (pure)


def service_target_port(service: Mapping[str, Any], port: int, deployment: str) -> int | str:
    """The targetPort behind the Service's `port`: a number, or the name of a container port."""
    meta = service.get("metadata") or {}
    ports = list((service.get("spec") or {}).get("ports") or [])
    for entry in ports:
        if int(entry.get("port") or 0) != port:
            continue
        target = entry.get("targetPort")
        if target is None or target in ("", 0):
            return port  # Kubernetes' default: the same number as the Service port
        text = str(target)
        return int(text) if text.isdigit() else text
    listed = ", ".join(str(entry.get("port")) for entry in ports) or "none"
    raise CliError(
        f"Service {meta.get('namespace')}/{meta.get('name')} has no port {port} (it has: {listed}): "
        f"SLMDeployment {deployment}'s spec.api.port and its Service disagree; see `slm why {deployment}`"
    )


def service_selector(service: Mapping[str, Any], deployment: str) -> str:
    """The Service's Pod selector as a label selector string."""
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        meta = service.get("metadata") or {}
        raise CliError(
            f"Service {meta.get('namespace')}/{meta.get('name')} selects no Pods (no spec.selector): "
            f"it is not the one SLMDeployment {deployment} makes; see `slm why {deployment}`"
        )
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def container_port(pod: Mapping[str, Any], target: int | str) -> int | None:
    """The Pod's port for a targetPort: a number as is, a name looked up in its containers' TCP ports."""
    if isinstance(target, int):
        return target
    for container in (pod.get("spec") or {}).get("containers") or []:
        for entry in container.get("ports") or []:
            if entry.get("name") == target and (entry.get("protocol") or "TCP") == "TCP":
                return int(entry["containerPort"])
    return None


def _ready_since(pod: Mapping[str, Any]) -> str | None:
    """When the Pod became Ready (an RFC 3339 time), or None when it is not Ready."""
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return str(condition.get("lastTransitionTime") or "")
    return None


def ready_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The Running, Ready Pods not being deleted, Ready longest first (as kubectl prefers)."""
    ready = [(since, pod) for pod in pods if (since := _ready_since(pod)) is not None]
    ready.sort(key=lambda item: (item[0], str(item[1]["metadata"]["name"])))
    return [pod for _, pod in ready]


def choose_target(
    service: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], port: int, deployment: str
) -> PodTarget:
    """The Pod and port that a connection to the Service's `port` goes to."""
    meta = service.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    target = service_target_port(service, port, deployment)
    ready = ready_pods(pods)
    if not ready:
        raise CliError(
            f"SLMDeployment {deployment} has no Ready Pod behind Service {namespace}/{name} to forward "
            f"to ({len(pods)} Pods match it): see `slm ps` and `slm why {deployment}`"
        )
    for pod in ready:
        number = container_port(pod, target)
        if number:
            return PodTarget(namespace, str(pod["metadata"]["name"]), number)
    names = ", ".join(str(pod["metadata"]["name"]) for pod in ready)
    raise CliError(
        f"Service {namespace}/{name}'s targetPort {target!r} names no container port of its Ready Pods "
        f"({names}): see `slm why {deployment}`"
    )


def refused(error: BaseException) -> tuple[int | None, str]:
    """The HTTP status (None: no HTTP answer) and message of a port-forward upgrade that failed."""
    status = getattr(error, "status_code", None)  # websocket-client's WebSocketBadStatusException
    if not isinstance(status, int):
        return None, str(error) or type(error).__name__
    body = getattr(error, "resp_body", None)
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    text = " ".join(str(body or "").split())[:300]
    return status, _status_message(text) or text or str(getattr(error, "status_message", None) or "")


def _status_message(body: str | bytes | None) -> str:
    """The message of a Kubernetes Status body; "" when it is not one."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return str(json.loads(body or "").get("message") or "")
    return ""


def stream_error(error: BaseException, target: PodTarget) -> CliError:
    """One line for a port-forward the API server did not open."""
    status, message = refused(error)
    if status in (401, 403):
        return CliError(
            f"cannot port-forward to {target}: forbidden ({message}); {rbac_hint(target.namespace)}"
        )
    if status == 404:
        return PodGoneError(f"cannot port-forward to {target}: not found ({message})")
    detail = f"HTTP {status}: {message}" if status is not None else message
    return ForwardUnavailableError(f"the API server did not open a port-forward to {target} ({detail})")


# ---------------------------------------------------------------------------------------------
# the streams to the Pod (the kubernetes client)


class PodStream:
    """One connection to a Pod's port over a pods/portforward websocket.

    Channel 0 carries the data and channel 1 the Pod side's errors; the first message on each
    names the port. The protocol has no half-close, so the stream ends as a whole.
    """

    def __init__(self, websocket: Any, target: PodTarget, on_failure: Callable[[PodTarget], None]) -> None:
        self._websocket = websocket
        self._on_failure = on_failure
        self._named: set[int] = set()  # the channels whose port-number message has arrived
        self._error = ""
        self._ended = False
        self.target = target

    def send(self, data: bytes) -> None:
        from websocket import WebSocketException

        try:
            self._websocket.send_binary(bytes([DATA_CHANNEL]) + data)
        except WebSocketException as error:
            raise OSError(f"the port-forward to {self.target} closed: {error}") from error

    def recv(self) -> bytes:
        """The next data from the Pod; b"" when the stream is over."""
        from websocket import ABNF, WebSocketException

        while not self._ended:
            try:
                opcode, frame = self._websocket.recv_data_frame(True)
            except (WebSocketException, OSError):
                break
            if opcode == ABNF.OPCODE_CLOSE:
                break
            data = bytes(frame.data or b"") if opcode in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) else b""
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel not in self._named:
                self._named.add(channel)
                continue
            if channel == DATA_CHANNEL and payload:
                return payload
            if channel == ERROR_CHANNEL and payload:
                self._error += payload.decode(errors="replace")
                # The Pod's side failed (its port refused): nothing more comes, and the next
                # connection, which may follow as soon as this one's client sees the end, chooses anew.
                self._on_failure(self.target)
                break
        self._ended = True
        return b""

    def abort(self) -> None:
        """End the stream now; a recv blocked in another thread returns b""."""
        sock = self._websocket.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def error(self) -> str | None:
        """What the Pod's side reported (e.g. its port refused the connection)."""
        return self._error.strip() or None

    def close(self) -> None:
        self.abort()
        self._websocket.shutdown()

    def __str__(self) -> str:
        return str(self.target)


class ServiceForward:
    """Opens streams to a Ready Pod behind one Service port; chooses again when that Pod fails."""

    def __init__(self, kube: Kube, namespace: str, deployment: str, port: int) -> None:
        self.kube = kube
        self.namespace = namespace
        self.deployment = deployment
        self.service = service_name(deployment)
        self.port = port
        self._lock = threading.Lock()
        self._target: PodTarget | None = None

    def _read(self, what: str, call: Callable[[], Any], missing: str) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return self.kube.plain(call())
        except ApiException as error:
            status, reason, body = int(error.status or 0), str(error.reason or ""), str(error.body or "")
            if status in (401, 403):
                detail = _status_message(body) or reason
                raise CliError(f"cannot {what}: forbidden ({detail}); {rbac_hint(self.namespace)}") from error
            if status == 404:
                raise CliError(missing) from error
            raise api_error(what, status, reason, body) from error
        except HTTPError as error:
            raise CliError(
                f"cannot reach the cluster at {self.kube.server} ({type(error).__name__}) while trying to "
                f"{what}: check that it runs and that --kubeconfig/--context point at it"
            ) from error

    def resolve(self) -> PodTarget:
        """Service -> its selector and targetPort -> a Ready Pod and its port (like kubectl)."""
        core, where = self.kube.core, f"{self.namespace}/{self.service}"
        service = self._read(
            f"read Service {where}",
            lambda: core.read_namespaced_service(
                self.service, self.namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            f"SLMDeployment {self.deployment} has no Service {where} yet: see `slm why {self.deployment}`",
        )
        selector = service_selector(service, self.deployment)
        pods = self._read(
            f"list the Pods of Service {where}",
            lambda: core.list_namespaced_pod(
                self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            ),
            f"namespace {self.namespace} is gone",
        )
        return choose_target(service, list(pods.get("items") or []), self.port, self.deployment)

    def target(self) -> PodTarget:
        with self._lock:  # one resolution for the connections that arrive together
            if self._target is None:
                self._target = self.resolve()
            return self._target

    def forget(self, target: PodTarget) -> None:
        with self._lock:
            if self._target == target:
                self._target = None

    def open(self) -> PodStream:
        target = self.target()
        try:
            return self.connect(target)
        except PodGoneError:
            self.forget(target)
            return self.connect(self.target())

    def connect(self, target: PodTarget) -> PodStream:
        from kubernetes import client
        from kubernetes.stream.ws_client import create_websocket, get_websocket_url

        configuration = self.kube.api_client.configuration
        api_client = client.ApiClient(configuration)  # its own: its request method is replaced

        def upgrade(method: str, url: str, query_params: Any = None, headers: Any = None, **_: Any) -> Any:
            return create_websocket(configuration, get_websocket_url(url, query_params), headers)

        # The generated method builds the URL and the credentials' headers, and its HTTP request
        # becomes the websocket upgrade, as in kubernetes.stream.
        api_client.request = upgrade
        try:
            websocket = client.CoreV1Api(api_client).connect_get_namespaced_pod_portforward(
                target.pod, target.namespace, ports=str(target.port), _preload_content=False
            )
        except Exception as error:  # refused, unreachable, TLS: each becomes one line
            raise stream_error(error, target) from error
        return PodStream(websocket, target, self.forget)


@contextlib.contextmanager
def native_forward(
    kube: Kube, namespace: str, deployment: str, port: int, report: Callable[[str], None]
) -> Iterator[str]:
    """The local base URL of SLMDeployment `deployment`'s Service `port`, forwarded in-process."""
    try:
        import websocket  # noqa: F401
        from kubernetes.stream import ws_client  # noqa: F401
    except ImportError as error:
        raise ForwardUnavailableError(
            f"the kubernetes client cannot open websockets ({error}): pip install websocket-client"
        ) from error
    service = ServiceForward(kube, namespace, deployment, port)
    service.open().close()  # fails here, not on the first request: the upgrade, RBAC, a Ready Pod
    with LocalForwarder(service.open, report) as local:
        yield local.url
