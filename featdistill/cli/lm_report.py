"""The end of a language-model run: held-out bits per byte of teacher and student, the claim they make, and one
sample each from the same prompt."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Data, Recipe
from ..data import Batch
from ..data.text import EOD
from ..errors import FeatdistillError
from ..train import evaluate_lm, logits_of

WITHIN = 0.05  # the claim: the student's held-out bits per byte within 5% of the teacher's (DistilBERT-style)
SEED, TEMPERATURE = 0, 0.7  # the sample: fixed seed, so reruns print the same text


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, new_tokens: int, context: int, seed: int = SEED,
             temperature: float = TEMPERATURE) -> torch.Tensor:
    """``new_tokens`` ids ``[N]`` sampled after ``prompt [P]`` at ``temperature`` (0: greedy), each from the last
    ``context`` tokens (the block length the model was trained on), with a generator seeded by ``seed``."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    ids, gen = prompt[None].to(device), torch.Generator().manual_seed(seed)
    for _ in range(new_tokens):
        window = ids[:, -context:]
        logits = logits_of(Batch({"input_ids": window, "attention_mask": torch.ones_like(window)}).run(model))
        last = logits[0, -1].float().cpu()  # [V]
        if temperature == 0:
            token = last.argmax()
        else:
            token = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen)[0]
        ids = torch.cat([ids, token.view(1, 1).to(device)], dim=1)
    model.train(was_training)
    return ids[0, len(prompt):].cpu()


def decode(data: Data, ids: torch.Tensor) -> str:
    """Text of token ids: UTF-8 bytes (invalid sequences as U+FFFD, the end-of-document token as a blank line) or
    the Hugging Face tokenizer's ``decode``."""
    ids = [int(i) for i in ids]
    if data.tokenizer is None:
        parts, run = [], []
        for i in ids + [EOD]:
            if i < 256:
                run.append(i)
                continue
            parts.append(bytes(run).decode("utf-8", errors="replace"))
            run = []
        return "\n\n".join(parts)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(data.tokenizer), local_files_only=True)
    except (OSError, ValueError) as e:
        raise FeatdistillError(f"cannot load data.tokenizer {data.tokenizer!r} to decode the sample: {e}") from None
    return tok.decode(ids)


def samples(recipe: Recipe, models: dict[str, nn.Module], test) -> dict:
    """One sample per model from the same held-out prompt: up to 48 test tokens from the start of its second block
    (past the first document's title), or of its first when the split is that short."""
    data = recipe.data
    size = min(48, data.block_size // 2)
    start = data.block_size if len(test.tokens) > data.block_size + size else 1  # 0 is a separator
    prompt = test.tokens[start:start + size]
    new = 100 if data.tokenizer is None else 30  # about 100 bytes either way
    out = {"prompt": decode(data, prompt), "seed": SEED, "temperature": TEMPERATURE}
    for name, model in models.items():
        out[name] = decode(data, generate(model, prompt, new, data.block_size))
    return out


def lm_results(recipe: Recipe, teacher: nn.Module, student: nn.Module, loaders, device: torch.device) -> dict:
    """Test-split loss (nats/token), perplexity, bits per byte and token accuracy of both models, the ratio of their
    bits per byte, whether it keeps the claim, and one sample each."""
    amp, out = recipe.train.amp, {}
    nan = {"loss": math.nan, "perplexity": math.nan, "bits_per_byte": math.nan, "accuracy": math.nan}
    for name, model in (("student", student), ("teacher", teacher)):
        metrics = evaluate_lm(model, loaders.test, device, amp) if name == "student" or recipe.eval_teacher else nan
        out |= {f"{name}_{k}": v for k, v in metrics.items()}
    ratio = out["student_bits_per_byte"] / out["teacher_bits_per_byte"]
    out["bits_per_byte_ratio"] = ratio
    out["within_5_percent"] = bool(ratio <= 1 + WITHIN) if math.isfinite(ratio) else None
    out["sample"] = samples(recipe, {"teacher": teacher, "student": student}, loaders.test.dataset)
    return out


def lm_lines(summary: dict) -> list[str]:
    """The printed summary of a text run (``summary`` from :func:`~featdistill.cli.report.finish`)."""
    size = summary["student_params"] / summary["teacher_params"]
    speed = summary["teacher_latency_ms"] / summary["student_latency_ms"]
    ratio, block = summary["bits_per_byte_ratio"], summary["block_size"]
    lines = [f"{name}: {summary[f'{name}_bits_per_byte']:.3f} bits/byte on the test text (perplexity "
             f"{summary[f'{name}_perplexity']:.2f}, {summary[f'{name}_loss']:.3f} nats/token), "
             f"{summary[f'{name}_params']:,} params, {summary[f'{name}_latency_ms']:.2f} ms per {block}-token "
             "block (CPU)" for name in ("teacher", "student")]
    within = summary["within_5_percent"]
    verdict = "no teacher figure" if within is None else f"{'within' if within else 'NOT within'} {WITHIN:.0%}"
    lines.append(f"the student's bits/byte are {ratio:.1%} of the teacher's ({verdict}) at {size:.0%} "
                 f"of its parameters, running {speed:.1f}x {'faster' if speed >= 1 else 'slower'} on the CPU")
    sample = summary["sample"]
    lines.append(f"samples from the same test prompt (temperature {sample['temperature']}, seed {sample['seed']}):")
    lines += [f"  {k + ':':9s}{sample[k]!r}" for k in ("prompt", "teacher", "student")]
    return lines
