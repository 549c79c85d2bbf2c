"""Counting transformers' rounds from its verifier passes, on layouts recorded from transformers 5 generate."""

from diffuspec.evaluation.methods import RoundLog, rounds_from_forward_calls


def test_greedy_generate_is_one_token_per_round():
    # Prompt of 15 tokens, 4 new: a 15-token prefill, then one token per pass.
    calls = [(0, 15), (15, 1), (16, 1), (17, 1)]
    assert rounds_from_forward_calls(calls, 15, 4) == RoundLog([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0])


def test_prompt_lookup_layout():
    # Recorded from generate(prompt_lookup_num_tokens=4): the prefill already carries 4 candidates (19 = 15 + 4);
    # pass (23, 5) verifies 4 candidates and the next pass starts at 25, so 2 tokens were appended (1 accepted).
    calls = [
        (0, 19),
        (15, 1),
        (16, 1),
        (17, 1),
        (18, 1),
        (19, 1),
        (20, 1),
        (21, 1),
        (22, 1),
        (23, 5),
        (25, 1),
        (26, 1),
        (27, 5),
        (29, 4),
        (33, 1),
    ]
    log = rounds_from_forward_calls(calls, 15, 20)
    assert log.path_lengths == [4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 4, 3, 0]
    assert log.accepted == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 3, 0]
    assert len(log.accepted) + sum(log.accepted) == 20  # every round appends accepted + the verifier's token


def test_unknown_layouts_give_a_reason_not_a_number():
    assert isinstance(rounds_from_forward_calls([None], 3, 1), str)
    assert "fresh cache" in rounds_from_forward_calls([(2, 1)], 3, 1)
    assert "layout" in rounds_from_forward_calls([(0, 3), (10, 1)], 3, 2)  # would append 8 tokens from 0 candidates
