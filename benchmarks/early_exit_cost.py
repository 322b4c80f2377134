"""What the teacher's early exit saves in feature-only KD (``kd=None``): the teacher stops after its deepest hooked
layer instead of running the rest of the network.

One pair at about a third of the teacher's depth, per model pair: `vit` ViT-S (12 blocks, 64 tokens) -> ViT-Ti
(4 blocks), pair on teacher `blocks.3`; `resnet` torchvision ResNet-50 -> ResNet-18, pair on teacher `layer2` (7 of
16 bottlenecks, a bit under half of the FLOPs). Modes: the teacher's forward (``need_logits=False``,
as the step calls it) with early exit and in full (``LiveTeacher(early_exit=False)``), and the whole training step
(forward, backward, optimizer) of a Distiller built on each. Every round runs each mode once, in a shuffled order
(:func:`step_cost.measure`), so drift on a shared machine hits all modes alike; the ratio early / full is taken
within each round and its median over rounds reported, with the median time per mode. The first `--warmup` rounds
(and each teacher's first feature-only call, which runs in full to learn where to stop) are not timed.

    python benchmarks/early_exit_cost.py --rounds 20
    python benchmarks/early_exit_cost.py --device cuda --rounds 50
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch
import torchvision
from step_cost import make_step, measure

from featdistill import Distiller, Pair
from featdistill.data.batch import Batch
from featdistill.distill.teachers import LiveTeacher

OUT = Path(__file__).parent / "out"


def vit_pair(image: int):
    patch = image // 8  # 64 tokens (+ class token) at any image size
    teacher = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=image, patch_size=patch, depth=12,
                                num_classes=10)
    student = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image, patch_size=patch, depth=4,
                                num_classes=10)
    return teacher, student, Pair("blocks.3", "blocks.3")


def resnet_pair(image: int):
    teacher = torchvision.models.resnet50(num_classes=10)
    student = torchvision.models.resnet18(num_classes=10)
    return teacher, student, Pair("layer2", "layer2")


PAIRS = {"vit": vit_pair, "resnet": resnet_pair}
MODES = ("teacher forward", "step kd=None")


def build_modes(which: str, image: int, batch: int, device: str) -> tuple[dict, list, list[str]]:
    """``{'<mode> [early exit|full]': callable}``, the Distillers to close, and the early-exit Distiller's plan line
    about the teacher."""
    teacher, student, pair = PAIRS[which](image)
    teacher = teacher.to(device)
    x = torch.randn(batch, 3, image, image, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    modes, closers, notes = {}, [], []
    for label, early_exit in (("early exit", True), ("full", False)):
        source = LiveTeacher(teacher, early_exit=early_exit)
        d = Distiller(source, copy.deepcopy(student), [pair], kd=None, sample_input=x[:2]).to(device)
        closers.append(d)
        notes.append(d.plan().splitlines()[1])
        one = Batch(x)

        def forward(source=source, one=one):
            source(one, need_logits=False)

        modes[f"teacher forward [{label}]"] = forward
        modes[f"step kd=None [{label}]"] = make_step(d, torch.optim.SGD(d.parameters(), lr=1e-4), x, y, None)
    return modes, closers, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--note", default="", help="a line about the machine, printed above the table")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = {}
    for which in args.pairs:
        modes, closers, notes = build_modes(which, args.image, args.batch, args.device)
        times = measure(modes, args.rounds, args.warmup, args.device)
        for c in closers:
            c.close()
        results[which] = {"plan": notes[0], "modes": {}}
        for mode in MODES:
            early, full = times[f"{mode} [early exit]"], times[f"{mode} [full]"]
            # the ratio within each round, then the median over rounds: drift between rounds cancels
            results[which]["modes"][mode] = {
                "early_exit_ms": 1000 * statistics.median(early), "full_ms": 1000 * statistics.median(full),
                "ratio": statistics.median(e / f for e, f in zip(early, full))}
    meta = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "torch": torch.__version__, "timm": timm.__version__, "batch": args.batch, "image": args.image,
        "rounds": args.rounds, "warmup": args.warmup, "note": args.note,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "early_exit_cost.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"early exit cost ({meta['device']}, {meta['threads']} thread(s), batch {args.batch}, {args.image}px, "
             f"{args.rounds} interleaved rounds after {args.warmup} warm-up; ratio = median over rounds of "
             "(early exit / full))"]
    if args.note:
        lines.append(f"note: {args.note}")
    lines += [""] + [f"- {w}: {r['plan']}" for w, r in results.items()] + [""]
    lines += ["| model pair | mode | early exit ms | full ms | ratio |", "|---|---|---:|---:|---:|"]
    for which, r in results.items():
        for mode, m in r["modes"].items():
            lines.append(f"| {which} | {mode} | {m['early_exit_ms']:.1f} | {m['full_ms']:.1f} | {m['ratio']:.3f}x |")
    table = "\n".join(lines)
    (args.out / "early_exit_cost.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
