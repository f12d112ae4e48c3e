"""Source credentials on the real node: a fetch Job sends Secret headers to the source's host only.

Two servers run in the cluster on the real node (the runtime image's Python, serving SmolLM2 from
the seed claim): the origin answers only requests that carry both headers, each from its own
Secret, and redirects the download to the "CDN", another pod (another IP), as Hugging Face
redirects to its CDN with a presigned URL; the CDN refuses any request that carries one of the
headers. An SLMDeployment with `spec.model.headersFrom` is Ready only when the fetcher sent them
to the origin and dropped them on the redirect. A wrong token fails the fetch with a message that
names the Secret (a missing Secret too); no Secret value ever shows in the Job, status, Events or
logs; and pointing the spec at another Secret fetches nothing again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from slm_dev import images, realnode, realpods
from slm_dev.cluster import LocalCluster
from tests.k8s.conftest import wait_for
from tests.k8s.test_real_node import E2E, operator_namespace

pytestmark = [pytest.mark.k8s, pytest.mark.realnode, pytest.mark.slow]

RELEASE = "slm-e2e-credentials"
READY_TIMEOUT = 420
TOKEN = f"registry-token-{uuid.uuid4().hex}"
API_KEY = f"gateway-key-{uuid.uuid4().hex}"
WRONG = f"expired-token-{uuid.uuid4().hex}"
ORIGIN_PORT, CDN_PORT = 8000, 8001
# The model's weights size for direct sources not fetched yet: SmolLM2's, not the 4 GiB default,
# so that the real node's memory takes it.
UNKNOWN_MODEL_BYTES = 256 << 20

# Both servers: stdlib only, run by the runtime image's Python. The origin reads the expected
# values from its own mounts of the two Secrets; neither server logs a header value.
SERVER = r"""
import http.server, os
role, port, model = os.environ["ROLE"], int(os.environ["PORT"]), "/seed/" + os.environ["MODEL_FILE"]
NAMES = ("Authorization", "X-Api-Key")

def expected():
    token = open("/secrets/registry/token").read().removesuffix("\n")
    return {"Authorization": "Bearer " + token, "X-Api-Key": open("/secrets/gateway/api-key").read()}

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        got = {name: self.headers.get(name) for name in NAMES}
        carried = [name for name in NAMES if got[name]]
        print(role, self.path.split("?")[0], "carried:", ",".join(carried) or "none", flush=True)
        if role == "cdn":
            if carried:
                return self.reply(400, b"a credential reached the CDN")
            self.send_response(200)
            self.send_header("Content-Length", str(os.path.getsize(model)))
            self.end_headers()
            with open(model, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    self.wfile.write(chunk)
            return
        if got != expected():
            return self.reply(401, b"unauthorized")
        location = os.environ["CDN_URL"] + "/blob?X-Amz-Signature=presigned"
        self.reply(302, headers=[("Location", location)])

http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
"""


def _secret(name: str, key: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "stringData": {key: value},
    }


def _server_pod(role: str, port: int, env: dict[str, str]) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "seed", "persistentVolumeClaim": {"claimName": realpods.SEED_CLAIM, "readOnly": True}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "seed", "mountPath": "/seed", "readOnly": True}]
    if role == "origin":
        for secret, mount in (("source-registry", "registry"), ("source-gateway", "gateway")):
            volumes.append({"name": mount, "secret": {"secretName": secret}})
            mounts.append({"name": mount, "mountPath": f"/secrets/{mount}", "readOnly": True})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"source-{role}", "labels": {"app.kubernetes.io/name": f"source-{role}"}},
        "spec": {
            "nodeSelector": realnode.node_selector(),
            "tolerations": [realnode.toleration()],
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "server",
                    "image": images.chart_image_names()["runtime"],
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", SERVER],
                    "env": [
                        {"name": "ROLE", "value": role},
                        {"name": "PORT", "value": str(port)},
                        {"name": "MODEL_FILE", "value": realpods.MODEL_FILE},
                        *({"name": k, "value": v} for k, v in env.items()),
                    ],
                    "ports": [{"containerPort": port}],
                    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }


def _start(cluster: LocalCluster, namespace: str, pod: dict[str, Any]) -> str:
    """Creates the server pod and waits until it listens; returns its IP."""
    cluster.apply([pod], "-n", namespace)
    name = pod["metadata"]["name"]

    def ready() -> str | None:
        live = cluster.kubectl_json("get", "pod", name, "-n", namespace)
        conditions = {c["type"]: c["status"] for c in live.get("status", {}).get("conditions", [])}
        return str(live["status"].get("podIP") or "") if conditions.get("Ready") == "True" else None

    return wait_for(ready, timeout=120, interval=1, what=f"pod {name} Ready")


class Sources:
    """The namespace with the operator, the Secrets and the two source servers."""

    def __init__(self, e2e: E2E, origin_ip: str) -> None:
        self.e2e = e2e
        self.source = f"http://{origin_ip}:{ORIGIN_PORT}/{realpods.MODEL_FILE}"

    def spec(self, token_secret: str = "source-registry") -> dict[str, Any]:
        model = {
            "source": self.source,
            "headersFrom": [
                {
                    "header": "Authorization",
                    "prefix": "Bearer ",
                    "secretKeyRef": {"name": token_secret, "key": "token"},
                },
                {"header": "X-Api-Key", "secretKeyRef": {"name": "source-gateway", "key": "api-key"}},
            ],
        }
        return realpods.real_node_spec(model=model)

    def server_log(self, role: str) -> str:
        return self.e2e.cluster.kubectl("logs", f"source-{role}", "-n", self.e2e.namespace).stdout

    def _logs(self, selector: str) -> str:
        namespace = self.e2e.namespace
        return self.e2e.cluster.kubectl(
            "logs", "-n", namespace, "-l", selector, "--tail=-1", "--prefix", check=False
        ).stdout

    def jobs(self, name: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={name}"
        return list(
            self.e2e.cluster.kubectl_json("get", "jobs", "-n", self.e2e.namespace, "-l", selector)["items"]
        )

    def everything_about(self, name: str) -> str:
        """The SLMDeployment, its Jobs and their Pods, the namespace's Events, the fetch and operator logs."""
        namespace, cluster = self.e2e.namespace, self.e2e.cluster
        selector = f"app.kubernetes.io/instance={name}"
        parts = [
            json.dumps(self.e2e.get(name)),
            json.dumps(cluster.kubectl_json("get", "jobs", "-n", namespace, "-l", selector)),
            json.dumps(cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)),
            json.dumps(cluster.kubectl_json("get", "events", "-n", namespace)),
            self._logs(f"{selector},app.kubernetes.io/component=fetch"),
            self._logs("app.kubernetes.io/name=slm-operator"),
        ]
        return "\n".join(parts)


@pytest.fixture(scope="module")
def sources(cluster: LocalCluster, crds: list[str]) -> Iterator[Sources]:
    settings = {"unknownModelBytes": UNKNOWN_MODEL_BYTES}
    with operator_namespace(cluster, "e2e-creds", RELEASE, extra_settings=settings) as e2e:
        namespace = e2e.namespace
        cluster.apply(
            [
                _secret("source-registry", "token", TOKEN + "\n"),  # as `--from-file` keeps a file's newline
                _secret("source-registry-renamed", "token", TOKEN),
                _secret("source-gateway", "api-key", API_KEY),
                _secret("source-wrong", "token", WRONG),
            ],
            "-n",
            namespace,
        )
        cdn_ip = _start(cluster, namespace, _server_pod("cdn", CDN_PORT, {}))
        origin_ip = _start(
            cluster, namespace, _server_pod("origin", ORIGIN_PORT, {"CDN_URL": f"http://{cdn_ip}:{CDN_PORT}"})
        )
        yield Sources(e2e, origin_ip)


def test_headers_reach_the_origin_and_never_the_redirect_target(sources: Sources) -> None:
    e2e = sources.e2e
    name = "private"
    e2e.apply(name, sources.spec())
    try:
        obj = e2e.wait_ready(name, timeout=READY_TIMEOUT)
    except BaseException:
        print(e2e.describe())
        raise
    assert obj["status"]["model"]["source"] == sources.source
    origin_log, cdn_log = sources.server_log("origin"), sources.server_log("cdn")
    assert f"origin /{realpods.MODEL_FILE} carried: Authorization,X-Api-Key" in origin_log, origin_log
    cdn_lines = [line for line in cdn_log.splitlines() if line.startswith("cdn ")]
    assert cdn_lines and all(line.endswith("carried: none") for line in cdn_lines), cdn_log
    [job] = sources.jobs(name)
    pod = job["spec"]["template"]["spec"]
    assert "env" not in pod["containers"][0]
    [volume] = [v for v in pod["volumes"] if v["name"] == "source-credentials"]
    assert volume["projected"]["defaultMode"] == 0o440
    everything = sources.everything_about(name)
    assert TOKEN not in everything and API_KEY not in everything


def test_another_secret_reference_fetches_nothing_again(sources: Sources) -> None:
    e2e = sources.e2e
    name = "private"  # Ready from the test above
    jobs_before = [job["metadata"]["uid"] for job in sources.jobs(name)]
    pods_before = sorted(p["metadata"]["name"] for p in e2e.runtime_pods(name))
    assert jobs_before and pods_before
    e2e.apply(name, sources.spec(token_secret="source-registry-renamed"))
    e2e.wait_ready(name)  # Ready for the new generation
    assert [job["metadata"]["uid"] for job in sources.jobs(name)] == jobs_before
    assert sorted(p["metadata"]["name"] for p in e2e.runtime_pods(name)) == pods_before


def test_a_refused_token_names_the_secret_to_check(sources: Sources) -> None:
    e2e = sources.e2e
    name = "refused"
    e2e.apply(name, sources.spec(token_secret="source-wrong"))
    try:

        def refused() -> dict[str, Any] | None:
            cached = realpods.conditions(e2e.get(name)).get("ModelCached", {})
            # The fetcher's `SourceUnauthorized:` prefix becomes the condition's reason.
            named = cached.get("reason") == "SourceUnauthorized" and "HTTP 401" in cached.get("message", "")
            return cached if named else None

        condition = wait_for(refused, timeout=240, interval=1, what="ModelCached naming SourceUnauthorized")
        assert condition["status"] == "False"
        assert "the Authorization header from Secret source-wrong, key token" in condition["message"]
        assert "check that the Secret holds a valid, unexpired credential" in condition["message"]
        conditions = realpods.conditions(e2e.get(name))
        assert conditions.get("Ready", {}).get("status") != "True"
        # Stalled until someone fixes the Secret, and still retried with backoff meanwhile.
        assert conditions.get("Stalled", {}).get("status") == "True"
        assert "once the Secret holds a credential the source accepts" in conditions["Reconciling"]["message"]
        everything = sources.everything_about(name)
        assert WRONG not in everything and API_KEY not in everything
    finally:
        e2e.cluster.kubectl("delete", "slm", name, "-n", e2e.namespace, "--wait=true", check=False)


def test_a_missing_secret_fails_the_fetch_naming_it(sources: Sources) -> None:
    """The projected Secret sources are optional: the Pod starts and the fetcher names what is missing."""
    e2e = sources.e2e
    name = "absent"
    e2e.apply(name, sources.spec(token_secret="source-absent"))
    try:

        def named() -> dict[str, Any] | None:
            cached = realpods.conditions(e2e.get(name)).get("ModelCached", {})
            message = cached.get("message", "")
            return cached if "cannot read header Authorization from Secret source-absent" in message else None

        condition = wait_for(named, timeout=240, interval=1, what="ModelCached naming the missing Secret")
        assert "key token" in condition["message"]
        assert "check that the Secret and the key exist" in condition["message"]
    finally:
        e2e.cluster.kubectl("delete", "slm", name, "-n", e2e.namespace, "--wait=true", check=False)
