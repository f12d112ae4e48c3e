"""Benchmark: slm-runtime vs raw llama-cpp-python `Llama`, `python -m llama_cpp.server` and llama.cpp's
own `llama-server`, same model, same client; `llama-batched-bench` gives the decode ceiling.

Past 400 lines: one standalone script (five columns' launchers, the client, the report), run by hand.

Not a test: it prints figures measured side by side in one run, and their ratios against the goals.

    hack/build-llama-server.sh          # once: llama-server and llama-batched-bench (cached)
    .venv/bin/python benchmarks/runtime_bench.py --preset anchor336m --n-predict 64 --streams 4 8

The model is generated (random weights, llama shape, Q4_K_M) and cached in --workdir. Greedy
decoding never emits a special token on these models, so every request produces exactly
--n-predict tokens (checked against each server's usage where it reports one). The servers run
at once and the runs interleave (round by round, in a rotating order), so drifting load on a
shared machine hits every column alike. llama-cpp-python's server needs the extras
`sse-starlette starlette-context`; without them that column is skipped, as is llama-server's
when its binaries are not built.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import json
import multiprocessing
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from slm_runtime.testing.tiny_models import write_tiny_gguf

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_embd": 256, "n_ff": 512, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "n_vocab": 259},
    # The shape of perf-anchors.md (336 M parameters, 198 MiB at Q4_K_M).
    "anchor336m": {
        "n_embd": 1024,
        "n_ff": 2816,
        "n_layers": 24,
        "n_heads": 16,
        "n_kv_heads": 4,
        "n_vocab": 32000,
    },
    # Qwen2.5-0.5B's shape (n_embd 896 is not a multiple of 256: some rows fall back from Q4_K).
    "qwen05b": {
        "n_embd": 896,
        "n_ff": 4864,
        "n_layers": 24,
        "n_heads": 14,
        "n_kv_heads": 2,
        "n_vocab": 32000,
    },
}
SENTENCE = "The quick brown fox jumps over the lazy dog. "
LLAMA_SERVER_CACHE = Path.home() / ".cache" / "slm-operator" / "llama-server"
_PROMPT_IDS = itertools.count(random.randrange(10**6))


def unique_prompt(length: int) -> str:
    """A prompt no cache has seen (so every run pays for its prefill, as fresh requests do): a
    number, then `length` characters of text. The generated models' vocabulary spells text byte
    by byte, so the prompt is about length + 8 tokens."""
    return f"{next(_PROMPT_IDS)} {(SENTENCE * (length // len(SENTENCE) + 1))[:length]}"


@dataclass
class Run:
    ttft: list[float]
    wall: float
    tokens: int
    prompt_tokens: list[int] = field(default_factory=list)  # as the server counted them

    @property
    def aggregate(self) -> float:
        return self.tokens / self.wall


@dataclass
class Column:
    """One server's runs at each stream count."""

    name: str
    runs: dict[int, list[Run]] = field(default_factory=dict)

    def add(self, streams: int, run: Run) -> None:
        self.runs.setdefault(streams, []).append(run)

    def best(self, streams: int) -> float:
        """The fastest run: on a shared machine, noise only ever slows a run down."""
        return max(run.aggregate for run in self.runs[streams])

    def median_rate(self, streams: int) -> float:
        return statistics.median(run.aggregate for run in self.runs[streams])

    def ttft(self, streams: int, quantile: float) -> float:
        """Over every request of every run at this stream count."""
        values = sorted(t for run in self.runs[streams] for t in run.ttft)
        return values[min(len(values) - 1, round(quantile * (len(values) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_RAW: Any = None  # the child process's Llama, loaded once


def raw_run(model: Path, n_predict: int, threads: int, context: int, prompt_length: int, flash: str) -> Run:
    """One streamed completion through llama-cpp-python's `Llama`, in process (no HTTP)."""
    global _RAW
    from llama_cpp import Llama

    if _RAW is None:
        _RAW = Llama(
            str(model),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=flash != "off",  # a bool here; llama.cpp's "auto" turns it on for CPU models
            verbose=False,
        )
        _RAW.create_completion(unique_prompt(prompt_length), max_tokens=4, temperature=0)  # warm up
    started = time.perf_counter()
    first = 0.0
    chunks = _RAW.create_completion(
        unique_prompt(prompt_length), max_tokens=n_predict, temperature=0, stream=True
    )
    for _ in chunks:
        if not first:
            first = time.perf_counter() - started
    return Run([first], time.perf_counter() - started, n_predict)


def prompt_token_count(model: Path, prompt_length: int) -> int:
    """What the model's tokenizer makes of one benchmark prompt (BOS included)."""
    from llama_cpp import Llama

    vocab_only = Llama(str(model), vocab_only=True, verbose=False)
    return len(vocab_only.tokenize(unique_prompt(prompt_length).encode()))


async def _one_stream(
    client: httpx.AsyncClient, url: str, n_predict: int, prompt_length: int
) -> tuple[float, int, int]:
    """Time to the first text, the completion tokens (the server's usage, else the text chunks)
    and the prompt tokens (0 when the server reports no usage)."""
    body = {
        "model": "bench",
        "prompt": unique_prompt(prompt_length),
        "max_tokens": n_predict,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    pieces = 0
    reported = prompt_tokens = 0
    finish_reason = ""
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                reported = int(event["usage"].get("completion_tokens") or 0)
                prompt_tokens = int(event["usage"].get("prompt_tokens") or 0)
            if event.get("choices") and event["choices"][0].get("finish_reason"):
                finish_reason = event["choices"][0]["finish_reason"]
            if event.get("choices") and event["choices"][0].get("text"):
                pieces += 1
                if not first:
                    first = time.perf_counter() - started
    if not reported and finish_reason == "length":
        reported = n_predict  # no usage, but it stopped at max_tokens (a text chunk may hold no token's text)
    return first, reported or pieces, prompt_tokens


async def server_run(url: str, n_predict: int, streams: int, prompt_length: int) -> Run:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_one_stream(client, url, n_predict, prompt_length) for _ in range(streams))
        )
        wall = time.perf_counter() - started
    short = [tokens for _, tokens, _ in results if tokens < n_predict]
    if short:
        print(f"  warning: {url} gave {short} tokens where {n_predict} were asked", file=sys.stderr)
    return Run(
        [first for first, _, _ in results],
        wall,
        sum(tokens for _, tokens, _ in results),
        [prompt for _, _, prompt in results if prompt],
    )


def wait_ready(url: str, path: str, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready in time")


Server = tuple[subprocess.Popen[bytes], str]


def start_ours(
    model: Path, threads: int, context: int, parallel: int, flash: str, source: Path | None = None
) -> Server:
    """`python -m slm_runtime serve`; `source` puts another runtime-image folder first on the path."""
    port = free_port()
    env = {
        **os.environ,
        "SLM_MODEL": str(model),
        "SLM_MODEL_NAME": "bench",
        "SLM_HOST": "127.0.0.1",
        "SLM_PORT": str(port),
        "SLM_THREADS": str(threads),
        "SLM_CONTEXT_LENGTH": str(context),
        "SLM_PARALLEL_REQUESTS": str(parallel),
        "SLM_EMBEDDINGS": "false",
        "SLM_LOG_LEVEL": "warning",
        "SLM_FLASH_ATTENTION": flash,
    }
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "slm_runtime", "serve"], env=env, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/readyz", process)
    return process, url


def start_llama_cpp_server(model: Path, threads: int, context: int, flash: str) -> Server | None:
    try:
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
    except ImportError:
        print("llama_cpp.server skipped: install sse-starlette starlette-context to compare", file=sys.stderr)
        return None
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "bench"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(context)]
    command += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    command += ["--interrupt_requests", "False", "--verbose", "False", "--flash_attn", str(flash != "off")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/v1/models", process)
    return process, url


def llama_server_bin(folder: Path | None) -> Path | None:
    """The folder holding llama-server and llama-batched-bench (hack/build-llama-server.sh's)."""
    candidates = [folder] if folder else sorted(LLAMA_SERVER_CACHE.glob("*/bin"))
    for candidate in candidates:
        if (candidate / "llama-server").exists() and (candidate / "llama-batched-bench").exists():
            return candidate
    print("llama-server skipped: build it with hack/build-llama-server.sh", file=sys.stderr)
    return None


def _llama_env(bin_dir: Path) -> dict[str, str]:
    """llama.cpp's binaries link their shared libraries from their own folder."""
    paths = [str(bin_dir), os.environ.get("LD_LIBRARY_PATH", "")]
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, paths))}


def start_llama_server(
    bin_dir: Path, model: Path, threads: int, context: int, parallel: int, flash: str
) -> Server:
    port = free_port()
    command = [str(bin_dir / "llama-server"), "-m", str(model), "-a", "bench"]
    command += ["--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "-tb", str(threads)]
    command += ["-np", str(parallel), "-c", str(context * parallel), "--cont-batching", "-fa", flash]
    process = subprocess.Popen(
        command, env=_llama_env(bin_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/health", process)
    return process, url


@dataclass(frozen=True)
class Ceiling:
    """llama-batched-bench at one batch size: B prompts read at once, then B sequences decoded."""

    prompt_rate: float  # prompt tokens/s
    decode_rate: float  # generated tokens/s while decoding
    aggregate: float  # generated tokens over the whole time, prefill included (the servers' figure)


def batched_bench(
    bin_dir: Path,
    model: Path,
    threads: int,
    context: int,
    prompt_tokens: int,
    n_predict: int,
    streams: list[int],
    flash: str,
) -> dict[int, Ceiling]:
    """llama.cpp with no server around it, the same prompt and output lengths, at each batch size
    (a KV stream per sequence, as llama-server's slots and ours have)."""
    command = [
        str(bin_dir / "llama-batched-bench"),
        "-m",
        str(model),
        "-t",
        str(threads),
        "-tb",
        str(threads),
    ]
    command += ["-c", str(context * max(streams)), "-b", "2048", "-ub", "512", "-fa", flash]
    command += ["-npp", str(prompt_tokens), "-ntg", str(n_predict), "-npl", ",".join(map(str, streams))]
    output = subprocess.run(command, env=_llama_env(bin_dir), capture_output=True, text=True, check=True)
    figures: dict[int, Ceiling] = {}
    # |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
    for line in output.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"\d+", cells[2]):
            batch = int(cells[2])
            figures[batch] = Ceiling(float(cells[5]), float(cells[7]), batch * n_predict / float(cells[8]))
    return figures


def stop(server: Server | None) -> None:
    if server is not None:
        server[0].terminate()
        server[0].wait(timeout=60)


def ratio_line(label: str, value: float, goal: str = "", met: bool = True) -> str:
    verdict = f"goal {goal:<8}{'met' if met else 'NOT met'}" if goal else ""
    return f"  {label:<56}{value:>7.2f}   {verdict}"


def report(
    prompt_tokens: int,
    raw: Column,
    columns: dict[str, Column],
    ceiling: dict[int, Ceiling],
    counts: list[int],
) -> None:
    """The table and the ratios against the goals, for one prompt length."""
    seen = {
        name: statistics.median(p for run in column.runs[max(counts)] for p in run.prompt_tokens)
        for name, column in columns.items()
        if any(run.prompt_tokens for run in column.runs[max(counts)])
    }
    counted = ", ".join(f"{name} counted {value:.0f}" for name, value in seen.items())
    print(f"\n== prompts of {prompt_tokens} tokens ({counted})")
    print(
        f"{'server':<24}{'streams':>8}{'tok/s best':>12}{'tok/s median':>14}"
        f"{'TTFT p50 ms':>13}{'TTFT p95 ms':>13}"
    )
    for column in [raw, *columns.values()]:
        for streams in sorted(column.runs):
            print(
                f"{column.name:<24}{streams:>8}{column.best(streams):>12.1f}"
                f"{column.median_rate(streams):>14.1f}"
                f"{column.ttft(streams, 0.5) * 1000:>13.0f}{column.ttft(streams, 0.95) * 1000:>13.0f}"
            )
    for batch, figure in sorted(ceiling.items()):
        print(
            f"{'llama-batched-bench':<24}{batch:>8}{figure.aggregate:>12.1f}"
            f"   (decode alone {figure.decode_rate:.1f} t/s, prefill {figure.prompt_rate:.0f} t/s)"
        )

    ours, top = columns["slm-runtime"], max(counts)
    print("ratios (best tok/s; TTFT medians)")
    value = ours.best(1) / raw.best(1)
    lines = [ratio_line("slm-runtime 1 stream / raw Llama", value, ">= 0.95", value >= 0.95)]
    goals = {"llama-server": 0.95, "llama_cpp.server": 2.0}
    for name, goal in goals.items():
        if name not in columns:
            continue
        for streams in counts:
            if not columns[name].best(streams):
                continue  # it produced no tokens (its warnings say so)
            value = ours.best(streams) / columns[name].best(streams)
            label = f"slm-runtime / {name}, {streams} streams"
            lines.append(
                ratio_line(label, value, f">= {goal:g}", value >= goal)
                if streams == top
                else ratio_line(label, value)
            )
    if top in ceiling:
        value = ours.best(top) / ceiling[top].aggregate
        lines.append(ratio_line(f"slm-runtime / llama-batched-bench, {top} streams", value))
    if "slm-runtime (baseline)" in columns:
        for streams in counts:
            value = ours.best(streams) / columns["slm-runtime (baseline)"].best(streams)
            lines.append(ratio_line(f"slm-runtime / slm-runtime (baseline), {streams} streams", value))
    ttft = ours.ttft(top, 0.5)
    lines.append(ratio_line(f"slm-runtime median TTFT at {top} streams (s)", ttft, "< 1", ttft < 1))
    if "llama-server" in columns:
        theirs = columns["llama-server"].ttft(top, 0.5)
        label = f"slm-runtime / llama-server median TTFT ({theirs:.2f} s)"
        lines.append(ratio_line(label, ttft / theirs, "< 1", ttft < theirs))
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="anchor336m")
    parser.add_argument("--model", type=Path, help="use this GGUF instead of generating one")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"))
    parser.add_argument("--n-predict", type=int, default=64)
    parser.add_argument("--streams", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    parser.add_argument("--repeat", type=int, default=3, help="rounds; tok/s: best and median of them")
    parser.add_argument(
        "--prompt-lengths",
        type=int,
        nargs="+",
        default=[8, 135],
        help="characters of text per prompt, one table each (8: ~20 tokens; 135: ~200)",
    )
    parser.add_argument(
        "--flash-attention",
        choices=["auto", "on", "off"],
        default="auto",
        help="for every column (raw Llama and llama_cpp.server take on/off: auto is on, as on CPU)",
    )
    parser.add_argument("--skip-llama-cpp-server", action="store_true")
    parser.add_argument("--llama-server-dir", type=Path, help="folder with llama-server (default: the cache)")
    parser.add_argument(
        "--baseline-source",
        type=Path,
        help="also run slm-runtime from this runtime-image folder (e.g. `git archive` of a commit)",
    )
    args = parser.parse_args()

    load_at_start = Path("/proc/loadavg").read_text().split()[:3]
    model: Path = args.model or args.workdir / f"{args.preset}-q4_k_m.gguf"
    if not model.exists():
        print(f"generating {model} ({args.preset}, Q4_K_M)…", file=sys.stderr)
        write_tiny_gguf(model, **PRESETS[args.preset], quantize="q4_k_m", context_length=4096)
    counts = sorted({1, *args.streams})
    flash: str = args.flash_attention
    max_streams = max(counts)
    lengths: list[int] = args.prompt_lengths
    prompt_tokens = {length: prompt_token_count(model, length) for length in lengths}
    # Per sequence: the longest prompt, the output and some headroom; the same for every server.
    context = max(prompt_tokens.values()) + args.n_predict + 64

    servers: dict[str, Server] = {}
    bin_dir = llama_server_bin(args.llama_server_dir)
    spawn = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn)
    raw = {length: Column("raw Llama") for length in lengths}
    columns: dict[int, dict[str, Column]] = {length: {} for length in lengths}
    ceilings: dict[int, dict[int, Ceiling]] = {length: {} for length in lengths}  # the best round's
    try:
        servers["slm-runtime"] = start_ours(model, args.threads, context, max_streams, flash)
        if args.baseline_source:
            source = args.baseline_source.resolve()
            servers["slm-runtime (baseline)"] = start_ours(
                model, args.threads, context, max_streams, flash, source
            )
        if not args.skip_llama_cpp_server:
            started = start_llama_cpp_server(model, args.threads, context * max_streams, flash)
            if started is not None:
                servers["llama_cpp.server"] = started
        if bin_dir is not None:
            servers["llama-server"] = start_llama_server(
                bin_dir, model, args.threads, context, max_streams, flash
            )
        names = list(servers)
        for length in lengths:
            columns[length] = {name: Column(name) for name in names}
        for _, url in servers.values():  # warm up
            asyncio.run(server_run(url, 4, 1, min(lengths)))
        for round_index in range(args.repeat):
            for length in lengths:
                job = pool.submit(raw_run, model, args.n_predict, args.threads, context, length, flash)
                run = job.result()
                raw[length].add(1, run)
                for streams in counts:
                    shift = (round_index + streams) % len(names)
                    for name in names[shift:] + names[:shift]:  # nobody always runs right after another
                        url = servers[name][1]
                        run = asyncio.run(server_run(url, args.n_predict, streams, length))
                        columns[length][name].add(streams, run)
                if bin_dir is not None:  # the ceiling takes its turn in every round too
                    ceiling = batched_bench(
                        bin_dir,
                        model,
                        args.threads,
                        context,
                        prompt_tokens[length],
                        args.n_predict,
                        counts,
                        flash,
                    )
                    for batch, figure in ceiling.items():
                        best_ceiling = ceilings[length].get(batch)
                        if best_ceiling is None or figure.aggregate > best_ceiling.aggregate:
                            ceilings[length][batch] = figure
            print(f"round {round_index + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        pool.shutdown()
        for server in servers.values():
            stop(server)
    load_at_end = Path("/proc/loadavg").read_text().split()[:3]

    print(
        f"\nmodel {model} ({model.stat().st_size / 2**20:.0f} MiB), {args.threads} threads, "
        f"{args.n_predict} output tokens per request, {args.repeat} rounds, context {context} per sequence"
    )
    print(f"load average at start {' '.join(load_at_start)}, at end {' '.join(load_at_end)}")
    for length in lengths:
        report(prompt_tokens[length], raw[length], columns[length], ceilings[length], counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
