"""Decoding configuration: CPS, ADL and the round loop.

Every field is validated in ``__post_init__`` so a bad value fails before any model runs, with the
field and its legal range in the message. ``DecodeConfig.to_dict`` / ``from_dict`` are the one translation to and
from plain JSON (recipes, drafter folders, results).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass
class CPSConfig:
    """Causal-consistency path search over the drafter's lattice (``diffuspec.decoding.cps``)."""

    m_max: int = field(default=15, metadata={"help": "Most candidates kept per slot (EOS may add one more)."})
    mass: float = field(default=0.8, metadata={"help": "Cumulative drafter mass a slot's candidate list must reach."})
    beam: int = field(default=3, metadata={"help": "Beam width B."})
    lam: float = field(default=0.5, metadata={"help": "Weight of the drafter score; 1 - lam weighs the proxy."})
    proxy: Any = field(default=None, metadata={"help": "Causal proxy LM (see diffuspec.decoding.proxy) or None."})
    search: str = field(default="beam", metadata={"help": "'beam' or 'dp' (exact Viterbi for n-gram proxies)."})
    length_norm: str = field(default="none", metadata={"help": "'none' or 'mean' (score divided by path length)."})
    truncate_at_raw_eos: bool = field(
        default=False, metadata={"help": "Cut the lattice after the first slot whose raw argmax is EOS."}
    )

    def __post_init__(self) -> None:
        _check(self.m_max >= 1, f"CPSConfig.m_max must be >= 1, got {self.m_max}")
        _check(0.0 < self.mass <= 1.0, f"CPSConfig.mass must be in (0, 1], got {self.mass}")
        _check(self.beam >= 1, f"CPSConfig.beam must be >= 1, got {self.beam}")
        _check(0.0 <= self.lam <= 1.0, f"CPSConfig.lam must be in [0, 1], got {self.lam}")
        _check(self.search in ("beam", "dp"), f"CPSConfig.search must be 'beam' or 'dp', got {self.search!r}")
        _check(
            self.length_norm in ("none", "mean"),
            f"CPSConfig.length_norm must be 'none' or 'mean', got {self.length_norm!r}",
        )
        if self.proxy is not None:
            _check(
                callable(getattr(self.proxy, "logprob", None)), "CPSConfig.proxy must have a logprob(context, token)"
            )


@dataclass
class ADLConfig:
    """Adaptive draft length (``diffuspec.decoding.adl``); the defaults are the paper's."""

    k_min: int = field(default=20, metadata={"help": "Smallest draft length."})
    k_max: int = field(default=30, metadata={"help": "Largest draft length; also the first round's length."})
    delta: int = field(default=10, metadata={"help": "Bonus added when acceptance kept up with generated length."})
    rho: float = field(default=0.5, metadata={"help": "EMA weight of the newest observation."})
    ema_init: str = field(default="zero", metadata={"help": "'zero' (paper: G_0 = A_0 = 0) or 'first_observation'."})

    def __post_init__(self) -> None:
        _check(self.k_min >= 1, f"ADLConfig.k_min must be >= 1, got {self.k_min}")
        _check(self.k_min <= self.k_max, f"ADLConfig.k_min ({self.k_min}) must be <= k_max ({self.k_max})")
        _check(self.delta >= 0, f"ADLConfig.delta must be >= 0, got {self.delta}")
        _check(0.0 < self.rho <= 1.0, f"ADLConfig.rho must be in (0, 1], got {self.rho}")
        _check(
            self.ema_init in ("zero", "first_observation"),
            f"ADLConfig.ema_init must be 'zero' or 'first_observation', got {self.ema_init!r}",
        )


@dataclass
class DecodeConfig:
    """How the round loop drafts: CPS on/off, ADL on/off, fixed draft length when ADL is off."""

    cps: CPSConfig | None = field(default_factory=CPSConfig, metadata={"help": "None: raw argmax draft."})
    adl: ADLConfig | None = field(default_factory=ADLConfig, metadata={"help": "None: fixed draft_length."})
    draft_length: int = field(default=8, metadata={"help": "Draft length k when adl is None."})

    def __post_init__(self) -> None:
        _check(self.draft_length >= 1, f"DecodeConfig.draft_length must be >= 1, got {self.draft_length}")
        _check(
            self.cps is None or isinstance(self.cps, CPSConfig),
            f"DecodeConfig.cps must be a CPSConfig or None, got {type(self.cps).__name__}",
        )
        _check(
            self.adl is None or isinstance(self.adl, ADLConfig),
            f"DecodeConfig.adl must be an ADLConfig or None, got {type(self.adl).__name__}",
        )

    @property
    def max_draft_length(self) -> int:
        return self.adl.k_max if self.adl is not None else self.draft_length

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (``cps`` / ``adl`` null when off). The proxy LM is a runtime object and is never stored."""
        cps = None if self.cps is None else {k: v for k, v in dataclasses.asdict(self.cps).items() if k != "proxy"}
        adl = None if self.adl is None else dataclasses.asdict(self.adl)
        return {"cps": cps, "adl": adl, "draft_length": self.draft_length}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "decoding settings", proxy: Any = None) -> DecodeConfig:
        """The inverse of ``to_dict``: ``cps`` / ``adl`` are keyword mappings (null: off); missing keys take the
        defaults, unknown keys are errors naming ``where``. ``proxy`` goes to CPS."""
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a mapping, got {values!r}")
        unknown = sorted(set(values) - {"cps", "adl", "draft_length"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: ['adl', 'cps', 'draft_length']")
        default = cls()
        cps = values.get("cps", {})
        adl = values.get("adl", {})
        return cls(
            cps=None if cps is None else _build(CPSConfig, cps, f"{where} cps", proxy=proxy),
            adl=None if adl is None else _build(ADLConfig, adl, f"{where} adl"),
            draft_length=values.get("draft_length", default.draft_length),
        )


def _build(cls: type, values: Any, where: str, **extra: Any) -> Any:
    """``cls(**values, **extra)``, with unknown keys named."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping or null, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls)} - set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    return cls(**values, **extra)
