"""A1111-style prompt weighting: parsing, and embeddings from the tiny CLIP text encoder."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from motionserve.inference.prompt_weighting import (
    encode_weighted,
    encode_weighted_prompts,
    parse_weighted,
    tokenize_weighted,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("(bad quality, worst quality:1.2), ugly", [("bad quality, worst quality", 1.2), (", ugly", 1.0)]),
        ("a (b) c", [("a ", 1.0), ("b", 1.1), (" c", 1.0)]),
        ("a [b] c", [("a ", 1.0), ("b", 1 / 1.1), (" c", 1.0)]),
        ("((b))", [("b", 1.1 * 1.1)]),
        ("((b:2):1.5)", [("b", 3.0)]),
        ("(b: 0.5 )", [("b", 0.5)]),
        ("(a (b:2))", [("a ", 1.1), ("b", 2.2)]),
        (r"\(literal\) and \[too\]", [("(literal) and [too]", 1.0)]),
        (r"back\\slash", [("back\\slash", 1.0)]),
        ("time: 10:30", [("time: 10:30", 1.0)]),
        ("(ratio:wide)", [("ratio:wide", 1.1)]),  # ":" without a number is text
        ("(unclosed", [("unclosed", 1.1)]),
        ("stray) and ]", [("stray) and ]", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse(text: str, expected: list[tuple[str, float]]) -> None:
    got = parse_weighted(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@given(st.text(alphabet=st.characters(blacklist_characters="()[]\\:"), max_size=60))
def test_text_without_syntax_is_one_run_of_weight_one(text: str) -> None:
    assert parse_weighted(text) == [(text, 1.0)]


@given(st.text(alphabet="ab ():.[]\\12", max_size=40))
def test_any_text_parses_and_keeps_its_letters(text: str) -> None:
    runs = parse_weighted(text)
    assert all(w > 0 for _, w in runs)
    joined = "".join(t for t, _ in runs)
    assert joined.count("a") == text.count("a") and joined.count("b") == text.count("b")


@pytest.fixture(scope="module")
def pipe(tiny_models: Any) -> Any:
    return tiny_models.text_to_video()


def test_plain_prompts_equal_the_pipelines_own_encode_prompt(pipe: Any) -> None:
    ours = encode_weighted_prompts(pipe, "a cat sitting on a mat, photo", "blurry, low quality")
    theirs = pipe.encode_prompt("a cat sitting on a mat, photo", torch.device("cpu"), 1, True, "blurry, low quality")
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_missing_negative_prompt_is_the_empty_prompt(pipe: Any) -> None:
    _, negative = encode_weighted_prompts(pipe, "a cat", None)
    _, theirs = pipe.encode_prompt("a cat", torch.device("cpu"), 1, True, None)
    assert torch.equal(negative, theirs)


def test_weights_scale_their_tokens_and_keep_the_mean(pipe: Any) -> None:
    plain, _ = encode_weighted(pipe.tokenizer, pipe.text_encoder, "a red fox")
    weighted, _ = encode_weighted(pipe.tokenizer, pipe.text_encoder, "a (red:1.5) fox")
    assert weighted.shape == plain.shape == (1, 77, plain.shape[-1])
    assert not torch.allclose(plain, weighted)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4, abs=1e-6)
    # Exactly the tokens of "red" carry the weight.
    _, weights = tokenize_weighted(pipe.tokenizer, "a (red:1.5) fox")
    assert weights.count(1.5) == len(pipe.tokenizer("red", add_special_tokens=False).input_ids)


def test_weight_one_is_the_plain_prompt(pipe: Any) -> None:
    a, _ = encode_weighted(pipe.tokenizer, pipe.text_encoder, "a (red:1.0) fox")
    b, _ = encode_weighted(pipe.tokenizer, pipe.text_encoder, "a red fox")
    assert torch.equal(a, b)


def test_long_prompts_are_chunked_not_truncated_and_both_sides_match(pipe: Any) -> None:
    long_prompt = "a very long prompt about a fox in the snow " * 4  # > 75 byte tokens
    positive, negative = encode_weighted(pipe.tokenizer, pipe.text_encoder, long_prompt, "blurry")
    n_tokens = len(pipe.tokenizer(long_prompt, add_special_tokens=False).input_ids)
    chunks = -(-n_tokens // 75)
    assert chunks >= 2
    assert positive.shape[1] == negative.shape[1] == 77 * chunks
    # The tail of the prompt is encoded (a different ending gives a different second chunk).
    other, _ = encode_weighted(pipe.tokenizer, pipe.text_encoder, long_prompt + " at night", "blurry")
    assert torch.equal(positive[:, :77], other[:, :77]) and not torch.equal(positive[:, 77:], other[:, 77:])
    # The negative prompt's first chunk is its ordinary encoding; the padding chunks are the empty prompt.
    _, short_negative = encode_weighted(pipe.tokenizer, pipe.text_encoder, "x", "blurry")
    empty, _ = encode_weighted(pipe.tokenizer, pipe.text_encoder, "", "")
    assert torch.equal(negative[:, :77], short_negative)
    assert torch.equal(negative[:, 77:154], empty)


def test_escaped_parentheses_are_literal_text(pipe: Any) -> None:
    escaped, _ = encode_weighted(pipe.tokenizer, pipe.text_encoder, r"a \(fox\)")
    literal = pipe.encode_prompt("a (fox)", torch.device("cpu"), 1, False)[0]
    assert torch.equal(escaped, literal)
