"""ONNX models: onnxruntime-genai for generative folders, plain onnxruntime for embedding models.

A generative folder has `genai_config.json`; anything else with `model.onnx` and `tokenizer.json`
is served as an embedding model. The execution provider comes from the settings and falls back
to CPU with a warning (shown by /readyz and the `slm_execution_provider_fallback` metric).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from slm_runtime.backends.base import (
    BackendError,
    ContextLengthExceededError,
    GenerationJob,
    GenerationStats,
    ModelDetails,
    PositionLogprobs,
    SamplingOptions,
    StopMatcher,
    check_prompt,
    format_parameter_count,
)
from slm_runtime.backends.logprobs import LogprobQueue, log_softmax, position_logprobs
from slm_runtime.settings import ServeSettings

log = logging.getLogger(__name__)

# Setting → (ONNX Runtime provider, onnxruntime-genai provider name).
PROVIDERS: dict[str, tuple[str, str]] = {
    "cpu": ("CPUExecutionProvider", "cpu"),
    "cuda": ("CUDAExecutionProvider", "cuda"),
    "rocm": ("ROCMExecutionProvider", "rocm"),
    "openvino": ("OpenVINOExecutionProvider", "OpenVINO"),
    "qnn": ("QNNExecutionProvider", "QNN"),
    "dml": ("DmlExecutionProvider", "dml"),
    "cann": ("CANNExecutionProvider", "cann"),
}
# With execution_provider auto: what each device tier tries, in order.
_AUTO_BY_DEVICE = {
    "cpu": ["cpu"],
    "gpu": ["cuda", "rocm", "dml", "openvino"],
    "npu": ["openvino", "qnn", "cann"],
}


def choose_provider(settings: ServeSettings, available: Sequence[str]) -> tuple[str, str | None]:
    """The provider key to use and, when it is not what was asked for, a warning saying why."""
    wanted = (
        [settings.execution_provider]
        if settings.execution_provider != "auto"
        else _AUTO_BY_DEVICE[settings.device]
    )
    for key in wanted:
        if PROVIDERS[key][0] in available:
            return key, None
    if wanted == ["cpu"]:
        return "cpu", None
    asked = ", ".join(PROVIDERS[k][0] for k in wanted)
    return (
        "cpu",
        f"execution provider {asked} not available in this build ({', '.join(available)}); using CPU",
    )


class OnnxBackend:
    """Serves an ONNX model folder (or a single .onnx file for embeddings)."""

    def __init__(self, settings: ServeSettings) -> None:
        self._settings = settings
        folder = settings.model if settings.model.is_dir() else settings.model.parent
        self._folder = folder
        provider_key, warning = choose_provider(settings, ort.get_available_providers())
        warnings = [warning] if warning else []
        self._generative = (folder / "genai_config.json").exists()
        self._step_lock = threading.Lock()  # one generator step at a time per model
        self._chat_template = settings.chat_template
        self._og: Any = None
        self._session: ort.InferenceSession | None = None
        # Each token's bytes, read from tokenizer.json when log probabilities are first asked for.
        self._token_bytes: dict[int, bytes] | None = None
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        if self._generative:
            import onnxruntime_genai as og  # imported here: embedding-only images may lack it

            self._og = og
            config_data = json.loads((folder / "genai_config.json").read_text())
            decoder = config_data["model"]["decoder"]
            self._context_length = min(settings.context_length, int(config_data["model"]["context_length"]))
            self._eos_ids = config_data["model"].get("eos_token_id")
            config = og.Config(str(folder))
            config.clear_providers()
            if provider_key != "cpu":
                config.append_provider(PROVIDERS[provider_key][1])
            try:
                self._model = og.Model(config)
            except Exception as exc:
                if provider_key == "cpu":
                    raise
                warnings.append(f"{PROVIDERS[provider_key][0]} failed to load the model ({exc}); using CPU")
                provider_key = "cpu"
                config.clear_providers()
                self._model = og.Model(config)
            self._tokenizer = og.Tokenizer(self._model)
            if not self._chat_template:
                tokenizer_config = folder / "tokenizer_config.json"
                if tokenizer_config.exists():
                    self._chat_template = (
                        json.loads(tokenizer_config.read_text()).get("chat_template", "") or ""
                    )
            model_info: dict[str, Any] = {
                "general.architecture": config_data["model"].get("type", ""),
                "onnx.context_length": config_data["model"]["context_length"],
                "onnx.embedding_length": decoder.get("hidden_size"),
                "onnx.block_count": decoder.get("num_hidden_layers"),
                "onnx.attention.head_count": decoder.get("num_attention_heads"),
                "onnx.attention.head_count_kv": decoder.get("num_key_value_heads"),
                "onnx.vocab_size": config_data["model"].get("vocab_size"),
            }
            family = str(config_data["model"].get("type", "onnx"))
            capabilities: tuple[str, ...] = ("completion",)
        else:
            from tokenizers import Tokenizer

            model_file = settings.model if settings.model.is_file() else _model_file(folder)
            self._text_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            providers = [PROVIDERS[provider_key][0]] + (
                ["CPUExecutionProvider"] if provider_key != "cpu" else []
            )
            self._session = ort.InferenceSession(str(model_file), providers=providers)
            self._input_names = [i.name for i in self._session.get_inputs()]
            self._context_length = settings.context_length
            model_info = {"general.architecture": "onnx-embedding"}
            family = "onnx-embedding"
            capabilities = ("embedding",)
        for text in warnings:
            log.warning(text)
        parameters = _count_onnx_parameters(folder)
        self.details = ModelDetails(
            format="onnx",
            family=family,
            parameter_size=format_parameter_count(parameters) if parameters else "unknown",
            quantization_level="unknown",
            size_bytes=size,
            context_length=self._context_length,
            capabilities=capabilities,
            model_info=model_info,
            chat_template=self._chat_template,
            backend="onnxruntime-genai" if self._generative else "onnxruntime",
            device=settings.device if provider_key != "cpu" else "cpu",
            execution_provider=PROVIDERS[provider_key][0],
            warnings=tuple(warnings),
            vocab_size=int(model_info.get("onnx.vocab_size") or 0),
        )

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        if self._generative:
            return [int(t) for t in self._tokenizer.encode(text)]
        return list(self._text_tokenizer.encode(text, add_special_tokens=add_special).ids)

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        if not self._generative:
            raise BackendError("this model only supports embeddings")
        try:
            rendered: str = self._tokenizer.apply_chat_template(
                messages=json.dumps(messages),
                add_generation_prompt=True,
                template_str=self._chat_template or None,
                tools=json.dumps(tools) if tools else None,
            )
        except Exception as exc:
            raise BackendError(f"chat template failed: {exc}") from exc
        return rendered

    def validate(self, prompt_tokens: Sequence[int], options: SamplingOptions) -> None:
        check_prompt(
            prompt_tokens,
            generative=self._generative,
            context_length=self._context_length,
            vocab_size=self.details.vocab_size,
        )
        if options.logprobs and self._token_bytes is None:
            # onnxruntime-genai decodes only to text, which loses the bytes of partial characters.
            tokenizer = self._folder / "tokenizer.json"
            if not tokenizer.is_file():
                raise BackendError(
                    "logprobs: this ONNX model has no tokenizer.json to read its tokens' bytes from; "
                    "leave logprobs out",
                    param="logprobs",
                )
            self._token_bytes = token_bytes_table(json.loads(tokenizer.read_text(encoding="utf-8")))

    def _piece(self, token: int) -> bytes:
        return (self._token_bytes or {}).get(token, b"")

    def submit(self, job: GenerationJob) -> None:
        self.validate(job.prompt_tokens, job.options)
        threading.Thread(target=self._generate, args=(job,), name="onnx-generate", daemon=True).start()

    def _generate(self, job: GenerationJob) -> None:
        og = self._og
        options = job.options
        started = time.perf_counter_ns()
        try:
            params = og.GeneratorParams(self._model)
            room = self._context_length - len(job.prompt_tokens)
            max_new = room if options.max_tokens < 0 else min(options.max_tokens, room)
            search: dict[str, Any] = {
                "max_length": len(job.prompt_tokens) + max_new,
                "do_sample": options.temperature > 0,
                "repetition_penalty": options.repeat_penalty,
            }
            if options.temperature > 0:
                search |= {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k}
            if options.seed is not None and options.seed >= 0:
                search["random_seed"] = options.seed
            params.set_search_options(**search)
            with self._step_lock:
                generator = og.Generator(self._model, params)
                generator.append_tokens(np.asarray(job.prompt_tokens, dtype=np.int32))
            stream = self._tokenizer.create_stream()
            stop = StopMatcher(options.stop)
            logprobs = LogprobQueue() if options.logprobs else None
            distribution = None
            generated: list[int] = []
            first_ns = 0
            reason = "length"
            while True:
                if job.cancelled.is_set():
                    return
                with self._step_lock:  # interleave the steps of concurrent requests fairly
                    if generator.is_done():
                        break
                    if logprobs is not None:
                        # The generator computes a position's raw logits ahead (after the prompt, then
                        # after each token): these are the ones the next token is sampled from.
                        distribution = log_softmax(generator.get_logits())
                    generator.generate_next_token()
                    token = int(generator.get_next_tokens()[0])
                if not first_ns:
                    first_ns = time.perf_counter_ns()
                if self._is_eos(token):
                    reason = "stop"
                    break
                generated.append(token)
                decoded = stream.decode(token)
                text, hit = stop.feed(decoded)
                entries: list[PositionLogprobs] = []
                if logprobs is not None and distribution is not None:
                    entry = position_logprobs(distribution, token, options.top_logprobs, self._piece)
                    logprobs.add(entry, len(decoded))
                    entries = logprobs.release(len(text), stopped=hit)
                if text or entries:
                    job.emit_token(text, entries)
                if hit:
                    reason = "stop_string"
                    break
                if len(generated) >= max_new:
                    break
            if reason != "stop_string":  # text held back for a possible stop string is due
                tail = stop.flush()
                rest = logprobs.flush() if logprobs is not None else []
                if tail or rest:
                    job.emit_token(tail, rest)
            now = time.perf_counter_ns()
            first_ns = first_ns or now
            job.emit_done(
                GenerationStats(
                    prompt_tokens=len(job.prompt_tokens),
                    completion_tokens=len(generated),
                    done_reason="length" if reason == "length" else "stop",
                    queued_ns=started - job.arrived_at_ns,
                    prompt_eval_ns=first_ns - started,
                    eval_ns=now - first_ns,
                    total_ns=now - job.arrived_at_ns,
                    output_tokens=generated,
                )
            )
        except Exception as exc:  # report to the client instead of dying silently in a thread
            log.exception("generation failed")
            job.emit_error(f"generation failed: {exc}")

    def _is_eos(self, token: int) -> bool:
        if isinstance(self._eos_ids, list):
            return token in self._eos_ids
        return bool(token == self._eos_ids)

    def embed(self, texts: Sequence[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        if self._session is None:
            raise BackendError("embeddings are not supported by this model")
        vectors: list[list[float]] = []
        total = 0
        for text in texts:
            ids = self.tokenize(text, add_special=True)
            if len(ids) > self._context_length:
                if not truncate:
                    raise ContextLengthExceededError(
                        f"input is {len(ids)} tokens; the context window is {self._context_length}"
                    )
                ids = ids[: self._context_length]
            if not ids:
                raise BackendError("cannot embed an empty input")
            total += len(ids)
            feeds: dict[str, Any] = {"input_ids": np.asarray([ids], dtype=np.int64)}
            if "attention_mask" in self._input_names:
                feeds["attention_mask"] = np.ones((1, len(ids)), dtype=np.int64)
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros((1, len(ids)), dtype=np.int64)
            output = np.asarray(self._session.run(None, feeds)[0], dtype=np.float64)
            vector = output.reshape(-1, output.shape[-1]).mean(axis=0) if output.ndim == 3 else output[0]
            norm = float(np.linalg.norm(vector))
            vectors.append((vector / norm if norm > 0 else vector).tolist())
        return vectors, total

    def close(self) -> None:
        self._model = None
        self._session = None


_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_level_chars() -> dict[str, int]:
    """Byte-level BPE vocabularies (GPT-2, Qwen, Llama 3) write each byte as a printable character."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    for extra, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + extra)
    return {c: b for b, c in chars.items()}


def token_bytes_table(tokenizer: dict[str, Any]) -> dict[int, bytes]:
    """Each token id's exact bytes, from a parsed tokenizer.json: byte-level vocabularies mapped back
    to bytes, SentencePiece pieces with their space marker and <0xXX> byte tokens, added tokens as text."""
    model = tokenizer.get("model") or {}
    vocab = model.get("vocab") or {}
    if isinstance(vocab, list):  # Unigram models list [piece, score] pairs in id order
        vocab = {entry[0]: i for i, entry in enumerate(vocab)}
    byte_level = '"ByteLevel"' in json.dumps(tokenizer.get("decoder") or {})
    unbyte = _byte_level_chars()
    table: dict[int, bytes] = {}
    for piece, token in vocab.items():
        match = _BYTE_TOKEN.match(piece)
        if match:
            table[int(token)] = bytes([int(match.group(1), 16)])
        elif byte_level and all(c in unbyte for c in piece):
            table[int(token)] = bytes(unbyte[c] for c in piece)
        else:
            table[int(token)] = piece.replace("\u2581", " ").encode("utf-8")
    for added in tokenizer.get("added_tokens") or []:
        table[int(added["id"])] = str(added["content"]).encode("utf-8")
    return table


def _model_file(folder: Path) -> Path:
    """model.onnx, or the folder's only .onnx file (a fetched model_quantized.onnx, say)."""
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    candidates = sorted(folder.glob("*.onnx"))
    if len(candidates) != 1:
        names = ", ".join(p.name for p in candidates) or "none"
        raise BackendError(f"{folder} must hold model.onnx or exactly one .onnx file (found: {names})")
    return candidates[0]


def _count_onnx_parameters(folder: Path) -> int:
    try:
        import onnx
    except ImportError:
        return 0
    total = 0
    for path in folder.glob("*.onnx"):
        graph = onnx.load(str(path), load_external_data=False).graph
        for initializer in graph.initializer:
            total += int(np.prod(initializer.dims)) if initializer.dims else 1
    return total
