"""`slm run NAME [PROMPT...]`: Ollama's `ollama run` for a model served by an SLMDeployment.

The steps: find the SLMDeployment (or deploy a catalog model on demand), wait until it is Ready,
reach its Service (`portforward.forward`), read its API key when it has one, then either
answer one prompt or open a REPL with Ollama's commands (/set, /show, /clear, /bye, /?, \"\"\").

Each part is a small piece that tests drive alone: `resolve`, `wait_ready`, `api_key` and `Repl`
(the session, over any input/output streams and any `chat(messages, options)` callable); the
port-forward and the HTTP client (`OllamaChat`) live in modules that `bench` shares.

Past 400 lines: the REPL (commands, parameters, --verbose statistics) is most of it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from slm_operator.cli import foundry, modelfile, portforward
from slm_operator.cli.commands import Context, fetch_progress, not_found, show_text
from slm_operator.cli.errors import CliError
from slm_operator.cli.ollama_client import Chunk, Message, OllamaChat
from slm_operator.cli.output import getpath, human_size
from slm_operator.cli.resources import build, condition, is_current, model_label

ChatFn = Callable[[list[Message], dict[str, Any]], Iterator[Chunk]]

DEFAULT_TIMEOUT = 600.0


# ---------------------------------------------------------------------------------------------
# the SLMDeployment: find it, or deploy a catalog model on demand; wait for Ready


def _is_tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def resolve(ctx: Context, name: str, *, yes: bool, stdin: TextIO) -> dict[str, Any]:
    """The SLMDeployment NAME, or the one serving catalog model NAME (deployed now if need be)."""
    kube = ctx.kube()
    namespace = kube.namespace
    existing = kube.find_slm(namespace, name)
    if existing is not None:
        return _started(ctx, existing)
    entry = ctx.catalog.lookup(name)
    if entry is None:
        raise not_found(ctx, name, namespace)
    resource = foundry.slug(name)  # the name `slm pull NAME` gives it
    current = kube.find_slm(namespace, resource)
    if current is not None:
        if ctx.catalog.lookup(model_label(current)) != entry:
            raise CliError(
                f"SLMDeployment {resource!r} already serves {model_label(current)}, not {name}: "
                f"run it with `slm run {resource}`, or deploy {name} under another name with `slm create`"
            )
        return _started(ctx, current)
    question = (
        f"{name} is not deployed in namespace {namespace}: deploy {name} now as SLMDeployment {resource}?"
    )
    if not yes:
        if not _is_tty(stdin):
            raise CliError(
                f"{name} is not deployed in namespace {namespace}: rerun with --yes to deploy it as "
                f"SLMDeployment {resource} (stdin is not a terminal to ask)"
            )
        ctx.err.write(f"{question} [y/N] ")
        ctx.err.flush()
        answer = stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise CliError(f"not deployed: {name} needs an SLMDeployment; `slm run {name} --yes` deploys it")
    applied = kube.apply_slm(build(resource, namespace, {"model": {"name": name}}))
    ctx.warn(f"deploying {name} as SLMDeployment {resource} in namespace {namespace}")
    return applied


def _started(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    """A stopped (or only pulled) SLMDeployment is scaled to one replica, as Ollama loads a model."""
    meta = obj["metadata"]
    if int(getpath(obj, "spec", "replicas", default=1)) == 0:
        ctx.warn(f"starting {meta['name']}: scaling it to 1 replica")
        ctx.kube().scale_slm(meta["namespace"], meta["name"], 1)
        return ctx.kube().get_slm(meta["namespace"], meta["name"])
    return obj


def status_line(obj: Mapping[str, Any]) -> str:
    """One line: where the SLMDeployment is on its way to Ready."""
    name = obj["metadata"]["name"]
    parts: list[str] = []
    for type_ in ("Placed", "ModelCached", "Ready"):
        cond = condition(obj, type_)
        if cond.get("status") == "True" and is_current(obj, cond):
            continue
        reason = str(cond.get("reason") or "Pending")
        parts.append(f"{type_} {reason}")
        break
    phase, done, total, rate = fetch_progress(obj)
    if total and done < total:
        rate_text = f" at {human_size(rate)}/s" if rate and phase == "Fetching" else ""
        parts.append(f"{100 * done // total}% of {human_size(total)}{rate_text}")
    ready = int(getpath(obj, "status", "readyReplicas", default=0) or 0)
    desired = int(getpath(obj, "spec", "replicas", default=1))
    return f"waiting for {name}: {', '.join(parts) or 'Ready'} ({ready}/{desired} replicas ready)"


def is_ready(obj: Mapping[str, Any]) -> bool:
    ready = condition(obj, "Ready")
    return (
        ready.get("status") == "True"
        and is_current(obj, ready)
        and int(getpath(obj, "status", "readyReplicas", default=0) or 0) > 0
    )


def wait_ready(ctx: Context, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Poll until Ready; a one-line status on stderr meanwhile (rewritten in place on a terminal)."""
    deadline = time.monotonic() + timeout
    interactive = _is_tty(ctx.err)
    last = ""
    while True:
        obj = ctx.kube().get_slm(namespace, name)
        if is_ready(obj):
            if last and interactive:
                ctx.err.write("\r\033[K")
            return obj
        stalled = condition(obj, "Stalled")
        if stalled.get("status") == "True" and is_current(obj, stalled):
            if interactive and last:
                ctx.err.write("\n")
            raise CliError(f"{name} cannot start: {stalled.get('message', '')}; see `slm why {name}`")
        line = status_line(obj)
        if line != last:
            ctx.err.write(f"\r\033[K{line}" if interactive else f"{line}\n")
            ctx.err.flush()
            last = line
        if time.monotonic() > deadline:
            if interactive:
                ctx.err.write("\n")
            raise CliError(
                f"{name} is not Ready after {timeout:.0f}s ({line}); wait longer with --timeout, "
                f"or see why with `slm why {name}`"
            )
        ctx.sleep(1.0)


# ---------------------------------------------------------------------------------------------
# the API key


def api_key(ctx: Context, obj: Mapping[str, Any]) -> str | None:
    """The key of spec.api.apiKeySecretRef, read with the user's own credentials; None if unset."""
    ref = getpath(obj, "spec", "api", "apiKeySecretRef", default=None) or {}
    if not ref.get("name") or not ref.get("key"):
        return None
    namespace = str(obj["metadata"]["namespace"])
    return read_secret_key(ctx.kube(), namespace, str(ref["name"]), str(ref["key"]))


def read_secret_key(kube: Any, namespace: str, name: str, key: str) -> str:
    import base64

    from kubernetes.client.exceptions import ApiException

    where = f"Secret {namespace}/{name}"
    try:
        secret = kube.core.read_namespaced_secret(name, namespace, _request_timeout=(5, 30))
    except ApiException as error:
        if error.status in (401, 403):
            raise CliError(
                f"the model's API needs the key in {where} (key {key}), and you cannot read it: "
                "you need RBAC `get secrets` in that namespace, or pass the key with --api-key"
            ) from error
        if error.status == 404:
            raise CliError(
                f"the model's API needs the key in {where} (key {key}), which does not exist: "
                "create the Secret, or pass the key with --api-key"
            ) from error
        raise CliError(f"cannot read {where}: HTTP {error.status} {error.reason}") from error
    data = getattr(secret, "data", None) or {}
    if key not in data:
        raise CliError(f"{where} has no key {key!r} (it has {', '.join(sorted(data)) or 'none'})")
    return base64.b64decode(data[key]).decode("utf-8").strip()


# ---------------------------------------------------------------------------------------------
# --verbose statistics (Ollama's Metrics.Summary, Go duration format)


def go_duration(ns: int) -> str:
    """A duration as Go's time.Duration.String writes it: 1.5s, 12.3456ms, 2m3.5s, 800ns."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = f"{_fraction(rest, 1_000_000_000)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _fraction(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    digits = str(part).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def stats_text(chunk: Mapping[str, Any]) -> str:
    """Ollama's --verbose lines from the final chunk (fields it lacks are left out, as Ollama does)."""
    total = int(chunk.get("total_duration") or 0)
    load = int(chunk.get("load_duration") or 0)
    prompt_count = int(chunk.get("prompt_eval_count") or 0)
    prompt_duration = int(chunk.get("prompt_eval_duration") or 0)
    count = int(chunk.get("eval_count") or 0)
    duration = int(chunk.get("eval_duration") or 0)
    lines: list[str] = []
    if total > 0:
        lines.append(f"total duration:       {go_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {go_duration(load)}")
    if prompt_count > 0:
        lines.append(f"prompt eval count:    {prompt_count} token(s)")
    if prompt_duration > 0:
        lines.append(f"prompt eval duration: {go_duration(prompt_duration)}")
        lines.append(f"prompt eval rate:     {prompt_count / (prompt_duration / 1e9):.2f} tokens/s")
    if count > 0:
        lines.append(f"eval count:           {count} token(s)")
    if duration > 0:
        lines.append(f"eval duration:        {go_duration(duration)}")
        lines.append(f"eval rate:            {count / (duration / 1e9):.2f} tokens/s")
    return "".join(f"{line}\n" for line in lines)


# ---------------------------------------------------------------------------------------------
# the session: one-shot or REPL

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.

"""
HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message

"""
HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template

"""
HELP_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters

"""


def set_parameter(options: dict[str, Any], name: str, values: Sequence[str]) -> str:
    """Type one `/set parameter` like the Modelfile parser does; the reply line, or CliError."""
    name = name.lower()
    if not values:
        raise CliError(f"Usage: /set parameter {name} <value>")
    if name == "stop":
        options["stop"] = list(values)
        return f"Set parameter 'stop' to '{', '.join(values)}'"
    value = " ".join(values)
    if name in modelfile.REFUSED_PARAMETERS:
        raise CliError(f"Couldn't set parameter {name}: {modelfile.REFUSED_PARAMETERS[name]}")
    if name in modelfile.ENGINE_PARAMETERS:
        alias = modelfile.ENGINE_PARAMETERS[name][1]
        raise CliError(
            f"Couldn't set parameter {name}: it is fixed per replica (spec.optimization.{alias}); "
            "change the SLMDeployment to change it"
        )
    kind = modelfile.SAMPLING_PARAMETERS.get(name)
    if kind is None:
        close = modelfile.suggest(name, modelfile.KNOWN_PARAMETERS)
        hint = f" (did you mean {close}?)" if close else ""
        raise CliError(f"Couldn't set parameter: unknown parameter '{name}'{hint}")
    try:
        typed: int | float = int(value) if kind is int else float(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise CliError(f"Couldn't set parameter {name}: it takes {what}, got {value!r}") from None
    options[name] = typed
    return f"Set parameter '{name}' to '{value}'"


def _parameter_lines(parameters: Mapping[str, Any]) -> list[str]:
    return [
        f"{name:<20}{item}"
        for name, value in parameters.items()
        for item in (value if isinstance(value, list) else [value])
    ]


class Repl:
    """Ollama's interactive session over any streams, talking through `chat(messages, options)`."""

    def __init__(
        self,
        chat: ChatFn,
        *,
        stdin: TextIO,
        out: TextIO,
        err: TextIO | None = None,
        obj: Mapping[str, Any] | None = None,
        verbose: bool = False,
        use_readline: bool = False,
    ) -> None:
        self.chat = chat
        self.stdin = stdin
        self.out = out
        self.err = err or out
        self.obj: Mapping[str, Any] = obj or {"metadata": {"name": "model", "namespace": ""}, "spec": {}}
        self.verbose = verbose
        self.use_readline = use_readline
        self.messages: list[Message] = []
        self.options: dict[str, Any] = {}
        self.system: str | None = None

    # -- one answer ------------------------------------------------------------------------

    def ask(self, prompt: str, *, interactive: bool = True) -> bool:
        """Send prompt with the history; stream the answer. False when Ctrl-C cancelled it."""
        messages = list(self.messages)
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        messages.append({"role": "user", "content": prompt})
        answer: list[str] = []
        final: Chunk = {}
        stream = self.chat(messages, dict(self.options))
        try:
            for chunk in stream:
                text = str(getpath(chunk, "message", "content", default="") or "")
                if text:
                    self.out.write(text)
                    self.out.flush()
                    answer.append(text)
                if chunk.get("done"):
                    final = chunk
        except KeyboardInterrupt:
            self.out.write("\n")
            self.out.flush()
            return False
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()  # ends the HTTP response: the runtime stops generating at its next step
        whole = "".join(answer)
        if not whole.endswith("\n"):
            self.out.write("\n")
        if interactive:
            self.out.write("\n")
        self.out.flush()
        if self.verbose and final:
            self.err.write(stats_text(final))
            self.err.flush()
        self.messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": whole},
        ]
        return True

    # -- the loop --------------------------------------------------------------------------

    def _read(self, prompt: str) -> str | None:
        """One line without its newline; None at end of input (Ctrl-D)."""
        if self.use_readline:
            try:
                return input(prompt)
            except EOFError:
                return None
        self.out.write(prompt)
        self.out.flush()
        line = self.stdin.readline()
        if not line:
            return None
        return line.rstrip("\n")

    def _read_message(self) -> str | None:
        """A line, or a \"\"\"multi-line\"\"\" message; None at end of input."""
        line = self._read(">>> ")
        if line is None:
            return None
        if not line.lstrip().startswith('"""'):
            return line
        first = line.lstrip()[3:]
        if first.endswith('"""'):
            return first[:-3]
        lines = [first] if first else []
        while True:
            more = self._read("... ")
            if more is None:
                return "\n".join(lines) if lines else None
            if more.rstrip().endswith('"""'):
                rest = more.rstrip()[:-3]
                if rest:
                    lines.append(rest)
                return "\n".join(lines)
            lines.append(more)

    def run(self) -> None:
        while True:
            try:
                line = self._read_message()
            except KeyboardInterrupt:
                self.out.write("\nUse Ctrl + d or /bye to exit.\n")
                continue
            if line is None:
                self.out.write("\n")
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                try:
                    if not self.command(text):
                        return
                except CliError as error:
                    self.out.write(f"{error.message}\n")
                continue
            self.ask(line)

    def command(self, text: str) -> bool:
        """One /command; False ends the session."""
        words = text.split()
        verb = words[0].lower()
        if verb in ("/bye", "/exit"):
            return False
        if verb in ("/?", "/help"):
            topic = words[1].lower() if len(words) > 1 else ""
            self.out.write({"set": HELP_SET, "show": HELP_SHOW}.get(topic.lstrip("/"), HELP))
        elif verb == "/clear":
            self.messages.clear()
            self.out.write("Cleared session context\n")
        elif verb == "/set":
            self._set(text, words)
        elif verb == "/show":
            self._show(words)
        else:
            self.out.write(f"Unknown command '{words[0]}'. Type /? for help\n")
        return True

    def _set(self, text: str, words: list[str]) -> None:
        what = words[1].lower() if len(words) > 1 else ""
        if what == "parameter":
            if len(words) < 3:
                self.out.write(HELP_PARAMETERS)
                return
            self.out.write(set_parameter(self.options, words[2], words[3:]) + "\n")
        elif what == "system":
            system = text.split(None, 2)[2] if len(words) > 2 else ""
            if len(system) >= 2 and system[0] == system[-1] == '"':
                system = system[1:-1]
            self.system = system
            self.out.write("Set system message.\n")
        else:
            self.out.write(HELP_SET)

    def _show(self, words: list[str]) -> None:
        what = words[1].lower() if len(words) > 1 else ""
        spec = self.obj.get("spec") or {}
        prompt = spec.get("prompt") or {}
        meta = self.obj["metadata"]
        annotations = getpath(self.obj, "metadata", "annotations", default={}) or {}
        if what == "info":
            self.out.write(show_text(self.obj))
        elif what == "modelfile":
            origin = f"SLMDeployment {meta.get('namespace')}/{meta.get('name')}"
            self.out.write(modelfile.render(spec, annotations, origin=origin))
        elif what == "parameters":
            model = _parameter_lines(prompt.get("parameters") or {})
            user = _parameter_lines(self.options)
            if not model and not user:
                self.out.write("No parameters were specified for this model.\n")
            if model:
                self.out.write("Model defined parameters:\n" + "".join(f"{line}\n" for line in model))
            if user:
                self.out.write("User defined parameters:\n" + "".join(f"{line}\n" for line in user))
        elif what == "system":
            system = self.system if self.system is not None else str(prompt.get("system") or "")
            self.out.write(f"{system}\n" if system else "No system message was specified for this model.\n")
        elif what == "template":
            template = str(prompt.get("template") or "")
            self.out.write(
                f"{template}\n" if template else "No prompt template was specified for this model.\n"
            )
        else:
            self.out.write(HELP_SHOW)


# ---------------------------------------------------------------------------------------------
# the command


def one_shot_prompt(words: Sequence[str], stdin: TextIO) -> str | None:
    """The prompt of a one-shot run: stdin (when not a terminal) before the words, like Ollama."""
    parts = list(words)
    if not _is_tty(stdin):
        piped = stdin.read()
        if piped:
            parts.insert(0, piped)
    return " ".join(parts) if parts else None


def cmd_run(
    ctx: Context,
    stdin: TextIO | None = None,
    chat_factory: Callable[[str, str, str | None], OllamaChat] | None = None,
) -> None:
    args = ctx.args
    stdin = stdin or sys.stdin
    obj = resolve(ctx, args.name, yes=args.yes, stdin=stdin)
    meta = obj["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    if not is_ready(obj):
        obj = wait_ready(ctx, namespace, name, args.timeout)
    if not getpath(obj, "spec", "api", "ollama", default=True):
        raise CliError(
            f"{name} does not serve the Ollama API (spec.api.ollama is false): enable it to use `slm run`"
        )
    key = args.api_key or os.environ.get("SLM_API_KEY") or api_key(ctx, obj)
    prompt = one_shot_prompt(args.prompt, stdin)
    factory = chat_factory or (lambda url, model, k: OllamaChat(url, model, k))
    if prompt is None and stdin is sys.stdin and _is_tty(stdin):
        import readline  # noqa: F401  (line editing and history for input())
    with portforward.forward(ctx, obj) as url:
        chat = factory(url, model_label(obj), key)
        try:
            chat.model = chat.served_model()
            repl = Repl(
                chat,
                stdin=stdin,
                out=ctx.out,
                err=ctx.err,
                obj=obj,
                verbose=args.verbose,
                use_readline=stdin is sys.stdin and _is_tty(stdin),
            )
            if prompt is not None:
                if not repl.ask(prompt, interactive=False):
                    raise KeyboardInterrupt
                return
            if not _is_tty(stdin):
                raise CliError("no prompt: give one after NAME, pipe it on stdin, or run in a terminal")
            repl.run()
        finally:
            chat.close()
