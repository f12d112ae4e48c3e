"""The objects the local cluster registers: its fake nodes (with what a kubelet would report), the
default StorageClass and the pool of hostPath PersistentVolumes that stands in for a provisioner.

Standard library only: ``python -m slm_dev.cluster down`` runs without the virtual environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

STORAGE_CLASS = "standard"
POOL_KINDS = (
    ("ReadWriteOnce", "20Gi"),
    ("ReadWriteOnce", "200Gi"),
    ("ReadWriteMany", "20Gi"),
    ("ReadWriteMany", "200Gi"),
)


def pool_kind(mode: str, size: str) -> str:
    return f"{'rwo' if mode == 'ReadWriteOnce' else 'rwx'}-{size.lower()}"


def fresh_volume_dir(path: Path) -> None:
    """An empty folder that the runtime's uid can write (fsGroup does not apply to hostPath)."""
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    path.chmod(0o777)


def persistent_volume(mode: str, size: str, state_dir: Path) -> dict[str, Any]:
    """A pool volume (its folder made now under ``state_dir/volumes``), labelled with its kind."""
    kind = pool_kind(mode, size)
    suffix = os.urandom(4).hex()
    fresh_volume_dir(state_dir / "volumes" / f"{kind}-{suffix}")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pool-{kind}-{suffix}", "labels": {"slm.dev/pool": kind}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": [mode],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {
                "path": str(state_dir / "volumes" / f"{kind}-{suffix}"),
                "type": "DirectoryOrCreate",
            },
        },
    }


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        # Immediate: claims bind as soon as they are created, with no pod needed.
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Retain",
    }


def with_node_defaults(node: dict[str, Any]) -> dict[str, Any]:
    """Fill in what every kubelet reports, so node files list only what differs."""
    node = json.loads(json.dumps(node))
    meta = node.setdefault("metadata", {})
    name = meta["name"]
    labels = meta.setdefault("labels", {})
    labels.setdefault("kubernetes.io/hostname", name)
    labels.setdefault("kubernetes.io/os", "linux")
    labels.setdefault("kubernetes.io/arch", "amd64")
    labels.setdefault("type", "kwok")
    annotations = meta.setdefault("annotations", {})
    annotations.setdefault("kwok.x-k8s.io/node", "fake")
    annotations.setdefault("node.alpha.kubernetes.io/ttl", "0")
    status = node.setdefault("status", {})
    status.setdefault("capacity", {"cpu": "8", "memory": "32Gi", "pods": "110"})
    status.setdefault("allocatable", dict(status["capacity"]))
    status.setdefault(
        "nodeInfo",
        {
            "architecture": labels["kubernetes.io/arch"],
            "operatingSystem": "linux",
            "kubeletVersion": "fake",
            "kubeProxyVersion": "fake",
        },
    )
    return node


def node_is_schedulable(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints", [])
    not_ready_taint = any(t.get("key", "").startswith("node.kubernetes.io/not-ready") for t in taints)
    return ready and not not_ready_taint
