"""The ``diffuspec`` command. Each subcommand parses its own flags and calls the library."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .decoding.config import ADLConfig, CPSConfig, DecodeConfig, TreeConfig
from .decoding.proxy import load_proxy
from .drafters.hybrid import MODES as HYBRID_MODES
from .dtypes import DTYPE_NAMES
from .extras import MissingExtraError, require

#: The decoding flags' destinations: with none given, the drafter folder's recommended decoding applies.
DECODE_FLAGS = ("no_cps", "no_adl", "draft_length", "k_min", "k_max", "beam", "lam", "mass", "m_max", "proxy",
                "tree_nodes", "tree_children", "tree_budget")  # fmt: skip


def add_decode_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that runs the speculative loop. Each defaults to None (not given); the
    defaults in the help apply to a flag left out when another decoding flag is given."""
    group = parser.add_argument_group(
        "decoding (none given: as the drafter's folder recommends, else ADL within the drafter's block)"
    )
    flag = group.add_argument
    flag("--no-cps", action="store_true", default=None, help="Verify the raw argmax draft instead of the CPS path.")
    flag("--no-adl", action="store_true", default=None, help="Use a fixed draft length (--draft-length).")
    flag("--draft-length", type=int, help=f"Fixed draft length when ADL is off (default {DecodeConfig.draft_length}).")
    flag("--k-min", type=int, help=f"ADL's shortest draft (default {ADLConfig.k_min}).")
    flag("--k-max", type=int, help=f"ADL's longest draft (default {ADLConfig.k_max}).")
    flag("--beam", type=int, help=f"CPS beam width (default {CPSConfig.beam}).")
    flag("--lam", type=float, help=f"CPS weight of the drafter score (default {CPSConfig.lam}).")
    flag("--mass", type=float, help=f"CPS candidate mass per slot (default {CPSConfig.mass}).")
    flag("--m-max", type=int, help=f"CPS candidates per slot at most (default {CPSConfig.m_max}).")
    flag("--proxy", help="n-gram proxy: a diffuspec .json or a KenLM .arpa/.bin file.")
    flag("--tree-nodes", type=int, help="Verify a token tree of N nodes (default 0: one path).")
    flag("--tree-children", type=int, help=f"Branches per tree node (default {TreeConfig.max_children}).")
    flag("--tree-budget", choices=("fixed", "cost"), help="Tree size: fixed (the default) or by measured cost.")


def decode_config_from_args(args: argparse.Namespace) -> DecodeConfig | None:
    """The decoding the flags ask for, defaults filling the flags left out; None when no decoding flag is given."""
    given = {name: value for name in DECODE_FLAGS if (value := getattr(args, name)) is not None}
    if not given:
        return None

    def value(name: str, default: object) -> object:
        return given.get(name, default)

    cps = (
        None
        if given.get("no_cps")
        else CPSConfig(
            m_max=value("m_max", CPSConfig.m_max),
            mass=value("mass", CPSConfig.mass),
            beam=value("beam", CPSConfig.beam),
            lam=value("lam", CPSConfig.lam),
            proxy=load_proxy(given["proxy"]) if "proxy" in given else None,
        )
    )
    adl = (
        None
        if given.get("no_adl")
        else ADLConfig(k_min=value("k_min", ADLConfig.k_min), k_max=value("k_max", ADLConfig.k_max))
    )
    tree_nodes = value("tree_nodes", 0)
    tree = (
        TreeConfig(
            max_nodes=tree_nodes,
            max_children=value("tree_children", TreeConfig.max_children),
            budget=value("tree_budget", TreeConfig.budget),
        )
        if tree_nodes
        else None
    )
    return DecodeConfig(cps=cps, adl=adl, draft_length=value("draft_length", DecodeConfig.draft_length), tree=tree)


def cmd_generate(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from .decoding.loop import SpeculativeDecoder
    from .drafters.hybrid import HybridDrafter
    from .drafters.prompt_lookup import PromptLookupDrafter
    from .loading import resolve_local

    config = decode_config_from_args(args)
    lookup = None
    if args.hybrid is not None:  # checked before any weights load
        if args.drafter is None:
            raise ValueError(f"--hybrid {args.hybrid} needs a --drafter: the copy joins that drafter's lattice")
        lookup = PromptLookupDrafter(max_ngram=args.max_ngram, min_ngram=args.min_ngram)
    verifier_path = resolve_local(args.verifier)
    tokenizer = AutoTokenizer.from_pretrained(verifier_path)
    decoder = SpeculativeDecoder.from_pretrained(
        verifier_path,
        args.drafter,
        config=config,
        dtype=args.dtype,
        device_map=args.device,
        draft_vocab=args.draft_vocab,
    )
    if lookup is not None:
        hybrid = HybridDrafter(decoder.drafter, lookup, mode=args.hybrid, cps=decoder.config.cps)
        decoder = SpeculativeDecoder(decoder.verifier.model, hybrid, decoder.config)
    if args.chat:
        messages = [{"role": "user", "content": args.prompt}]
        input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        input_ids = input_ids["input_ids"] if hasattr(input_ids, "keys") else input_ids
    else:
        input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(args.seed)
    out = decoder.generate(
        input_ids,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    )
    new_tokens = out.sequences[0, input_ids.shape[-1] :]
    print(tokenizer.decode(new_tokens, skip_special_tokens=True))
    s = out.stats
    summary = {
        "new_tokens": s.new_tokens,
        "rounds": s.rounds,
        "tau (verifier token included)": round(s.tau, 3),
        "mean_accepted_draft_tokens": round(s.mean_accepted, 3),
        "time_total_s": round(s.time_total_s, 4),
        "time_draft_s": round(s.time_draft_s, 4),
        "time_search_s": round(s.time_search_s, 4),
        "time_verify_s": round(s.time_verify_s, 4),
        "tokens_per_s": round(s.new_tokens / s.time_total_s, 2),
    }
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    require("eval", what="diffuspec eval")
    from .evaluation import config_from_args, evaluate

    return evaluate(config_from_args(args))


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_drafter

    print(push_drafter(args.folder, args.repo_id, token=args.token, private=args.private))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_drafter

    out = export_drafter(
        args.drafter,
        args.output_dir,
        format=args.format,
        verifier=args.verifier,
        repo_id=args.repo_id,
        overwrite=args.overwrite,
    )
    print(f"{args.format} checkpoint written to {out}")
    return 0


def cmd_draft_vocab(args: argparse.Namespace) -> int:
    from .drafters.vocabulary import vocabulary_from_dataset

    vocabulary, coverage = vocabulary_from_dataset(args.dataset, args.verifier, args.size, args.exclude)
    vocabulary.save(args.output)
    print(f"{len(vocabulary)} of {vocabulary.vocab_size} ids written to {args.output}; they cover {coverage:.1%} of "
          "held-out answer tokens (built from 90% of the answers, measured on the rest)")  # fmt: skip
    return 0


def setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with a YAML value (``3``, ``1e-3``, ``verifier``, ``{hidden_size: 256, num_layers: 2}``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def cmd_quickstart(args: argparse.Namespace) -> int:
    require("train", "eval", what="diffuspec quickstart")
    from .quickstart import run_quickstart

    run_quickstart(
        preset="fast" if args.fast else args.preset,
        run_dir=args.run_dir,
        force=args.force,
        only=args.stage,
        overrides=dict(args.set),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffuspec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="Decode one prompt speculatively and print the text and statistics.")
    gen.add_argument("--verifier", required=True, help="Causal LM folder or Hub id (also gives the tokenizer).")
    gen.add_argument("--drafter", default=None, help="Diffusion drafter folder or Hub id (none: plain decoding).")
    gen.add_argument("--draft-vocab", default=None, help="Draft vocabulary file (diffuspec draft-vocab): ids scored.")
    gen.add_argument(
        "--hybrid",
        nargs="?",
        const="select",
        choices=HYBRID_MODES,
        default=None,
        help="Also copy from the prompt (HybridDrafter): 'select' each round's likelier proposal (the default), or "
        "'merge' the copy into the drafter's lattice.",
    )
    gen.add_argument("--max-ngram", type=int, default=3, help="Longest tail n-gram the --hybrid copy matches.")
    gen.add_argument("--min-ngram", type=int, default=1, help="Shortest tail n-gram the --hybrid copy matches.")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--chat", action="store_true", help="Wrap the prompt in the verifier's chat template.")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", choices=DTYPE_NAMES, default="auto", help="Weights of both models (auto: as stored).")
    gen.add_argument("--device", default=None, help="device_map for both models, e.g. cpu, cuda, auto.")
    add_decode_flags(gen)
    gen.set_defaults(func=cmd_generate)

    quick = sub.add_parser("quickstart", help="Whole pipeline on a CPU: verifier, drafters, alignment, speed table.")
    quick.add_argument(
        "--preset",
        default="full",
        help="full or fast (recipes/tiny-cpu), smollm2 or smollm2-smoke (recipes/smollm2-135m-cpu, a real verifier).",
    )
    quick.add_argument("--fast", action="store_true", help="The small CI preset (same stages, smaller everything).")
    quick.add_argument(
        "--run-dir", default=None, help="Where every stage's artifacts are cached (runs/quickstart, runs/smollm2)."
    )
    quick.add_argument("--force", action="store_true", help="Rebuild stages even when cached.")
    quick.add_argument("--stage", default=None, help="Build only this stage (its inputs must be built).")
    quick.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one preset setting (repeatable); stages whose settings change are rebuilt.",
    )
    quick.set_defaults(func=cmd_quickstart)

    from .evaluation.config import add_arguments as add_eval_arguments

    ev = sub.add_parser("eval", help="Time decoding methods against plain decoding on a benchmark (YAML recipe).")
    add_eval_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="Write a drafter in another format (dflash: for vLLM / SGLang).")
    export.add_argument("drafter", help="Drafter folder or Hub id (a feature-conditioned drafter for dflash).")
    export.add_argument("--format", choices=["dflash"], default="dflash")
    export.add_argument("--output-dir", required=True, help="Folder to write (written whole or not at all).")
    export.add_argument("--verifier", default=None, help="Verifier it serves with (default: the recorded one).")
    export.add_argument("--repo-id", default=None, help="Hub name used in the card's serving commands.")
    export.add_argument("--overwrite", action="store_true", help="Replace an existing output folder.")
    export.set_defaults(func=cmd_export)

    vocab = sub.add_parser(
        "draft-vocab", help="The most frequent ids of the verifier's answers: a drafter's LM head scores only these."
    )
    vocab.add_argument("dataset", help="A verifier-data folder (train/generate_data.py): its answers are counted.")
    vocab.add_argument("--verifier", required=True, help="The verifier folder or Hub id (vocabulary size, EOS ids).")
    vocab.add_argument("--size", type=int, required=True, help="Ids to keep (the verifier's EOS ids among them).")
    vocab.add_argument("--exclude", type=int, action="append", default=[], help="An id never drafted (the mask id).")
    vocab.add_argument("--output", required=True, help="JSON file for eval recipes' draft_vocab key.")
    vocab.set_defaults(func=cmd_draft_vocab)

    push = sub.add_parser("push", help="Upload a drafter folder (weights, tokenizer, diffuspec_config.json, card).")
    push.add_argument("folder", help="Drafter or adapter folder; checked before anything is uploaded.")
    push.add_argument("--repo-id", required=True, help="Hub repository, e.g. you/dream-7b-for-qwen2.5-7b.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    push.add_argument("--token", default=None, help="Hub token (default: the logged-in one or HF_TOKEN).")
    push.set_defaults(func=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, MissingExtraError) as error:
        print(f"diffuspec {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
