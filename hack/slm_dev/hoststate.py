"""What a real node changes on this machine, recorded before and undone after.

kubelet, kube-proxy, containerd and the CNI bridge plugin change host state outside
their own folders: sysctls, iptables chains (v4 and v6), mounts, cgroups, network
links and routes, and a few well-known paths. ``snapshot()`` records all of it;
``restore(before)`` undoes every difference it can see; a test compares a snapshot
taken before ``up`` with one taken after ``down``.

Standard library only, like ``slm_dev.cluster``: ``down`` runs without the virtual environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Sysctls that kubelet (protectKernelDefaults=false), kube-proxy and the CNI bridge
# plugin (isGateway) are known to set.
SYSCTLS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv6/conf/all/forwarding",
    "net/netfilter/nf_conntrack_max",
    "net/bridge/bridge-nf-call-iptables",
)
# Fixed paths the components use whatever their root folders are set to.
WELL_KNOWN_PATHS = (
    "/run/containerd",
    "/run/netns",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/log/containers",
    "/var/log/pods",
    "/opt/containerd",
    "/etc/cni",
    "/run/runc",
)
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle", "raw")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIXES = ("kubepods",)


def _read_sysctl(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def _iptables_rules(binary: str, table: str) -> list[str]:
    if shutil.which(binary) is None:
        return []
    result = subprocess.run([binary, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines() if result.returncode == 0 else []


def _mount_points() -> list[str]:
    points: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4:
                points.append(fields[4].replace("\\040", " "))
    return points


def _cgroups() -> list[str]:
    found: list[str] = []
    if not CGROUP_ROOT.is_dir():
        return found
    for controller in sorted(CGROUP_ROOT.iterdir()):
        for prefix in CGROUP_PREFIXES:
            path = controller / prefix
            if path.is_dir():
                found.append(str(path))
    return found


def _links() -> list[str]:
    result = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False)
    names = []
    for line in result.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            names.append(parts[1].strip().split("@", 1)[0])
    return sorted(names)


def _routes() -> list[str]:
    result = subprocess.run(["ip", "route", "show"], capture_output=True, text=True, check=False)
    return sorted(line.strip() for line in result.stdout.splitlines())


def snapshot() -> dict[str, Any]:
    """The host state a real node may change, as plain JSON-able data."""
    return {
        "sysctls": {name: _read_sysctl(name) for name in SYSCTLS},
        "iptables": {
            binary: {table: _iptables_rules(binary, table) for table in TABLES} for binary in IPTABLES
        },
        "mounts": sorted(set(_mount_points())),
        "cgroups": _cgroups(),
        "links": _links(),
        "routes": _routes(),
        "paths": {path: os.path.lexists(path) for path in WELL_KNOWN_PATHS},
    }


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences between two snapshots; empty when the machine is as before."""
    found: list[str] = []
    for name, value in before["sysctls"].items():
        if after["sysctls"].get(name) != value:
            found.append(f"sysctl {name}: {value} -> {after['sysctls'].get(name)}")
    for binary, tables in before["iptables"].items():
        for table, rules in tables.items():
            now = after["iptables"].get(binary, {}).get(table, [])
            found += [f"{binary} -t {table}: added {rule}" for rule in now if rule not in rules]
            found += [f"{binary} -t {table}: removed {rule}" for rule in rules if rule not in now]
    for key in ("mounts", "cgroups", "links", "routes"):
        found += [f"{key}: added {item}" for item in after[key] if item not in before[key]]
        found += [f"{key}: removed {item}" for item in before[key] if item not in after[key]]
    for path, existed in before["paths"].items():
        if after["paths"].get(path) != existed:
            found.append(f"path {path}: {'existed' if existed else 'absent'} before, not now")
    return found


def save(path: Path, state: dict[str, Any]) -> None:
    path.write_text(json.dumps(state, indent=1))


def load(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _undo_iptables(before: dict[str, Any]) -> None:
    for binary, tables in before["iptables"].items():
        if shutil.which(binary) is None:
            continue
        for table in TABLES:
            old = set(tables.get(table, []))
            now = _iptables_rules(binary, table)
            # Rules first (they may jump to new chains), newest first; then the chains.
            for rule in reversed([r for r in now if r.startswith("-A ") and r not in old]):
                args = ["-D", *_split_rule(rule[3:])]
                subprocess.run([binary, "-w", "-t", table, *args], capture_output=True, check=False)
            for rule in [r for r in now if r.startswith("-N ") and r not in old]:
                chain = rule[3:].strip()
                subprocess.run([binary, "-w", "-t", table, "-F", chain], capture_output=True, check=False)
                subprocess.run([binary, "-w", "-t", table, "-X", chain], capture_output=True, check=False)


def _split_rule(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def _remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup and everything below it, deepest first (cgroup dirs hold no files to delete)."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _under(path: str, prefixes: list[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def restore(before: dict[str, Any], state_dir: Path, extra_dirs: Sequence[Path] = ()) -> list[str]:
    """Undo what differs from ``before``; returns what could not be undone.

    Only what a real node can have made is touched: mounts under ``state_dir``, ``extra_dirs``
    or a well-known path, bridges and veth links, routes and iptables rules that are new.
    """
    now = snapshot()
    prefixes = [str(state_dir), *(str(d) for d in extra_dirs), *WELL_KNOWN_PATHS]
    for point in sorted(
        (p for p in now["mounts"] if p not in before["mounts"] and _under(p, prefixes)),
        key=lambda p: p.count("/"),
        reverse=True,
    ):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    for cgroup in now["cgroups"]:
        if cgroup not in before["cgroups"]:
            _remove_cgroup_tree(Path(cgroup))
    _undo_iptables(before)
    for route in now["routes"]:
        if route not in before["routes"] and (" dev slm" in route or route.startswith("blackhole")):
            subprocess.run(["ip", "route", "del", *route.split()], capture_output=True, check=False)
    for link in now["links"]:
        if link not in before["links"] and link.startswith(("slm", "veth")):
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
    for name, value in before["sysctls"].items():
        if value is not None and _read_sysctl(name) != value:
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / name).write_text(value)
    for path, existed in before["paths"].items():
        if not existed and os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
    return differences(before, snapshot())
