"""What ``featdistill.generate`` samples: prompts drawn from a token stream, and a model's continuations of them.

Prompts are windows of ``P`` tokens of the training split's stream that hold no document separator (so each lies
inside one document) and, for byte tokens, start and end on a UTF-8 character boundary (so prompt and continuation
decode to exactly the text they came from). The windows are chosen by a seeded generator, without replacement when
there are enough of them.

Continuations: top-p (nucleus) sampling at a temperature (0: greedy), stopping at the document separator. A
Hugging Face model samples through its own ``generate`` with its key/value cache; any other model (a factory's
``nn.Module`` returning logits ``[B, T, V]``) through :func:`sample_loop`, which runs the last ``context`` tokens
again at every step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import Batch
from ..train import logits_of


def prompt_starts(tokens: torch.Tensor, length: int, sep: int | None, byte_tokens: bool) -> torch.Tensor:
    """int64 ``[M]``: every start ``s`` whose window ``tokens[s:s + length]`` holds no ``sep`` and, for byte tokens,
    begins and ends on a character boundary (no UTF-8 continuation byte ``0b10xxxxxx`` at ``s`` or ``s + length``).
    ``tokens`` is the split's stream ``[N]``."""
    n = len(tokens) - length + 1
    if n < 1:
        return torch.zeros(0, dtype=torch.int64)
    ok = torch.ones(n, dtype=torch.bool)
    if sep is not None:
        seps = torch.cat([torch.zeros(1, dtype=torch.int64), (tokens == sep).long().cumsum(0)])  # [N + 1]
        ok &= seps[length:length + n] == seps[:n]  # no separator inside the window
    if byte_tokens:
        boundary = torch.cat([(tokens & 0xC0) != 0x80, torch.ones(1, dtype=torch.bool)])  # [N + 1]; the end is one
        ok &= boundary[:n] & boundary[length:length + n]
    return ok.nonzero().flatten()


def draw_prompts(tokens: torch.Tensor, count: int, length: int, sep: int | None, byte_tokens: bool,
                 seed: int) -> torch.Tensor:
    """``[count, length]`` prompt windows of ``tokens`` (see :func:`prompt_starts`), in a seeded random order;
    sorted starts are drawn without replacement while ``count`` does not exceed them."""
    starts = prompt_starts(tokens, length, sep, byte_tokens)
    if len(starts) == 0:
        return torch.zeros(0, length, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(starts), generator=gen)[:count] if count <= len(starts) else \
        torch.randint(len(starts), (count,), generator=gen)
    return torch.stack([tokens[s:s + length] for s in starts[pick].tolist()])


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits [B, V]`` with every token outside the nucleus set to ``-inf``: the fewest most likely tokens whose
    probabilities sum to at least ``top_p`` (the most likely one always stays), as Holtzman et al. and HF do."""
    if top_p >= 1.0:
        return logits
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = ordered.softmax(-1)
    drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@torch.no_grad()
def sample_loop(model: nn.Module, prompts: torch.Tensor, max_new: int, temperature: float, top_p: float,
                stop: int | None, context: int, gen: torch.Generator) -> torch.Tensor:
    """``[B, max_new]`` tokens after ``prompts [B, P]``, each sampled from the last ``context`` tokens; after a
    row's ``stop`` token it continues with ``stop`` (cut off by :func:`continuations`)."""
    ids = prompts
    done = torch.zeros(len(prompts), dtype=torch.bool, device=prompts.device)
    for _ in range(max_new):
        window = ids[:, -context:]
        logits = logits_of(Batch({"input_ids": window, "attention_mask": torch.ones_like(window)}).run(model))
        last = logits[:, -1].float().cpu()  # [B, V]
        if temperature == 0:
            token = last.argmax(-1)
        else:
            token = torch.multinomial(top_p_filter(last / temperature, top_p).softmax(-1), 1, generator=gen)[:, 0]
        token = token.to(ids.device)
        if stop is not None:
            token = torch.where(done, torch.full_like(token, stop), token)
            done |= token == stop
        ids = torch.cat([ids, token[:, None]], dim=1)
        if bool(done.all()):
            break
    return ids[:, prompts.shape[1]:]


@torch.no_grad()
def sample(model: nn.Module, prompts: torch.Tensor, max_new: int, temperature: float, top_p: float,
           stop: int | None, context: int, gen: torch.Generator) -> torch.Tensor:
    """Continuations ``[B, <= max_new]`` of ``prompts [B, P]`` (on the model's device), the model in eval mode.
    ``gen`` seeds the sampling: the fallback loop draws from it, HF ``generate`` from the global generator, which is
    seeded from it first."""
    was_training = model.training
    model.eval()
    try:
        if not callable(getattr(model, "generate", None)) or not hasattr(model, "generation_config"):
            return sample_loop(model, prompts, max_new, temperature, top_p, stop, context, gen)
        torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=gen)))
        greedy = temperature == 0
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=max_new,
                             do_sample=not greedy, temperature=None if greedy else temperature,
                             top_p=None if greedy else top_p, top_k=None if greedy else 0, eos_token_id=stop,
                             pad_token_id=stop if stop is not None else 0, use_cache=True)
        return out[:, prompts.shape[1]:]
    finally:
        model.train(was_training)


def continuations(new: torch.Tensor, stop: int | None) -> tuple[list[list[int]], int]:
    """Each row of ``new [B, L]`` up to (without) its first ``stop``, and how many rows had one (ended their
    document rather than running out of tokens)."""
    rows, ended = [], 0
    for row in new.tolist():
        if stop is not None and stop in row:
            row, ended = row[:row.index(stop)], ended + 1
        rows.append(row)
    return rows, ended
