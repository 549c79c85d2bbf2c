"""Proxy LMs: normalisation, Kneser-Ney maths by hand, file round trips, ARPA and KenLM parity."""

from __future__ import annotations

import math
import os
import random
import re
import sys

import pytest
import torch

from diffuspec.decoding.proxy import KenLMProxy, NGramProxy, UniformProxy

VOCAB = 25


def _corpus(seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    # A skewed, repetitive corpus so that every order has seen and unseen contexts and counts > 1.
    return [[rng.choice([0, 1, 2, 3, 4, rng.randrange(20)]) for _ in range(rng.randint(0, 40))] for _ in range(60)]


CONTEXTS = [[], [1], [1, 2], [3, 4, 1], [24, 24, 24], [0, 0, 0, 0, 0, 1], [22, 23], torch.tensor([2, 1, 0])]


@pytest.fixture(scope="module", params=[1, 2, 3, 4])
def model(request) -> NGramProxy:
    return NGramProxy.fit(_corpus(), VOCAB, order=request.param)


def test_distribution_sums_to_one(model):
    contexts = CONTEXTS + [seq[:n] for seq in _corpus()[:5] for n in (1, 2, 5)]
    for context in contexts:
        total = sum(math.exp(model.logprob(context, t)) for t in range(VOCAB))
        assert total == pytest.approx(1.0, abs=1e-9), context
    # Ids never seen in training (20..24 only appear through rng.randrange(20) -> never) still get mass.
    assert model.logprob([1, 2], 24) > -math.inf


def test_uniform_proxy_sums_to_one():
    proxy = UniformProxy(7)
    assert proxy.order == 1
    assert sum(math.exp(proxy.logprob([3], t)) for t in range(7)) == pytest.approx(1.0)


def test_kneser_ney_by_hand():
    # Corpus "<s> 0 1 0 2", bigram, D = 0.5, V = 4.
    # Unigram continuation counts: 0 <- {<s>, 1} = 2, 1 <- {0} = 1, 2 <- {0} = 1; total 4, 3 types.
    # P1(w) = max(c - 0.5, 0) / 4 + (0.5 * 3 / 4) / 4  ->  0.46875, 0.21875, 0.21875, 0.09375.
    proxy = NGramProxy.fit([[0, 1, 0, 2]], vocab_size=4, order=2, discount=0.5)
    unigram = [0.46875, 0.21875, 0.21875, 0.09375]
    for t, p in enumerate(unigram):
        assert math.exp(proxy.logprob([3], t)) == pytest.approx(p)  # context 3 never seen: back off fully
    # Context 0 was followed by 1 and 2 once each: P(w|0) = max(c - 0.5, 0) / 2 + (0.5 * 2 / 2) * P1(w).
    assert math.exp(proxy.logprob([0], 1)) == pytest.approx(0.25 + 0.5 * 0.21875)
    assert math.exp(proxy.logprob([0], 3)) == pytest.approx(0.5 * 0.09375)
    # The empty context is the sentence start "<s>", followed by 0 once: 0.5 / 1 + (0.5 * 1 / 1) * P1(0).
    assert math.exp(proxy.logprob([], 0)) == pytest.approx(0.5 + 0.5 * 0.46875)
    # A long context reads only its last token.
    assert proxy.logprob([3, 3, 0], 1) == proxy.logprob([0], 1)


def test_ney_discount_estimate():
    proxy = NGramProxy.fit(_corpus(), VOCAB, order=2)
    top = proxy.counts[1]
    n1 = sum(c == 1 for c in top.values())
    n2 = sum(c == 2 for c in top.values())
    assert proxy.discounts[1] == pytest.approx(n1 / (n1 + 2 * n2))


def test_fit_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="token ids"):
        NGramProxy.fit([[0, 5]], vocab_size=5)
    proxy = NGramProxy.fit([[0, 1]], vocab_size=5)
    with pytest.raises(ValueError, match="outside"):
        proxy.logprob([0], 5)


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "proxy.json"
    model.save(path)
    assert os.listdir(tmp_path) == ["proxy.json"]  # no temp file left behind
    loaded = NGramProxy.load(path)
    assert (loaded.order, loaded.vocab_size, loaded.discounts) == (model.order, model.vocab_size, model.discounts)
    assert loaded.counts == model.counts
    for context in CONTEXTS:
        assert [loaded.logprob(context, t) for t in range(VOCAB)] == [model.logprob(context, t) for t in range(VOCAB)]


def _read_arpa(path) -> tuple[dict[int, int], dict[int, list[list[str]]]]:
    header: dict[int, int] = {}
    sections: dict[int, list[list[str]]] = {}
    current = None
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if m := re.fullmatch(r"ngram (\d+)=(\d+)", line):
                header[int(m[1])] = int(m[2])
            elif m := re.fullmatch(r"\\(\d+)-grams:", line):
                current = int(m[1])
                sections[current] = []
            elif line == "\\end\\":
                current = None
            elif line and current is not None:
                sections[current].append(line.split("\t"))
    return header, sections


def test_arpa_file(model, tmp_path):
    path = tmp_path / "proxy.arpa"
    model.to_arpa(path)
    header, sections = _read_arpa(path)
    assert sorted(header) == list(range(1, model.order + 1))
    assert {n: len(rows) for n, rows in sections.items()} == header
    assert header[1] == VOCAB + 3  # every id plus <s>, </s>, <unk>
    for n, rows in sections.items():
        for row in rows:
            words = row[1].split()
            assert len(words) == n and float(row[0]) <= 0.0
            assert len(row) == 2 or (len(row) == 3 and n < model.order)
            if "<s>" in words[1:] or words[-1] in ("<s>", "</s>", "<unk>"):
                continue
            # A listed n-gram stores the model's own (interpolated) probability.
            context = [int(w) for w in words[:-1] if w != "<s>"]
            if words[0] != "<s>" and len(context) < model.order - 1:
                continue  # a short context without <s> is not a query logprob() can express
            assert float(row[0]) == pytest.approx(model.logprob(context, int(words[-1])) / math.log(10), abs=1e-6)


def test_kenlm_proxy_matches_ngram(tmp_path):
    pytest.importorskip("kenlm")
    rng = random.Random(1)
    corpus = _corpus()
    for order in (2, 3, 4):  # KenLM needs at least a bigram
        model = NGramProxy.fit(corpus, VOCAB, order=order)
        model.to_arpa(tmp_path / f"m{order}.arpa")
        kenlm_proxy = KenLMProxy(tmp_path / f"m{order}.arpa", vocab_size=VOCAB)
        assert kenlm_proxy.order == order
        for _ in range(300):
            n = rng.randint(0, order + 1)  # short contexts (sentence start) and full-length ones
            seq = rng.choice(corpus)
            context = seq[:n] if rng.random() < 0.5 else [rng.randrange(VOCAB) for _ in range(n)]
            token = rng.randrange(VOCAB)
            assert kenlm_proxy.logprob(context, token) == pytest.approx(model.logprob(context, token), abs=1e-5)


def test_kenlm_proxy_without_kenlm_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "kenlm", None)  # makes `import kenlm` raise ImportError
    with pytest.raises(ImportError, match="pip install kenlm"):
        KenLMProxy(tmp_path / "missing.arpa")
