"""`slm run`: the REPL over scripted input, the --verbose stats, the port-forward, the API key,
deploy-on-demand over a fake cluster, and one whole one-shot run against a local fake Ollama server."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from slm_operator.cli import portforward, run
from slm_operator.cli.__main__ import build_parser, main
from slm_operator.cli.commands import Context
from slm_operator.cli.errors import CliError

FINAL = {
    "model": "phi4:mini",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "total_duration": 2_345_678_901,
    "load_duration": 12_345_678,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 130_000_000,
    "eval_count": 298,
    "eval_duration": 3_500_000_000,
}
STATS = (
    "total duration:       2.345678901s\n"
    "load duration:        12.345678ms\n"
    "prompt eval count:    26 token(s)\n"
    "prompt eval duration: 130ms\n"
    "prompt eval rate:     200.00 tokens/s\n"
    "eval count:           298 token(s)\n"
    "eval duration:        3.5s\n"
    "eval rate:            85.14 tokens/s\n"
)


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeChat:
    """Answers `answer N` to the Nth request; records what each request carried."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, messages: list[dict[str, str]], options: dict[str, Any]) -> Iterator[dict[str, Any]]:
        self.calls.append(([dict(m) for m in messages], dict(options)))
        number = len(self.calls)
        yield {"message": {"role": "assistant", "content": "answer "}, "done": False}
        if number == self.interrupt_at:
            raise KeyboardInterrupt
        yield {"message": {"role": "assistant", "content": str(number)}, "done": False}
        yield FINAL


OBJ: dict[str, Any] = {
    "apiVersion": "slm.dev/v1alpha1",
    "kind": "SLMDeployment",
    "metadata": {"name": "assistant", "namespace": "ai", "generation": 1},
    "spec": {
        "model": {"name": "phi4:mini"},
        "replicas": 1,
        "prompt": {
            "system": "You are terse.",
            "parameters": {"temperature": 0.7, "stop": ["<|end|>", "<|user|>"]},
        },
    },
    "status": {
        "readyReplicas": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "observedGeneration": 1}],
    },
}


def repl(script: str, chat: FakeChat, verbose: bool = False) -> tuple[run.Repl, str]:
    out = io.StringIO()
    session = run.Repl(chat, stdin=io.StringIO(script), out=out, obj=OBJ, verbose=verbose)
    session.run()
    return session, out.getvalue()


# ---------------------------------------------------------------------------------------------
# the REPL


def test_repl_keeps_history_and_sets_parameters_and_system() -> None:
    chat = FakeChat()
    script = (
        "/set parameter temperature 0.2\n"
        "/set parameter top_k 20\n"
        "/set parameter stop <a> <b>\n"
        "/set system Answer in French.\n"
        "hello\n"
        "again\n"
        "/bye\n"
        "never sent\n"
    )
    session, out = repl(script, chat)
    assert out == (
        ">>> Set parameter 'temperature' to '0.2'\n"
        ">>> Set parameter 'top_k' to '20'\n"
        ">>> Set parameter 'stop' to '<a>, <b>'\n"
        ">>> Set system message.\n"
        ">>> answer 1\n\n"
        ">>> answer 2\n\n"
        ">>> "
    )
    options = {"temperature": 0.2, "top_k": 20, "stop": ["<a>", "<b>"]}
    system = {"role": "system", "content": "Answer in French."}
    assert chat.calls == [
        ([system, {"role": "user", "content": "hello"}], options),
        (
            [
                system,
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "answer 1"},
                {"role": "user", "content": "again"},
            ],
            options,
        ),
    ]
    assert isinstance(chat.calls[0][1]["temperature"], float)
    assert isinstance(chat.calls[0][1]["top_k"], int)
    assert len(session.messages) == 4


def test_repl_clear_multiline_and_end_of_input() -> None:
    chat = FakeChat()
    script = 'first\n/clear\n"""Line one\nline two\n  indented"""\n"""single"""\n'
    _, out = repl(script, chat)
    assert out == (
        ">>> answer 1\n\n>>> Cleared session context\n>>> ... ... answer 2\n\n>>> answer 3\n\n>>> \n"
    )
    assert chat.calls[1][0] == [{"role": "user", "content": "Line one\nline two\n  indented"}]
    assert chat.calls[2][0] == [
        {"role": "user", "content": "Line one\nline two\n  indented"},
        {"role": "assistant", "content": "answer 2"},
        {"role": "user", "content": "single"},
    ]


def test_repl_ctrl_c_cancels_the_answer_and_keeps_it_out_of_the_history() -> None:
    chat = FakeChat(interrupt_at=1)
    _, out = repl("hello\nagain\n/bye\n", chat)
    assert out == ">>> answer \n>>> answer 2\n\n>>> "
    assert chat.calls[1][0] == [{"role": "user", "content": "again"}]


def test_repl_show() -> None:
    chat = FakeChat()
    script = (
        "/show parameters\n/set parameter seed 42\n/show parameters\n/show system\n"
        "/set system Be brief.\n/show system\n/show template\n/show modelfile\n/show info\n/show\n/bye\n"
    )
    _, out = repl(script, chat)
    assert chat.calls == []
    blocks = out.split(">>> ")
    assert blocks[1] == (
        "Model defined parameters:\n"
        "temperature         0.7\n"
        "stop                <|end|>\n"
        "stop                <|user|>\n"
    )
    assert blocks[2] == "Set parameter 'seed' to '42'\n"
    assert blocks[3].endswith("User defined parameters:\nseed                42\n")
    assert blocks[4] == "You are terse.\n"
    assert blocks[6] == "Be brief.\n"
    assert blocks[7] == "No prompt template was specified for this model.\n"
    assert "FROM phi4:mini" in blocks[8] and 'SYSTEM """You are terse."""' in blocks[8]
    assert "  Model\n    name                phi4:mini\n" in blocks[9]
    assert blocks[10] == run.HELP_SHOW


def test_repl_help_unknown_commands_and_refused_parameters() -> None:
    _, out = repl(
        "/?\n/? set\n/foo\n/set parameter\n/set parameter temprature 1\n/set parameter num_ctx 8192\n"
        "/set parameter mirostat 1\n/set parameter top_k high\n/bye\n",
        FakeChat(),
    )
    blocks = out.split(">>> ")
    assert blocks[1] == run.HELP
    assert blocks[2] == run.HELP_SET
    assert blocks[3] == "Unknown command '/foo'. Type /? for help\n"
    assert blocks[4] == run.HELP_PARAMETERS
    assert blocks[5] == "Couldn't set parameter: unknown parameter 'temprature' (did you mean temperature?)\n"
    assert blocks[6].startswith(
        "Couldn't set parameter num_ctx: it is fixed per replica (spec.optimization.maxContext)"
    )
    assert blocks[7].startswith("Couldn't set parameter mirostat: the runtime does not implement Mirostat")
    assert blocks[8] == "Couldn't set parameter top_k: it takes an integer, got 'high'\n"


def test_verbose_prints_ollamas_stats_after_each_answer() -> None:
    _, out = repl("hi\n/bye\n", FakeChat(), verbose=True)
    assert out == ">>> answer 1\n\n" + STATS + ">>> "


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (800, "800ns"),
        (1_500, "1.5µs"),
        (12_345_678, "12.345678ms"),
        (1_000_000_000, "1s"),
        (2_345_678_901, "2.345678901s"),
        (123_500_000_000, "2m3.5s"),
        (3_600_000_000_000, "1h0m0s"),
    ],
)
def test_go_duration(ns: int, text: str) -> None:
    assert run.go_duration(ns) == text


def test_stats_leave_out_what_the_chunk_lacks() -> None:
    assert run.stats_text(FINAL) == STATS
    assert run.stats_text({"done": True, "eval_count": 3}) == "eval count:           3 token(s)\n"


def test_one_shot_prompt_reads_piped_stdin_first() -> None:
    assert run.one_shot_prompt(["Explain", "this"], io.StringIO("some code\n")) == "some code\n Explain this"
    assert run.one_shot_prompt([], io.StringIO("only stdin")) == "only stdin"
    assert run.one_shot_prompt([], TTY("")) is None
    assert run.one_shot_prompt(["hi"], TTY("ignored")) == "hi"


# ---------------------------------------------------------------------------------------------
# kubectl port-forward


def test_port_forward_command() -> None:
    assert portforward.port_forward_command("/bin/kubectl", "ai", "assistant", 8080) == [
        "/bin/kubectl",
        "port-forward",
        "-n",
        "ai",
        "svc/assistant",
        ":8080",
    ]
    assert portforward.port_forward_command("k", "ai", "a", 80, kubeconfig="/kc", context="c")[:5] == [
        "k",
        "--kubeconfig",
        "/kc",
        "--context",
        "c",
    ]


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_find_kubectl_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = script(tmp_path / "mine", "")
    env = script(tmp_path / "env-kubectl", "")
    monkeypatch.setenv("SLM_KUBECTL", str(env))
    assert portforward.find_kubectl(str(explicit), None) == str(explicit)
    assert portforward.find_kubectl(None, None) == str(env)
    monkeypatch.delenv("SLM_KUBECTL")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    bins = tmp_path / "bins"
    bins.mkdir()
    beside = script(bins / "kubectl", "")
    state = tmp_path / "state"
    state.mkdir()
    (state / "cluster.json").write_text(json.dumps({"bin_dir": str(bins)}))
    assert portforward.find_kubectl(None, str(state / "kubeconfig")) == str(beside)
    with pytest.raises(CliError, match="--kubectl PATH"):
        portforward.find_kubectl(None, str(tmp_path / "nowhere" / "kubeconfig"))
    with pytest.raises(CliError, match="not an executable"):
        portforward.find_kubectl(str(tmp_path / "missing"), None)


def test_port_forward_reads_the_local_port_and_stops_kubectl(tmp_path: Path) -> None:
    fake = script(
        tmp_path / "kubectl",
        'echo "Forwarding from 127.0.0.1:43210 -> 8080"\necho "Forwarding from [::1]:43210 -> 8080"\n'
        "exec sleep 60\n",
    )
    with portforward.PortForward([str(fake), "port-forward"]) as forward:
        assert forward.local_port == 43210
        assert forward.url == "http://127.0.0.1:43210"
        process = forward._process
        assert process is not None and process.poll() is None
    assert process.poll() is not None


def test_port_forward_failure_is_one_line(tmp_path: Path) -> None:
    fake = script(tmp_path / "kubectl", "echo 'error: services \"x\" not found' >&2\nexit 1\n")
    expected = r'kubectl port-forward failed \(error: services "x" not found\)'
    with pytest.raises(CliError, match=expected), portforward.PortForward([str(fake)]):
        pass


# ---------------------------------------------------------------------------------------------
# the API key


class FakeCore:
    def __init__(self, secrets: dict[str, dict[str, str]], status: int = 0) -> None:
        self.secrets = secrets
        self.status = status

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> Any:
        if self.status:
            raise ApiException(status=self.status, reason="Forbidden")
        if name not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[name].items()}
        return type("Secret", (), {"data": data})()


class FakeKube:
    def __init__(
        self, objects: dict[str, dict[str, Any]] | None = None, core: FakeCore | None = None
    ) -> None:
        self.namespace = "ai"
        self.objects = objects or {}
        self.core = core or FakeCore({})
        self.applied: list[dict[str, Any]] = []
        self.scaled: list[tuple[str, int]] = []
        self.gets: dict[str, list[dict[str, Any]]] = {}

    def find_slm(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def get_slm(self, namespace: str, name: str) -> dict[str, Any]:
        queue = self.gets.get(name)
        if queue:
            return queue.pop(0) if len(queue) > 1 else queue[0]
        return self.objects[name]

    def list_slm(self, namespace: str | None) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def apply_slm(self, body: dict[str, Any], force: bool = False) -> dict[str, Any]:
        self.applied.append(body)
        self.objects[body["metadata"]["name"]] = body
        return body

    def scale_slm(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        self.scaled.append((name, replicas))
        self.objects[name]["spec"]["replicas"] = replicas
        return {}


def context(kube: FakeKube, *argv: str) -> tuple[Context, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(["run", *argv])
    ctx = Context(args=args, out=out, err=err, kube_factory=lambda _: kube, sleep=lambda _: None)  # type: ignore[arg-type,return-value]
    return ctx, out, err


def with_key(obj: dict[str, Any]) -> dict[str, Any]:
    keyed: dict[str, Any] = json.loads(json.dumps(obj))
    keyed["spec"]["api"] = {"apiKeySecretRef": {"name": "llm-key", "key": "token"}}
    return keyed


def test_api_key_from_the_secret_and_a_forbidden_secret() -> None:
    ctx, _, _ = context(FakeKube(core=FakeCore({"llm-key": {"token": "s3cret\n"}})), "assistant")
    assert run.api_key(ctx, OBJ) is None
    assert run.api_key(ctx, with_key(OBJ)) == "s3cret"
    ctx, _, _ = context(FakeKube(core=FakeCore({}, status=403)), "assistant")
    with pytest.raises(CliError) as caught:
        run.api_key(ctx, with_key(OBJ))
    assert caught.value.message == (
        "the model's API needs the key in Secret ai/llm-key (key token), and you cannot read it: "
        "you need RBAC `get secrets` in that namespace, or pass the key with --api-key"
    )
    ctx, _, _ = context(FakeKube(core=FakeCore({"llm-key": {"other": "x"}})), "assistant")
    with pytest.raises(CliError, match="has no key 'token' \\(it has other\\)"):
        run.api_key(ctx, with_key(OBJ))


# ---------------------------------------------------------------------------------------------
# finding or deploying the model, waiting for Ready


def test_resolve_an_existing_deployment_and_start_a_stopped_one() -> None:
    stopped = json.loads(json.dumps(OBJ))
    stopped["spec"]["replicas"] = 0
    kube = FakeKube({"assistant": stopped})
    ctx, _, err = context(kube, "assistant")
    obj = run.resolve(ctx, "assistant", yes=False, stdin=io.StringIO())
    assert obj["spec"]["replicas"] == 1 and kube.scaled == [("assistant", 1)]
    assert err.getvalue() == "starting assistant: scaling it to 1 replica\n"


def test_resolve_deploys_a_catalog_model_on_demand() -> None:
    kube = FakeKube()
    ctx, _, _ = context(kube, "phi4:mini")
    with pytest.raises(CliError) as caught:
        run.resolve(ctx, "phi4:mini", yes=False, stdin=io.StringIO())
    assert "rerun with --yes to deploy it as SLMDeployment phi4-mini" in caught.value.message
    assert kube.applied == []

    ctx, _, err = context(kube, "phi4:mini")
    with pytest.raises(CliError, match="not deployed"):
        run.resolve(ctx, "phi4:mini", yes=False, stdin=TTY("n\n"))
    assert err.getvalue().endswith("deploy phi4:mini now as SLMDeployment phi4-mini? [y/N] ")

    ctx, _, err = context(kube, "phi4:mini")
    obj = run.resolve(ctx, "phi4:mini", yes=False, stdin=TTY("y\n"))
    assert obj["metadata"] == {"name": "phi4-mini", "namespace": "ai"}
    assert obj["spec"]["model"]["name"] == "phi4:mini"
    assert "replicas" not in obj["spec"]  # the default: 1
    # The next run finds it under the derived name, without asking.
    ctx, _, _ = context(kube, "phi4:mini")
    assert run.resolve(ctx, "phi4:mini", yes=False, stdin=io.StringIO()) is obj
    assert len(kube.applied) == 1

    ctx, _, _ = context(kube, "nothing-like-it")
    with pytest.raises(CliError, match="not found in namespace ai"):
        run.resolve(ctx, "nothing-like-it", yes=True, stdin=io.StringIO())


def test_wait_ready_shows_one_line_per_change_and_times_out() -> None:
    pending = json.loads(json.dumps(OBJ))
    pending["status"] = {
        "conditions": [{"type": "Placed", "status": "True", "observedGeneration": 1}],
        "cache": {"bytesDownloaded": 500, "totalBytes": 1000},
    }
    pending["status"]["conditions"].append(
        {"type": "ModelCached", "status": "False", "reason": "Downloading"}
    )
    kube = FakeKube({"assistant": OBJ})
    kube.gets["assistant"] = [pending, pending, OBJ]
    ctx, _, err = context(kube, "assistant")
    assert run.wait_ready(ctx, "ai", "assistant", 60) is OBJ
    assert (
        err.getvalue()
        == "waiting for assistant: ModelCached Downloading, 50% of 1.0 KB (0/1 replicas ready)\n"
    )

    kube.gets["assistant"] = [pending]
    ctx, _, _ = context(kube, "assistant")
    with pytest.raises(CliError, match=r"is not Ready after 0s .*--timeout.*slm why assistant"):
        run.wait_ready(ctx, "ai", "assistant", 0)


def test_run_errors_are_one_line() -> None:
    code = main(["run", "phi4:mini", "--kubeconfig", "/nonexistent/kubeconfig"], err=(err := io.StringIO()))
    assert code == 1 and err.getvalue().count("\n") == 1


# ---------------------------------------------------------------------------------------------
# one whole one-shot run: fake cluster, fake kubectl, a local fake Ollama server


class FakeOllama(BaseHTTPRequestHandler):
    """Ollama's /api/tags and a streaming /api/chat; needs `Bearer key` when key is set."""

    requests: list[tuple[str, str, dict[str, Any]]] = []
    key: str | None = "s3cret"

    def log_message(self, *_: Any) -> None:
        pass

    def _auth(self) -> bool:
        if self.key is not None and self.headers.get("Authorization") != f"Bearer {self.key}":
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "unauthorized"}')
            return False
        return True

    def do_GET(self) -> None:
        if not self._auth():
            return
        body = json.dumps({"models": [{"name": "phi4:mini", "model": "phi4:mini"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length))
        FakeOllama.requests.append((self.path, self.headers.get("Authorization", ""), payload))
        if not self._auth():
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        for word in ["Quantum ", "computing ", "uses ", "qubits."]:
            chunk = {"model": "phi4:mini", "message": {"role": "assistant", "content": word}, "done": False}
            self.wfile.write(json.dumps(chunk).encode() + b"\n")
            self.wfile.flush()
        self.wfile.write(json.dumps(FINAL).encode() + b"\n")
        self.close_connection = True


@contextlib.contextmanager
def fake_ollama(key: str | None = "s3cret") -> Iterator[int]:
    """A fake Ollama on 127.0.0.1; yields its port."""
    FakeOllama.requests = []
    FakeOllama.key = key
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def fake_kubectl(folder: Path, port: int) -> tuple[Path, Path]:
    """A kubectl that records its arguments and 'forwards' to the local port."""
    log = folder / "kubectl-args"
    return script(
        folder / "kubectl",
        f'echo "$@" > {log}\necho "Forwarding from 127.0.0.1:{port} -> 8080"\nexec sleep 60\n',
    ), log


@pytest.fixture
def ollama() -> Iterator[int]:
    with fake_ollama() as port:
        yield port


def test_one_shot_run_streams_the_answer(ollama: int, tmp_path: Path) -> None:
    fake, log = fake_kubectl(tmp_path, ollama)
    kube = FakeKube({"assistant": with_key(OBJ)}, core=FakeCore({"llm-key": {"token": "s3cret"}}))
    ctx, out, err = context(
        kube, "assistant", "Explain", "quantum", "computing", "--verbose", "--kubectl", str(fake)
    )
    run.cmd_run(ctx, stdin=TTY(""))
    assert out.getvalue() == "Quantum computing uses qubits.\n"
    assert err.getvalue() == STATS
    assert log.read_text().split() == ["port-forward", "-n", "ai", "svc/assistant", ":8080"]
    [(path, auth, payload)] = FakeOllama.requests
    assert (path, auth) == ("/api/chat", "Bearer s3cret")
    assert payload == {
        "model": "phi4:mini",
        "messages": [{"role": "user", "content": "Explain quantum computing"}],
        "stream": True,
    }

    # A wrong --api-key is one line naming the key.
    FakeOllama.requests = []
    ctx, out, err = context(kube, "assistant", "hi", "--api-key", "wrong", "--kubectl", str(fake))
    with pytest.raises(CliError, match="refused the key \\(HTTP 401: unauthorized\\): check --api-key"):
        run.cmd_run(ctx, stdin=TTY(""))

    # Piped stdin is the prompt when none is given.
    FakeOllama.requests = []
    ctx, out, _ = context(kube, "assistant", "--kubectl", str(fake))
    run.cmd_run(ctx, stdin=io.StringIO("from a pipe"))
    assert FakeOllama.requests[0][2]["messages"] == [{"role": "user", "content": "from a pipe"}]
