"""The commands: each takes the parsed arguments and a Context, prints, and raises CliError on failure.

Past 400 lines because every verb (create, deploy, list, ps, show, why, stop, rm, cp, pull, models)
is here, each a short function over kube.py, output.py and the pure mappers; when `run` and `bench`
arrive they go into modules of their own, and this one splits into model verbs and cluster verbs.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from slm_operator.catalog import Catalog, load_builtin_catalog
from slm_operator.cli import bench_status, foundry, modelfile, models
from slm_operator.cli.errors import CliError
from slm_operator.cli.kube import FIELD_MANAGER, Kube
from slm_operator.cli.output import (
    Cell,
    Table,
    dump,
    emit,
    getpath,
    human_ago,
    human_size,
    parse_time,
)
from slm_operator.cli.resources import build, check_name, condition, is_current, model_label
from slm_operator.naming import cache_claim_name


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    catalog: Catalog = field(default_factory=load_builtin_catalog)
    kube_factory: Callable[[argparse.Namespace], Kube] | None = None
    sleep: Callable[[float], None] = time.sleep
    _kube: Kube | None = None

    def kube(self) -> Kube:
        if self._kube is None:
            factory = self.kube_factory or (
                lambda a: Kube(
                    getattr(a, "kubeconfig", None), getattr(a, "context", None), getattr(a, "namespace", None)
                )
            )
            self._kube = factory(self.args)
        return self._kube

    @property
    def namespace(self) -> str:
        return self.kube().namespace

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def warn(self, text: str) -> None:
        self.err.write(text + "\n")


# ---------------------------------------------------------------------------------------------
# create / deploy


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise CliError(f"{what} {path} does not exist: pass the file with -f/--config") from error
    except OSError as error:
        raise CliError(f"cannot read {what} {path}: {error.strerror}") from error


def _apply_or_print(ctx: Context, body: dict[str, Any]) -> None:
    args = ctx.args
    if args.dry_run:
        ctx.out.write(dump(body, args.output or "yaml"))
        return
    applied = ctx.kube().apply_slm(body, force=args.force_conflicts)
    meta = applied.get("metadata") or {}
    ctx.print(
        f"slmdeployment.slm.dev/{meta.get('name')} serverside-applied in namespace {meta.get('namespace')} "
        f"(field manager {FIELD_MANAGER}); follow it with `slm ps` or `slm why {meta.get('name')}`"
    )


def _namespace_for_output(ctx: Context) -> str:
    if ctx.args.dry_run and getattr(ctx.args, "namespace", None):
        return str(ctx.args.namespace)  # no cluster needed to print a manifest
    if ctx.args.dry_run:
        try:
            return ctx.namespace
        except CliError:
            return "default"
    return ctx.namespace


def cmd_create(ctx: Context) -> None:
    args = ctx.args
    check_name(args.name)
    text = _read(args.file, "Modelfile")
    result = modelfile.to_spec(text, ctx.catalog, check_catalog=not args.no_catalog_check)
    for note in result.notes:
        ctx.warn(f"note: {args.file} {note}")
    spec = dict(result.spec)
    if args.replicas is not None:
        spec["replicas"] = args.replicas
    body = build(args.name, _namespace_for_output(ctx), spec, result.annotations)
    _apply_or_print(ctx, body)


def cmd_deploy(ctx: Context) -> None:
    args = ctx.args
    text = _read(args.config, "deployment configuration")
    spec = foundry.to_spec(foundry.load_document(text, args.config), ctx.catalog)
    name = args.name or foundry.default_name(spec)
    if args.replicas is not None:
        spec["replicas"] = args.replicas
    body = build(name, _namespace_for_output(ctx), spec)
    _apply_or_print(ctx, body)


# ---------------------------------------------------------------------------------------------
# lookups


def _names_in(ctx: Context, namespace: str) -> list[str]:
    try:
        return [str(o["metadata"]["name"]) for o in ctx.kube().list_slm(namespace)]
    except CliError:
        return []


def not_found(ctx: Context, name: str, namespace: str) -> CliError:
    """'did you mean' from the cluster's names and the catalog."""
    names = _names_in(ctx, namespace)
    hints: list[str] = []
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        hints.append(f"did you mean {', '.join(close)}?")
    entry = ctx.catalog.lookup(name)
    serving = [
        o["metadata"]["name"]
        for o in (ctx.kube().list_slm(namespace) if names else [])
        if entry and model_label(o) and ctx.catalog.lookup(model_label(o)) == entry
    ]
    if serving:
        hints.append(f"{name} is served by {', '.join(serving)}")
    elif entry is not None:
        hints.append(
            f"{name} is a catalog model: `slm pull {name}` caches it, `slm create NAME -f Modelfile` serves it"
        )
    else:
        catalog_close = modelfile.suggest(name, ctx.catalog.names())
        if catalog_close and not close:
            hints.append(f"catalog models with a similar name: {catalog_close}")
    hint = "; ".join(hints) if hints else "`slm list` shows the SLMDeployments"
    return CliError(f"SLMDeployment {name!r} not found in namespace {namespace}: {hint}")


def get_named(ctx: Context, name: str) -> dict[str, Any]:
    namespace = ctx.namespace
    obj = ctx.kube().find_slm(namespace, name)
    if obj is None:
        raise not_found(ctx, name, namespace)
    return obj


# ---------------------------------------------------------------------------------------------
# list / ps


def _list_objects(ctx: Context) -> list[dict[str, Any]]:
    namespace = None if ctx.args.all_namespaces else ctx.namespace
    objects = ctx.kube().list_slm(namespace)
    return sorted(objects, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


def modified(obj: Mapping[str, Any]) -> datetime | None:
    """When the spec last changed: the newest non-status managedFields entry, else creation."""
    times = [
        parse_time(str(entry.get("time") or ""))
        for entry in getpath(obj, "metadata", "managedFields", default=[])
        if entry.get("subresource", "") != "status"
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else parse_time(str(getpath(obj, "metadata", "creationTimestamp", default="")))


def _prefix(ctx: Context, table: Table) -> None:
    if ctx.args.all_namespaces:
        table.headers.insert(0, "NAMESPACE")


def list_table(
    objects: Sequence[Mapping[str, Any]], all_namespaces: bool, now: datetime | None = None
) -> Table:
    table = Table(
        headers=["NAME", "ID", "SIZE", "QUANT", "FORMAT", "TIER", "MODIFIED"],
        wide=["MODEL", "READY", "ENDPOINT"],
    )
    if all_namespaces:
        table.headers.insert(0, "NAMESPACE")
    for index, obj in enumerate(objects):
        status_model = getpath(obj, "status", "model", default={})
        placement = getpath(obj, "status", "placement", default={})
        size = int(status_model.get("sizeBytes") or 0)
        when = modified(obj)
        ready = condition(obj, "Ready")
        table.add(
            _index=index,
            namespace=str(obj["metadata"].get("namespace", "")),
            name=str(obj["metadata"]["name"]),
            id=str(status_model.get("sha256") or "")[:12] or "-",
            size=Cell(human_size(size), float(size)),
            quant=str(status_model.get("quantization") or placement.get("quantization") or "-"),
            format=str(status_model.get("format") or placement.get("format") or "-"),
            tier=str(placement.get("tier") or "-"),
            modified=Cell(human_ago(when, now), -(when.timestamp()) if when else 0.0),
            model=model_label(obj) or "-",
            ready=str(ready.get("status") or "Unknown"),
            endpoint=str(getpath(obj, "status", "endpoint", default="") or "-"),
        )
    return table


def cmd_list(ctx: Context) -> None:
    objects = _list_objects(ctx)
    table = list_table(objects, ctx.args.all_namespaces)
    where = "any namespace" if ctx.args.all_namespaces else f"namespace {ctx.namespace}"
    emit(ctx.out, table, ctx.args.output, ctx.args.sort_by, objects, empty=f"No SLMDeployments in {where}.")


def processor(obj: Mapping[str, Any]) -> str:
    placement = getpath(obj, "status", "placement", default={})
    tier = str(placement.get("tier") or "")
    accelerator = str(placement.get("accelerator") or "")
    if not tier:
        return "-"
    if accelerator and accelerator != tier:
        count = int(getpath(obj, "spec", "hardware", "count", default=1) or 1)
        devices = f" x{count}" if count > 1 and tier != "cpu" else ""
        return f"{tier.upper()} ({accelerator}{devices})"
    return tier.upper()


def ps_table(
    objects: Sequence[Mapping[str, Any]],
    pods: Mapping[tuple[str, str], list[dict[str, Any]]],
    all_namespaces: bool,
) -> Table:
    table = Table(
        headers=["NAME", "PROCESSOR", "NODE", "CONTEXT", "READY", "REPLICAS", "UNTIL"],
        # TTFT, TOK/S@1, TOK/S@MAX: the benchmark recorded where the model runs now (`slm bench --record`).
        wide=["MODEL", "QUANT", "MEMORY", "TTFT", "TOK/S@1", "TOK/S@MAX", "ENDPOINT"],
    )
    if all_namespaces:
        table.headers.insert(0, "NAMESPACE")
    for index, obj in enumerate(objects):
        meta = obj["metadata"]
        key = (str(meta.get("namespace", "")), str(meta["name"]))
        nodes = sorted({str(getpath(p, "spec", "nodeName", default="")) for p in pods.get(key, [])} - {""})
        desired = int(getpath(obj, "spec", "replicas", default=1))
        ready = int(getpath(obj, "status", "readyReplicas", default=0) or 0)
        context = int(getpath(obj, "spec", "optimization", "maxContext", default=4096))
        memory = int(getpath(obj, "status", "placement", "memoryEstimateBytes", default=0) or 0)
        table.add(
            _index=index,
            namespace=key[0],
            name=key[1],
            processor=processor(obj),
            node=",".join(nodes) or "-",
            context=context,
            ready=Cell(f"{ready}/{desired}", float(ready)),
            replicas=desired,
            until="Forever" if desired > 0 else "Stopping...",
            model=model_label(obj) or "-",
            quant=str(getpath(obj, "status", "placement", "quantization", default="") or "-"),
            memory=Cell(human_size(memory), float(memory)),
            endpoint=str(getpath(obj, "status", "endpoint", default="") or "-"),
            **bench_status.ps_cells(bench_status.current_entry(obj)),
        )
    return table


def cmd_ps(ctx: Context) -> None:
    running = [
        o
        for o in _list_objects(ctx)
        if int(getpath(o, "spec", "replicas", default=1)) > 0
        or int(getpath(o, "status", "replicas", default=0) or 0) > 0
    ]
    pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for obj in running:
        meta = obj["metadata"]
        selector = str(getpath(obj, "status", "selector", default="") or "")
        if selector:
            pods[(meta["namespace"], meta["name"])] = [
                p
                for p in ctx.kube().list_pods(meta["namespace"], selector)
                if not getpath(p, "metadata", "deletionTimestamp")
            ]
    table = ps_table(running, pods, ctx.args.all_namespaces)
    emit(ctx.out, table, ctx.args.output, ctx.args.sort_by, running, empty="No models are running.")


# ---------------------------------------------------------------------------------------------
# show / why


def cmd_show(ctx: Context) -> None:
    args = ctx.args
    obj = get_named(ctx, args.name)
    spec = obj.get("spec") or {}
    prompt = spec.get("prompt") or {}
    annotations = getpath(obj, "metadata", "annotations", default={})
    meta = obj["metadata"]
    if args.modelfile:
        ctx.out.write(
            modelfile.render(spec, annotations, origin=f"SLMDeployment {meta['namespace']}/{meta['name']}")
        )
        return
    if args.parameters:
        for name, value in (prompt.get("parameters") or {}).items():
            for item in value if isinstance(value, list) else [value]:
                ctx.print(f"{name:<20}{item}")
        return
    if args.system:
        ctx.print(str(prompt.get("system") or ""))
        return
    if args.template:
        ctx.print(str(prompt.get("template") or ""))
        return
    if args.license:
        ctx.print(str(annotations.get(modelfile.LICENSE_ANNOTATION) or ""))
        return
    ctx.out.write(show_text(obj))


def _section(title: str, rows: Sequence[tuple[str, Any]]) -> list[str]:
    shown = [(k, v) for k, v in rows if v not in (None, "", [], {})]
    if not shown:
        return []
    return [f"  {title}", *(f"    {k:<20}{v}" for k, v in shown), ""]


def show_text(obj: Mapping[str, Any]) -> str:
    spec = obj.get("spec") or {}
    status_model = getpath(obj, "status", "model", default={})
    placement = getpath(obj, "status", "placement", default={})
    cache = getpath(obj, "status", "cache", default={})
    prompt = spec.get("prompt") or {}
    spec_model = spec.get("model") or {}
    lines: list[str] = []
    lines += _section(
        "Model",
        [
            ("name", spec_model.get("name") or status_model.get("name")),
            ("source", status_model.get("source") or spec_model.get("source")),
            ("format", status_model.get("format") or placement.get("format")),
            ("quantization", status_model.get("quantization") or placement.get("quantization")),
            (
                "size",
                human_size(int(status_model.get("sizeBytes") or 0)) if status_model.get("sizeBytes") else "",
            ),
            ("sha256", status_model.get("sha256")),
            ("context length", getpath(spec, "optimization", "maxContext", default=4096)),
        ],
    )
    lines += _section(
        "Placement",
        [
            ("processor", processor(obj) if placement else ""),
            ("resource", placement.get("resourceName")),
            ("backend", placement.get("backend")),
            ("execution provider", placement.get("executionProvider")),
            (
                "memory estimate",
                human_size(int(placement.get("memoryEstimateBytes") or 0))
                if placement.get("memoryEstimateBytes")
                else "",
            ),
            (
                "hardware order",
                ", ".join(
                    [
                        getpath(spec, "hardware", "preferred", default="gpu"),
                        *(getpath(spec, "hardware", "fallback", default=None) or []),
                    ]
                ),
            ),
        ],
    )
    parameters = [
        (k, item)
        for k, v in (prompt.get("parameters") or {}).items()
        for item in (v if isinstance(v, list) else [v])
    ]
    lines += _section("Parameters", parameters)
    if prompt.get("system"):
        lines += ["  System", *(f"    {line}" for line in str(prompt["system"]).splitlines()), ""]
    lines += _section(
        "Cache",
        [
            ("claim", cache.get("claimName")),
            ("phase", cache.get("phase")),
            ("retain", getpath(spec, "cache", "retain", default=True)),
        ],
    )
    lines += _section(
        "Serving",
        [
            (
                "replicas",
                f"{getpath(obj, 'status', 'readyReplicas', default=0) or 0}/{spec.get('replicas', 1)} ready",
            ),
            ("endpoint", getpath(obj, "status", "endpoint", default="")),
            ("apis", ", ".join(n for n in ("openai", "ollama") if getpath(spec, "api", n, default=True))),
        ],
    )
    lines += bench_status.show_lines(obj)
    conditions = getpath(obj, "status", "conditions", default=[])
    if conditions:
        lines.append("  Conditions")
        for cond in conditions:
            lines.append(f"    {cond.get('type', ''):<20}{cond.get('status', ''):<8}{cond.get('reason', '')}")
        lines.append("")
    return "\n".join(lines)


def _worth_showing(cond: Mapping[str, Any]) -> bool:
    """Placed=True repeats the tier reasoning; Stalled matters only while true."""
    if not cond:
        return False
    if cond.get("type") == "Placed":
        return cond.get("status") != "True"
    if cond.get("type") == "Stalled":
        return cond.get("status") == "True"
    return True


def why_text(obj: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime | None = None) -> str:
    """Placement and quantization reasoning: each tier tried and why it was taken or refused."""
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    placement = getpath(obj, "status", "placement", default={}) or {}
    order = [getpath(spec, "hardware", "preferred", default="gpu")]
    fallback = getpath(spec, "hardware", "fallback", default=None)
    order += (
        list(fallback)
        if fallback is not None
        else {"npu": ["gpu", "cpu"], "gpu": ["cpu"], "cpu": []}[order[0]]
    )
    placed = condition(obj, "Placed")
    stalled = condition(obj, "Stalled")
    lines: list[str] = []
    wanted_quant = getpath(spec, "model", "quantization", default="auto")
    if placement.get("tier"):
        lines.append(
            f"{meta['name']}: {model_label(obj)} runs on {processor(obj)} as {placement.get('format', '?')} "
            f"{placement.get('quantization', '?')} ({placement.get('backend', '?')}); quantization asked: {wanted_quant}"
        )
    else:
        lines.append(
            f"{meta['name']}: {model_label(obj)} is not placed yet (quantization asked: {wanted_quant})"
        )
    reason = str(placement.get("reason") or "")
    if not reason:
        message = str((stalled if stalled.get("status") == "True" else placed).get("message") or "")
        reason = (
            message.split(": ", 1)[1]
            if message.startswith("no tier can run") and ": " in message
            else message
        )
    lines.append(f"Tiers tried, in order {' -> '.join(order)}:")
    if reason:
        # "npu: why; more; gpu: why" -> one entry per tier (a tier's note may hold "; " itself).
        for part in re.split(r"(?:^|; )(?=(?:npu|gpu|cpu): )", reason):
            if not part:
                continue
            tier, sep, text = part.partition(": ")
            if sep and tier in ("npu", "gpu", "cpu"):
                mark = "chosen" if tier == placement.get("tier") else "passed over"
                lines.append(f"  {tier:<4} {mark:<12}{text}")
            else:
                lines.append(f"  {part}")
    else:
        lines.append("  (no reasoning recorded yet: the operator has not reconciled this resource)")
    for cond in (placed, stalled, condition(obj, "ModelCached"), condition(obj, "Ready")):
        if _worth_showing(cond):
            stale = "" if is_current(obj, cond) else " (for an older generation)"
            lines.append(
                f"{cond['type']}={cond.get('status')} {cond.get('reason', '')}: {cond.get('message', '')}{stale}"
            )
    if events:
        lines.append("Events:")
        ordered = sorted(
            events,
            key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or ""),
        )
        for event in ordered:
            when = parse_time(
                str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")
            )
            count = int(event.get("count") or 1)
            times = f" (x{count})" if count > 1 else ""
            lines.append(
                f"  {human_ago(when, now):<24}{event.get('type', ''):<9}{event.get('reason', ''):<18}{event.get('message', '')}{times}"
            )
    return "\n".join(lines) + "\n"


def cmd_why(ctx: Context) -> None:
    obj = get_named(ctx, ctx.args.name)
    events = ctx.kube().events_for(obj["metadata"]["namespace"], obj["metadata"]["name"])
    ctx.out.write(why_text(obj, events))


# ---------------------------------------------------------------------------------------------
# stop / rm / cp


def cmd_stop(ctx: Context) -> None:
    for name in ctx.args.names:
        obj = get_named(ctx, name)
        ctx.kube().scale_slm(obj["metadata"]["namespace"], name, 0)
        ctx.print(f"stopped {name}: scaled to 0 replicas; the cached model stays (scale up to serve again)")


def cmd_rm(ctx: Context) -> None:
    kube = ctx.kube()
    for name in ctx.args.names:
        obj = get_named(ctx, name)
        namespace = obj["metadata"]["namespace"]
        uid = obj["metadata"].get("uid", "")
        claim_name = str(getpath(obj, "status", "cache", "claimName", default="") or cache_claim_name(name))
        if ctx.args.keep_cache:
            kube.patch_slm(namespace, name, {"spec": {"cache": {"retain": True}}})
            claim = kube.get_claim(namespace, claim_name)
            if claim is not None:
                # The operator drops its owner reference when it sees retain; do it now so that the
                # garbage collector cannot take the claim with the resource in the meantime.
                owners = getpath(claim, "metadata", "ownerReferences", default=[])
                for index in reversed(range(len(owners))):
                    if owners[index].get("uid") == uid:
                        kube.patch_claim(
                            namespace,
                            claim_name,
                            [
                                {
                                    "op": "test",
                                    "path": f"/metadata/ownerReferences/{index}/uid",
                                    "value": uid,
                                },
                                {"op": "remove", "path": f"/metadata/ownerReferences/{index}"},
                            ],
                        )
            kube.delete_slm(namespace, name)
            kept = f"; the model cache {claim_name} is kept" if claim is not None else ""
            ctx.print(f"deleted {name}{kept}")
            continue
        kube.delete_slm(namespace, name)
        claim = kube.get_claim(namespace, claim_name)
        labels = getpath(claim or {}, "metadata", "labels", default={})
        if claim is not None and labels.get("app.kubernetes.io/instance") == name:
            kube.delete_claim(namespace, claim_name)
            ctx.print(f"deleted {name} and its model cache {claim_name}")
        else:
            ctx.print(f"deleted {name}")


def cmd_cp(ctx: Context) -> None:
    args = ctx.args
    source = get_named(ctx, args.source)
    namespace = source["metadata"]["namespace"]
    check_name(args.destination)
    if ctx.kube().find_slm(namespace, args.destination) is not None:
        raise CliError(
            f"SLMDeployment {args.destination!r} already exists in namespace {namespace}: "
            f"choose another name, or `slm rm {args.destination}` first"
        )
    annotations = {
        k: v
        for k, v in getpath(source, "metadata", "annotations", default={}).items()
        if k.startswith("slm.dev/")
    }
    body = build(args.destination, namespace, source.get("spec") or {}, annotations)
    body["spec"] = dict(source.get("spec") or {})  # exactly SRC's spec, defaults included
    ctx.kube().apply_slm(body)
    ctx.print(f"copied {args.source} to {args.destination}")


# ---------------------------------------------------------------------------------------------
# models list / pull


def cmd_models_list(ctx: Context) -> None:
    args = ctx.args
    filters = models.Filters.parse(args.filter or [], args.size, args.type)
    nodes: list[dict[str, Any]] | None = None
    try:
        nodes = ctx.kube().list_nodes()
    except CliError as error:
        ctx.warn(f"no cluster to check against ({error.message}); listing the catalog without FITS")
    settings = None
    if nodes is not None:
        from slm_operator.settings import OperatorSettings

        settings = OperatorSettings()
    table = Table(
        headers=["NAME", "PARAMS", "SIZE", "TYPE", "DEVICES", "VARIANTS"]
        + (["FITS"] if nodes is not None else []),
        wide=["DESCRIPTION"],
    )
    entries: list[dict[str, Any]] = []
    for name, entry in sorted(ctx.catalog.models.items()):
        if not filters.match(entry):
            continue
        fits = models.fits(name, ctx.catalog, nodes, settings) if nodes is not None and settings else ""
        variants = [
            v.quantization
            if v.format == "gguf"
            else f"onnx-{v.quantization}" + (f"-{v.device}" if v.device else "")
            for v in entry.variants
        ]
        row: dict[str, Any] = {
            "name": name,
            "params": Cell(models.human_parameters(entry.parameters), float(entry.parameters)),
            "size": models.size_class(entry.parameters),
            "type": models.model_type(entry),
            "devices": ",".join(models.devices(entry)),
            "variants": ",".join(variants),
            "description": entry.description,
        }
        if nodes is not None:
            row["fits"] = fits
        table.add(**row)
        entries.append({k: (v.text if isinstance(v, Cell) else v) for k, v in row.items()})
    for index, row_cells in enumerate(table.rows):
        row_cells["_INDEX"] = Cell(str(index))
    emit(ctx.out, table, args.output, args.sort_by, entries, empty="No catalog model matches these filters.")


def fetch_progress(obj: Mapping[str, Any]) -> tuple[str, int, int, int]:
    """(phase, bytes downloaded, total bytes, bytes per second) from status.cache."""
    cache = getpath(obj, "status", "cache", default={}) or {}
    return (
        str(cache.get("phase") or "Pending"),
        int(cache.get("bytesDownloaded") or 0),
        int(cache.get("totalBytes") or 0),
        int(cache.get("bytesPerSecond") or 0),
    )


def progress_text(obj: Mapping[str, Any]) -> str:
    """One line of fetch progress, like Ollama's: phase, percent, done/total, rate."""
    phase, done, total, rate = fetch_progress(obj)
    parts = [phase.lower()]
    if total > 0:
        parts.append(f"{100 * done // total:3d}% {human_size(done)}/{human_size(total)}")
    elif done > 0:
        parts.append(human_size(done))
    if rate > 0 and phase == "Fetching":
        parts.append(f"{human_size(rate)}/s")
    return " ".join(parts)


class PullDisplay:
    """Fetch progress while `slm pull` waits: a rich progress bar on a terminal, else lines.

    The figures are the operator's (status.cache, from the fetch Pod's progress lines), so the
    bar moves every few seconds, as status does.
    """

    def __init__(self, out: Any, name: str, interactive: bool) -> None:
        self.out = out
        self.name = name
        self._last = ""
        self._bar: Any = None
        self._task: Any = None
        if interactive:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                DownloadColumn(binary_units=False),
                TextColumn("{task.fields[rate]}"),
                console=Console(file=out),
                transient=False,
            )
            self._task = self._bar.add_task(f"pulling {name}", total=None, rate="")
            self._bar.start()

    def show(self, obj: Mapping[str, Any]) -> None:
        if self._bar is None:
            line = f"{self.name}: {progress_text(obj)}"
            if line != self._last:
                self.out.write(line + "\n")
                self.out.flush()
                self._last = line
            return
        phase, done, total, rate = fetch_progress(obj)
        self._bar.update(
            self._task,
            completed=done,
            total=total or None,
            rate=f"{human_size(rate)}/s" if rate > 0 and phase == "Fetching" else phase.lower(),
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def cmd_pull(ctx: Context) -> None:
    args = ctx.args
    kube = ctx.kube()
    namespace = kube.namespace
    targets: list[str] = []
    for name in args.names:
        entry = ctx.catalog.lookup(name)
        existing = kube.find_slm(namespace, name)
        if entry is None and existing is not None:
            targets.append(name)  # an existing SLMDeployment: wait for its cache
            continue
        if entry is None:
            close = modelfile.suggest(name, ctx.catalog.names())
            hint = f" (did you mean {close}?)" if close else ""
            raise CliError(
                f"{name!r} is not a model of the catalog{hint}: run `slm models list` for the names"
            )
        resource = args.name if args.name and len(args.names) == 1 else foundry.slug(name)
        current = kube.find_slm(namespace, resource)
        if current is not None:
            if ctx.catalog.lookup(model_label(current)) != entry:
                raise CliError(
                    f"SLMDeployment {resource!r} already serves {model_label(current)}, not {name}: "
                    "pass --name to pull under another name"
                )
            ctx.print(f"{resource} already holds {name}")
        else:
            body = build(resource, namespace, {"model": {"name": name}, "replicas": 0})
            kube.apply_slm(body)
            ctx.print(f"pulling {name} into {resource} (an SLMDeployment with replicas 0)")
        targets.append(resource)
    if not args.wait:
        return
    for resource in targets:
        wait_cached(ctx, namespace, resource, args.timeout)


def wait_cached(ctx: Context, namespace: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    interactive = ctx.out.isatty() if hasattr(ctx.out, "isatty") else False
    display = PullDisplay(ctx.out, name, interactive)
    try:
        while True:
            obj = ctx.kube().get_slm(namespace, name)
            cached = condition(obj, "ModelCached")
            stalled = condition(obj, "Stalled")
            display.show(obj)
            if cached.get("status") == "True" and is_current(obj, cached):
                display.close()
                size = int(getpath(obj, "status", "model", "sizeBytes", default=0) or 0)
                claim = getpath(obj, "status", "cache", "claimName", default="")
                ctx.print(
                    f"success: {model_label(obj)} is cached in {claim}"
                    + (f" ({human_size(size)})" if size else "")
                )
                return
            if stalled.get("status") == "True" and is_current(obj, stalled):
                raise CliError(f"{name} cannot be pulled: {stalled.get('message', '')}; see `slm why {name}`")
            if time.monotonic() > deadline:
                reason = (
                    f" ({cached.get('reason')}: {cached.get('message')})" if cached.get("message") else ""
                )
                raise CliError(
                    f"{name}: the model is not cached after {timeout:.0f}s{reason}; keep waiting with "
                    f"`slm pull {name}` or look at `slm why {name}`"
                )
            ctx.sleep(1.0)
    finally:
        display.close()


def cmd_run(ctx: Context) -> None:
    from slm_operator.cli.run import cmd_run as run  # its own module, which imports this one

    run(ctx)


def cmd_bench(ctx: Context) -> None:
    from slm_operator.cli.bench import cmd_bench as bench  # its own module, which imports this one

    bench(ctx)


# Used by tests and the parser.
COMMANDS: dict[str, Callable[[Context], None]] = {
    "create": cmd_create,
    "deploy": cmd_deploy,
    "list": cmd_list,
    "ls": cmd_list,
    "ps": cmd_ps,
    "show": cmd_show,
    "why": cmd_why,
    "stop": cmd_stop,
    "rm": cmd_rm,
    "cp": cmd_cp,
    "pull": cmd_pull,
    "run": cmd_run,
    "bench": cmd_bench,
    "models": cmd_models_list,
}


def now_utc() -> datetime:
    return datetime.now(UTC)
