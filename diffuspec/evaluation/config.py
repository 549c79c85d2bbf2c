"""Evaluation settings: one dataclass read from a YAML recipe, with command-line flags overriding its keys.

Every field is checked in ``__post_init__`` so that a bad recipe (an unknown method kind, an unknown task, fewer
than three repeats) fails before any model is loaded. Methods are a list of small dicts, one per decoding
method; ``ar`` (plain greedy decoding through our verifier wrapper) is the baseline and is always run.
"""

from __future__ import annotations

import argparse
import functools
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from ..decoding.config import DecodeConfig
from ..drafters.hybrid import MODES as HYBRID_MODES
from ..dtypes import DTYPE_NAMES, check_dtype_name
from .benchmarks import BENCHMARK_KINDS, SPEC_BENCH_TASKS

BASELINE = "ar"

# A lattice method with ``hybrid: select | merge`` also copies from the prompt (diffuspec.drafters.hybrid); the
# copy's tail match is max_ngram..min_ngram tokens long, pld's defaults unless given; copy_margin is the tokens more
# than the lattice a copy must expect in select mode (HybridDrafter's default unless given), skip_margin the tokens
# more than the lattice's recent rounds a copy must expect to be taken without a draft (None: draft every round).
HYBRID_KEYS = ("hybrid", "max_ngram", "min_ngram", "copy_margin", "skip_margin")

# Keys each method kind accepts (besides ``kind``); anything else is an error naming the key.
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "ar": ("name",),
    "hf_generate": ("name",),
    "pld": ("name", "draft_length", "max_ngram", "min_ngram"),
    "hf_pld": ("name", "draft_length", "max_ngram"),
    "sps": ("name", "drafter", "draft_length"),
    "hf_assisted": ("name", "drafter", "draft_length", "schedule", "confidence_threshold"),
    "diffusion": (
        "name",
        "drafter",
        "steps",
        "cps",
        "adl",
        "draft_length",
        "proxy",
        "context_window",
        "tree",
        "draft_vocab",
        *HYBRID_KEYS,
    ),
    "conditioned": ("name", "drafter", "cps", "adl", "draft_length", "proxy", "tree", "draft_vocab", *HYBRID_KEYS),
}
METHOD_KINDS = tuple(METHOD_KEYS)
NEEDS_DRAFTER = ("sps", "hf_assisted", "diffusion", "conditioned")
LATTICE_KINDS = ("diffusion", "conditioned")  # drafters whose lattice goes through CPS and ADL

# Per-kind defaults. hf_* use transformers' own defaults (prompt_lookup_num_tokens=10, max_matching_ngram_size=2,
# num_assistant_tokens=20, schedule "constant", assistant_confidence_threshold=0.4) so that they run as shipped;
# pld drafts as many tokens as hf_pld so the two are comparable.
_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "pld": {"draft_length": 10, "max_ngram": 3, "min_ngram": 1},
    "hf_pld": {"draft_length": 10, "max_ngram": 2},
    "sps": {"draft_length": 5},
    "hf_assisted": {"draft_length": 20, "schedule": "constant", "confidence_threshold": 0.4},
    "diffusion": {"steps": 1, "cps": {}, "adl": {}, "draft_length": 8},
    "conditioned": {"cps": {}, "adl": {}, "draft_length": 8},
}


@dataclass
class MethodSpec:
    """One decoding method to measure. ``cps``/``adl``/``tree`` are CPSConfig/ADLConfig/TreeConfig keyword dicts,
    None switches them off (``tree`` is off unless given); with ``adl`` None the draft length is ``draft_length``."""

    kind: str
    name: str
    drafter: str | None = None
    draft_length: int | None = None
    max_ngram: int | None = None
    min_ngram: int | None = None
    steps: int = 1
    context_window: int | None = None
    cps: dict[str, Any] | None = None
    adl: dict[str, Any] | None = None
    proxy: str | None = None
    tree: dict[str, Any] | None = None
    draft_vocab: str | None = None  # a DraftVocabulary file: the drafter's head scores those ids only
    hybrid: str | None = None  # lattice kinds: 'select' or 'merge' a prompt-lookup copy (None: the drafter alone)
    copy_margin: float | None = None  # select mode: tokens more than the lattice a copy must expect (None: default)
    skip_margin: float | None = None  # select mode: ... more than its recent rounds, to skip the draft (None: never)
    schedule: str | None = None
    confidence_threshold: float | None = None

    @classmethod
    def from_dict(cls, raw: Any, where: str, ar_drafter: str | None) -> MethodSpec:
        if isinstance(raw, str):
            raw = {"kind": raw}
        if not isinstance(raw, dict) or "kind" not in raw:
            raise ValueError(f"{where}: a method is a mapping with a 'kind' (one of {list(METHOD_KINDS)}), got {raw!r}")
        kind = raw["kind"]
        if kind not in METHOD_KEYS:
            raise ValueError(f"{where}: unknown method kind {kind!r}; known kinds: {list(METHOD_KINDS)}")
        unknown = sorted(set(raw) - {"kind", *METHOD_KEYS[kind]})
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {unknown} for a {kind!r} method; allowed: {list(METHOD_KEYS[kind])}"
            )
        values = {**_METHOD_DEFAULTS.get(kind, {}), **raw}
        if kind in LATTICE_KINDS and values.get("hybrid") is not None:
            lookup = {key: _METHOD_DEFAULTS["pld"][key] for key in ("max_ngram", "min_ngram")}
            values = {**lookup, **values}
        values.setdefault("name", kind)
        if kind in ("sps", "hf_assisted") and values.get("drafter") is None:
            values["drafter"] = ar_drafter
        spec = cls(**values)
        spec.validate(where)
        return spec

    def validate(self, where: str) -> None:
        where = f"{where} ({self.name})"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{where}: name must be a non-empty string")
        if self.kind in NEEDS_DRAFTER and not self.drafter:
            hint = " (or set ar_drafter)" if self.kind not in LATTICE_KINDS else ""
            raise ValueError(f"{where}: a {self.kind!r} method needs a 'drafter' folder{hint}")
        if self.draft_length is not None and self.draft_length < 1:
            raise ValueError(f"{where}: draft_length must be >= 1, got {self.draft_length}")
        if self.steps < 1:
            raise ValueError(f"{where}: steps must be >= 1, got {self.steps}")
        if self.context_window is not None and self.context_window < 1:
            raise ValueError(f"{where}: context_window must be >= 1 or null, got {self.context_window}")
        if self.max_ngram is not None and (self.max_ngram < 1 or (self.min_ngram or 1) > self.max_ngram):
            raise ValueError(f"{where}: need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")
        if self.schedule is not None and self.schedule not in ("constant", "heuristic", "heuristic_transient"):
            raise ValueError(f"{where}: schedule must be 'constant', 'heuristic' or 'heuristic_transient'")
        if self.kind in LATTICE_KINDS and self.proxy is not None and self.cps is None:
            raise ValueError(f"{where}: a proxy is only read by CPS, but cps is null")
        if self.hybrid is not None and self.hybrid not in HYBRID_MODES:
            raise ValueError(f"{where}: hybrid must be one of {list(HYBRID_MODES)} or null, got {self.hybrid!r}")
        if self.kind in LATTICE_KINDS and self.hybrid is None and (self.max_ngram, self.min_ngram) != (None, None):
            raise ValueError(f"{where}: max_ngram / min_ngram set the hybrid's copy, but hybrid is null")
        for key in ("copy_margin", "skip_margin"):
            value = getattr(self, key)
            if value is not None and (self.hybrid != "select" or not value >= 0):
                raise ValueError(f"{where}: {key} (>= 0 tokens) is read by hybrid: select only, got {value}")
        self.decode  # noqa: B018 - builds (and so validates) the decoding settings once

    @functools.cached_property
    def decode(self) -> DecodeConfig | None:
        """The method's ``DecodeConfig``, built and validated once (the proxy LM is attached when its runner is
        built); None for methods without our speculative loop (ar, hf_*)."""
        if self.kind in LATTICE_KINDS:
            settings = {"cps": self.cps, "adl": self.adl, "draft_length": self.draft_length, "tree": self.tree}
            return DecodeConfig.from_dict(settings, f"method {self.name!r}")
        if self.kind in ("pld", "sps"):
            return DecodeConfig(cps=None, adl=None, draft_length=self.draft_length or 1)
        return None


@dataclass
class EvalConfig:
    # -- models
    verifier: str = field(default="", metadata={"help": "Verifier folder or Hub id (also gives the tokenizer)."})
    ar_drafter: str | None = field(
        default=None, metadata={"help": "Small causal LM folder: the default drafter of sps and hf_assisted."}
    )
    dtype: str = field(default="auto", metadata={"help": f"Dtype of every model, one of {list(DTYPE_NAMES)}."})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto (cuda if available)."})
    onednn: bool = field(
        default=False,
        metadata={
            "help": "CPU, float32: every model's linear layers use oneDNN with weights packed once (kernels.py)."
        },
    )
    # -- benchmark
    benchmark: str = field(default="spec_bench", metadata={"help": f"Prompt source, one of {list(BENCHMARK_KINDS)}."})
    benchmark_path: str | None = field(
        default=None,
        metadata={
            "help": "Spec-Bench question.jsonl (null: the copy shipped with diffuspec), a JSONL of prompts, or a "
            "folder of .txt files."
        },
    )
    tasks: list[str] | None = field(default=None, metadata={"help": "Only these tasks (comma-separated on the CLI)."})
    prompts_per_task: int | None = field(default=None, metadata={"help": "First N prompts of each task."})
    turns: str = field(default="first", metadata={"help": "'first' user turn, or 'all' turns (chat template)."})
    chat_template: bool = field(default=True, metadata={"help": "Wrap prompts in the verifier's chat template."})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "Cut each user turn to N tokens."})
    window_tokens: int = field(default=256, metadata={"help": "Prompt length for a text_dir benchmark."})
    # -- decoding
    max_new_tokens: int = field(default=1024, metadata={"help": "Token budget per prompt (Spec-Bench: 1024)."})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy, and outputs are checked against ar."})
    seed: int = field(default=0, metadata={"help": "Sampling seed when temperature > 0."})
    methods: list[Any] = field(
        default_factory=lambda: [{"kind": BASELINE}],
        metadata={"help": f"Methods to measure: mappings with a kind in {list(METHOD_KINDS)} (YAML only)."},
    )
    only: list[str] | None = field(default=None, metadata={"help": "Run only these method names (ar is kept)."})
    # -- measurement
    repeats: int = field(default=3, metadata={"help": "Interleaved timed repeats; speedup is their median (>= 3)."})
    warmup: int = field(default=3, metadata={"help": "Untimed generations per method before timing (Spec-Bench: 3)."})
    output_dir: str = field(default="runs/eval", metadata={"help": "Where results.json, results.md, plots go."})
    model_card: str | None = field(
        default=None, metadata={"help": "Drafter folder whose README.md gets the results table (marked section)."}
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads for the run (null: torch's default); recorded in env."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    resume: bool = field(
        default=True,
        metadata={"help": "Pick up a killed run from output_dir's journal.jsonl (same recipe and model files only)."},
    )

    def __post_init__(self) -> None:
        if not self.verifier:
            raise ValueError("verifier is required: a causal LM folder or Hub id")
        check_dtype_name(self.dtype)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as error:
                raise ValueError(f"device {self.device!r} is not a torch device: {error}") from None
        if self.benchmark not in BENCHMARK_KINDS:
            raise ValueError(f"benchmark must be one of {list(BENCHMARK_KINDS)}, got {self.benchmark!r}")
        if not self.benchmark_path and self.benchmark != "spec_bench":
            raise ValueError(f"benchmark_path is required for a {self.benchmark!r} benchmark")
        if self.benchmark == "spec_bench" and self.tasks:
            unknown = [t for t in self.tasks if t not in SPEC_BENCH_TASKS]
            if unknown:
                raise ValueError(f"unknown Spec-Bench task(s) {unknown}; tasks are {list(SPEC_BENCH_TASKS)}")
        if self.turns not in ("first", "all"):
            raise ValueError(f"turns must be 'first' or 'all', got {self.turns!r}")
        if self.turns == "all" and not self.chat_template:
            raise ValueError("turns='all' needs chat_template=true: later turns are laid out by the chat template")
        for name in ("prompts_per_task", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads}")
        if self.onednn and (self.device != "cpu" or self.dtype != "float32"):
            raise ValueError(f"onednn needs device 'cpu' and dtype 'float32', got {self.device!r} and {self.dtype!r}")
        positive = {"window_tokens": 1, "max_new_tokens": 1, "repeats": 3, "warmup": 0}
        for name, low in positive.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        self.methods = self._method_specs()

    def _method_specs(self) -> list[MethodSpec]:
        if not isinstance(self.methods, list):
            raise ValueError(f"methods must be a list of mappings, got {type(self.methods).__name__}")
        specs = [
            m if isinstance(m, MethodSpec) else MethodSpec.from_dict(m, f"methods[{i}]", self.ar_drafter)
            for i, m in enumerate(self.methods)
        ]
        names = [s.name for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"method names must be unique; repeated: {duplicates}")
        if BASELINE in names and specs[names.index(BASELINE)].kind != BASELINE:
            raise ValueError(f"the name {BASELINE!r} is reserved for the baseline (kind {BASELINE!r})")
        if sum(s.kind == BASELINE for s in specs) > 1:
            raise ValueError(f"only one {BASELINE!r} method: it is the baseline every speedup divides by")
        if BASELINE not in names:
            specs.insert(0, MethodSpec(kind=BASELINE, name=BASELINE))
        if self.only:
            unknown = sorted(set(self.only) - set(names) - {BASELINE})
            if unknown:
                raise ValueError(f"only names unknown method(s) {unknown}; configured: {names}")
            specs = [s for s in specs if s.name in self.only or s.name == BASELINE]
        return sorted(specs, key=lambda s: s.name != BASELINE)  # baseline first, the rest in recipe order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- YAML + command line


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Read a YAML recipe, then apply ``overrides`` (the CLI's flags, which win). Unknown keys are an error."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation config {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
        known = {f.name for f in fields(EvalConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    values.update(overrides or {})
    return EvalConfig(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` plus one flag per scalar field (``--max-new-tokens``); flags default to 'not given'."""
    parser.add_argument("--config", default=None, help="YAML recipe (recipes/<pair>/eval/config_<x>.yaml).")
    hints = typing.get_type_hints(EvalConfig)
    for f in fields(EvalConfig):
        if f.name == "methods":
            continue
        flag = "--" + f.name.replace("_", "-")
        base = _base_type(hints[f.name])
        default = f.default if f.default is not MISSING else None
        helptext = f"{f.metadata.get('help', '')} ({'required' if default == '' else f'default: {default}'})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=helptext)
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, type=_comma_list, default=argparse.SUPPRESS, help=helptext)
        else:
            parser.add_argument(flag, type=base, default=argparse.SUPPRESS, help=helptext)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(EvalConfig) if hasattr(args, f.name)}
    return load_config(args.config, overrides)


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str] | None`` -> ``list[str]``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
