"""What hooks and feature pairs cost: median step times, modes interleaved, reported as ratios.

Modes (per model pair): a plain student forward vs the same forward with hooks attached, then full
training steps (forward, backward, optimizer): student alone, logit-only KD, and feature KD with
1, 2, 4 and 8 pairs. Every round runs each mode once in a shuffled order, so drift on a shared machine
hits all modes alike; each mode's time is divided by the logit-only KD time of the same round and the
median of those ratios is reported (forward rows: by the plain forward), with the median time per mode.
Model pairs: `cnn` ResNet-34 -> ResNet-18 (equal widths: identity adapters), `vit` ViT-S -> ViT-Ti (linear
adapters), `cnn_wide` ResNet-26 -> ResNet-18 (1x1 conv + BatchNorm adapters on every pair). Pairs are added
in the order layer1, layer2, layer3, layer4, then the first block of each stage (ViT: blocks 7, 3, 5, 1, ...).

    python benchmarks/step_cost.py                      # CPU, both model pairs
    python benchmarks/step_cost.py --device cuda --amp bf16 --rounds 50
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from featdistill import Distiller, FeatureHooks, LogitKD, Pair

OUT = Path(__file__).parent / "out"


CNN_LAYERS = ["layer1", "layer2", "layer3", "layer4", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def cnn_pair(image: int):
    """ResNet-34 -> ResNet-18 (the usual ImageNet pair): equal widths, so 'auto' adapters are identities."""
    teacher = timm.create_model("resnet34", pretrained=False, num_classes=10)
    student = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return teacher, student, [Pair(n, n) for n in CNN_LAYERS], (3, image, image)


def cnn_wide_pair(image: int):
    """ResNet-26 (bottleneck, 4x wider stages) -> ResNet-18: every pair needs a 1x1 conv + BatchNorm adapter."""
    teacher = timm.create_model("resnet26", pretrained=False, num_classes=10)
    student = timm.create_model("resnet18", pretrained=False, num_classes=10)
    return teacher, student, [Pair(n, n) for n in CNN_LAYERS], (3, image, image)


def vit_pair(image: int):
    teacher = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=image, patch_size=8, depth=8,
                                num_classes=10)
    student = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image, patch_size=8, depth=8,
                                num_classes=10)
    return teacher, student, [Pair(f"blocks.{i}", f"blocks.{i}") for i in (7, 3, 5, 1, 0, 2, 4, 6)], (3, image, image)


PAIRS = {"cnn": cnn_pair, "vit": vit_pair, "cnn_wide": cnn_wide_pair}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(model, opt, x, y, amp):
    def step():
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            out = model(x, y) if y is not None else model(x)
            loss = out["loss"] if isinstance(out, dict) else F.cross_entropy(out, y_true)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    y_true = y
    return step


def build_modes(teacher, student, pairs, shape, batch, device, amp):
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    teacher, student = teacher.to(device), student.to(device)
    modes, closers = {}, []

    def forward_only(hooks=None):
        def run():
            with torch.no_grad(), torch.autocast(device, dtype=amp, enabled=amp is not None):
                student(x)
            if hooks is not None:
                hooks.pop()
        return run

    student.eval()
    modes["forward: plain"] = forward_only()
    hooks = FeatureHooks(student, [p.student for p in pairs[:2]], detach=True)
    hooks.active = False
    closers.append(hooks)

    def hooked():
        hooks.active = True
        forward_only(hooks)()
        hooks.active = False

    modes["forward: 2 hooks"] = hooked
    student.train()
    opt = torch.optim.SGD(student.parameters(), lr=1e-4)

    def student_only():
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    modes["step: student only"] = student_only
    for n in (0, 1, 2, 4, 8):
        d = Distiller(teacher, student, pairs[:n], kd=LogitKD(), sample_input=x[:2]).to(device)
        closers.append(d)
        d_opt = torch.optim.SGD(d.parameters(), lr=1e-4)
        name = "step: logit KD" if n == 0 else f"step: KD + {n} pair{'s' if n > 1 else ''}"
        modes[name] = make_step(d, d_opt, x, y, amp)
    return modes, closers


def measure(modes, rounds, warmup, device, seed=0):
    times = {name: [] for name in modes}
    order = list(modes)
    rng = random.Random(seed)
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            sync(device)
            start = time.perf_counter()
            modes[name]()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def peak_memory(modes, device):
    if device != "cuda":
        return {}
    peaks = {}
    for name, fn in modes.items():
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync(device)
        peaks[name] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    results = {}
    for which in args.pairs:
        teacher, student, pairs, shape = PAIRS[which](args.image)
        modes, closers = build_modes(teacher, student, pairs, shape, args.batch, args.device, amp)
        times = measure(modes, args.rounds, args.warmup, args.device)
        peaks = peak_memory(modes, args.device)
        for c in closers:
            c.close()
        results[which] = {}
        for name, ts in times.items():
            base = times["forward: plain" if name.startswith("forward") else "step: logit KD"]
            # the ratio within each round, then the median over rounds: drift between rounds cancels
            ratios = [t / b for t, b in zip(ts, base)]
            results[which][name] = {"median_ms": 1000 * statistics.median(ts), "ratio": statistics.median(ratios),
                                    "peak_mib": peaks.get(name)}
    meta = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(),
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "torch": torch.__version__, "timm": timm.__version__, "amp": args.amp, "batch": args.batch,
        "image": args.image, "rounds": args.rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"step_cost_{args.device}_{args.amp}"
    (args.out / f"{tag}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"step cost ({meta['device']}, amp={args.amp}, batch {args.batch}, {args.image}px, {args.rounds} "
             "interleaved rounds; ratio = median over rounds of (mode / logit-KD step) or (mode / plain forward))",
             ""]
    lines += ["| mode | " + " | ".join(f"{w} ms | {w} ratio" for w in results) + " |",
              "|---|" + "---:|---:|" * len(results)]
    for name in next(iter(results.values())):
        cells = " | ".join(f"{results[w][name]['median_ms']:.1f} | {results[w][name]['ratio']:.3f}x" for w in results)
        lines.append(f"| {name} | {cells} |")
    table = "\n".join(lines)
    (args.out / f"{tag}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
