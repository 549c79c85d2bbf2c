"""Per-round costs of speculative decoding at real model shapes (random weights), and the speedups they allow.

    python eval/gpu_bench.py --out runs/gpu_bench/h200.json --budget-s 420      # one H200, under 8 minutes
    python eval/gpu_bench.py --tiny --out runs/gpu_bench/tiny.json              # same code, tiny shapes, CPU

Nothing is downloaded: every model is a Qwen2 architecture with random weights at the real shape (Qwen2.5-7B and
-32B verifiers; a Dream-7B-shaped drafter = the Qwen2.5-7B shape with bidirectional attention; Qwen2.5-0.5B-shaped
AR and diffusion drafters). Each model is first built on the meta device to count its bytes (skipped with the
reason if it would not fit), then built for real under ``torch.device(device)`` in the chosen dtype. Timing does
not depend on weight values, only acceptance does, and acceptance is an input here (``--alphas`` or a
results.json from ``diffuspec eval``).

Measured, each as the median of ``--reps`` device-synchronised calls after ``--warmup`` calls:
- verify time per block size 1..max(ks)+1 at each context length (KV-cached prefix; block = pending + path);
  the AR step is the block of size 1;
- diffusion draft time per context length and draft length (DiffusionDrafter.propose: prefix + k masks, one pass,
  lattice built on the CPU);
- AR-drafter draft time per draft length (AutoregressiveDrafter.propose after a rejection: k one-token steps);
- conditioned draft time per context length (ConditionedDrafter.propose at a Qwen3-8B-width 5-layer drafter, block
  16: four new verifier feature rows projected into its cached memory, then one block pass; the verifier's
  embedding and LM head are built at its shape, nothing else of it);
- CPS time per draft length (beam search with a trigram proxy, on the CPU);
- token-tree verify time per context length and tree size (``--tree-nodes``: Verifier.step_tree over a best-first
  tree of a random lattice, 4 children per node, after the KV-cached context), also in AR steps.
Then diffuspec.evaluation.costmodel projects tokens/s and speedup for each verifier x drafter x context x k x
acceptance profile. ``--budget-s`` stops measuring (the rest is listed under "skipped") before the time is up.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from diffuspec.decoding.config import CPSConfig, TreeConfig
from diffuspec.decoding.cps import causal_path_search
from diffuspec.decoding.drafter import DraftRequest
from diffuspec.decoding.lattice import Lattice
from diffuspec.decoding.proxy import NGramProxy
from diffuspec.decoding.tree import build_tree
from diffuspec.decoding.verifier import Verifier
from diffuspec.devices import synchronize
from diffuspec.drafters.autoregressive import AutoregressiveDrafter
from diffuspec.drafters.conditioned import ConditionedDrafter
from diffuspec.drafters.diffusion import DiffusionDrafter
from diffuspec.evaluation.costmodel import RoundCosts, geometric_rates, predict
from diffuspec.evaluation.environment import environment
from diffuspec.files import write_json
from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel

# Published config.json shapes (hidden, layers, attention heads, KV heads, FFN, vocabulary rows, tied head).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-32b": dict(hidden=5120, layers=64, heads=40, kv_heads=8, ffn=27648, vocab=152064, tied=False),
    "qwen2.5-7b": dict(hidden=3584, layers=28, heads=28, kv_heads=4, ffn=18944, vocab=152064, tied=False),
    "qwen2.5-0.5b": dict(hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864, vocab=151936, tied=True),
    # Qwen3-8B's shape on the Qwen2 architecture (Qwen3 adds q/k norms and drops the q/k/v biases: same matmuls)
    "qwen3-8b": dict(hidden=4096, layers=36, heads=32, kv_heads=8, ffn=12288, vocab=151936, tied=False),
    "tiny-verifier": dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=256, tied=False),
    "tiny-drafter": dict(hidden=32, layers=1, heads=4, kv_heads=2, ffn=64, vocab=256, tied=False),
}
# name -> (shape, role); dlm = bidirectional diffusion drafter, ar = causal drafter.
REAL = {
    "verifiers": {"qwen2.5-7b": "qwen2.5-7b", "qwen2.5-32b": "qwen2.5-32b", "qwen3-8b": "qwen3-8b"},
    "dlm": {"dream-7b": "qwen2.5-7b", "qwen2.5-0.5b-dlm": "qwen2.5-0.5b"},
    "ar": {"qwen2.5-0.5b": "qwen2.5-0.5b"},
    # name -> (verifier name, draft layers, block size): a conditioned drafter serves its own verifier only
    "conditioned": {"conditioned-l5-qwen3-8b": ("qwen3-8b", 5, 16)},
}
TINY = {
    "verifiers": {"tiny-verifier": "tiny-verifier"},
    "dlm": {"tiny-dlm": "tiny-drafter"},
    "ar": {"tiny-ar": "tiny-drafter"},
    "conditioned": {"tiny-conditioned": ("tiny-verifier", 1, 4)},
}
NEW_ROWS = 4  # feature rows a conditioned round projects into its memory: the accepted tokens plus the correction


class Deadline:
    def __init__(self, budget_s: float) -> None:
        self.start, self.budget_s = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


def qwen2_config(shape: dict[str, Any], causal: bool) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        tie_word_embeddings=shape["tied"],
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        is_causal=causal,
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def parameter_bytes(build: Callable[[], torch.nn.Module], dtype: torch.dtype) -> int:
    """Parameter bytes of what ``build`` makes, built on the meta device (no memory is touched)."""
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters()) * torch.finfo(dtype).bits // 8


def model_bytes(config: Qwen2Config, dtype: torch.dtype) -> int:
    return parameter_bytes(functools.partial(Qwen2ForCausalLM, config), dtype)


def build_model(config: Qwen2Config, device: torch.device, dtype: torch.dtype) -> Qwen2ForCausalLM:
    """Random weights straight on the device, in ``dtype`` (no CPU copy, no checkpoint)."""
    with torch.device(device), default_dtype(dtype):
        model = Qwen2ForCausalLM(config)
    return model.eval()


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemAvailable from /proc/meminfo")


def fits(nbytes: int, device: torch.device) -> tuple[bool, str]:
    """Weights plus 15% for activations, cache and allocator slack must fit in what is free now."""
    free = free_bytes(device)
    return nbytes * 1.15 < free, f"needs {nbytes / 2**30:.1f} GiB + 15% headroom, {free / 2**30:.1f} GiB free"


def skip_reason(nbytes: int, device: torch.device, deadline: Deadline, args: argparse.Namespace) -> str | None:
    """Why a model of ``nbytes`` is not measured (it does not fit, or too little budget is left); None: measure it."""
    ok, why = fits(nbytes, device)
    if not ok:
        return why
    if deadline.left() < args.min_s_per_model:
        return f"{deadline.left():.0f} s left < --min-s-per-model {args.min_s_per_model}"
    return None


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> float:
    """Median seconds of ``reps`` synchronised calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# ---------------------------------------------------------------- measurements


@torch.inference_mode()
def verify_costs(model, contexts, blocks, device, args, deadline, skipped) -> dict[str, dict[str, float]]:
    """Verifier pass over a block of m tokens after a KV-cached context of n tokens (cache cropped back each call)."""
    vocab = model.config.vocab_size
    out: dict[str, dict[str, float]] = {}
    for n in contexts:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.randint(0, vocab, (1, n), device=device), cache=cache, use_cache=True, logits_to_keep=1)
        out[str(n)] = {}
        for m in blocks:
            if deadline.left() <= 0:
                skipped.append(f"verify context {n} block {m}: budget spent")
                continue
            block = torch.randint(0, vocab, (1, m), device=device)

            def step(block=block, m=m, cache=cache):
                model(input_ids=block, cache=cache, use_cache=True, logits_to_keep=m)
                cache.crop(-m)  # back to the n context tokens

            out[str(n)][str(m)] = timed(step, device, args.warmup, args.reps)
    return out


def tree_verify_costs(model, contexts, sizes, device, args, deadline, skipped) -> dict[str, dict[str, float]]:
    """Verifier.step_tree over a tree of n nodes (pending token + n, 4D mask) after a KV-cached context."""
    vocab = model.config.vocab_size
    out: dict[str, dict[str, float]] = {}
    for n in contexts:
        verifier = Verifier(model)
        verifier.start(torch.randint(0, vocab, (n,)))
        out[str(n)] = {}
        for size in sizes:
            if deadline.left() <= 0:
                skipped.append(f"tree verify context {n} nodes {size}: budget spent")
                continue
            lattice = Lattice.from_logprobs(torch.randn(size, vocab).log_softmax(-1), width=4)
            tree = build_tree(lattice, [], TreeConfig(max_nodes=size, max_children=4, include_path=False))

            def step(tree=tree, verifier=verifier):
                verifier.step_tree(tree)
                verifier.cache.crop(-(tree.size + 1))  # back to the context

            out[str(n)][str(size)] = timed(step, device, args.warmup, args.reps)
    return out


def dlm_draft_costs(model, contexts, ks, device, args, deadline, skipped) -> dict[str, dict[str, float]]:
    """DiffusionDrafter.propose: one bidirectional pass over prefix + k masks, then the top-M lattice."""
    vocab = model.config.vocab_size
    drafter = DiffusionDrafter(model, mask_token_id=vocab - 1, shifted=True, steps=1)
    out: dict[str, dict[str, float]] = {}
    for n in contexts:
        out[str(n)] = {}
        ids = torch.randint(0, vocab - 1, (n,))
        for k in ks:
            if deadline.left() <= 0:
                skipped.append(f"diffusion draft context {n} k {k}: budget spent")
                continue
            request = DraftRequest(ids=ids, k=k, width=CPSConfig.m_max, eos_token_ids=(0,))
            out[str(n)][str(k)] = timed(lambda r=request: drafter.propose(r), device, args.warmup, args.reps)
    return out


def ar_draft_costs(model, contexts, ks, device, args, deadline, skipped) -> dict[str, dict[str, float]]:
    """AutoregressiveDrafter.propose right after a rejection: the cache is cropped and k one-token steps run."""
    vocab = model.config.vocab_size
    drafter = AutoregressiveDrafter(model)
    out: dict[str, dict[str, float]] = {}
    for n in contexts:
        out[str(n)] = {}
        prefix = torch.randint(2, vocab, (n,))
        for k in ks:
            if deadline.left() <= 0:
                skipped.append(f"AR draft context {n} k {k}: budget spent")
                continue
            drafter.reset()
            drafter.propose(DraftRequest(ids=prefix, k=1, width=1, eos_token_ids=()))  # prefill, untimed
            flip = iter(range(10**9))

            def draft(k=k, prefix=prefix, flip=flip):
                last = torch.tensor([next(flip) % 2])  # differs from the previous call: a rejection
                drafter.propose(DraftRequest(ids=torch.cat([prefix, last]), k=k, width=1, eos_token_ids=()))

            out[str(n)][str(k)] = timed(draft, device, args.warmup, args.reps)
    return out


class BorrowedParts(torch.nn.Module):
    """The verifier parts a conditioned drafter borrows (embedding, LM head) at the verifier's shape, without the
    verifier's layers: all its draft pass reads."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.config = config
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embed

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head


def conditioned_draft_costs(drafter, contexts, ks, device, args, deadline, skipped) -> dict[str, dict[str, float]]:
    """ConditionedDrafter.propose after a round: NEW_ROWS feature rows join the cached memory, one block pass runs.
    The memory is cropped back before every call, so each timed call does exactly that work."""
    config = drafter.model.config
    out: dict[str, dict[str, float]] = {}
    for n in contexts:
        out[str(n)] = {}
        ids = torch.randint(0, config.vocab_size - 1, (n,))
        features = torch.randn(n - 1, config.feature_size, device=device, dtype=drafter.model.dtype)
        prior = n - NEW_ROWS
        drafter.reset()
        drafter.propose(DraftRequest(ids[:prior], 1, CPSConfig.m_max, (0,), features[: prior - 1]))
        for k in ks:
            if k > drafter.block_size:
                continue  # the block bounds k
            if deadline.left() <= 0:
                skipped.append(f"conditioned draft context {n} k {k}: budget spent")
                continue
            request = DraftRequest(ids, k, CPSConfig.m_max, (0,), features)

            def step(request=request, kept=ids[: prior - 1]):
                drafter.memory.crop(kept.numel())
                drafter.memory_ids = kept
                drafter.propose(request)

            out[str(n)][str(k)] = timed(step, device, args.warmup, args.reps)
    return out


def measure_conditioned(plan, contexts, ks, device, dtype, args, deadline, results) -> None:
    for name, (verifier_name, layers, block) in plan["conditioned"].items():
        if args.models and name not in args.models:
            continue
        verifier_config = qwen2_config(SHAPES[plan["verifiers"][verifier_name]], causal=True)
        config = ConditionedDrafterConfig.for_verifier(
            verifier_config, mask_token_id=verifier_config.vocab_size - 1, num_hidden_layers=layers, block_size=block
        )
        nbytes = parameter_bytes(functools.partial(ConditionedDrafterModel, config), dtype)
        nbytes += parameter_bytes(functools.partial(BorrowedParts, verifier_config), dtype)
        reason = skip_reason(nbytes, device, deadline, args)
        if reason is not None:
            results["skipped"].append(f"{name}: {reason}")
            continue
        start = time.perf_counter()
        with torch.device(device), default_dtype(dtype):
            parts = BorrowedParts(verifier_config)
            drafter = ConditionedDrafter(ConditionedDrafterModel(config).eval(), parts)
        synchronize(device)
        results["models"][name] = {
            "verifier": verifier_name,
            "layers": layers,
            "block_size": block,
            "parameter_bytes": nbytes,
            "build_s": time.perf_counter() - start,
        }
        results["conditioned_draft_s"][name] = conditioned_draft_costs(
            drafter, contexts, ks, device, args, deadline, results["skipped"]
        )
        del drafter, parts
        if device.type == "cuda":
            torch.cuda.empty_cache()


def cps_costs(vocab: int, ks: list[int], context: int, args, deadline, skipped) -> dict[str, float]:
    """Beam CPS over a random lattice (fresh per call, so the proxy's cache never answers) with a trigram proxy."""
    generator = torch.Generator().manual_seed(0)
    corpus = [torch.randint(0, vocab, (512,), generator=generator).tolist() for _ in range(8)]
    proxy = NGramProxy.fit(corpus, vocab_size=vocab, order=3)
    config = CPSConfig(proxy=proxy)
    out: dict[str, float] = {}
    for k in ks:
        if deadline.left() <= 0:
            skipped.append(f"CPS k {k}: budget spent")
            continue
        ids = torch.randint(0, vocab, (context,), generator=generator)

        def search(k=k, ids=ids):
            logits = torch.randn(k, vocab, generator=generator) * 4.0  # peaked rows, like a confident drafter
            lattice = Lattice.from_logprobs(torch.log_softmax(logits, -1), config.m_max, (0,))
            causal_path_search(lattice, ids, config)

        out[str(k)] = timed(search, torch.device("cpu"), args.warmup, args.reps)
    return out


# ---------------------------------------------------------------- projection


def profiles(args) -> dict[str, list[float]]:
    """Acceptance profiles: geometric ones per --alphas, plus every method of a results.json, if given."""
    longest = max(args.ks)
    out = {f"geometric alpha={a}": geometric_rates(a, longest) for a in args.alphas}
    if args.profile_json:
        results = json.loads(Path(args.profile_json).read_text())
        for name, m in results["methods"].items():
            rates = m.get("acceptance_by_position") or []
            if rates:
                out[f"{args.profile_json}:{name}"] = (rates + [0.0] * longest)[:longest]
    return out


def project(results: dict[str, Any], ks: list[int], rates_by_name: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for verifier, by_context in results["verify_s"].items():
        tables = (("dlm", results["dlm_draft_s"]), ("ar", results["ar_draft_s"]))
        tables += (("conditioned", results["conditioned_draft_s"]),)
        for kind, table in tables:
            for drafter, drafts in table.items():
                if kind == "conditioned" and results["models"][drafter]["verifier"] != verifier:
                    continue  # trained on one verifier's features: no other pairing exists
                for n, verify in by_context.items():
                    draft = drafts.get(n, {})
                    search = results["cps_s"] if kind != "ar" else None
                    for k in ks:
                        needed = [
                            str(k + 1) in verify,
                            "1" in verify,
                            str(k) in draft,
                            search is None or str(k) in search,
                        ]
                        if not all(needed):
                            continue
                        costs = RoundCosts(
                            ar_step=verify["1"],
                            verify={int(m): s for m, s in verify.items()},
                            draft={int(x): s for x, s in draft.items()},
                            search={int(x): s for x, s in search.items()} if search else None,
                        )
                        for profile, rates in rates_by_name.items():
                            p = predict(costs, rates, k)
                            rows.append(
                                {
                                    "verifier": verifier,
                                    "drafter": drafter,
                                    "drafter_kind": kind,
                                    "context": int(n),
                                    "k": k,
                                    "profile": profile,
                                    "tau": p.tokens_per_round,
                                    "round_s": p.round_time_s,
                                    "tokens_per_s": p.tokens_per_s,
                                    "ar_tokens_per_s": p.ar_tokens_per_s,
                                    "speedup": p.speedup,
                                }
                            )
    return rows


# ---------------------------------------------------------------- main


def measure_models(plan, role, measure, contexts, sizes, device, dtype, args, deadline, results) -> None:
    for name, shape_name in plan[role].items():
        if args.models and name not in args.models:
            continue
        shape = SHAPES[shape_name]
        config = qwen2_config(shape, causal=role != "dlm")
        nbytes = model_bytes(config, dtype)
        reason = skip_reason(nbytes, device, deadline, args)
        if reason is not None:
            results["skipped"].append(f"{name}: {reason}")
            continue
        start = time.perf_counter()
        model = build_model(config, device, dtype)
        synchronize(device)
        results["models"][name] = {
            "shape": shape_name,
            "causal": role != "dlm",
            "parameter_bytes": nbytes,
            "build_s": time.perf_counter() - start,
        }
        table = measure(model, contexts, sizes, device, args, deadline, results["skipped"])
        key = {"verifiers": "verify_s", "dlm": "dlm_draft_s", "ar": "ar_draft_s"}[role]
        results[key][name] = table
        if role == "verifiers":  # the same model, built once
            trees = tree_verify_costs(model, contexts, args.tree_nodes, device, args, deadline, results["skipped"])
            results["tree_verify_s"][name] = trees
            results["tree_verify_steps"][name] = {
                n: {size: s / table[n]["1"] for size, s in by_size.items()}
                for n, by_size in trees.items()
                if "1" in table.get(n, {})
            }
        if device.type == "cuda":
            results["models"][name]["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def main(args: argparse.Namespace) -> dict[str, Any]:
    deadline = Deadline(args.budget_s)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tiny:
        plan, device, dtype = TINY, torch.device("cpu"), torch.float32
    else:
        plan, device, dtype = REAL, torch.device(args.device), getattr(torch, args.dtype)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny on a CPU, or on a machine with a GPU")
    blocks = list(range(1, max(args.ks) + 2))  # a round verifies pending + k path tokens
    results: dict[str, Any] = {
        "schema": "diffuspec-gpu-bench-v1",
        "mode": "tiny" if args.tiny else "real-shapes",
        "device": str(device),
        "dtype": str(dtype),
        "contexts": args.contexts,
        "ks": args.ks,
        "reps": args.reps,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "env": environment(device),
        "models": {},
        "verify_s": {},
        "dlm_draft_s": {},
        "ar_draft_s": {},
        "conditioned_draft_s": {},
        "cps_s": {},
        "tree_verify_s": {},
        "tree_verify_steps": {},  # tree verify time in AR steps (verify of one token) at the same context
        "skipped": [],
    }

    # ---- CPS runs on the CPU whatever the device; the lattice vocabulary is the verifiers'
    vocab = SHAPES[next(iter(plan["verifiers"].values()))]["vocab"]
    results["cps_s"] = cps_costs(vocab, args.ks, max(args.contexts), args, deadline, results["skipped"])

    # ---- models, smallest first so a short budget still yields a full pair
    measure_models(plan, "ar", ar_draft_costs, args.contexts, args.ks, device, dtype, args, deadline, results)
    measure_models(plan, "dlm", dlm_draft_costs, args.contexts, args.ks, device, dtype, args, deadline, results)
    measure_conditioned(plan, args.contexts, args.ks, device, dtype, args, deadline, results)
    measure_models(plan, "verifiers", verify_costs, args.contexts, blocks, device, dtype, args, deadline, results)

    # ---- the AR step is a verify pass of one token; projection with the cost model
    results["ar_step_s"] = {
        v: {n: t["1"] for n, t in by_n.items() if "1" in t} for v, by_n in results["verify_s"].items()
    }
    results["projections"] = project(results, args.ks, profiles(args))
    results["elapsed_s"] = time.perf_counter() - deadline.start
    write_json(args.out, results)
    print(f"wrote {args.out} ({len(results['projections'])} projections, {len(results['skipped'])} skipped)")
    return results


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Tiny shapes on the CPU (what the tests run).")
    parser.add_argument("--out", default="runs/gpu_bench/results.json", help="JSON output file.")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="Stop measuring this many seconds after main starts (imports and CUDA start-up come on top).",
    )
    parser.add_argument("--min-s-per-model", type=float, default=60.0, help="Skip a model with less time left.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--models", type=_names, default=None, help="Only these model names (comma-separated).")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--contexts", type=_ints, default=None, help="Context lengths (default 256,1024; tiny 16,32).")
    parser.add_argument("--ks", type=_ints, default=None, help="Draft lengths (default 8,16,32; tiny 2,4).")
    parser.add_argument("--tree-nodes", type=_ints, default=None, help="Tree sizes (default 16,32,64; tiny 4,8).")
    parser.add_argument("--alphas", type=_floats, default=[0.6, 0.7, 0.8, 0.9], help="Geometric acceptance rates.")
    parser.add_argument("--profile-json", default=None, help="A results.json whose acceptance profiles to project.")
    parser.add_argument("--reps", type=int, default=None, help="Timed calls per point (default 5; tiny 2).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed calls per point (default 2; tiny 1).")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    defaults = {
        "contexts": ([16, 32], [256, 1024]),
        "ks": ([2, 4], [8, 16, 32]),
        "tree_nodes": ([4, 8], [16, 32, 64]),
        "reps": (2, 5),
        "warmup": (1, 2),
    }
    for name, (tiny, real) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else real)
    return args


if __name__ == "__main__":
    args = parse()
    main(args)
