"""End-to-end runs of the evaluation harness on tiny random models saved to folders (save_pretrained)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from diffuspec.cards import CARD_BEGIN, CARD_END
from diffuspec.evaluation import (
    EvalConfig,
    MethodSpec,
    build_prompts,
    build_runner,
    evaluate,
    measure,
    questions_from_token_ids,
    report_run,
)
from diffuspec.evaluation.benchmarks import SPEC_BENCH_QUESTIONS as SPEC_BENCH
from diffuspec.evaluation.methods import HFRunner, check_drafter_compatible
from diffuspec.evaluation.report import PLOTS, per_task_table, round_cost_table
from diffuspec.models.tiny import tiny_qwen2

TEXTS = [
    "Write a short story about a robot who learns to paint. The robot paints the sea, the sea paints the robot.",
    "Translate the following sentence into French: the cat sat on the mat, and the mat sat on the floor.",
    "Summarize the article: prices rose, prices fell, and then prices rose again in the market today.",
]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_models = load_script("tiny_models")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """eval/tiny_models.py's folders at test size: verifier, AR drafter (the verifier's own weights, so it always
    agrees), diffusion drafter, proxy; plus a JSONL of prompts in three tasks."""
    root = tmp_path_factory.mktemp("eval_models")
    texts = TEXTS + [json.loads(line)["turns"][0] for line in SPEC_BENCH.read_text().splitlines()[::40]]
    paths = tiny_models.write_models(
        root, texts, vocab_size=320, hidden_size=64, num_layers=2, drafter_layers=1, init_std=0.3
    )
    rows = [{"prompt": TEXTS[0], "task": "story"}, {"text": TEXTS[1], "task": "translate"}, {"prompt": TEXTS[2]}]
    paths["prompts"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["tokenizer"] = AutoTokenizer.from_pretrained(paths["verifier"])
    return paths


def all_methods(folders) -> list[dict]:
    return [
        {"kind": "ar"},
        {"kind": "hf_generate"},
        {"kind": "pld", "draft_length": 4},
        {"kind": "hf_pld", "draft_length": 4},
        {"kind": "sps", "draft_length": 3},
        {"kind": "hf_assisted", "draft_length": 3, "confidence_threshold": 0.0},
        {
            "kind": "diffusion",
            "name": "dlm_cps_adl",
            "drafter": str(folders["dlm"]),
            "cps": {"beam": 2},
            "adl": {"k_min": 2, "k_max": 4, "delta": 1},
            "proxy": str(folders["proxy"]),
        },
        {
            "kind": "conditioned",
            "name": "dlm_conditioned",
            "drafter": str(folders["conditioned"]),
            "adl": {"k_min": 2, "k_max": 6, "delta": 2},
            "proxy": str(folders["proxy"]),
        },
        {
            "kind": "diffusion",
            "name": "dlm_raw_k3",
            "drafter": str(folders["dlm"]),
            "cps": None,
            "adl": None,
            "draft_length": 3,
        },
    ]


def tiny_config(folders, tmp_path, **overrides) -> EvalConfig:
    values = dict(
        verifier=str(folders["verifier"]),
        ar_drafter=str(folders["ar_drafter"]),
        dtype="float64",  # block and one-token passes agree far beyond argmax ties
        benchmark="jsonl",
        benchmark_path=str(folders["prompts"]),
        chat_template=False,
        max_new_tokens=12,
        repeats=3,
        warmup=1,
        output_dir=str(tmp_path / "out"),
        methods=all_methods(folders),
        progress=False,
        threads=1,
    )
    values.update(overrides)
    return EvalConfig(**values)


def check_schema(results: dict, methods: list[str]) -> None:
    for key in ("methods", "baseline", "repeats", "max_new_tokens", "device", "env", "tasks", "lossless"):
        assert key in results, key
    assert results["baseline"] == "ar" and results["repeats"] == 3
    assert results["env"]["torch_num_threads"] == 1  # the run's setting, recorded
    assert set(results["methods"]) == set(methods)
    for name, m in results["methods"].items():
        for key in ("tau", "tokens_per_s", "speedup", "speedup_min", "speedup_max", "lossless", "per_task"):
            assert key in m, (name, key)
        assert m["speedup_min"] <= m["speedup"] <= m["speedup_max"]
        assert m["tokens_per_s"] > 0
        for task, entry in m["per_task"].items():
            assert task in results["tasks"] and {"tau", "speedup"} <= set(entry)
        assert m["failures"] == 0


def test_tiny_jsonl_run(folders, tmp_path):
    config = tiny_config(folders, tmp_path)
    threads = torch.get_num_threads()
    assert evaluate(config) == 0
    assert torch.get_num_threads() == threads  # the run's thread setting does not leak
    out = tmp_path / "out"
    for name in ("results.json", "results.md", "records.jsonl", *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    names = [m.name for m in config.methods]
    check_schema(results, names)
    assert results["tasks"] == {"story": 1, "translate": 1, "default": 1}
    assert results["lossless"] is True
    methods = results["methods"]
    assert all(m["lossless"] is True for m in methods.values())
    ar = methods["ar"]
    assert ar["speedup"] == ar["speedup_min"] == ar["speedup_max"] == 1.0  # ar over itself, by construction
    assert ar["tau"] == 1.0 and methods["hf_generate"]["tau"] == 1.0
    # The AR drafter has the verifier's weights, so every drafted token is accepted: tau > 1 from both counters.
    for name in ("sps", "hf_assisted"):
        assert methods[name]["tau"] > 2.0, name
        assert methods[name]["accepted_histogram"][-1] > 0
    # The acceptance histogram sums to the rounds, and tau = (accepted + verifier token) per round.
    for m in methods.values():
        if m["tau"] is not None:
            assert sum(m["accepted_histogram"]) == m["rounds"]
            assert m["tau"] == pytest.approx(m["new_tokens"] / m["rounds"])
    split = methods["dlm_cps_adl"]["time_split_s"]
    assert split["draft"] > 0 and split["search"] > 0 and split["verify"] > 0
    for m in methods.values():  # the bound leaves out only the method's own loop overhead, so it is never beaten
        if m["cost_model"] is not None:
            assert m["speedup_pooled"] <= m["cost_model"]["speedup_bound"] * (1 + 1e-9)
    assert methods["hf_pld"]["time_split_s"] is None and methods["hf_pld"]["cost_model"] is None
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 3 * len(names)  # repeats x prompts x methods, warm-up excluded
    assert "| Method |" in (out / "results.md").read_text()
    # The round-cost table: a row per method with a time split, its total in plain steps = the break-even tau.
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in round_cost_table(results).splitlines()[2:]}
    assert "ar" not in rows and "hf_pld" not in rows and "dlm_cps_adl" in rows
    m = methods["dlm_cps_adl"]
    steps = sum(split.values()) / m["rounds"] / ar["cost_model"]["ar_step_s"]
    assert float(rows["dlm_cps_adl"][-1].rstrip(" |")) == pytest.approx(steps, abs=0.006)
    assert "## Cost of a round" in (out / "results.md").read_text()
    # The tau-per-task table: each cell is the method's tau on that task, the last its overall tau.
    tau_rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in per_task_table(results, "tau").splitlines()[2:]}
    assert tau_rows["sps"][1:-1] == [f"{methods['sps']['per_task'][t]['tau']:.2f}" for t in results["tasks"]]
    assert tau_rows["sps"][-1].rstrip(" |") == f"{methods['sps']['tau']:.2f}"
    assert "## τ per task" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="'accepted'"):
        per_task_table(results, "accepted")


def test_spec_bench_multi_turn(folders, tmp_path):
    methods = all_methods(folders)[:7]
    config = tiny_config(
        folders,
        tmp_path,
        benchmark="spec_bench",
        benchmark_path=str(SPEC_BENCH),
        prompts_per_task=1,
        max_prompt_tokens=12,
        chat_template=True,
        turns="all",
        max_new_tokens=8,
        warmup=0,
        methods=methods,
        model_card=str(folders["dlm"]),
    )
    assert evaluate(config) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    check_schema(results, ["ar", "hf_generate", "pld", "hf_pld", "sps", "hf_assisted", "dlm_cps_adl"])
    # One question per task; the MT-bench question has two turns, the others one.
    assert results["tasks"] == {
        "mt_bench": 2,
        "translation": 1,
        "summarization": 1,
        "qa": 1,
        "math_reasoning": 1,
        "rag": 1,
    }
    assert all(m["lossless"] is True for m in results["methods"].values())
    card = (folders["dlm"] / "README.md").read_text()
    assert card.count(CARD_BEGIN) == 1 and card.count(CARD_END) == 1 and "dlm_cps_adl" in card


def test_non_lossless_method_fails_the_run(folders, tmp_path, monkeypatch, capsys):
    original = HFRunner.__call__

    def corrupt(self, ids, *args, **kwargs):
        out = original(self, ids, *args, **kwargs)
        if self.name == "hf_generate":
            out.tokens[2] = (out.tokens[2] + 1) % len(folders["tokenizer"])
        return out

    monkeypatch.setattr(HFRunner, "__call__", corrupt)
    config = tiny_config(folders, tmp_path, methods=[{"kind": "hf_generate"}], warmup=0)
    assert evaluate(config) == 1
    err = capsys.readouterr().err
    assert "method 'hf_generate' differs from 'ar' on prompt 0 (task story" in err
    assert "at new-token position 2" in err
    results = json.loads((tmp_path / "out" / "results.json").read_text())  # written before failing
    assert results["lossless"] is False and results["methods"]["hf_generate"]["lossless"] is False
    assert {m["position"] for m in results["mismatches"]} == {2}


def test_failing_prompt_is_recorded_and_the_run_goes_on(folders, tmp_path, monkeypatch):
    original = HFRunner.__call__

    def flaky(self, ids, *args, **kwargs):
        if ids.numel() == len(folders["tokenizer"](TEXTS[1]).input_ids):
            raise RuntimeError("simulated out of memory")
        return original(self, ids, *args, **kwargs)

    monkeypatch.setattr(HFRunner, "__call__", flaky)
    config = tiny_config(folders, tmp_path, methods=[{"kind": "hf_generate"}, {"kind": "pld"}], warmup=0)
    assert evaluate(config) == 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    hf = results["methods"]["hf_generate"]
    assert hf["failures"] == 3 and hf["lossless"] is None  # one prompt x three repeats, not compared
    assert hf["per_task"]["translate"]["speedup"] is None and hf["per_task"]["story"]["speedup"] is not None
    assert results["methods"]["pld"]["lossless"] is True and results["methods"]["pld"]["failures"] == 0
    assert all("simulated out of memory" in f["error"] for f in results["failures"])


def test_tokenizer_mismatch_is_refused(folders, tmp_path):
    bad = tmp_path / "bad_drafter"
    tiny_qwen2(seed=0, vocab_size=len(folders["tokenizer"]), hidden_size=64, num_layers=1).save_pretrained(bad)
    state = json.loads(folders["tokenizer"].backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # same strings, two ids exchanged
    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)), eos_token="<|endoftext|>")
    swapped.save_pretrained(bad)
    with pytest.raises(ValueError, match="disagree"):
        check_drafter_compatible(str(folders["verifier"]), str(bad))
    small = tmp_path / "small_vocab"
    tiny_qwen2(seed=0, vocab_size=64, hidden_size=64, num_layers=1).save_pretrained(small)
    with pytest.raises(ValueError, match="vocabulary rows"):
        check_drafter_compatible(str(folders["verifier"]), str(small))


def test_missing_benchmark_file_fails_before_models_load(tmp_path):
    config = EvalConfig(
        verifier=str(tmp_path / "no_model"), benchmark="jsonl", benchmark_path=str(tmp_path / "x.jsonl")
    )
    with pytest.raises(FileNotFoundError, match="x.jsonl"):
        evaluate(config)


def test_cli_eval_runs_a_recipe(folders, tmp_path):
    from diffuspec.cli import main

    recipe = tmp_path / "config_tiny.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "verifier": str(folders["verifier"]),
                "dtype": "float64",
                "benchmark": "jsonl",
                "benchmark_path": str(folders["prompts"]),
                "chat_template": False,
                "max_new_tokens": 64,
                "warmup": 0,
                "methods": [{"kind": "pld", "draft_length": 3}],
                "progress": False,
            }
        )
    )
    out = tmp_path / "cli_out"
    assert main(["eval", "--config", str(recipe), "--max-new-tokens", "5", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["max_new_tokens"] == 5  # the flag beat the recipe
    assert all(m["new_tokens"] <= 5 * 3 * 3 for m in results["methods"].values())


def test_sampling_run_reports_lossless_as_not_checked(folders, tmp_path):
    config = tiny_config(folders, tmp_path, temperature=0.8, methods=[{"kind": "hf_generate"}, {"kind": "pld"}])
    assert evaluate(config) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lossless"] is None and results["mismatches"] == []
    assert all(m["lossless"] is None for m in results["methods"].values())


def test_programmatic_hook_with_in_memory_models(tmp_path):
    """The quickstart's route: (task, token ids) prompts and models already in memory, no folders."""
    verifier = tiny_qwen2(seed=3, vocab_size=64, hidden_size=32, num_layers=2, init_std=0.3, dtype=torch.float64)
    prompts = build_prompts(
        questions_from_token_ids([("code", [5, 6, 7, 5, 6]), ("text", [1, 2, 3])]), None, chat_template=False
    )
    specs = [MethodSpec.from_dict(kind, "test", None) for kind in ("ar", "pld", "hf_generate")]
    runners = [build_runner(spec, verifier, eos=(), pad_token_id=0) for spec in specs]
    records = measure(prompts, runners, repeats=3, warmup=0, max_new_tokens=6, progress=False)
    code = report_run(
        records,
        prompts,
        runners,
        repeats=3,
        warmup=0,
        max_new_tokens=6,
        temperature=0.0,
        verifier="in-memory",
        benchmark={"kind": "token_ids", "turns": "first", "chat_template": False},
        output_dir=tmp_path,
    )
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tasks"] == {"code": 1, "text": 1} and results["lossless"] is True
    assert {m["new_tokens"] for m in results["methods"].values()} == {6 * 2 * 3}


def test_steady_cpu_allocator_applies_on_linux_and_is_recorded():
    import sys

    from diffuspec.evaluation.environment import environment, steady_cpu_allocator

    assert steady_cpu_allocator() is sys.platform.startswith("linux")
    assert environment(torch.device("cpu"))["steady_cpu_allocator"] is sys.platform.startswith("linux")


def test_a_killed_run_resumes_from_its_journal(folders, tmp_path, monkeypatch):
    """A kill mid-run keeps every finished prompt group; the rerun measures only the rest and reports all of it."""
    from diffuspec.evaluation import timing

    methods = [{"kind": "ar"}, {"kind": "pld", "draft_length": 4}, all_methods(folders)[6]]
    config = tiny_config(folders, tmp_path, methods=methods)
    journal = tmp_path / "out" / "journal.jsonl"
    real, calls = timing.run_once, []

    def killed_after(limit: int):
        def run_once(runner, prompt, repeat, *args):
            if len(calls) == limit:
                raise KeyboardInterrupt
            calls.append((runner.name, repeat, prompt.index))
            return real(runner, prompt, repeat, *args)

        return run_once

    warmups, group = 3, 3  # one warm-up call per method; three methods per prompt group
    monkeypatch.setattr(timing, "run_once", killed_after(warmups + 4 * group + 1))  # in the fifth group
    with pytest.raises(KeyboardInterrupt):
        evaluate(config)
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 4  # the header and four whole groups; the cut fifth is not there
    with journal.open("a") as f:
        f.write('[{"method": "ar", "repe')  # a write the kill cut short is ignored

    calls.clear()
    monkeypatch.setattr(timing, "run_once", killed_after(-1))
    assert evaluate(config) == 0
    timed = [c for c in calls if c[1] >= 0]
    assert len(timed) == (3 * 3 - 4) * group  # 3 repeats x 3 prompts, four groups already measured
    assert {(r, p) for _, r, p in timed} == {(1, 1), (1, 2), (2, 0), (2, 1), (2, 2)}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lossless"] is True
    assert len({m["new_tokens"] for m in results["methods"].values()}) == 1
    assert all(len(m["speedup_per_repeat"]) == 3 for m in results["methods"].values())
    assert not journal.exists()  # done: a rerun measures again


def test_a_journal_of_another_recipe_is_started_over(tmp_path):
    from diffuspec.evaluation.journal import Journal
    from diffuspec.evaluation.timing import Record

    path = tmp_path / "journal.jsonl"
    first = Journal(path, "aaaa", log=lambda _: None)
    first.add([Record("ar", 0, 0, "t", "q", 0, new_tokens=2, time_s=0.1, tokens=[4, 5])])
    again = Journal(path, "aaaa", log=lambda _: None)
    assert again.done[(0, 0)][0].tokens == [4, 5]
    messages = []
    other = Journal(path, "bbbb", log=messages.append)
    assert other.done == {} and "starting over" in messages[0]
    assert path.read_text().splitlines() == ['{"fingerprint": "bbbb"}']


def test_tau_sweep_reports_every_methods_tau_untimed(folders, tmp_path, monkeypatch):
    sweep = load_script("tau_sweep")
    from diffuspec.drafters.vocabulary import DraftVocabulary

    size = json.loads((folders["verifier"] / "config.json").read_text())["vocab_size"]
    mask = json.loads((folders["dlm"] / "diffuspec_config.json").read_text())["mask_token_id"]
    DraftVocabulary.from_counts(torch.ones(size), size - 1, drop=[mask]).save(tmp_path / "vocab.json")
    with_vocab = {**all_methods(folders)[6], "name": "dlm_vocab", "draft_vocab": str(tmp_path / "vocab.json")}
    methods = [{"kind": "ar"}, {"kind": "pld", "draft_length": 4}, all_methods(folders)[6], with_vocab]
    recipe = tmp_path / "sweep.yaml"
    values = {k: v for k, v in tiny_config(folders, tmp_path).to_dict().items() if k not in ("methods", "only")}
    recipe.write_text(yaml.safe_dump({**values, "methods": methods, "output_dir": str(tmp_path / "sweep")}))
    monkeypatch.setattr("sys.argv", ["tau_sweep", "--config", str(recipe)])
    assert sweep.main() == 0
    rows = json.loads((tmp_path / "sweep" / "tau.json").read_text())
    assert rows["mismatches"] == 0 and rows["prompts"] == 3
    assert rows["methods"]["ar"]["tau"] == 1.0
    assert all(row["tau"] >= 1.0 and row["rounds"] > 0 for row in rows["methods"].values())
    assert rows["methods"]["dlm_cps_adl"]["nodes"] > 0
    assert rows["methods"]["dlm_cps_adl"]["coverage"] is None  # no draft vocabulary
    assert 0.9 < rows["methods"]["dlm_vocab"]["coverage"] <= 1.0  # every id but the mask
    assert "| dlm_vocab |" in (tmp_path / "sweep" / "tau.md").read_text()
    assert not (tmp_path / "sweep" / "results.json").exists()  # no timed run


def test_verify_cost_script_reports_costs_and_block_flips(folders, tmp_path, monkeypatch, capsys):
    import sys

    script = load_script("verify_cost")
    out = tmp_path / "cost.json"
    argv = ["verify_cost.py", "--verifier", str(folders["verifier"]), "--prompts", str(folders["prompts"]),
            "--dtypes", "float64,float32-onednn", "--blocks", "1,3", "--context", "8", "--repeats", "2",
            "--num-prompts", "2", "--new-tokens", "7", "--block", "3", "--threads", "1", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    result = json.loads(out.read_text())
    assert result["cost"]["float64"]["1"]["steps"] == 1.0 and result["cost"]["float32-onednn"]["3"]["ms"] > 0
    assert result["exactness"]["float64"] == {"flips": 0, "positions": 14}  # float64: blocks agree with steps
    assert "| float32-onednn |" in capsys.readouterr().out


def test_feature_cost_script_times_capture_and_prefill(folders, tmp_path, monkeypatch, capsys):
    """eval/feature_cost.py: the hooks keep one hidden state per feature layer and forward call, equal to the
    verifier's own hidden_states; the report has every arm."""
    import sys

    import datasets

    script = load_script("feature_cost")
    model = AutoModelForCausalLM.from_pretrained(folders["verifier"]).eval()
    store = []
    hooks = script.feature_hooks(model, [1, 2], store)
    ids = torch.tensor([[5, 6, 7, 8]])
    reference = model(input_ids=ids, output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    assert len(store) == 2 and torch.equal(store[0], reference[1]) and torch.allclose(store[1], reference[2])
    rows = {"prompt_ids": [[5, 6, 7], [9, 10]], "completion_ids": [[11, 12], [13]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "cost.json"
    argv = ["feature_cost.py", "--verifier", str(folders["verifier"]), "--dataset", str(tmp_path / "data"),
            "--rows", "2", "--batch", "2", "--new-tokens", "3", "--repeats", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    report = json.loads(out.read_text())
    assert set(report["tokens_per_s"]) == {"generate", "generate+capture", "prefill"}
    assert all(value > 0 for value in report["tokens_per_s"].values())
