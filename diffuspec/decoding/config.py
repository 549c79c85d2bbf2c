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


def adl_within_block(block: int | None) -> ADLConfig:
    """ADL whose every draft fits a drafter's ``block`` slots (None: any length): the defaults when they fit, else
    k_max = block with k_min and delta a third of it (12 slots: 4..12 in steps of 4, the SmolLM2 preset's)."""
    default = ADLConfig()
    if block is None or default.k_max <= block:
        return default
    third = max(1, round(block / 3))
    return ADLConfig(k_min=third, k_max=block, delta=third)


@dataclass
class TreeConfig:
    """Token-tree verification (``diffuspec.decoding.tree``): many lattice paths checked in one verifier pass.

    The tree holds the ``max_nodes`` best nodes by path score (the CPS score: drafter log-prob, plus the proxy's
    when CPS has one), branching into at most ``max_children`` candidates per slot, at most k deep.
    """

    max_nodes: int = field(default=16, metadata={"help": "Draft tokens verified per round (the tree's size)."})
    max_children: int = field(default=4, metadata={"help": "Candidates per slot a node may branch into."})
    include_path: bool = field(
        default=True, metadata={"help": "Put the path CPS picks in every tree first, so no round accepts less."}
    )
    budget: str = field(
        default="fixed",
        metadata={
            "help": "'fixed': every tree has max_nodes nodes; 'cost': each round the size (powers of two up to "
            "max_nodes) with the most tokens per second by the measured verify cost and acceptance per node."
        },
    )
    explore_every: int = field(
        default=16, metadata={"help": "With budget 'cost', every Nth round verifies max_nodes to re-measure."}
    )

    def __post_init__(self) -> None:
        _check(self.max_nodes >= 1, f"TreeConfig.max_nodes must be >= 1, got {self.max_nodes}")
        _check(self.max_children >= 1, f"TreeConfig.max_children must be >= 1, got {self.max_children}")
        _check(self.budget in ("fixed", "cost"), f"TreeConfig.budget must be 'fixed' or 'cost', got {self.budget!r}")
        _check(self.explore_every >= 1, f"TreeConfig.explore_every must be >= 1, got {self.explore_every}")


@dataclass
class DecodeConfig:
    """How the round loop drafts: CPS on/off, ADL on/off, fixed draft length when ADL is off, and whether one path
    (``tree=None``) or a token tree is verified per round."""

    cps: CPSConfig | None = field(default_factory=CPSConfig, metadata={"help": "None: raw argmax draft."})
    adl: ADLConfig | None = field(default_factory=ADLConfig, metadata={"help": "None: fixed draft_length."})
    draft_length: int = field(default=8, metadata={"help": "Draft length k when adl is None."})
    tree: TreeConfig | None = field(default=None, metadata={"help": "None: verify the one path CPS picks."})

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
        _check(
            self.tree is None or isinstance(self.tree, TreeConfig),
            f"DecodeConfig.tree must be a TreeConfig or None, got {type(self.tree).__name__}",
        )

    @classmethod
    def for_block(cls, block: int | None) -> DecodeConfig:
        """The defaults, with ADL within a drafter's ``block`` slots (None: any length): how a drafter decodes when
        its folder recommends nothing."""
        return cls(adl=adl_within_block(block))

    @property
    def max_draft_length(self) -> int:
        return self.adl.k_max if self.adl is not None else self.draft_length

    @property
    def draft_width(self) -> int:
        """Candidates per slot the lattice must keep for CPS and the tree."""
        return max(self.cps.m_max if self.cps is not None else 1, self.tree.max_children if self.tree else 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (``cps`` / ``adl`` / ``tree`` null when off). The proxy LM is a runtime object, never stored."""
        cps = None if self.cps is None else {k: v for k, v in dataclasses.asdict(self.cps).items() if k != "proxy"}
        adl = None if self.adl is None else dataclasses.asdict(self.adl)
        tree = None if self.tree is None else dataclasses.asdict(self.tree)
        return {"cps": cps, "adl": adl, "draft_length": self.draft_length, "tree": tree}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "decoding settings", proxy: Any = None) -> DecodeConfig:
        """The inverse of ``to_dict``: ``cps`` / ``adl`` / ``tree`` are keyword mappings (null: off; cps and adl
        default on, tree off); missing keys take the defaults, unknown keys are errors naming ``where``. ``proxy``
        goes to CPS."""
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a mapping, got {values!r}")
        allowed = ["adl", "cps", "draft_length", "tree"]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {allowed}")
        default = cls()
        cps = values.get("cps", {})
        adl = values.get("adl", {})
        tree = values.get("tree")
        return cls(
            cps=None if cps is None else _build(CPSConfig, cps, f"{where} cps", proxy=proxy),
            adl=None if adl is None else _build(ADLConfig, adl, f"{where} adl"),
            draft_length=values.get("draft_length", default.draft_length),
            tree=None if tree is None else _build(TreeConfig, tree, f"{where} tree"),
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
