"""A1111/ComfyUI prompt weighting for CLIP text encoders.

Syntax (as in AUTOMATIC1111's web UI, which fal's default negative prompt
``"(bad quality, worst quality:1.2), ..."`` is written for):

- ``(text)`` multiplies the weight of `text` by 1.1, ``[text]`` divides it by 1.1;
- ``(text:1.5)`` multiplies it by 1.5; brackets nest and multiply;
- ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal characters; an unclosed bracket applies to the
  rest of the prompt, a stray closing one is literal text; ``:`` without a number is literal text.

Encoding: every token gets the weight of the text it came from. Tokens are cut into 75-token chunks,
each wrapped as BOS + 75 + EOS/padding = 77 and encoded separately; each chunk's hidden states are
scaled per token by their weights and then rescaled so their mean is the unweighted mean (A1111's
"emphasis", which keeps the overall magnitude the UNet expects). Chunks are concatenated, so prompts
longer than 77 tokens are NOT truncated (unlike diffusers' own `encode_prompt`); the shorter of prompt
and negative prompt is padded with encoded empty chunks so both have the same length, which
classifier-free guidance needs. A prompt without weights that fits in 77 tokens encodes to exactly
what the pipeline's `encode_prompt` gives.
"""

from __future__ import annotations

from typing import Any

import torch

ROUND_FACTOR = 1.1
CHUNK_TOKENS = 75  # 77 minus BOS and EOS


def parse_weighted(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs; adjacent runs of equal weight are merged."""
    pieces: list[list[Any]] = []  # [text, weight], weights multiplied in place as brackets close
    open_round: list[int] = []  # index into `pieces` where each open bracket started
    open_square: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            # An escape keeps the next bracket/backslash literal; a lone backslash is itself literal.
            if i + 1 < n and text[i + 1] in "()[]\\":
                pieces.append([text[i + 1], 1.0])
                i += 2
            else:
                pieces.append([ch, 1.0])
                i += 1
        elif ch == "(":
            open_round.append(len(pieces))
            i += 1
        elif ch == "[":
            open_square.append(len(pieces))
            i += 1
        elif ch == ")" and open_round:
            multiply_from(open_round.pop(), ROUND_FACTOR)
            i += 1
        elif ch == "]" and open_square:
            multiply_from(open_square.pop(), 1 / ROUND_FACTOR)
            i += 1
        elif ch == ":" and open_round and (weight := _explicit_weight(text, i)) is not None:
            value, end = weight
            multiply_from(open_round.pop(), value)
            i = end
        else:
            # Plain text up to the next character with a meaning (or a literal stray ")"/"]"/":").
            j = i + 1
            while j < n and text[j] not in "\\()[]:":
                j += 1
            pieces.append([text[i:j], 1.0])
            i = j
    for start in open_round:
        multiply_from(start, ROUND_FACTOR)
    for start in open_square:
        multiply_from(start, 1 / ROUND_FACTOR)

    merged: list[tuple[str, float]] = []
    for piece_text, weight in pieces:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece_text, weight)
        else:
            merged.append((piece_text, weight))
    return merged or [("", 1.0)]


def _explicit_weight(text: str, colon: int) -> tuple[float, int] | None:
    """For ``:<number>)`` at `colon`, the number and the index after ``)``; None when it is not one."""
    j = colon + 1
    while j < len(text) and text[j].isspace():
        j += 1
    start = j
    if j < len(text) and text[j] in "+-":
        j += 1
    while j < len(text) and (text[j].isdigit() or text[j] == "."):
        j += 1
    number = text[start:j]
    while j < len(text) and text[j].isspace():
        j += 1
    if j >= len(text) or text[j] != ")":
        return None
    try:
        return float(number), j + 1
    except ValueError:
        return None


def tokenize_weighted(tokenizer: Any, text: str) -> tuple[list[int], list[float]]:
    """Token ids (no BOS/EOS) and one weight per token."""
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in parse_weighted(text):
        if not piece:
            continue
        # verbose=False: long prompts are chunked below, so the tokenizer's length warning does not apply.
        piece_ids = tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids
        ids.extend(piece_ids)
        weights.extend([weight] * len(piece_ids))
    return ids, weights


def _chunks(tokenizer: Any, ids: list[int], weights: list[float], n_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_chunks` rows of 77 ids (BOS, tokens, EOS, padding) and their weights (1.0 on specials)."""
    length = CHUNK_TOKENS + 2
    rows, row_weights = [], []
    for c in range(n_chunks):
        part = ids[c * CHUNK_TOKENS : (c + 1) * CHUNK_TOKENS]
        part_w = weights[c * CHUNK_TOKENS : (c + 1) * CHUNK_TOKENS]
        row = [tokenizer.bos_token_id, *part, tokenizer.eos_token_id]
        row_w = [1.0, *part_w, 1.0]
        row += [tokenizer.pad_token_id] * (length - len(row))
        row_w += [1.0] * (length - len(row_w))
        rows.append(row)
        row_weights.append(row_w)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(row_weights, dtype=torch.float32)


def _encode(text_encoder: Any, ids: torch.Tensor, weights: torch.Tensor, pad_token_id: int, device: torch.device) -> torch.Tensor:
    """Encode chunk rows and apply the weights; returns (1, n_chunks*77, dim)."""
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = (ids != pad_token_id).long().to(device)  # same rule as the tokenizer's attention mask
    hidden = text_encoder(ids.to(device), attention_mask=mask)[0]
    if not torch.all(weights == 1.0):
        w = weights.to(device=device, dtype=hidden.dtype).unsqueeze(-1)
        for c in range(hidden.shape[0]):
            # Emphasis without changing the chunk's overall magnitude (A1111's mean restoration).
            original_mean = hidden[c].mean()
            scaled = hidden[c] * w[c]
            hidden[c] = scaled * (original_mean / scaled.mean())
    return hidden.reshape(1, -1, hidden.shape[-1])


@torch.no_grad()
def encode_weighted(
    tokenizer: Any,
    text_encoder: Any,
    prompt: str,
    negative_prompt: str | None = None,
    *,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`prompt_embeds` and `negative_prompt_embeds` (same shape, batch 1) for a diffusers pipeline."""
    device = torch.device(device) if device is not None else text_encoder.device
    pos_ids, pos_w = tokenize_weighted(tokenizer, prompt)
    neg_ids, neg_w = tokenize_weighted(tokenizer, negative_prompt or "")
    n_chunks = max(1, -(-len(pos_ids) // CHUNK_TOKENS), -(-len(neg_ids) // CHUNK_TOKENS))
    embeds = []
    for ids, weights in ((pos_ids, pos_w), (neg_ids, neg_w)):
        rows, row_w = _chunks(tokenizer, ids, weights, n_chunks)
        embeds.append(_encode(text_encoder, rows, row_w, tokenizer.pad_token_id, device).to(text_encoder.dtype))
    return embeds[0], embeds[1]


def encode_weighted_prompts(
    pipe: Any, prompt: str, negative_prompt: str | None = None, *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`prompt_embeds`, `negative_prompt_embeds` for calling `pipe` (uses its tokenizer and text encoder)."""
    return encode_weighted(
        pipe.tokenizer, pipe.text_encoder, prompt, negative_prompt,
        device=device if device is not None else pipe._execution_device,
    )
