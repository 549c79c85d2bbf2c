"""Data generation: completions equal the verifier's own decoding, top-K equals a teacher-forced pass, a killed
run resumes to the same dataset, and sharding (threads emulating ranks, and real torchrun) changes nothing."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest
import torch
from conftest import reference_greedy
from transformers import AutoModelForCausalLM

from diffuspec.datagen import (
    DataGenerationConfig,
    backends,
    dataset_features,
    generate_dataset,
    pipeline,
    read_metadata,
)
from diffuspec.datagen import dataset as datagen_dataset
from diffuspec.datagen import prompts as datagen_prompts
from diffuspec.datagen import shards as datagen_shards
from diffuspec.datagen.shards import repair_shard, scan_shards
from diffuspec.evaluation.benchmarks import SPEC_BENCH_QUESTIONS
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.training.inputs import check_examples

REPO = Path(__file__).parent.parent
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "compose an engaging travel blog post about a recent trip to hawaii",
    "draft a professional email seeking feedback on the quarterly report",
    "explain why the sky is blue in two sentences",
]


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """Byte-level BPE with EOS/PAD and chat-role specials, built with the tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>")
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def verifier_dir(tmp_path_factory) -> Path:
    """A float64 tiny Qwen2 (cached and uncached greedy agree far beyond argmax ties) with a chat tokenizer."""
    folder = tmp_path_factory.mktemp("verifier")
    tokenizer = make_tokenizer()
    model = tiny_qwen2(
        seed=3,
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_layers=2,
        init_std=0.3,
        dtype=torch.float64,
        max_position_embeddings=96,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def mixed_prompts(tmp_path) -> Path:
    return write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": TEXTS[0]},
            {"text": TEXTS[1]},
            {"messages": [{"role": "user", "content": TEXTS[2]}, {"role": "assistant", "content": "old reply"}]},
            {"question_id": 81, "category": "writing", "turns": [TEXTS[3], "Rewrite it."]},
            {"conversations": [{"from": "human", "value": TEXTS[0]}]},
        ],
    )


def token_id_prompts(path: Path, count: int, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    rows = [
        {"prompt_ids": torch.randint(5, 300, (int(n),), generator=g).tolist()}
        for n in torch.randint(2, 9, (count,), generator=g)
    ]
    return write_jsonl(path, rows)


def config(verifier_dir, out, **overrides) -> DataGenerationConfig:
    values = dict(verifier=str(verifier_dir), out=str(out), max_new_tokens=8, chunk_size=2, cpu=True)
    return DataGenerationConfig(**{**values, **overrides})


def rows_of(out) -> list[dict]:
    return datasets.load_from_disk(str(out)).to_list()


# ---------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def greedy_run(verifier_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("greedy")
    prompts = write_jsonl(
        tmp / "prompts.jsonl",
        [{"prompt": TEXTS[0]}, {"messages": [{"role": "user", "content": TEXTS[1]}]}, {"turns": [TEXTS[2]]}],
    )
    out = generate_dataset(config(verifier_dir, tmp / "out", prompts=str(prompts), teacher_topk=4))
    return out, prompts


def test_greedy_completions_equal_reference_greedy(greedy_run, verifier_dir):
    out, _ = greedy_run
    dataset = datasets.load_from_disk(str(out))
    assert dataset.features == dataset_features(4)
    assert list(dataset["id"]) == ["0", "1", "2"]
    assert check_examples(dataset) is True  # the trainer's own check accepts it, teacher columns included
    model = AutoModelForCausalLM.from_pretrained(verifier_dir).eval()
    eos = (model.config.eos_token_id,)
    for row in dataset:
        prompt = torch.tensor(row["prompt_ids"])
        expected = reference_greedy(model, prompt, 8, eos)[prompt.numel() :]
        assert row["completion_ids"] == expected.tolist()


def test_topk_logprobs_match_a_teacher_forced_forward(greedy_run, verifier_dir):
    out, _ = greedy_run
    model = AutoModelForCausalLM.from_pretrained(verifier_dir).eval()
    for row in rows_of(out):
        full = torch.tensor(row["prompt_ids"] + row["completion_ids"])
        with torch.no_grad():
            logits = model(input_ids=full[None]).logits[0]
        n, c = len(row["prompt_ids"]), len(row["completion_ids"])
        logprobs = torch.log_softmax(logits[n - 1 : n + c - 1], dim=-1)  # row t predicts completion token t
        values, ids = logprobs.topk(4, dim=-1)
        assert row["teacher_topk_ids"] == ids.tolist()
        torch.testing.assert_close(torch.tensor(row["teacher_topk_logprobs"]), values.float(), rtol=0, atol=1e-6)


def test_metadata_records_the_generation(greedy_run, verifier_dir):
    out, prompts = greedy_run
    meta = read_metadata(out)
    assert meta["schema"] == datagen_dataset.SCHEMA and meta["rows"] == 3 and meta["skipped"] == {}
    assert meta["verifier"] == str(verifier_dir) and meta["verifier_vocab_size"] > 0
    assert (meta["temperature"], meta["top_k"], meta["top_p"], meta["max_new_tokens"], meta["seed"]) == (
        0.0,
        None,
        None,
        8,
        0,
    )
    assert meta["teacher_topk"] == 4 and meta["chat_template"] == CHAT_TEMPLATE
    assert meta["prompt_source"] == {"prompts": str(prompts)}
    assert meta["columns"] == ["id", "prompt_ids", "completion_ids", "teacher_topk_ids", "teacher_topk_logprobs"]


# ---------------------------------------------------------------- prompt formats


def test_prompt_formats_parse(mixed_prompts, verifier_dir):
    tokenizer = make_tokenizer()
    specs = datagen_prompts.load_prompt_specs(DataGenerationConfig(verifier="v", out="o", prompts=str(mixed_prompts)))
    assert [s.id for s in specs] == ["0", "1", "2", "81", "4"]
    assert [s.kind for s in specs] == ["text", "text", "chat", "chat", "chat"]
    assert specs[2].content == [{"role": "user", "content": TEXTS[2]}]  # the old assistant reply is dropped
    assert specs[3].content == [{"role": "user", "content": TEXTS[3]}]  # Spec-Bench: first turn
    assert specs[4].content == [{"role": "user", "content": TEXTS[0]}]  # ShareGPT from/value
    chat_ids = datagen_prompts.encode_prompt(specs[3], tokenizer)
    expected = tokenizer.apply_chat_template(specs[3].content, add_generation_prompt=True, tokenize=False)
    assert expected == f"<|user|>{TEXTS[3]}<|endoftext|><|assistant|>"
    assert chat_ids == tokenizer(expected, add_special_tokens=False).input_ids
    assert datagen_prompts.encode_prompt(specs[0], tokenizer) == tokenizer(TEXTS[0]).input_ids
    wrapped = datagen_prompts.load_prompt_specs(
        DataGenerationConfig(verifier="v", out="o", prompts=str(mixed_prompts), chat=True)
    )
    assert wrapped[0].kind == "chat" and wrapped[0].content == [{"role": "user", "content": TEXTS[0]}]


def test_spec_bench_question_file_parses():
    path = SPEC_BENCH_QUESTIONS
    specs = datagen_prompts.load_prompt_specs(
        DataGenerationConfig(verifier="v", out="o", prompts=str(path), max_prompts=20)
    )
    first = json.loads(path.read_text().splitlines()[0])
    assert specs[0].id == str(first["question_id"]) and specs[0].content[0]["content"] == first["turns"][0]
    assert len(specs) == 20 and all(s.kind == "chat" for s in specs)


# ---------------------------------------------------------------- errors before work


def test_errors_before_any_model_loads(tmp_path, verifier_dir, monkeypatch):
    def fails(match, exc=ValueError, **kw):
        with pytest.raises(exc, match=match):
            generate_dataset(config(verifier_dir, tmp_path / "out", **kw))

    fails("does not exist", FileNotFoundError, prompts=str(tmp_path / "missing.jsonl"))
    fails("holds no prompts", prompts=str(write_jsonl(tmp_path / "empty.jsonl", [])))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "fine"}, {"question": "no usable field"}])
    fails(r"bad.jsonl:2: no prompt field.*found \['question'\]", prompts=str(bad))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    fails(r"broken.jsonl:2: not valid JSON", prompts=str(tmp_path / "broken.jsonl"))
    dup = write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}])
    fails(r"dup.jsonl:2: id '1' repeats", prompts=str(dup))
    ids = write_jsonl(tmp_path / "ids.jsonl", [{"prompt_ids": [1, 2]}, {"prompt_ids": []}])
    fails(r"ids.jsonl:2: 'prompt_ids' must be a non-empty list", prompt_token_ids=str(ids))
    good = str(write_jsonl(tmp_path / "good.jsonl", [{"prompt": "a b"}]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generate_dataset(DataGenerationConfig(verifier=str(tmp_path / "no-verifier"), out="o", prompts=good))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    fails("needs the Hugging Face Hub, but offline mode is set", OSError, prompts_dataset="someone/prompts")
    assert time.perf_counter() - start < 5
    fails("--backend vllm needs vLLM", ImportError, prompts=good, backend="vllm")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a diffuspec dataset"):
        generate_dataset(config(verifier_dir, tmp_path / "taken", prompts=good))
    assert not (tmp_path / "out.shards").exists()  # nothing was started


def test_config_rejects_contradictions():
    with pytest.raises(ValueError, match="exactly one of"):
        DataGenerationConfig(verifier="v", out="o")
    with pytest.raises(ValueError, match="exactly one of"):
        DataGenerationConfig(verifier="v", out="o", prompts="a", prompt_token_ids="b")
    with pytest.raises(ValueError, match="only apply when sampling"):
        DataGenerationConfig(verifier="v", out="o", prompts="a", top_p=0.9)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        DataGenerationConfig(verifier="v", out="o", prompts="a", temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="backend vllm only"):
        DataGenerationConfig(verifier="v", out="o", prompts="a", tensor_parallel_size=2)


def test_chat_row_needs_a_chat_template(tmp_path):
    specs = [datagen_prompts.PromptSpec("0", "p.jsonl:1", "chat", [{"role": "user", "content": "hi"}])]
    with pytest.raises(ValueError, match="p.jsonl:1: a chat prompt, but the verifier's tokenizer has no chat_template"):
        datagen_prompts.check_chat_template(specs, make_tokenizer(chat_template=None))


def test_too_long_prompts_are_skipped_and_recorded(tmp_path, verifier_dir):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt_ids": [7, 8, 9]}, {"id": "long", "prompt_ids": [5] * 90}])
    out = generate_dataset(config(verifier_dir, tmp_path / "out", prompt_token_ids=str(prompts)))
    assert rows_of(out)[0]["id"] == "0" and len(rows_of(out)) == 1
    assert "exceeds the context of 96" in read_metadata(out)["skipped"]["long"]


# ---------------------------------------------------------------- resumption


def test_torn_last_line_is_dropped(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    path = datagen_shards.shard_path(shards, 0, 1)
    datagen_shards.append_records(path, [{"id": "a", "prompt_ids": [1], "completion_ids": [2]}])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "b", "prompt_ids": [1], "compl')
    assert list(scan_shards(shards)) == ["a"]  # a reader ignores the torn tail
    assert repair_shard(path) == len(b'{"id": "b", "prompt_ids": [1], "compl')
    assert path.read_bytes() == whole
    path.write_bytes(whole + b'{"id": "b", "prompt_ids": [1]}')  # complete JSON but no newline: still torn
    assert repair_shard(path) > 0 and path.read_bytes() == whole
    path.write_bytes(b"not json\n" + whole)
    with pytest.raises(ValueError, match=r"rank-00000-of-00001.jsonl:1: corrupt shard line"):
        scan_shards(shards)


def test_killed_run_resumes_to_the_uninterrupted_dataset(tmp_path, verifier_dir, monkeypatch):
    prompts = token_id_prompts(tmp_path / "ids.jsonl", 7)
    sampled = dict(prompt_token_ids=str(prompts), temperature=1.0, top_k=20, teacher_topk=3, seed=5)
    reference = rows_of(generate_dataset(config(verifier_dir, tmp_path / "ref", **sampled)))

    original = datagen_shards.append_records
    calls = []

    def killed_midway(path, records):
        calls.append(len(records))
        if len(calls) == 1:
            return original(path, records)
        first, second = (json.dumps(r) + "\n" for r in records)
        with path.open("ab") as handle:  # the kill lands inside the second chunk's second line
            handle.write((first + second[: len(second) // 2]).encode())
        raise KeyboardInterrupt

    monkeypatch.setattr(datagen_shards, "append_records", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(config(verifier_dir, tmp_path / "out", **sampled))
    monkeypatch.setattr(datagen_shards, "append_records", original)
    shard = datagen_shards.shard_path(Path(f"{tmp_path / 'out'}.shards"), 0, 1)
    assert not shard.read_bytes().endswith(b"\n") and not (tmp_path / "out").exists()

    generated = []
    run_one = backends.DecoderBackend._one
    monkeypatch.setattr(
        backends.DecoderBackend, "_one", lambda self, row: generated.append(row.id) or run_one(self, row)
    )
    resumed = rows_of(generate_dataset(config(verifier_dir, tmp_path / "out", **sampled)))
    assert generated == ["3", "4", "5", "6"]  # whole lines were kept, the torn one redone
    assert resumed == reference
    assert [r["id"] for r in resumed] == [str(i) for i in range(7)]

    generated.clear()  # a finished run reruns to the same dataset without generating anything
    assert rows_of(generate_dataset(config(verifier_dir, tmp_path / "out", **sampled))) == reference
    assert generated == []


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_uninterrupted_dataset(tmp_path, verifier_dir):
    """The in-process kill above, with a real SIGKILL of the launcher script (slow: a subprocess start)."""
    prompts = token_id_prompts(tmp_path / "ids.jsonl", 8)
    sampled = dict(prompt_token_ids=str(prompts), temperature=1.0, max_new_tokens=12, chunk_size=1, teacher_topk=2)
    flags = ["--verifier", str(verifier_dir), "--out", str(tmp_path / "out"), "--prompt_token_ids", str(prompts)]
    flags += ["--temperature", "1.0", "--max_new_tokens", "12", "--chunk_size", "1", "--teacher_topk", "2", "--cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train" / "generate_data.py"), *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shard = datagen_shards.shard_path(Path(f"{tmp_path / 'out'}.shards"), 0, 1)
    deadline = time.monotonic() + 120
    while not (shard.is_file() and shard.read_bytes().count(b"\n") >= 1) and time.monotonic() < deadline:
        assert process.poll() is None, "the generation process exited before writing a row"
        time.sleep(0.02)
    process.kill()
    process.wait()
    written = shard.read_bytes().count(b"\n")
    assert 1 <= written < 8 and not (tmp_path / "out").exists()

    resumed = rows_of(generate_dataset(config(verifier_dir, tmp_path / "out", **sampled)))
    assert resumed == rows_of(generate_dataset(config(verifier_dir, tmp_path / "ref", **sampled)))
    assert [r["id"] for r in resumed] == [str(i) for i in range(8)]


def test_resume_with_other_settings_is_refused(tmp_path, verifier_dir):
    prompts = token_id_prompts(tmp_path / "ids.jsonl", 2)
    generate_dataset(config(verifier_dir, tmp_path / "out", prompt_token_ids=str(prompts)))
    with pytest.raises(ValueError, match=r"other settings \(max_new_tokens: 8 -> 9\)"):
        generate_dataset(config(verifier_dir, tmp_path / "out", prompt_token_ids=str(prompts), max_new_tokens=9))
    token_id_prompts(tmp_path / "ids.jsonl", 2, seed=1)  # same ids, other prompts
    with pytest.raises(ValueError, match="generated from a different prompt"):
        generate_dataset(config(verifier_dir, tmp_path / "out", prompt_token_ids=str(prompts)))


# ---------------------------------------------------------------- sharding


class ThreadRank:
    """A stand-in for accelerate.PartialState: one thread per rank, barriers shared."""

    def __init__(self, rank: int, world: int, barrier: threading.Barrier) -> None:
        self.process_index, self.num_processes, self.barrier = rank, world, barrier
        self.is_main_process = self.is_local_main_process = rank == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=120)


def test_emulated_two_ranks_equal_one_process(tmp_path, verifier_dir, monkeypatch):
    lock, build = threading.Lock(), pipeline.build_backend

    def build_one_at_a_time(*args):  # from_pretrained sets torch's global default dtype while loading
        with lock:
            return build(*args)

    monkeypatch.setattr(pipeline, "build_backend", build_one_at_a_time)
    prompts = token_id_prompts(tmp_path / "ids.jsonl", 5)
    sampled = dict(prompt_token_ids=str(prompts), temperature=0.8, top_p=0.9, teacher_topk=2)
    single = rows_of(generate_dataset(config(verifier_dir, tmp_path / "one", **sampled)))
    barrier, errors = threading.Barrier(2), []

    def rank(r: int) -> None:
        try:
            generate_dataset(config(verifier_dir, tmp_path / "two", **sampled), state=ThreadRank(r, 2, barrier))
        except BaseException as error:  # surface a rank's failure in the test thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    shards = sorted(p.name for p in Path(f"{tmp_path / 'two'}.shards").glob("rank-*.jsonl"))
    assert shards == ["rank-00000-of-00002.jsonl", "rank-00001-of-00002.jsonl"]
    assert rows_of(tmp_path / "two") == single


def test_torchrun_two_processes_equal_one_process(tmp_path, verifier_dir):
    prompts = token_id_prompts(tmp_path / "ids.jsonl", 4)
    flags = ["--prompt-token-ids", str(prompts), "--max-new-tokens", "6", "--temperature", "1.0", "--top-k", "30"]
    flags += ["--teacher-topk", "2", "--chunk-size", "1", "--cpu", "--verifier", str(verifier_dir)]
    single = rows_of(
        generate_dataset(
            config(
                verifier_dir,
                tmp_path / "one",
                prompt_token_ids=str(prompts),
                max_new_tokens=6,
                temperature=1.0,
                top_k=30,
                teacher_topk=2,
            )
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(REPO / "train" / "generate_data.py"), "--out", str(tmp_path / "two"), *flags]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows_of(tmp_path / "two") == single
    assert len(list(Path(f"{tmp_path / 'two'}.shards").glob("rank-*-of-00002.jsonl"))) == 2


def test_batched_backend_matches_exact_decoding(tmp_path, verifier_dir):
    """One left-padded generate per chunk gives the batch-1 decoder's completions (prompts of 2-8 tokens, mixed
    in each chunk) and the same teacher columns."""
    prompts = token_id_prompts(tmp_path / "ids.jsonl", 6)
    exact = generate_dataset(config(verifier_dir, tmp_path / "exact", prompt_token_ids=str(prompts), teacher_topk=3))

    def run_batched(name: str, **extra):
        settings = dict(prompt_token_ids=str(prompts), teacher_topk=3, backend="transformers", chunk_size=4, **extra)
        return generate_dataset(config(verifier_dir, tmp_path / name, **settings))

    # teacher_from_generation: the top-k kept by a logits processor during generation, no second pass
    batched, recorded = run_batched("batched"), run_batched("recorded", teacher_from_generation=True)
    for a, b, c in zip(rows_of(exact), rows_of(batched), rows_of(recorded), strict=True):
        assert a["completion_ids"] == b["completion_ids"] == c["completion_ids"]
        assert a["teacher_topk_ids"] == b["teacher_topk_ids"] == c["teacher_topk_ids"]
        torch.testing.assert_close(
            torch.tensor(c["teacher_topk_logprobs"]), torch.tensor(a["teacher_topk_logprobs"]), rtol=0, atol=1e-4
        )
    with pytest.raises(ValueError, match="greedily only"):
        config(verifier_dir, tmp_path / "x", prompt_token_ids=str(prompts), backend="transformers", temperature=0.7)


# ---------------------------------------------------------------- self-written chat prompts


def test_self_instruct_prompts_are_seeded_finished_and_resume_from_their_journal(tmp_path, verifier_dir):
    """Requests the model writes after its user header: only finished ones (EOS within the budget), each starting
    with its steer; a rerun reads the journal and generates nothing."""
    from transformers import AutoModelForCausalLM

    from diffuspec.datagen.selfinstruct import STEERS, self_instruct_prompts, user_header

    tokenizer = make_tokenizer()
    assert user_header(tokenizer) == "<|user|>"
    model = AutoModelForCausalLM.from_pretrained(verifier_dir).eval()
    eos = tokenizer.eos_token_id
    model.lm_head.register_forward_hook(
        lambda module, args, out: out.index_add(-1, torch.tensor([eos]), out[..., eos : eos + 1].abs() + 2.0)
    )
    rows = self_instruct_prompts(model, tokenizer, 10, tmp_path / "journal.jsonl", seed=1, batch_size=4, max_tokens=12)
    assert 0 < len(rows) <= 10 and len({r["id"] for r in rows}) == len(rows)
    assert all(r["kind"] in STEERS and any(r["prompt"].startswith(s) for s in STEERS[r["kind"]]) for r in rows)
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 3  # one line per batch of 4
    with (tmp_path / "journal.jsonl").open("a") as handle:
        handle.write('{"batch": 7, "rows": [')  # a write killed midway: dropped on resume
    model.generate = lambda *a, **k: pytest.fail("a resumed run must not generate")
    assert (
        self_instruct_prompts(model, tokenizer, 10, tmp_path / "journal.jsonl", seed=1, batch_size=4, max_tokens=12)
        == rows
    )
    with pytest.raises(ValueError, match="top_p in"):
        self_instruct_prompts(model, tokenizer, 10, tmp_path / "other.jsonl", top_p=0.0)


def test_prompt_filter_drops_benchmark_turns_near_copies_and_repeats():
    from diffuspec.datagen.selfinstruct import PromptFilter

    turns = [json.loads(line)["turns"][0] for line in SPEC_BENCH_QUESTIONS.read_text().splitlines()]
    words = turns[0].split()
    near = "Please: " + " ".join(words[:12]) + " thanks"  # a prefix, 12 of its words, another ending
    rows = [
        {"prompt": turns[5]},
        {"prompt": near},
        {"prompt": "Explain why the sky is blue."},
        {"prompt": "explain WHY the sky is blue!"},
        {"prompt": "Write a haiku about rain on a tin roof."},
    ]
    kept = PromptFilter(turns)(rows)
    assert [r["prompt"] for r in kept] == ["Explain why the sky is blue.", "Write a haiku about rain on a tin roof."]
    with pytest.raises(ValueError, match="n must be >= 3"):
        PromptFilter(turns, n=2)
