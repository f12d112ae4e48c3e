"""`slm` / `kubectl slm`: the argument parser and the entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from slm_operator.cli import bench, models
from slm_operator.cli.commands import COMMANDS, Context
from slm_operator.cli.errors import CliError
from slm_operator.cli.output import OUTPUT_FORMATS

DESCRIPTION = (
    "Ollama's and Foundry Local's commands for a whole Kubernetes cluster: every model is an "
    "SLMDeployment (slm.dev/v1alpha1) that the slm-operator places on NPU, GPU or CPU nodes."
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 1 like every other error."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message}; see `{self.prog} --help`")


def _cluster_flags() -> Parser:
    parent = Parser(add_help=False)
    group = parent.add_argument_group("cluster")
    # SUPPRESS: given before or after the command, like kubectl; absent means unset.
    quiet = argparse.SUPPRESS
    group.add_argument(
        "--kubeconfig", default=quiet, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    group.add_argument("--context", default=quiet, help="kubeconfig context (default: the current one)")
    group.add_argument(
        "-n", "--namespace", default=quiet, help="namespace (default: the context's namespace, else default)"
    )
    return parent


def _list_flags(all_namespaces: bool = True) -> Parser:
    parent = Parser(add_help=False)
    parent.add_argument(
        "-o", "--output", default="table", choices=OUTPUT_FORMATS, help="table, wide, json or yaml"
    )
    parent.add_argument("--sort-by", metavar="FIELD", help="sort by a column, e.g. name, size, modified")
    if all_namespaces:
        parent.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    return parent


def _apply_flags() -> Parser:
    parent = Parser(add_help=False)
    parent.add_argument(
        "--dry-run", action="store_true", help="print the SLMDeployment instead of applying it"
    )
    parent.add_argument("-o", "--output", choices=("yaml", "json"), help="format of --dry-run (default yaml)")
    parent.add_argument("--replicas", type=int, help="serving Pods (default 1)")
    parent.add_argument(
        "--force-conflicts", action="store_true", help="take over fields another field manager owns"
    )
    return parent


def build_parser() -> Parser:
    cluster = _cluster_flags()
    parser = Parser(prog="slm", description=DESCRIPTION, parents=[cluster])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    create = sub.add_parser(
        "create", parents=[cluster, _apply_flags()], help="create an SLMDeployment from a Modelfile"
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default ./Modelfile)")
    create.add_argument(
        "--no-catalog-check",
        action="store_true",
        help="accept a FROM name the built-in catalog lacks (the operator's catalog may have it)",
    )

    deploy = sub.add_parser(
        "deploy", parents=[cluster, _apply_flags()], help="deploy a Foundry Local deployment configuration"
    )
    deploy.add_argument("--config", required=True, metavar="FILE", help="the JSON or YAML configuration")
    deploy.add_argument("--name", help="SLMDeployment name (default: from the model name)")

    for name, text in (("list", "list SLMDeployments and their cached models"), ("ls", "alias of list")):
        sub.add_parser(name, parents=[cluster, _list_flags()], help=text)
    sub.add_parser("ps", parents=[cluster, _list_flags()], help="list the running models and where they run")

    show = sub.add_parser("show", parents=[cluster], help="show an SLMDeployment's model and settings")
    show.add_argument("name", metavar="NAME")
    only = show.add_mutually_exclusive_group()
    for flag, text in (
        ("--modelfile", "a Modelfile regenerated from the spec"),
        ("--parameters", "the default parameters"),
        ("--system", "the system prompt"),
        ("--template", "the chat template"),
        ("--license", "the license"),
    ):
        only.add_argument(flag, action="store_true", help=text)

    why = sub.add_parser("why", parents=[cluster], help="why the model runs where it runs (or does not)")
    why.add_argument("name", metavar="NAME")

    stop = sub.add_parser("stop", parents=[cluster], help="scale to zero (the cache stays)")
    stop.add_argument("names", nargs="+", metavar="NAME")

    rm = sub.add_parser("rm", parents=[cluster], help="delete SLMDeployments and their model caches")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.add_argument("--keep-cache", action="store_true", help="keep the model cache claim for later")

    cp = sub.add_parser("cp", parents=[cluster], help="copy an SLMDeployment's spec to a new one")
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("destination", metavar="DST")

    pull = sub.add_parser(
        "pull", parents=[cluster], help="cache catalog models (SLMDeployments with replicas 0)"
    )
    pull.add_argument("names", nargs="+", metavar="NAME")
    pull.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True, help="wait until cached")
    pull.add_argument("--timeout", type=float, default=1800, help="seconds to wait (default 1800)")
    pull.add_argument("--name", help="SLMDeployment name, for one model (default: from the model name)")

    run = sub.add_parser(
        "run",
        parents=[cluster],
        help="chat with a model (deploys a catalog model on demand)",
        epilog=(
            "The model is reached by an in-process port-forward (RBAC: get services, list pods, create "
            "pods/portforward). SLM_PORT_FORWARD=auto (default) falls back on `kubectl port-forward` "
            "when it cannot start, native never does, kubectl always uses kubectl, as --kubectl does."
        ),
    )
    run.add_argument("name", metavar="NAME", help="an SLMDeployment, or a catalog model name")
    run.add_argument("prompt", nargs="*", metavar="PROMPT", help="answer this and exit (default: a REPL)")
    run.add_argument("-y", "--yes", action="store_true", help="deploy a catalog model without asking")
    run.add_argument("--timeout", type=float, default=600, help="seconds to wait for Ready (default 600)")
    run.add_argument("--verbose", action="store_true", help="print timings and token rates after answers")
    run.add_argument("--api-key", help="the API key (default: read spec.api.apiKeySecretRef's Secret)")
    run.add_argument(
        "--kubectl",
        metavar="PATH",
        help="port-forward with this kubectl, not in-process (kubectl's default: $SLM_KUBECTL, PATH)",
    )

    bench_parser = sub.add_parser(
        "bench",
        parents=[cluster],
        help="measure time to first token and token rates per concurrency level",
        description=bench.DESCRIPTION,
        epilog=bench.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(bench_parser)

    models_parser = sub.add_parser("models", help="browse the model catalog")
    models_sub = models_parser.add_subparsers(dest="models_command", metavar="COMMAND")
    models_sub.required = True
    listing = models_sub.add_parser(
        "list", parents=[cluster, _list_flags(all_namespaces=False)], help="catalog models, and what fits"
    )
    listing.add_argument(
        "--filter", action="append", metavar="KEY=VALUE", help="device=npu|gpu|cpu or task=chat|embedding"
    )
    listing.add_argument("--size", choices=models.SIZES, help="small (<1B), medium (<4B), large")
    listing.add_argument("--type", choices=models.TYPES, help="instruct, base or embedding")

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        epilog='bash: `source <(slm completion bash)`; zsh: `slm completion zsh > "${fpath[1]}/_slm"`',
    )
    completion.add_argument("shell", choices=COMPLETION_SHELLS)
    return parser


COMPLETION_SHELLS = ("bash", "zsh")


def completion_script(shell: str) -> str:
    """The completion script of every verb and flag, generated from the parser (shtab)."""
    import shtab

    script: str = shtab.complete(build_parser(), shell=shell)
    return script


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except CliError as error:
        err.write(f"error: {error.message}\n")
        return 1
    if args.command == "completion":
        out.write(completion_script(args.shell))
        return 0
    ctx = Context(args=args, out=out, err=err)
    try:
        COMMANDS[args.command](ctx)
    except CliError as error:
        err.write(f"error: {error.message}\n")
        for line in error.details:
            err.write(f"  {line}\n")
        return int(getattr(error, "exit_code", 1))  # `slm bench`: 2 when some requests failed
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
