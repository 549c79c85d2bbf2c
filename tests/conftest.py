import pytest
import torch

from diffuspec.decoding.config import CPSConfig
from diffuspec.decoding.drafter import Drafter, DraftRequest
from diffuspec.decoding.lattice import Lattice
from diffuspec.models.tiny import tiny_qwen2

VOCAB = 96


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a shared 2-core machine stalls multi-threaded ops."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def verifier():
    """A random verifier in float64, so block and single-token passes agree far beyond argmax ties."""
    return tiny_qwen2(seed=1, vocab_size=VOCAB, hidden_size=32, num_layers=2, init_std=0.3, dtype=torch.float64)


@pytest.fixture(scope="session")
def dlm():
    return tiny_qwen2(
        seed=2, vocab_size=VOCAB, hidden_size=32, num_layers=1, causal=False, init_std=0.3, dtype=torch.float64
    )


def reference_greedy(model, prompt: torch.Tensor, max_new_tokens: int, eos: tuple[int, ...] = ()) -> torch.Tensor:
    """Plain greedy decoding without any cache: re-reads the whole sequence every step (slow, obviously right)."""
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = model(input_ids=ids[None]).logits[0, -1].argmax()
            ids = torch.cat([ids, token[None]])
            if int(token) in eos:
                break
    return ids


def greedy_with_eos_at(model, prompt: torch.Tensor, max_new_tokens: int, eos_at: int | None):
    """(expected sequence, eos ids): plain greedy output where the token plain decoding emits at ``eos_at``
    (if within budget) is declared the EOS, so property tests put EOS anywhere."""
    plain = reference_greedy(model, prompt, max_new_tokens)
    eos = (int(plain[prompt.numel() + eos_at]),) if eos_at is not None and eos_at < max_new_tokens else ()
    return reference_greedy(model, prompt, max_new_tokens, eos), eos


def cps_variant(name: str | None, proxy) -> CPSConfig | None:
    """The CPS settings the property tests draw from: off, argmax, beam, exact DP."""
    return {
        None: None,
        "argmax": CPSConfig(lam=1.0),
        "beam": CPSConfig(proxy=proxy, beam=3, m_max=4),
        "dp": CPSConfig(proxy=proxy, search="dp", m_max=3),
    }[name]


class OracleDrafter(Drafter):
    """Drafts the verifier's own greedy continuation, with each slot corrupted with probability ``noise``."""

    def __init__(self, model, noise: float = 0.0, seed: int = 0):
        self.model, self.noise = model, noise
        self.vocab_size = model.config.vocab_size
        self.rng = torch.Generator().manual_seed(seed)

    def propose(self, request: DraftRequest) -> Lattice:
        ids = reference_greedy(self.model, request.ids, request.k)[request.ids.numel() :]
        corrupt = torch.rand(ids.numel(), generator=self.rng) < self.noise
        ids[corrupt] = torch.randint(0, self.vocab_size, (int(corrupt.sum()),), generator=self.rng)
        logprobs = torch.full((ids.numel(), self.vocab_size), -20.0)
        logprobs[torch.arange(ids.numel()), ids] = 0.0
        return Lattice.from_logprobs(torch.log_softmax(logprobs, -1), request.width, request.eos_token_ids)
