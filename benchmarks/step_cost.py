"""What hooks and feature pairs cost: median step times, modes interleaved, reported as ratios.

Modes (per model pair): a plain student forward vs the same forward with hooks attached, then full
training steps (forward, backward, optimizer): student alone, logit-only KD, and feature KD with
1, 2, 4 and 8 pairs. Every round runs each mode once in a shuffled order, so drift on a shared machine
hits all modes alike; each mode's time is divided by the logit-only KD time of the same round and the
median of those ratios is reported (forward rows: by the plain forward), with the median time per mode.
Model pairs: `cnn` ResNet-34 -> ResNet-18 (equal widths: identity adapters), `vit` ViT-S -> ViT-Ti (linear
adapters), `cnn_wide` ResNet-26 -> ResNet-18 (1x1 conv + BatchNorm adapters on every pair). Pairs are added
in the order layer1, layer2, layer3, layer4, then the first block of each stage (ViT: blocks 7, 3, 5, 1, ...).

Speed-ups, measured in the same interleaved rounds: `--compile`, `--channels-last` and `--also-amp bf16` each add
twins of three step modes (student only, logit KD, KD + 2 pairs) built on their own copies of the models
(compiled in place as `train.compile=True` does, hooks attached; channels-last as `train.channels_last=True`;
autocast as `train.amp`), with combinations when several are given; each twin's `vs eager` ratio is its time over
the plain mode's in the same round. The first `--warmup` rounds (compilation included) are not timed.

    python benchmarks/step_cost.py                      # CPU, every model pair
    python benchmarks/step_cost.py --pairs cnn vit --compile --channels-last --also-amp bf16
    python benchmarks/step_cost.py --device cuda --amp bf16 --rounds 50 --compile
"""

from __future__ import annotations

import argparse
import copy
import itertools
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
from featdistill.train import speedups

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


TWINNED = ("step: student only", "step: logit KD", "step: KD + 2 pairs")


def variant_names(compile_: bool, channels_last: bool, also_amp: str) -> list[tuple[str, ...]]:
    """Every non-empty combination of the asked speed-ups, e.g. ``[('compiled',), ('bf16',), ('compiled', 'bf16')]``."""
    asked = [name for name, on in (("compiled", compile_), ("channels_last", channels_last),
                                   (also_amp, also_amp != "none")) if on]
    return [combo for n in range(1, len(asked) + 1) for combo in itertools.combinations(asked, n)]


def build_twins(teacher, student, pairs, shape, batch, device, base_amp, variants, backend="inductor"):
    """``{'<mode> [<variant>]': step}`` for each of :data:`TWINNED` and each variant, on fresh model copies."""
    twins, closers = {}, []
    for variant in variants:
        amp = next((AMPS[v] for v in variant if v in AMPS), base_amp)
        t, s = copy.deepcopy(teacher).to(device), copy.deepcopy(student).to(device)
        x = torch.randn(batch, *shape, device=device)
        if "channels_last" in variant:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)
        label = " [" + " + ".join(variant) + "]"
        s_opt = torch.optim.SGD(s.parameters(), lr=1e-4)

        def student_only(s=s, x=x, y=y, amp=amp, opt=s_opt):
            with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(s(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps = {"step: student only": student_only}
        for n in (0, 2):
            d = Distiller(t, s, pairs[:n], kd=LogitKD(), sample_input=x[:2]).to(device)
            closers.append(d)
            if "channels_last" in variant:  # the student, the teacher and the adapters, before the optimizer
                speedups.to_channels_last(d)
            steps["step: logit KD" if n == 0 else "step: KD + 2 pairs"] = make_step(
                d, torch.optim.SGD(d.parameters(), lr=1e-4), x, y, amp)
        if "compiled" in variant:  # after the Distillers' dry runs, as the runner does
            speedups.compile_in_place([s, t], backend=backend)
        twins.update({name + label: step for name, step in steps.items()})
    return twins, closers


AMPS = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    parser.add_argument("--compile", action="store_true", help="add compiled twins (train.compile=True)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled twins")
    parser.add_argument("--channels-last", action="store_true", help="add channels-last twins")
    parser.add_argument("--also-amp", choices=["none", "bf16", "fp16"], default="none",
                        help="add twins under this autocast (beside the --amp ones)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    amp = AMPS.get(args.amp)
    variants = variant_names(args.compile, args.channels_last, args.also_amp)
    results = {}
    for which in args.pairs:
        torch._dynamo.reset()
        teacher, student, pairs, shape = PAIRS[which](args.image)
        twins, twin_closers = build_twins(teacher, student, pairs, shape, args.batch, args.device, amp, variants,
                                          args.compile_backend)
        modes, closers = build_modes(teacher, student, pairs, shape, args.batch, args.device, amp)
        modes.update(twins)
        closers += twin_closers
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
            plain = name.split(" [")[0]
            if plain != name:  # a speed-up twin: against its eager mode, round by round
                results[which][name]["vs_eager"] = statistics.median(t / e for t, e in zip(ts, times[plain]))
    meta = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(),
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "torch": torch.__version__, "timm": timm.__version__, "amp": args.amp, "batch": args.batch,
        "image": args.image, "rounds": args.rounds, "warmup": args.warmup, "variants": [list(v) for v in variants],
        "compile_backend": args.compile_backend if args.compile else None,
        "bf16_cpu_kernels": torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"step_cost_{args.device}_{args.amp}" + "".join(f"_{v}" for v in ("compile", "channels_last")
                                                          if getattr(args, v)) + \
        (f"_also_{args.also_amp}" if args.also_amp != "none" else "")
    (args.out / f"{tag}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"step cost ({meta['device']}, amp={args.amp}, batch {args.batch}, {args.image}px, {args.rounds} "
             "interleaved rounds; ratio = median over rounds of (mode / logit-KD step) or (mode / plain forward))",
             ""]
    lines += ["| mode | " + " | ".join(f"{w} ms | {w} ratio | {w} vs eager" for w in results) + " |",
              "|---|" + "---:|---:|---:|" * len(results)]
    for name in next(iter(results.values())):
        cells = " | ".join(f"{results[w][name]['median_ms']:.1f} | {results[w][name]['ratio']:.3f}x | "
                           + (f"{results[w][name]['vs_eager']:.3f}x" if "vs_eager" in results[w][name] else "-")
                           for w in results)
        lines.append(f"| {name} | {cells} |")
    table = "\n".join(lines)
    (args.out / f"{tag}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
