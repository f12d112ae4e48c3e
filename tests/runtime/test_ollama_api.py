"""The Ollama API through the real `ollama` client against a served tiny GGUF."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import ollama
import pytest

from slm_runtime.backends.grammars import Grammar, GrammarCache
from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "tiny:latest"


@pytest.fixture(scope="module")
def client(gguf_server: RunningServer) -> ollama.Client:
    return ollama.Client(host=gguf_server.url, timeout=120)


def test_root_and_version(gguf_server: RunningServer) -> None:
    root = httpx.get(gguf_server.url + "/")
    assert root.status_code == 200
    assert root.text == "Ollama is running"
    version = httpx.get(gguf_server.url + "/api/version").json()
    assert isinstance(version["version"], str)
    assert version["version"]


def test_generate_counts_and_durations(client: ollama.Client) -> None:
    result = client.generate(model=MODEL, prompt="hello", options={"num_predict": 12})
    assert result.done is True
    assert result.done_reason == "length"
    assert result.eval_count == 12
    assert result.prompt_eval_count is not None
    assert result.prompt_eval_count > 3
    assert result.total_duration is not None
    assert result.eval_duration is not None
    # Nanoseconds: the whole request takes more than a microsecond and less than a minute.
    assert 1_000 < result.total_duration < 60_000_000_000
    assert result.eval_duration <= result.total_duration
    assert isinstance(result.response, str)
    assert result.context is not None
    assert len(result.context) == result.prompt_eval_count + 12


def test_generate_is_deterministic_at_temperature_zero(client: ollama.Client) -> None:
    first = client.generate(model=MODEL, prompt="same", options={"num_predict": 10})
    second = client.generate(model=MODEL, prompt="same", options={"num_predict": 10})
    assert first.response == second.response


def test_seed_makes_sampling_reproducible(client: ollama.Client) -> None:
    options = {"temperature": 1.0, "seed": 1234, "num_predict": 16, "top_k": 0, "top_p": 1.0}
    first = client.generate(model=MODEL, prompt="seeded", options=options)
    second = client.generate(model=MODEL, prompt="seeded", options=options)
    other = client.generate(model=MODEL, prompt="seeded", options={**options, "seed": 99})
    assert first.response == second.response
    assert first.context != other.context


def test_generate_streams_ndjson(gguf_server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        gguf_server.url + "/api/generate",
        json={"model": MODEL, "prompt": "stream", "options": {"num_predict": 8}},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(not line["done"] for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True
    assert final["response"] == ""
    assert final["eval_count"] == 8
    assert {"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"} <= final.keys()


def test_stop_string_cuts_output(client: ollama.Client) -> None:
    full = client.generate(model=MODEL, prompt="stopper", options={"num_predict": 24}).response or ""
    printable = [
        i for i in range(2, len(full) - 2) if full[i : i + 2].isprintable() and full[i : i + 2].strip()
    ]
    assert printable, f"no printable pair to stop on in {full!r}"
    stop = full[printable[0] : printable[0] + 2]
    cut = client.generate(model=MODEL, prompt="stopper", options={"num_predict": 24, "stop": [stop]})
    assert cut.response == full[: full.index(stop)]
    assert cut.done_reason == "stop"


def test_chat_and_stream(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "hi"}]
    whole = client.chat(model=MODEL, messages=messages, options={"num_predict": 10})
    assert whole.message.role == "assistant"
    assert whole.eval_count == 10
    parts = list(client.chat(model=MODEL, messages=messages, options={"num_predict": 10}, stream=True))
    assert parts[-1].done is True
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_system_prompt_is_applied(client: ollama.Client) -> None:
    with_default = client.generate(model=MODEL, prompt="x", options={"num_predict": 1})
    with_other = client.generate(
        model=MODEL, prompt="x", system="Another system prompt", options={"num_predict": 1}
    )
    assert with_default.prompt_eval_count != with_other.prompt_eval_count


def test_default_parameters_apply(client: ollama.Client) -> None:
    # The server's default_parameters set num_predict 16.
    assert client.generate(model=MODEL, prompt="defaults").eval_count == 16


def test_format_json_schema_is_enforced(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    result = client.generate(model=MODEL, prompt="answer", format=schema, options={"num_predict": 64})
    parsed = json.loads(result.response or "")
    assert isinstance(parsed["ok"], bool)
    assert set(parsed) == {"ok"}


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    result = client.embed(model=MODEL, input=["one", "two"])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == 256
    norm = sum(x * x for x in result.embeddings[0]) ** 0.5
    assert norm == pytest.approx(1.0, abs=1e-3)
    assert result.embeddings[0] != result.embeddings[1]
    legacy = client.embeddings(model=MODEL, prompt="one")
    assert legacy.embedding == pytest.approx(result.embeddings[0], abs=1e-5)
    short = client.embed(model=MODEL, input="one", dimensions=32)
    assert len(short.embeddings[0]) == 32


def test_tags_show_ps(client: ollama.Client) -> None:
    tags = client.list()
    assert [m.model for m in tags.models] == [MODEL]
    assert tags.models[0].details is not None
    assert tags.models[0].details.format == "gguf"
    assert tags.models[0].details.family == "llama"
    assert tags.models[0].details.quantization_level == "F16"
    shown = client.show(MODEL)
    assert shown.modelinfo is not None
    assert shown.modelinfo["llama.embedding_length"] == 256
    assert shown.modelinfo["llama.block_count"] == 2
    assert "completion" in (shown.capabilities or [])
    assert "[assistant]" in (shown.template or "")
    assert "num_predict 16" in (shown.parameters or "")
    assert shown.modelfile is not None
    assert 'SYSTEM """You are tiny."""' in shown.modelfile
    running = client.ps()
    assert running.models[0].model == MODEL
    assert running.models[0].context_length == 1024


def test_load_and_unload_requests(gguf_server: RunningServer) -> None:
    loaded = httpx.post(gguf_server.url + "/api/generate", json={"model": MODEL}).json()
    assert loaded["done_reason"] == "load"
    unloaded = httpx.post(
        gguf_server.url + "/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0}
    )
    assert unloaded.json()["done_reason"] == "unload"


def test_model_name_without_tag_is_accepted(client: ollama.Client) -> None:
    assert client.generate(model="tiny", prompt="x", options={"num_predict": 1}).eval_count == 1


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ({"prompt": "x"}, 400, "model is required"),
        ({"model": MODEL, "prompt": "x", "options": {"temperature": "hot"}}, 400, "temperature"),
        ({"model": MODEL, "prompt": "x", "keep_alive": "forever"}, 400, "keep_alive"),
        ({"model": MODEL, "prompt": "x", "format": "yaml"}, 400, "format"),
        ({"model": MODEL, "prompt": "x", "images": ["aGk="]}, 400, "images"),
        ({"model": MODEL, "prompt": 5}, 400, "prompt"),
        ({"model": MODEL, "prompt": "x", "format": {"type": "nonsense-type"}}, 400, "schema"),
    ],
)
def test_generate_errors_are_ollama_shaped(
    gguf_server: RunningServer, body: dict[str, object], status: int, fragment: str
) -> None:
    response = httpx.post(gguf_server.url + "/api/generate", json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert fragment in response.json()["error"]


def test_client_raises_response_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model="missing:1b", prompt="x")
    assert caught.value.status_code == 404


def test_malformed_json_is_400(gguf_server: RunningServer) -> None:
    response = httpx.post(
        gguf_server.url + "/api/chat", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "error" in response.json()


def test_bad_message_role_is_400(gguf_server: RunningServer) -> None:
    response = httpx.post(
        gguf_server.url + "/api/chat", json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}
    )
    assert response.status_code == 400
    assert "role" in response.json()["error"]


def test_oversized_body_is_413(gguf_server: RunningServer) -> None:
    response = httpx.post(gguf_server.url + "/api/generate", json={"model": MODEL, "prompt": "x" * (2 << 20)})
    assert response.status_code == 413
    assert "too large" in response.json()["error"]


def test_prompt_longer_than_context_is_400(gguf_server: RunningServer) -> None:
    response = httpx.post(
        gguf_server.url + "/api/generate", json={"model": MODEL, "prompt": "y" * 3000, "raw": True}
    )
    assert response.status_code == 400
    assert "context window" in response.json()["error"]


def test_unknown_route_is_404_json(gguf_server: RunningServer) -> None:
    response = httpx.get(gguf_server.url + "/api/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_oversized_chunked_body_is_413(gguf_server: RunningServer) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(
        gguf_server.url + "/api/generate", content=body(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize("content", [b"[]", b"\xff\xfe", b'{"model": "tiny", "prompt": "x", "options": 3}'])
def test_wrong_json_shapes_are_400(gguf_server: RunningServer, content: bytes) -> None:
    response = httpx.post(
        gguf_server.url + "/api/generate", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_body_is_json_whatever_the_declared_type(
    gguf_server: RunningServer, content_type: str | None
) -> None:
    """`curl -d '{...}'` declares a form; Ollama reads JSON anyway, and so do we."""
    body = json.dumps({"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(gguf_server.url + "/api/generate", content=body.encode(), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["eval_count"] == 2


async def test_bad_context_token_is_400_and_spares_a_running_stream(gguf_server: RunningServer) -> None:
    """An out-of-range id in `context` is refused at the edge; a concurrent stream is untouched."""
    vocab = gguf_server.runtime.require_backend().details.vocab_size
    good = {"model": MODEL, "prompt": "keep going", "options": {"num_predict": 200}}
    async with (
        httpx.AsyncClient(timeout=120) as http,
        http.stream("POST", gguf_server.url + "/api/generate", json=good) as stream,
    ):
        lines = stream.aiter_lines()
        first = json.loads(await anext(lines))
        assert first["done"] is False
        for bad_context in ([-5], [1, vocab], [2**40]):
            bad = await http.post(
                gguf_server.url + "/api/generate",
                json={"model": MODEL, "prompt": "x", "context": bad_context, "stream": True},
            )
            assert bad.status_code == 400
            assert set(bad.json()) == {"error"}
            assert "context" in bad.json()["error"]
        rest = [json.loads(line) async for line in lines if line]
    assert "error" not in rest[-1]
    assert rest[-1]["done"] is True
    assert rest[-1]["eval_count"] == 200


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"repeat_last_n": -2}, "repeat_last_n"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("inf")}, "top_p"),
    ],
)
def test_out_of_range_options_are_400(
    gguf_server: RunningServer, options: dict[str, float], fragment: str
) -> None:
    body = json.dumps(
        {"model": MODEL, "prompt": "x", "options": options}
    )  # NaN/Infinity as Python writes them
    response = httpx.post(
        gguf_server.url + "/api/generate", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert fragment in response.json()["error"]


def test_huge_numeric_options_are_clamped(client: ollama.Client) -> None:
    """Values that would allocate per their size (a 2^28-token penalty window) run clamped to the context."""
    options = {
        "repeat_last_n": 2**28,
        "repeat_penalty": 1.1,
        "top_k": 2**40,
        "seed": 2**70,
        "num_predict": 3,
    }
    result = client.generate(model=MODEL, prompt="clamp", options=options)
    assert result.eval_count == 3
    every = client.generate(model=MODEL, prompt="clamp", options={**options, "repeat_last_n": -1})
    assert every.eval_count == 3


@pytest.mark.parametrize(
    ("stop", "fragment"),
    [(["s"] * 17, "at most 16"), (["x" * 257], "at most 256 characters")],
)
def test_stop_lists_are_capped(gguf_server: RunningServer, stop: list[str], fragment: str) -> None:
    response = httpx.post(
        gguf_server.url + "/api/generate", json={"model": MODEL, "prompt": "x", "options": {"stop": stop}}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert "stop" in response.json()["error"]
    assert fragment in response.json()["error"]
    fine = httpx.post(
        gguf_server.url + "/api/generate",
        json={
            "model": MODEL,
            "prompt": "x",
            "stream": False,
            "options": {"stop": ["s"] * 16, "num_predict": 2},
        },
    )
    assert fine.status_code == 200


def test_oversized_format_schema_is_400(gguf_server: RunningServer) -> None:
    schema = {"type": "object", "description": "x" * (64 * 1024)}
    response = httpx.post(
        gguf_server.url + "/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "format": schema},
    )
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert "format" in response.json()["error"]


def test_rejected_grammar_is_not_dumped_to_stderr(
    gguf_server: RunningServer, capfd: pytest.CaptureFixture[str]
) -> None:
    # A pattern escaping its end anchor (`^\$`) converts to GBNF that llama.cpp's parser rejects; the
    # properties make that grammar large, which llama.cpp used to print whole to fd 2.
    properties: dict[str, object] = {f"field_{i:04d}": {"type": "string"} for i in range(400)}
    properties["bad"] = {"type": "string", "pattern": "^\\$"}
    schema = {"type": "object", "properties": properties, "required": ["bad"]}
    capfd.readouterr()
    for _ in range(2):  # the second time comes from the cache of compiled schemas
        response = httpx.post(
            gguf_server.url + "/api/generate", json={"model": MODEL, "prompt": "x", "format": schema}
        )
        assert response.status_code == 400
        assert "schema" in response.json()["error"]
        assert len(response.json()["error"]) < 500
    err = capfd.readouterr().err
    assert "field_0399" not in err
    assert len(err) < 2000


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/pull"),
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
    ],
)
def test_model_management_says_the_cluster_manages_models(
    gguf_server: RunningServer, method: str, path: str
) -> None:
    response = httpx.request(method, gguf_server.url + path, json={"model": "other:latest"})
    assert response.status_code == 501
    assert response.json() == {
        "error": "models are managed by the cluster: change the SLMDeployment's spec.model "
        "(kubectl edit slm NAME) instead"
    }


def test_client_pull_raises_the_cluster_message(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("other:latest")
    assert caught.value.status_code == 501
    assert "spec.model" in caught.value.error
    with pytest.raises(ollama.ResponseError) as deleted:
        client.delete(MODEL)
    assert deleted.value.status_code == 501


def test_grammars_compile_off_the_event_loop_once_per_schema(
    gguf_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled_on: list[str] = []
    compile_schema = GrammarCache._compile

    def recording(self: GrammarCache, key: str) -> Grammar | str:
        compiled_on.append(threading.current_thread().name)
        return compile_schema(self, key)

    monkeypatch.setattr(GrammarCache, "_compile", recording)
    schema = {
        "type": "object",
        "properties": {"only_here_7f3a": {"type": "integer"}},
        "required": ["only_here_7f3a"],
    }
    for _ in range(2):
        response = httpx.post(
            gguf_server.url + "/api/generate",
            json={
                "model": MODEL,
                "prompt": "x",
                "format": schema,
                "stream": False,
                "options": {"num_predict": 3},
            },
        )
        assert response.status_code == 200, response.text
    assert len(compiled_on) == 1  # the second request and the worker found it cached
    assert not compiled_on[0].startswith("uvicorn")  # the server's event loop runs on that thread
