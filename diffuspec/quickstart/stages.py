"""The quickstart's stages. Each builds one artifact folder from the config and its input folders."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..drafter_config import write_diffuspec_config
from ..jsonl import read_jsonl, write_jsonl
from ..loading import load_causal_lm
from ..models.tiny import tiny_qwen2
from .config import RECIPES, ModelShape, QuickstartConfig
from .corpus import file_stream, pack, read_texts, train_tokenizer, windows, write_corpus
from .pretrain import train_causal_lm


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

TRAIN_RECIPES = RECIPES / "tiny-cpu" / "train"


def corpus_examples(config: QuickstartConfig, corpus: Path) -> list[dict]:
    """Corpus blocks as prompt/completion rows: one visible token, the rest is text to denoise."""
    return [{"prompt_ids": b[:1], "completion_ids": b[1:]} for b in train_blocks(config, corpus)]


def train_prompts(config: QuickstartConfig, corpus: Path) -> list[dict]:
    """Prompts for the verifier's continuations: windows at seeded offsets of the train split."""
    prompts = windows(token_stream(corpus, "train"), config.data_prompts, config.prompt_tokens, config.seed)
    return [{"id": f"p{i}", "prompt_ids": p} for i, p in enumerate(prompts)]


def run_training(recipe: Path, overrides: dict[str, object]) -> None:
    """Train in-process on a recipe with command-line style overrides, through the run ``train/train_drafter.py``
    launches (``run_drafter_training``), so the quickstart trains exactly as users do with accelerate."""
    from ..training.config import parse_config
    from ..training.run import run_drafter_training

    argv = ["--config", str(recipe)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    run_drafter_training(*parse_config(argv))


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


# ---------------------------------------------------------------------------- evaluation

ADL_TINY = {"k_min": 4, "k_max": 12, "delta": 4}  # the paper's 20..30 overshoots what a tiny drafter gets right
TREE = {"max_nodes": 64, "max_children": 8}  # token trees of the *_tree methods (the *_tree_cost ones at most this)
HYBRID = "select"  # the *_hybrid methods: each round the copy or the lattice, whichever expects more accepted tokens


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


def quickstart_methods(
    inputs: dict[str, Path],
    window: int | None,
    adl: dict[str, int],
    tree: dict[str, int] | None = TREE,
    draft_vocab: Path | None = None,
) -> list[dict]:
    """The methods every quickstart times: plain decoding, the copy and AR peers, the unaligned and the aligned
    diffusion drafters (with and without CPS + ADL) and the conditioned drafter, from the stage folders; the aligned
    and the conditioned drafter also verify token trees, of ``tree``'s size (``*_tree``) and of the size the cost
    model picks each round (``*_tree_cost``); ``tree`` None leaves the tree methods out. Both also run as hybrids
    with pld's copy (``*_hybrid``). ``draft_vocab`` (a ``DraftVocabulary`` file) gives every diffusion and
    conditioned drafter that head."""
    proxy = str(inputs["proxy"] / "proxy.json")
    vocab = {} if draft_vocab is None else {"draft_vocab": str(draft_vocab)}
    conditioned = {
        "kind": "conditioned",
        "name": "dlm_conditioned",
        "drafter": str(inputs["drafter_conditioned"] / "model"),
        "cps": {"m_max": 8},
        "proxy": proxy,
        "adl": dict(adl),
        **vocab,
    }

    def with_trees(method: dict) -> list[dict]:
        name = method["name"]
        if tree is None:
            return [method]
        return [
            method,
            {**method, "name": f"{name}_tree", "tree": dict(tree)},
            {**method, "name": f"{name}_tree_cost", "tree": {**tree, "budget": "cost"}},
        ]

    def hybrid(method: dict) -> dict:
        return {**method, "name": f"{method['name']}_hybrid", "hybrid": HYBRID}

    def dlm(name: str, stage: str, cps: bool, adl_on: bool) -> dict:
        return {
            "kind": "diffusion",
            "name": name,
            "drafter": str(inputs[stage] / "model"),
            "context_window": window,
            "cps": {"m_max": 8} if cps else None,
            "proxy": proxy if cps else None,
            "adl": dict(adl) if adl_on else None,
            "draft_length": 8,
            **vocab,
        }

    aligned = dlm("dlm_aligned", "drafter_aligned", cps=True, adl_on=True)
    return [
        {"kind": "ar"},
        {"kind": "hf_generate"},
        {"kind": "pld"},
        {"kind": "hf_pld"},
        {"kind": "hf_assisted"},
        dlm("dlm_unaligned", "drafter_unaligned", cps=True, adl_on=True),
        *with_trees(aligned),
        hybrid(aligned),
        dlm("dlm_aligned_plain", "drafter_aligned", cps=False, adl_on=False),
        *with_trees(conditioned),
        hybrid(conditioned),
    ]


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


def run_evaluation(out: Path, **settings) -> None:
    """A quickstart's evaluation stage: ``EvalConfig(**settings)`` in float32 on the CPU after one warm-up call,
    written to ``out``; a lossless mismatch or a failed call fails the stage. Its resume journal lives beside the
    stage folders (``out`` is a temporary folder until the stage ends), so a killed evaluation picks up."""
    from ..evaluation import EvalConfig, evaluate

    config = EvalConfig(dtype="float32", device="cpu", warmup=1, output_dir=str(out), **settings)
    if evaluate(config, journal=out.parent / ".eval.journal.jsonl") != 0:
        raise RuntimeError(f"the evaluation failed (a lossless mismatch or a failed call); see {out / 'results.md'}")
