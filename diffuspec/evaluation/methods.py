"""The decoding methods the harness times, behind one call: ``runner(ids, max_new_tokens, temperature, seed)``.

- :class:`DecoderRunner` wraps our :class:`~diffuspec.decoding.loop.SpeculativeDecoder` (``ar``, ``pld``, ``sps``
  and diffusion drafters). Rounds, accepted lengths and the draft / search / verify split come from its stats.
- :class:`HFRunner` wraps transformers' ``generate`` (``hf_generate``, ``hf_pld``, ``hf_assisted``). transformers
  does not return per-round counts, so a forward pre-hook on the verifier records each pass (tokens already
  cached, tokens fed); rounds and accepted lengths follow from that layout, and when the layout is not the one
  assisted decoding uses, tau is reported as null with the reason. Its time is wall clock only.

Both time the whole call with the device synchronised before and after, so every method is timed the same way.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from ..decoding.drafter import Drafter
from ..decoding.loop import SpeculativeDecoder
from ..decoding.proxy import load_proxy
from ..devices import synchronize
from ..drafters.autoregressive import AutoregressiveDrafter
from ..drafters.conditioned import ConditionedDrafter
from ..drafters.diffusion import DiffusionDrafter
from ..drafters.hybrid import HybridDrafter
from ..drafters.prompt_lookup import PromptLookupDrafter
from ..drafters.vocabulary import DraftVocabulary
from ..eos import model_eos_ids, pad_token_id
from ..kernels import prepack_linear_layers
from ..loading import config_vocab_size, has_tokenizer, load_causal_lm, load_diffusion_model, resolve_local
from ..models.tokenizers import check_tokenizers_compatible
from .config import EvalConfig, MethodSpec


@dataclass
class RoundLog:
    """Per verifier round: draft tokens accepted, tokens verified after the path search (a tree's nodes), tokens
    drafted (k), and the deepest position verified (None: the path lengths, as for every chain)."""

    accepted: list[int]
    path_lengths: list[int]
    draft_lengths: list[int]
    depths: list[int] | None = None


@dataclass
class RunOutput:
    tokens: list[int]  # new tokens only
    time_s: float  # device-synchronised wall clock of the whole call
    rounds: RoundLog | None  # None: not observable, see note
    split: dict[str, float] | None = None  # {"draft", "search", "verify"} seconds; None for transformers methods
    note: str | None = None


@dataclass
class DecoderRunner:
    name: str
    kind: str
    decoder: SpeculativeDecoder
    eos: tuple[int, ...]
    tau_source: str = "decoder round statistics"

    @property
    def device(self) -> torch.device:
        return self.decoder.verifier.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.verifier.model.dtype

    def __call__(self, ids: torch.Tensor, max_new_tokens: int, temperature: float, seed: int) -> RunOutput:
        generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
        synchronize(self.device)
        start = time.perf_counter()
        out = self.decoder.generate(
            ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            generator=generator,
            eos_token_id=list(self.eos),
        )
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        s = out.stats
        split = {"draft": s.time_draft_s, "search": s.time_search_s, "verify": s.time_verify_s}
        rounds = RoundLog(list(s.accepted), list(s.path_lengths), list(s.draft_lengths), list(s.depths))
        return RunOutput(out.sequences[0, ids.numel() :].tolist(), elapsed, rounds, split)


@dataclass
class HFRunner:
    name: str
    kind: str
    model: PreTrainedModel
    eos: tuple[int, ...]
    pad_token_id: int
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    tau_source: str = "verifier forward passes counted by a pre-forward hook"

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def __call__(self, ids: torch.Tensor, max_new_tokens: int, temperature: float, seed: int) -> RunOutput:
        input_ids = ids.to(self.device)[None]
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            do_sample=temperature > 0,
            num_beams=1,
            eos_token_id=list(self.eos) or None,
            pad_token_id=self.pad_token_id,
            **self.generate_kwargs,
        )
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)  # plain sampling, as our decoder does
            torch.manual_seed(seed)
        calls: list[tuple[int, int] | None] = []
        handle = self.model.register_forward_pre_hook(_recorder(calls), with_kwargs=True)
        try:
            synchronize(self.device)
            start = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            synchronize(self.device)
            elapsed = time.perf_counter() - start
        finally:
            handle.remove()
        tokens = out[0, ids.numel() :].tolist()
        rounds = rounds_from_forward_calls(calls, ids.numel(), len(tokens))
        if isinstance(rounds, str):
            return RunOutput(tokens, elapsed, None, note=rounds)
        return RunOutput(tokens, elapsed, rounds)


def _recorder(calls: list[tuple[int, int] | None]):
    def record(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        cache, input_ids = kwargs.get("cache"), kwargs.get("input_ids")
        if cache is None or input_ids is None:
            calls.append(None)
        else:
            calls.append((int(cache.get_seq_length()), int(input_ids.shape[-1])))

    return record


def rounds_from_forward_calls(calls: list[tuple[int, int] | None], prompt_len: int, new_tokens: int) -> RoundLog | str:
    """Rounds of a transformers ``generate`` call from its verifier passes ``(cached tokens, tokens fed)``.

    transformers' greedy and assisted loops run one verifier pass per round: the first pass reads the prompt
    plus the candidates, and each later pass starts from a cache cropped to the committed sequence minus its
    newest token. So the committed length before round i > 0 is ``cached_i + 1``, the candidates of round i are
    ``fed_i - 1`` (``fed_0 - prompt_len`` for the first), and a round appends the difference of committed
    lengths. Returns the reason as a string when the passes do not fit this layout.
    """
    if not calls or any(c is None for c in calls):
        return "transformers' forward calls did not expose the cache and input ids, so rounds were not counted"
    if calls[0][0] != 0:
        return f"the first verifier pass found {calls[0][0]} cached tokens, not a fresh cache; rounds not counted"
    committed = [prompt_len] + [cached + 1 for cached, _ in calls[1:]] + [prompt_len + new_tokens]
    appended = [b - a for a, b in zip(committed, committed[1:], strict=False)]
    proposed = [calls[0][1] - prompt_len] + [fed - 1 for _, fed in calls[1:]]
    if any(a < 1 or a - 1 > p or p < 0 for a, p in zip(appended, proposed, strict=True)):
        return "transformers' verifier passes do not follow the assisted-decoding layout; rounds not counted"
    accepted = [a - 1 for a in appended]
    return RoundLog(accepted, proposed, proposed)


# ---------------------------------------------------------------- loading


def check_drafter_compatible(verifier: str, drafter: str) -> None:
    """Refuse a drafter whose ids mean other strings to the verifier, before any weights load: equal vocabulary
    sizes, and, when both folders have tokenizers, the same id for every token string both know."""
    verifier_dir, drafter_dir = resolve_local(verifier), resolve_local(drafter)
    v_size, d_size = config_vocab_size(verifier_dir), config_vocab_size(drafter_dir)
    if v_size != d_size:
        raise ValueError(
            f"drafter {drafter} has {d_size} vocabulary rows, the verifier {verifier} has {v_size}; "
            "drafted ids are handed to the verifier unchanged, so both must use one tokenizer and embedding size"
        )
    if has_tokenizer(verifier_dir) and has_tokenizer(drafter_dir):
        from transformers import AutoTokenizer

        check_tokenizers_compatible(
            AutoTokenizer.from_pretrained(drafter_dir), AutoTokenizer.from_pretrained(verifier_dir)
        )


def check_inputs(config: EvalConfig) -> None:
    """Everything that can be checked without loading weights: drafter folders, proxies, tokenizer agreement."""
    for spec in config.methods:
        if spec.proxy is not None and not Path(spec.proxy).is_file():
            raise FileNotFoundError(f"method {spec.name!r}: proxy file {spec.proxy} does not exist")
        if spec.draft_vocab is not None:
            vocabulary = DraftVocabulary.load(spec.draft_vocab)
            verifier_size = config_vocab_size(resolve_local(config.verifier))
            if vocabulary.vocab_size != verifier_size:
                raise ValueError(
                    f"method {spec.name!r}: draft vocabulary {spec.draft_vocab} indexes {vocabulary.vocab_size} ids, "
                    f"the verifier has {verifier_size}"
                )
        if spec.drafter is not None:
            check_drafter_compatible(config.verifier, spec.drafter)


def stop_tokens(model: PreTrainedModel, tokenizer: Any) -> tuple[tuple[int, ...], int]:
    """EOS ids (the verifier's generation config, else its tokenizer's eos) and a pad id for transformers."""
    eos = model_eos_ids(model, tokenizer)
    return eos, pad_token_id(tokenizer, eos)


def neutral_generation_config(eos: tuple[int, ...], pad_token_id: int) -> GenerationConfig:
    """A generation config with nothing but stop and pad ids. A checkpoint's own generation_config.json (Qwen2.5
    Instruct ships repetition_penalty=1.05, top_k, top_p) would otherwise be merged into transformers' greedy
    decoding and change its tokens, while our ``ar`` is the plain argmax."""
    return GenerationConfig(eos_token_id=list(eos) or None, pad_token_id=pad_token_id)


def build_runner(
    spec: MethodSpec,
    verifier: PreTrainedModel,
    eos: tuple[int, ...],
    pad_token_id: int,
    ar_drafter: PreTrainedModel | None = None,
    diffusion: tuple[PreTrainedModel, int, bool] | None = None,
    conditioned: ConditionedDrafter | None = None,
) -> DecoderRunner | HFRunner:
    """One runner from an already-loaded verifier (and drafter model, if the method needs one)."""
    if spec.kind == "ar":
        return DecoderRunner(spec.name, spec.kind, SpeculativeDecoder(verifier), eos)
    if spec.kind == "hf_generate":
        return HFRunner(spec.name, spec.kind, verifier, eos, pad_token_id)
    if spec.kind == "hf_pld":
        kwargs = {"prompt_lookup_num_tokens": spec.draft_length, "max_matching_ngram_size": spec.max_ngram}
        return HFRunner(spec.name, spec.kind, verifier, eos, pad_token_id, kwargs)
    if spec.kind == "hf_assisted":
        ar_drafter.generation_config = GenerationConfig(
            num_assistant_tokens=spec.draft_length,
            num_assistant_tokens_schedule=spec.schedule,
            assistant_confidence_threshold=spec.confidence_threshold,
            eos_token_id=list(eos) or None,
            pad_token_id=pad_token_id,
        )
        return HFRunner(spec.name, spec.kind, verifier, eos, pad_token_id, {"assistant_model": ar_drafter})
    if spec.kind == "pld":
        drafter = lookup_drafter(spec)
        return DecoderRunner(spec.name, spec.kind, SpeculativeDecoder(verifier, drafter, spec.decode), eos)
    if spec.kind == "sps":
        return DecoderRunner(
            spec.name, spec.kind, SpeculativeDecoder(verifier, AutoregressiveDrafter(ar_drafter), spec.decode), eos
        )
    if spec.kind == "diffusion":
        model, mask_token_id, shifted = diffusion
        drafter = DiffusionDrafter(
            model,
            mask_token_id=mask_token_id,
            shifted=shifted,
            steps=spec.steps,
            context_window=spec.context_window,
            vocabulary=draft_vocabulary(spec),
        )
        return _lattice_runner(spec, verifier, drafter, eos)
    if spec.kind == "conditioned":
        return _lattice_runner(spec, verifier, conditioned, eos)
    raise ValueError(f"unknown method kind {spec.kind!r}")


def draft_vocabulary(spec: MethodSpec) -> DraftVocabulary | None:
    return None if spec.draft_vocab is None else DraftVocabulary.load(spec.draft_vocab)


def lookup_drafter(spec: MethodSpec) -> PromptLookupDrafter:
    """The prompt-lookup drafter of a ``pld`` method or of a hybrid's copy."""
    return PromptLookupDrafter(max_ngram=spec.max_ngram, min_ngram=spec.min_ngram)


def _lattice_runner(
    spec: MethodSpec, verifier: PreTrainedModel, drafter: Drafter, eos: tuple[int, ...]
) -> DecoderRunner:
    """A drafter whose lattice goes through the method's CPS (with its proxy) and ADL settings; with ``hybrid``
    it is wrapped in a ``HybridDrafter`` that scores paths with the same CPS."""
    config = spec.decode
    if spec.proxy:
        config = dataclasses.replace(config, cps=dataclasses.replace(config.cps, proxy=load_proxy(spec.proxy)))
    if spec.hybrid is not None:
        margin = {} if spec.copy_margin is None else {"copy_margin": spec.copy_margin}
        drafter = HybridDrafter(
            drafter, lookup_drafter(spec), mode=spec.hybrid, cps=config.cps, skip_margin=spec.skip_margin, **margin
        )
    return DecoderRunner(spec.name, spec.kind, SpeculativeDecoder(verifier, drafter, config), eos)


def load_runners(
    config: EvalConfig, verifier: PreTrainedModel, eos: tuple[int, ...], pad_token_id: int, device: torch.device
) -> list[DecoderRunner | HFRunner]:
    """Load each drafter folder once (several methods may share one) and build the runners in recipe order. With
    ``config.onednn`` every model, the verifier first, gets oneDNN-packed linear layers before any runner exists."""

    def packed(model: torch.nn.Module) -> torch.nn.Module:
        if config.onednn:
            prepack_linear_layers(model)
        return model

    packed(verifier)
    ar_models: dict[str, PreTrainedModel] = {}
    dlms: dict[str, tuple[PreTrainedModel, int, bool]] = {}
    runners = []
    for spec in config.methods:
        ar_model = diffusion = conditioned = None
        if spec.kind in ("sps", "hf_assisted"):
            if spec.drafter not in ar_models:
                ar_models[spec.drafter] = packed(load_causal_lm(spec.drafter, config.dtype, device))
            ar_model = ar_models[spec.drafter]
        if spec.kind == "diffusion":
            if spec.drafter not in dlms:
                model, mask_token_id, shifted = load_diffusion_model(
                    spec.drafter, dtype=config.dtype, device_map=str(device)
                )
                dlms[spec.drafter] = packed(model), mask_token_id, shifted
            diffusion = dlms[spec.drafter]
        if spec.kind == "conditioned":  # one drafter per method: it holds its own context memory
            conditioned = ConditionedDrafter.from_pretrained(
                spec.drafter, verifier, dtype=config.dtype, device_map=str(device), vocabulary=draft_vocabulary(spec)
            )
            packed(conditioned.model)
        runners.append(build_runner(spec, verifier, eos, pad_token_id, ar_model, diffusion, conditioned))
    return runners
