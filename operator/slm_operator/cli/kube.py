"""The Kubernetes API as the CLI uses it (synchronous `kubernetes` client); results are plain dicts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from slm_operator.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from slm_operator.cli.errors import CliError

FIELD_MANAGER = "slm-cli"
REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)


class NotFoundError(CliError):
    pass


class Kube:
    """A connection to one cluster context, with the namespace commands default to."""

    def __init__(
        self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None
    ):
        from kubernetes import client, config

        self._client_module = client
        configuration = client.Configuration()
        context_namespace = ""
        try:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
            if context:
                contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
                active = next((c for c in contexts if c.get("name") == context), active)
            context_namespace = str(((active or {}).get("context") or {}).get("namespace") or "")
            self.context_name = str((active or {}).get("name") or "")
        except (config.ConfigException, OSError) as error:
            if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
                raise CliError(
                    f"cannot load the kubeconfig {where}: {error}; pass --kubeconfig FILE and "
                    "--context NAME, or set KUBECONFIG"
                ) from error
            config.load_incluster_config(client_configuration=configuration)
            self.context_name = "in-cluster"
            try:
                with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as handle:
                    context_namespace = handle.read().strip()
            except OSError:
                pass
        configuration.retries = 0
        self.server = str(configuration.host)
        self.api_client = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.namespace = namespace or context_namespace or "default"

    # -- error translation -------------------------------------------------------------------

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as error:
            raise api_error(
                what, int(error.status or 0), str(error.reason or ""), str(error.body or "")
            ) from error
        except HTTPError as error:
            raise CliError(
                f"cannot reach the cluster at {self.server} ({type(error).__name__}) while trying to {what}: "
                "check that it runs and that --kubeconfig/--context point at it"
            ) from error

    def plain(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)

    # -- SLMDeployments ----------------------------------------------------------------------

    def list_slm(self, namespace: str | None) -> list[dict[str, Any]]:
        with self._call("list SLMDeployments"):
            if namespace is None:
                result = self.custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _request_timeout=REQUEST_TIMEOUT
                )
            else:
                result = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT
                )
        return list(result.get("items") or [])

    def get_slm(self, namespace: str, name: str) -> dict[str, Any]:
        with self._call(f"read SLMDeployment {namespace}/{name}"):
            return dict(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
                )
            )

    def find_slm(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.get_slm(namespace, name)
        except NotFoundError:
            return None

    def apply_slm(self, body: dict[str, Any], force: bool = False) -> dict[str, Any]:
        meta = body["metadata"]
        with self._call(f"apply SLMDeployment {meta['namespace']}/{meta['name']}"):
            # Raw response: the generated client maps only 200 to a body, and a first apply is 201.
            response = self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                body,
                field_manager=FIELD_MANAGER,
                force=force,
                _content_type="application/apply-patch+yaml",
                _request_timeout=REQUEST_TIMEOUT,
                _preload_content=False,
            )
            return dict(json.loads(response.data))

    def patch_slm(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        with self._call(f"change SLMDeployment {namespace}/{name}"):
            return dict(
                self.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    patch,
                    field_manager=FIELD_MANAGER,
                    _content_type="application/merge-patch+json",
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )

    def patch_slm_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch of the status subresource; None when the patch's
        metadata.resourceVersion is no longer current (409: read the object again and retry)."""
        from kubernetes.client.exceptions import ApiException

        what = f"write the status of SLMDeployment {namespace}/{name}"
        with self._call(what):
            try:
                return dict(
                    self.custom.patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        name,
                        patch,
                        field_manager=FIELD_MANAGER,
                        _content_type="application/merge-patch+json",
                        _request_timeout=REQUEST_TIMEOUT,
                    )
                )
            except ApiException as error:
                if error.status == 409:
                    return None
                if error.status in (401, 403):
                    raise CliError(
                        f"cannot {what}: forbidden; it needs RBAC `patch` on slmdeployments/status "
                        f"(API group slm.dev) in namespace {namespace}"
                    ) from error
                raise

    def scale_slm(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        with self._call(f"scale SLMDeployment {namespace}/{name}"):
            return dict(
                self.custom.patch_namespaced_custom_object_scale(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {"spec": {"replicas": replicas}},
                    field_manager=FIELD_MANAGER,
                    _content_type="application/merge-patch+json",
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )

    def delete_slm(self, namespace: str, name: str) -> None:
        with self._call(f"delete SLMDeployment {namespace}/{name}"):
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )

    # -- core objects ------------------------------------------------------------------------

    def events_for(self, namespace: str, name: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.name={name},involvedObject.kind={KIND}"
        with self._call(f"list the Events of {namespace}/{name}"):
            result = self.core.list_namespaced_event(
                namespace, field_selector=selector, _request_timeout=REQUEST_TIMEOUT
            )
        return list(self.plain(result).get("items") or [])

    def list_nodes(self) -> list[dict[str, Any]]:
        with self._call("list Nodes"):
            result = self.core.list_node(_request_timeout=REQUEST_TIMEOUT)
        return list(self.plain(result).get("items") or [])

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        with self._call(f"list Pods in {namespace}"):
            result = self.core.list_namespaced_pod(
                namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            )
        return list(self.plain(result).get("items") or [])

    def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with self._call(f"read PersistentVolumeClaim {namespace}/{name}"):
                claim = self.core.read_namespaced_persistent_volume_claim(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT
                )
        except NotFoundError:
            return None
        return dict(self.plain(claim))

    def patch_claim(self, namespace: str, name: str, patch: list[dict[str, Any]]) -> None:
        with self._call(f"change PersistentVolumeClaim {namespace}/{name}"):
            self.core.patch_namespaced_persistent_volume_claim(
                name,
                namespace,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type="application/json-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )

    def delete_claim(self, namespace: str, name: str) -> None:
        with self._call(f"delete PersistentVolumeClaim {namespace}/{name}"):
            self.core.delete_namespaced_persistent_volume_claim(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )


def api_error(what: str, status: int, reason: str, body: str) -> CliError:
    """One line for an API failure, naming what to do."""
    message = reason
    try:
        parsed = json.loads(body)
        message = str(parsed.get("message") or reason)
    except ValueError:
        pass
    if status == 404:
        if "the server could not find the requested resource" in message:
            return CliError(
                f"cannot {what}: the cluster has no SLMDeployment API (slm.dev/v1alpha1); install the "
                "CRDs (kubectl apply -f crds/) or the slm-operator chart"
            )
        return NotFoundError(f"cannot {what}: not found")
    if status in (401, 403):
        return CliError(
            f"cannot {what}: forbidden ({message}); ask for RBAC rights on slmdeployments.slm.dev"
        )
    if status == 409:
        return CliError(
            f"cannot {what}: {message}; another field manager owns these fields: rerun with "
            "--force-conflicts to take them over"
        )
    if status == 422:
        return CliError(f"cannot {what}: the API server refused it: {message}")
    return CliError(f"cannot {what}: HTTP {status} {message}")
