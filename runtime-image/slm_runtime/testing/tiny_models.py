"""Generated models with random weights for tests, demos and benchmarks (never downloaded, never committed).

- `write_tiny_gguf`: a llama-architecture GGUF with a byte-level SentencePiece-style vocabulary;
  loads in llama-cpp-python, generates (noise), embeds and chats. Optional requantization.
- `write_tiny_onnx`: an onnxruntime-genai folder (model.onnx + genai_config.json + tokenizer).
- `write_tiny_onnx_embedding`: a plain ONNX embedding model (Gather → ReduceMean) with tokenizer.json.

Needs the `gguf`, `onnx` and `tokenizers` packages (the project's dev extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The llama GGUF uses <s>/</s> as its only special tokens; its template marks turns with them.
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}[{{ message['role'] }}] {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
)

# Qwen/Hermes-style tool use in the llama GGUF's plain turn markers: tools listed in a system turn,
# calls as <tool_call> JSON, results as <tool_response>. Like real templates that print the arguments
# as an object, it refuses arguments that are not one (OpenAI clients send them as a JSON string).
HERMES_TOOLS_TEMPLATE = (
    "{{ bos_token }}{% if tools %}[system] # Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}</tools>\nTo call a function, answer "
    '<tool_call>{"name": <name>, "arguments": <args>}</tool_call>\n{% endif %}'
    "{% for message in messages %}{% if message['role'] == 'tool' %}[tool] <tool_response>"
    "{{ message['content'] }}</tool_response>\n"
    "{% else %}[{{ message['role'] }}] {{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% if call['function']['arguments'] is not mapping %}"
    "{{ raise_exception('tool call arguments must be an object') }}{% endif %}"
    '<tool_call>{"name": "{{ call[\'function\'][\'name\'] }}", "arguments": '
    "{{ call['function']['arguments'] | tojson }}}</tool_call>{% endfor %}{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
)


def write_tiny_gguf(
    path: Path,
    *,
    n_embd: int = 256,
    n_ff: int = 512,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    n_vocab: int = 259,
    context_length: int = 2048,
    chat_template: str = LLAMA_TEMPLATE,
    quantize: str | None = None,
    seed: int = 0,
    name: str = "tiny-llama",
) -> Path:
    """Writes a random-weight llama GGUF (F16; or requantized, e.g. "q4_k_m", "q8_0") and returns its path.

    Greedy decoding (temperature 0) never picks a special token, so it runs to the token limit.
    The vocabulary is <unk>, <s>, </s>, the 256 byte tokens, then filler tokens up to n_vocab (to
    give benchmarks a realistic output layer). Dimensions that are multiples of 256 let K-quants apply.
    """
    import gguf

    if n_vocab < 259:
        raise ValueError("n_vocab must be at least 259 (3 specials + 256 bytes)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f16_path = path if quantize is None else path.with_name(path.name + ".f16.tmp")
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_heads

    writer = gguf.GGUFWriter(str(f16_path), "llama")
    writer.add_name(name)
    writer.add_block_count(n_layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    token_types = [2, 3, 3] + [6] * 256
    filler = n_vocab - len(tokens)
    tokens += [f"\u2581w{i}" for i in range(filler)]
    token_types += [1] * filler
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(chat_template)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    norm = np.ones(n_embd, dtype=np.float32)
    kv_dim = n_kv_heads * head_dim
    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", norm)
    output = weight(n_vocab, n_embd)
    # Zero logits for <unk>, <s>, </s>: among ~260 random logits the maximum is practically always
    # above zero, so greedy decoding never ends by itself and tests can count on num_predict.
    output[:3] = 0
    writer.add_tensor("output.weight", output)
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    if quantize is not None:
        from slm_runtime.fetch.quantize import quantize_gguf

        try:
            quantize_gguf(f16_path, path, quantize.lower())
        finally:
            f16_path.unlink(missing_ok=True)
    return path


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character mapping (what ByteLevel BPE vocabularies use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


ONNX_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def write_byte_level_tokenizer(folder: Path, *, chat_template: str = CHATML_TEMPLATE) -> int:
    """tokenizer.json (byte-level BPE, no merges) and tokenizer_config.json; returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    mapping = _byte_to_unicode()
    vocab = {mapping[b]: b for b in range(256)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(ONNX_SPECIAL_TOKENS))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "model_max_length": 2048,
        "chat_template": chat_template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return 256 + len(ONNX_SPECIAL_TOKENS)


def write_tiny_onnx(
    folder: Path,
    *,
    hidden_size: int = 64,
    n_layers: int = 1,
    n_kv_heads: int = 2,
    head_size: int = 16,
    context_length: int = 512,
    seed: int = 0,
) -> Path:
    """Writes an onnxruntime-genai model folder whose graph honours the decoder I/O contract."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    vocab = write_byte_level_tokenizer(folder)
    rng = np.random.default_rng(seed)
    kv_dim = n_kv_heads * head_size
    initializers = [
        numpy_helper.from_array(rng.standard_normal((vocab, hidden_size)).astype(np.float32), "embed"),
        numpy_helper.from_array(rng.standard_normal((hidden_size, vocab)).astype(np.float32), "lm_head"),
        numpy_helper.from_array(np.array([0, 0, n_kv_heads, head_size], dtype=np.int64), "kv_shape"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "lm_head"], ["logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
    for layer in range(n_layers):
        for kind in ("key", "value"):
            weight = f"w_{kind}_{layer}"
            initializers.append(
                numpy_helper.from_array(rng.standard_normal((hidden_size, kv_dim)).astype(np.float32), weight)
            )
            past, present = f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}"
            nodes += [
                helper.make_node("MatMul", ["hidden", weight], [f"{weight}_proj"]),
                helper.make_node("Reshape", [f"{weight}_proj", "kv_shape"], [f"{weight}_heads"]),
                helper.make_node("Transpose", [f"{weight}_heads"], [f"{weight}_t"], perm=[0, 2, 1, 3]),
                helper.make_node("Concat", [past, f"{weight}_t"], [present], axis=2),
            ]
            shape_past: list[str | int | None] = ["batch", n_kv_heads, "past", head_size]
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, shape_past))
            shape_present: list[str | int | None] = ["batch", n_kv_heads, "total", head_size]
            outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, shape_present))
    graph = helper.make_graph(nodes, "tiny-decoder", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    config = {
        "model": {
            "type": "llama",
            "bos_token_id": 256,
            "eos_token_id": 256,
            "pad_token_id": 256,
            "vocab_size": vocab,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": head_size,
                "hidden_size": hidden_size,
                "num_attention_heads": n_kv_heads,
                "num_hidden_layers": n_layers,
                "num_key_value_heads": n_kv_heads,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": context_length,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
    (folder / "genai_config.json").write_text(json.dumps(config, indent=2))
    return folder


def write_tiny_onnx_embedding(folder: Path, *, hidden_size: int = 64, seed: int = 0) -> Path:
    """Writes model.onnx (input_ids → Gather → ReduceMean → embeddings) and a tokenizer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    vocab = write_byte_level_tokenizer(folder)
    rng = np.random.default_rng(seed)
    embed = numpy_helper.from_array(rng.standard_normal((vocab, hidden_size)).astype(np.float32), "embed")
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["hidden"]),
        helper.make_node("ReduceMean", ["hidden"], ["embeddings"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-embedding",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", hidden_size])],
        [embed],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    return folder
