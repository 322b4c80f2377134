"""``python -m featdistill.generate RECIPE --samples N``: text the recipe's teacher writes, for sequence-level KD.

The teacher is prepared exactly as ``featdistill.run`` prepares it (the cached one, or trained on the task and
cached), on the recipe's real text (``data.train_root`` is never read here). ``N`` prompts of ``--prompt-tokens``
tokens are drawn, seeded, from the training split only (never val or test; each inside one document), and the
teacher continues each (``--temperature``, ``--top-p``, up to ``--max-new-tokens``, stopping at the end of a
document). The result is a JSONL file, one ``{"text": prompt + continuation, "prompt": ..., "continuation": ...}``
per line, that ``Data(name="text", root=FILE)`` or ``Data(..., train_root=FILE)`` reads back, and beside it
``FILE.json``: the settings, the recipe, the teacher (cache file and sha256), counts and time.

``--out`` defaults to the recipe's ``data.train_root`` (recipes/lm_synthetic.py reads from there). An existing file
is never overwritten: both files are written under temporary names and renamed when complete.

Exit codes: 0 ok, 2 a problem in the input (the message names the fix), 1 an internal error, 130 / 143 stopped by
SIGINT / SIGTERM (nothing is written).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import __version__
from ..config import Recipe
from ..data import is_text, make_loaders
from ..data.text import BYTES, load_tokens
from ..errors import FeatdistillError
from ..recipe import to_dict
from ..train import Interrupted, StopRequest
from .common import exit_code, recipe_with_overrides
from .run import pick_device
from .sampling import continuations, draw_prompts, sample
from .teacher import cache_path, prepare_teacher

SIDECAR = ".json"  # FILE.jsonl -> FILE.jsonl.json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m featdistill.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a language-model recipe file (text data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, as for featdistill.run (e.g. --set teacher.pretrain.epochs=8)")
    p.add_argument("--samples", type=int, default=2000, help="how many prompts to continue (default 2000)")
    p.add_argument("--out", type=Path, help="the .jsonl file to write (default: the recipe's data.train_root)")
    p.add_argument("--prompt-tokens", type=int,
                   help="tokens per prompt (default 32, or a quarter of data.block_size when that is less)")
    p.add_argument("--max-new-tokens", type=int,
                   help="tokens the teacher adds at most (default: data.block_size - --prompt-tokens)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy (default 1)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass, in (0, 1] (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seeds the prompts and the sampling (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts continued together (default 64)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[Recipe, Path]:
    """The recipe with its overrides, and the output path; every problem with them or the settings at once."""
    recipe = recipe_with_overrides(args.recipe, args.overrides)
    if not is_text(recipe.data):
        raise FeatdistillError(f"{args.recipe} trains on data.name={recipe.data.name!r}, which is not text; generate "
                               "continues text with a language-model teacher. Give an LM recipe, e.g. "
                               "recipes/lm_to_small_lm.py.")
    block = recipe.data.block_size
    if args.prompt_tokens is None:
        args.prompt_tokens = min(32, max(1, block // 4))
    if args.max_new_tokens is None:
        args.max_new_tokens = block - args.prompt_tokens
    found = [f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}"
             for name in ("samples", "prompt_tokens", "max_new_tokens", "batch_size") if getattr(args, name) < 1]
    if args.prompt_tokens + args.max_new_tokens > block:
        found.append(f"--prompt-tokens + --max-new-tokens is {args.prompt_tokens + args.max_new_tokens}, past the "
                     f"{block} tokens (data.block_size) the teacher was trained on; lower either")
    if not 0 <= args.temperature < float("inf"):
        found.append(f"--temperature must be >= 0 (0 is greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        found.append(f"--top-p must be in (0, 1] (1 keeps every token), got {args.top_p}")
    out = args.out or (Path(recipe.data.train_root) if recipe.data.train_root else None)
    if out is None:
        found.append(f"give --out FILE.jsonl ({args.recipe} has no data.train_root to write to)")
    elif out.suffix != ".jsonl":
        found.append(f"--out {str(out)!r} must end in .jsonl (the text loader reads .jsonl and .txt)")
    else:
        taken = [str(p) for p in (out, sidecar(out)) if p.exists()]
        if taken:
            found.append(f"{' and '.join(taken)} already exist(s); nothing was touched. Give another --out, or "
                         "delete them to generate again")
    if found:
        raise FeatdistillError("cannot generate:\n" + "\n".join(f"  - {p}" for p in found))
    return recipe, out


def sidecar(out: Path) -> Path:
    return out.with_name(out.name + SIDECAR)


def teacher_file(recipe: Recipe) -> tuple[str | None, str | None]:
    """The teacher's weights file (cache entry or checkpoint) and its sha256, when there is one."""
    path = cache_path(recipe) if recipe.teacher.pretrain is not None else recipe.teacher.checkpoint
    if path is None or not Path(path).is_file():
        return None, None
    return str(path), hashlib.sha256(Path(path).read_bytes()).hexdigest()


def decoder(tokenizer: str | None):
    """ids -> text: UTF-8 bytes (invalid sequences as U+FFFD), or the Hugging Face tokenizer's ``decode``, loaded
    once. Prompts and continuations hold no end-of-document token."""
    if tokenizer is None:
        return lambda ids: bytes(ids).decode("utf-8", errors="replace")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(tokenizer).expanduser()), local_files_only=True).decode


def write_atomic(out: Path, lines: list[str], meta: dict) -> None:
    """The data file and its sidecar under temporary names, then renamed, the data file last: an existing data
    file means a complete pair. Never replaces a file that appeared meanwhile."""
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs = [(sidecar(out), json.dumps(meta, indent=2) + "\n"), (out, "".join(line + "\n" for line in lines))]
    temps = []
    try:
        for path, text in pairs:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temps.append(tmp)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for (path, _), tmp in zip(pairs, temps):
            os.link(tmp, path)  # fails if the path exists: no overwrite, even in a race
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def generate(args: argparse.Namespace, stop: StopRequest) -> int:
    started = time.perf_counter()
    recipe, out = resolve(args)
    real = replace(recipe, data=recipe.data.for_teacher())  # the teacher's own text, never data.train_root
    device = pick_device(args.device)
    loaders = make_loaders(real.data, args.batch_size)
    train = loaders.train.dataset  # TextBlocks of the training split: prompts come from here only
    tokens = BYTES if real.data.tokenizer is None else load_tokens(real.data.tokenizer)
    prompts = draw_prompts(train.tokens, args.samples, args.prompt_tokens, tokens.sep, real.data.tokenizer is None,
                           args.seed)
    if len(prompts) == 0:
        raise FeatdistillError(f"the training split has no document of {args.prompt_tokens} tokens to draw a prompt "
                               "from; lower --prompt-tokens")
    teacher, source = prepare_teacher(real, loaders, device, quiet=args.quiet, stop=stop)
    weights, sha = teacher_file(real)
    gen, rows, ended, begun = torch.Generator().manual_seed(args.seed), [], 0, time.perf_counter()
    for i in range(0, len(prompts), args.batch_size):
        if stop.signum is not None:
            raise Interrupted(stop.signum, (0, i // args.batch_size), saved=False)
        batch = prompts[i:i + args.batch_size].to(device)
        new, done = continuations(sample(teacher, batch, args.max_new_tokens, args.temperature, args.top_p,
                                         tokens.sep, real.data.block_size, gen).cpu(), tokens.sep)
        rows += [(p, n) for p, n in zip(batch.cpu().tolist(), new)]
        ended += done
        if not args.quiet:
            print(f"generate: {len(rows)}/{len(prompts)} continuations", flush=True)
    seconds = time.perf_counter() - begun
    lines, replaced, new_tokens, size, text_of = [], 0, 0, 0, decoder(real.data.tokenizer)
    for prompt, new in rows:
        p, c = text_of(prompt), text_of(new)
        replaced, new_tokens, size = replaced + c.count("\ufffd"), new_tokens + len(new), size + len((p + c).encode())
        lines.append(json.dumps({"text": p + c, "prompt": p, "continuation": c}, ensure_ascii=False))
    meta = {
        "featdistill": __version__, "created": time.strftime("%F %T"), "recipe": str(Path(args.recipe).resolve()),
        "overrides": args.overrides, "data": to_dict(real.data), "prompts_from": "train split",
        "settings": {"samples": args.samples, "prompt_tokens": args.prompt_tokens,
                     "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                     "seed": args.seed, "batch_size": args.batch_size},
        "teacher": {"spec": to_dict(real.teacher), "source": source, "weights": weights, "sha256": sha},
        "counts": {"samples": len(lines), "distinct_prompts": len({tuple(p) for p, _ in rows}),
                   "prompt_tokens": len(rows) * args.prompt_tokens, "new_tokens": new_tokens,
                   "ended_document": ended, "replacement_chars": replaced,
                   "bytes": size},
        "device": str(device), "torch_threads": torch.get_num_threads(), "generate_seconds": round(seconds, 2),
        "elapsed_seconds": round(time.perf_counter() - started, 2),
    }
    write_atomic(out, lines, meta)
    print(f"wrote {len(lines)} samples ({meta['counts']['bytes']:,} bytes; {ended} ended their document) to {out} "
          f"and the settings to {sidecar(out)}, in {meta['elapsed_seconds']:.1f} s ({seconds:.1f} s generating)")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        with StopRequest() as stop:
            return generate(args, stop)
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"stopped by {signal.Signals(signum).name}; nothing was written (a teacher trained and cached before "
              "the stop is kept). Run the same command again.", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        return exit_code(exc)
