"""``diffuspec quickstart``'s tiny presets (``full`` and ``fast`` of ``recipes/tiny-cpu/quickstart.yaml``): the
whole pipeline on a laptop CPU, every model trained here on the standard library's sources. One dataclass of
settings, then the stages in the order they run:

corpus -> verifier -> ar_drafter -> drafter_unaligned -> data -> proxy -> drafter_aligned -> drafter_conditioned
-> eval
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..drafter_config import write_diffuspec_config
from ..jsonl import read_jsonl, write_jsonl
from ..loading import load_causal_lm
from ..models.tiny import tiny_qwen2
from .corpus import file_stream, pack, read_texts, train_tokenizer, windows, write_corpus
from .stages import (
    RECIPES,
    Stage,
    check_preset,
    quickstart_methods,
    read_preset,
    record_eval_decoding,
    run_evaluation,
    run_training,
    train_causal_lm,
)

RECIPE = RECIPES / "tiny-cpu" / "quickstart.yaml"
TRAIN_RECIPES = RECIPES / "tiny-cpu" / "train"
DRAFTER_INITS = ("ar_drafter", "verifier")
EVAL_PROMPT_SOURCES = ("windows", "file_starts")


@dataclass
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int = 8
    num_kv_heads: int = 2
    intermediate_size: int | None = None


@dataclass
class QuickstartConfig:
    seed: int = 0
    threads: int = field(default=2, metadata={"help": "torch threads for training and data generation."})
    eval_threads: int = field(
        default=1,
        metadata={"help": "torch threads while timing (1 is safe on a shared machine; see the tiny-cpu README)."},
    )
    corpus_bytes: int = field(default=3_000_000, metadata={"help": "Standard-library source bytes to use."})
    heldout_fraction: float = 0.1
    vocab_size: int = 2048
    block_size: int = field(default=128, metadata={"help": "Training sequence length."})
    verifier: ModelShape = field(default_factory=lambda: ModelShape(256, 4, intermediate_size=768))
    verifier_steps: int = 500
    verifier_lr: float = field(
        default=1e-3, metadata={"help": "The verifier's peak learning rate (the deeper model trains worse at lr)."}
    )
    ar_drafter: ModelShape = field(default_factory=lambda: ModelShape(128, 1, 4, 2, 384))
    ar_drafter_steps: int = 300
    drafter_init: str = field(
        default="ar_drafter",
        metadata={"help": "Causal LM the diffusion drafter is adapted from: 'ar_drafter' or 'verifier'."},
    )
    drafter_layers: int = field(default=1, metadata={"help": "Layers of drafter_init the diffusion drafter keeps."})
    drafter_steps: int = 300
    batch_size: int = 16
    lr: float = field(default=3e-3, metadata={"help": "Peak learning rate of the small models' pretraining."})
    # alignment data: verifier continuations of training-split prompts
    data_prompts: int = 400
    prompt_tokens: int = 64
    completion_tokens: int = 64
    teacher_topk: int = field(
        default=32, metadata={"help": "Verifier top-k log-probs stored with the data (0: the trainer runs it online)."}
    )
    align_steps: int = 400
    conditioned_layers: int = field(default=1, metadata={"help": "Layers of the feature-conditioned drafter."})
    conditioned_steps: int = 400
    conditioned_stem: int = field(
        default=0, metadata={"help": "Anchor stem width of the conditioned drafter (0: none, DFlash's architecture)."}
    )
    # evaluation
    eval_prompts: int = 20
    eval_prompt_tokens: int = 128
    eval_prompts_from: str = field(
        default="windows", metadata={"help": "Held-out prompts: 'windows' (seeded offsets) or 'file_starts'."}
    )
    max_new_tokens: int = 64
    repeats: int = 3
    draft_window: int | None = field(default=64, metadata={"help": "Diffusion drafter context window (tokens)."})

    def __post_init__(self) -> None:
        for name in ("verifier", "ar_drafter"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, ModelShape(**value))
        check_preset(self, "quickstart")
        for name, allowed in (("drafter_init", DRAFTER_INITS), ("eval_prompts_from", EVAL_PROMPT_SOURCES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"quickstart setting {name} must be one of {allowed}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def load_preset(name: str, path: Path = RECIPE, **overrides) -> QuickstartConfig:
    """Read preset ``name`` from the recipe; unknown keys are an error naming them."""
    return read_preset(QuickstartConfig, name, path, overrides)


# ---------------------------------------------------------------------------- corpus, verifier, AR drafter


def build_corpus(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """Standard-library sources split by file, and a byte-level BPE tokenizer trained on the train split."""
    paths = write_corpus(out, config.corpus_bytes, config.heldout_fraction)
    train_tokenizer(read_texts(paths["train"]), config.vocab_size, out / "tokenizer")


def corpus_tokenizer(corpus: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(corpus / "tokenizer")


def train_blocks(config: QuickstartConfig, corpus: Path) -> list[list[int]]:
    return pack(read_texts(corpus / "train.jsonl"), corpus_tokenizer(corpus), config.block_size)


def _causal_lm(config: QuickstartConfig, shape: ModelShape, tokenizer: PreTrainedTokenizerBase, seed: int):
    return tiny_qwen2(
        seed=seed,
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        num_kv_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _pretrain(
    config: QuickstartConfig, out: Path, corpus: Path, shape: ModelShape, steps: int, lr: float, seed: int
) -> None:
    tokenizer = corpus_tokenizer(corpus)
    model = _causal_lm(config, shape, tokenizer, seed)
    train_causal_lm(
        model,
        train_blocks(config, corpus),
        out / "trainer",
        max_steps=steps,
        batch_size=config.batch_size,
        lr=lr,
        seed=seed,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_verifier(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """The verifier: a small Qwen2 causal LM pretrained on the train split."""
    _pretrain(config, out, inputs["corpus"], config.verifier, config.verifier_steps, config.verifier_lr, config.seed)


def build_ar_drafter(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """A smaller causal LM on the same corpus, for the SpS / assisted-generation baselines."""
    _pretrain(config, out, inputs["corpus"], config.ar_drafter, config.ar_drafter_steps, config.lr, config.seed + 1)


def token_stream(corpus: Path, split: str) -> list[int]:
    """One split of the corpus as a single token stream, files separated by EOS."""
    return file_stream(read_texts(corpus / f"{split}.jsonl"), corpus_tokenizer(corpus))


def heldout_prompts(config: QuickstartConfig, corpus: Path) -> list[list[int]]:
    """Evaluation prompts from the held-out files.

    ``windows`` (the default): windows at seeded offsets, built like the alignment prompts of the train split, so
    evaluation measures the same kind of prompt on unseen files. ``file_starts``: each file's first tokens, which are
    mostly licence text and module docstrings; after them the tiny verifier often falls into blank-line loops that
    every drafter predicts alike (recipes/tiny-cpu/README.md)."""
    if config.eval_prompts_from == "windows":
        return windows(token_stream(corpus, "heldout"), config.eval_prompts, config.eval_prompt_tokens, config.seed)
    tokenizer = corpus_tokenizer(corpus)
    prompts = []
    for text in read_texts(corpus / "heldout.jsonl"):
        ids = tokenizer(text[: 20 * config.eval_prompt_tokens], add_special_tokens=False).input_ids
        if len(ids) >= config.eval_prompt_tokens:
            prompts.append(ids[: config.eval_prompt_tokens])
        if len(prompts) == config.eval_prompts:
            break
    return prompts


@torch.no_grad()
def heldout_loss(run_dir: str | Path, windows_count: int = 64, length: int = 128, seed: int = 5) -> dict[str, float]:
    """Mean next-token loss of the run's verifier and AR drafter on seeded windows of the held-out files (printed)."""
    run_dir = Path(run_dir)
    ids = torch.tensor(windows(token_stream(run_dir / "corpus", "heldout"), windows_count, length, seed))
    losses = {}
    for name in ("verifier", "ar_drafter"):
        losses[name] = round(load_causal_lm(run_dir / name)(input_ids=ids, labels=ids).loss.item(), 3)
    print(losses)
    return losses


# ---------------------------------------------------------------------------- drafters, data, alignment


def corpus_examples(config: QuickstartConfig, corpus: Path) -> list[dict]:
    """Corpus blocks as prompt/completion rows: one visible token, the rest is text to denoise."""
    return [{"prompt_ids": b[:1], "completion_ids": b[1:]} for b in train_blocks(config, corpus)]


def train_prompts(config: QuickstartConfig, corpus: Path) -> list[dict]:
    """Prompts for the verifier's continuations: windows at seeded offsets of the train split."""
    prompts = windows(token_stream(corpus, "train"), config.data_prompts, config.prompt_tokens, config.seed)
    return [{"id": f"p{i}", "prompt_ids": p} for i, p in enumerate(prompts)]


def build_drafter_unaligned(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """The 'off-the-shelf' diffusion drafter: the lower layers of a causal LM made bidirectional (Dream-style
    adaptation), then pretrained with the generic masked-diffusion objective on the corpus, not on the verifier.

    The causal LM is ``config.drafter_init``: the small AR model (the default; like Dream-7B, which is adapted from
    a smaller sibling of the verifiers it drafts for) or the verifier itself."""
    from ..models.adapt import adapt_ar_to_diffusion

    tokenizer = corpus_tokenizer(inputs["corpus"])
    source = load_causal_lm(inputs[config.drafter_init])
    drafter, mask_id = adapt_ar_to_diffusion(
        source, num_layers=config.drafter_layers, mask_token_id=tokenizer.mask_token_id
    )
    init = out / "init"
    drafter.save_pretrained(init)
    tokenizer.save_pretrained(init)
    write_diffuspec_config(init, mask_token_id=mask_id, shifted=True)
    write_jsonl(out / "corpus_examples.jsonl", corpus_examples(config, inputs["corpus"]))
    run_training(
        TRAIN_RECIPES / "config_pretrain.yaml",
        {
            "drafter_name_or_path": init,
            "dataset_path": out / "corpus_examples.jsonl",
            "output_dir": out / "model",
            "max_steps": config.drafter_steps,
            "per_device_train_batch_size": config.batch_size,
            "seed": config.seed,
        },
    )
    record_eval_decoding(out / "model", ADL_TINY)


def build_data(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """Greedy verifier continuations of training prompts (the alignment data) and held-out eval prompts."""
    from ..datagen import DataGenerationConfig, generate_dataset

    write_jsonl(out / "prompts.jsonl", train_prompts(config, inputs["corpus"]))
    heldout = heldout_prompts(config, inputs["corpus"])
    write_jsonl(out / "heldout_prompts.jsonl", [{"prompt_ids": p} for p in heldout])
    generate_dataset(
        DataGenerationConfig(
            verifier=str(inputs["verifier"]),
            out=str(out / "dataset"),
            prompt_token_ids=str(out / "prompts.jsonl"),
            max_new_tokens=config.completion_tokens,
            teacher_topk=config.teacher_topk,
            seed=config.seed,
            cpu=True,
            backend="transformers",  # batched greedy: several times faster than batch 1 on a CPU
            chunk_size=64,
        )
    )


def build_drafter_aligned(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """Align the unaligned drafter to the verifier with the tiny-cpu training recipe."""
    run_training(
        TRAIN_RECIPES / "config_aligned.yaml",
        {
            "drafter_name_or_path": inputs["drafter_unaligned"] / "model",
            "verifier_name_or_path": inputs["verifier"],
            "dataset_path": inputs["data"] / "dataset",
            "eval_prompts_path": inputs["data"] / "heldout_prompts.jsonl",
            "output_dir": out / "model",
            "max_steps": config.align_steps,
            "per_device_train_batch_size": config.batch_size,
            "max_prompt_length": config.prompt_tokens,
            "max_completion_length": config.completion_tokens,
            "seed": config.seed,
            **({"context_window": config.draft_window} if config.draft_window is not None else {}),
        },
    )
    record_eval_decoding(out / "model", ADL_TINY)


CONDITIONED_BLOCK = 12  # the ADL k_max of the tiny evaluation (ADL_TINY below): every draft length it asks for fits
CONDITIONED_RECIPE = {
    "learning_rate": 3e-3,
    "anchors_per_sequence": 8,  # blocks per sequence: the verifier's features of a batch serve several blocks
    "decay_gamma": 4.0,  # DFlash's position decay, scaled to the short block: later slots are rarely reached
    "kl_weight": 1.0,  # forward KL to the verifier's own distributions (its logits come with the features)
}


def build_drafter_conditioned(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """A conditioned drafter on the alignment data; it borrows the verifier's embedding and LM head,
    so its width is the verifier's, and is saved in ``out / "model"`` (load: ``ConditionedDrafter.from_pretrained``)."""
    from ..training.run import train_conditioned_drafter

    train_conditioned_drafter(
        inputs["verifier"],
        inputs["data"] / "dataset",
        out / "model",
        num_layers=config.conditioned_layers,
        stem_size=config.conditioned_stem,
        block_size=CONDITIONED_BLOCK,
        max_steps=config.conditioned_steps,
        batch_size=config.batch_size,
        seed=config.seed,
        **CONDITIONED_RECIPE,
    )
    record_eval_decoding(out / "model", ADL_TINY)


# ---------------------------------------------------------------------------- evaluation

ADL_TINY = {"k_min": 4, "k_max": 12, "delta": 4}  # the paper's 20..30 overshoots what a tiny drafter gets right


def build_proxy(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """CPS's causal proxy: a token-id trigram fitted on the train split and the verifier's continuations."""
    from datasets import load_from_disk

    from ..decoding.proxy import NGramProxy

    data = load_from_disk(str(inputs["data"] / "dataset"))
    streams = train_blocks(config, inputs["corpus"]) + [
        p + c for p, c in zip(data["prompt_ids"], data["completion_ids"], strict=True)
    ]
    NGramProxy.fit(streams, vocab_size=len(corpus_tokenizer(inputs["corpus"])), order=3).save(out / "proxy.json")


def eval_methods(config: QuickstartConfig, inputs: dict[str, Path]) -> list[dict]:
    return quickstart_methods(inputs, window=config.draft_window, adl=ADL_TINY)


def build_eval(config: QuickstartConfig, out: Path, inputs: dict[str, Path]) -> None:
    """All methods in one interleaved run on held-out prompts: results.json, results.md and plots."""
    tokenizer = corpus_tokenizer(inputs["corpus"])
    prompts = [r["prompt_ids"] for _, r in read_jsonl(inputs["data"] / "heldout_prompts.jsonl", "held-out prompts")]
    write_jsonl(out / "prompts.jsonl", [{"prompt": tokenizer.decode(p), "task": "stdlib"} for p in prompts])
    run_evaluation(
        out,
        verifier=str(inputs["verifier"]),
        ar_drafter=str(inputs["ar_drafter"]),
        benchmark="jsonl",
        benchmark_path=str(out / "prompts.jsonl"),
        chat_template=False,
        max_prompt_tokens=config.eval_prompt_tokens,
        max_new_tokens=config.max_new_tokens,
        methods=eval_methods(config, inputs),
        repeats=config.repeats,
        threads=config.eval_threads,
    )


SHAPE = ("block_size", "batch_size", "lr", "seed")

STAGES = [
    Stage("corpus", (), build_corpus, ("corpus_bytes", "heldout_fraction", "vocab_size")),
    Stage(
        "verifier",
        ("corpus",),
        build_verifier,
        ("verifier", "verifier_steps", "verifier_lr", "block_size", "batch_size", "seed"),
    ),
    Stage("ar_drafter", ("corpus",), build_ar_drafter, ("ar_drafter", "ar_drafter_steps", *SHAPE)),
    Stage(
        "drafter_unaligned",
        ("corpus", "verifier", "ar_drafter"),
        build_drafter_unaligned,
        ("drafter_init", "drafter_layers", "drafter_steps", *SHAPE),
    ),
    Stage(
        "data",
        ("corpus", "verifier"),
        build_data,
        (
            "data_prompts",
            "prompt_tokens",
            "completion_tokens",
            "teacher_topk",
            "eval_prompts",
            "eval_prompt_tokens",
            "eval_prompts_from",
            "seed",
        ),
    ),
    Stage("proxy", ("corpus", "data"), build_proxy, ("block_size",)),
    Stage(
        "drafter_aligned",
        ("verifier", "drafter_unaligned", "data"),
        build_drafter_aligned,
        ("align_steps", "prompt_tokens", "completion_tokens", "batch_size", "seed"),
    ),
    Stage(
        "drafter_conditioned",
        ("verifier", "data"),
        build_drafter_conditioned,
        ("conditioned_layers", "conditioned_steps", "conditioned_stem", "batch_size", "seed"),
    ),
    Stage(
        "eval",
        (
            "corpus",
            "verifier",
            "ar_drafter",
            "drafter_unaligned",
            "data",
            "proxy",
            "drafter_aligned",
            "drafter_conditioned",
        ),
        build_eval,
        ("eval_prompt_tokens", "max_new_tokens", "repeats", "draft_window", "eval_threads"),
    ),
]
