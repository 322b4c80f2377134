"""Peak memory of one forward + backward of a token-level LM loss: chunked (`token_kd_loss`) vs naive autograd
(`naive_token_kd_loss`), on student and teacher logits `[B, T, V]` (default `[8, 1024, 32000]`, fp32, about 1 GB
each) with a padding mask.

How peak memory is measured. Each (loss, variant) runs in a fresh Python subprocess, so nothing one variant
allocated (or the allocator kept) is seen by the next. The child makes its inputs (`randn` then in-place scaling,
so no transient copy), records its resident set size (`/proc/self/statm`) as the baseline, runs the loss and
`backward()`, and reports `ru_maxrss - baseline`: the most memory the loss added above its inputs, including the
student gradient it leaves behind (`[B, T, V]` in the student's dtype, the same for both variants). On Linux,
glibc serves large blocks with `mmap` and returns them on free, so RSS follows the live tensors closely; this is
cheaper and steadier at this size than `torch.profiler(profile_memory=True)`, which records every allocation.
With `--device cuda`, the child reports `torch.cuda.max_memory_allocated() - memory_allocated()` after the inputs.
A single time per variant is printed for orientation only; it is not a timing benchmark.

    OMP_NUM_THREADS=1 python benchmarks/lm_loss_memory.py                       # full size, CPU
    python benchmarks/lm_loss_memory.py --shape 2 256 4096 --tag lm_loss_memory_small
    python benchmarks/lm_loss_memory.py --device cuda --dtype bf16

Writes `benchmarks/out/<tag>.json` and `.md` (tag default `lm_loss_memory_<device>_<dtype>`).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process: the loss's peak memory above its inputs, in bytes."""
    import torch

    from featdistill.losses import naive_token_kd_loss, token_kd_loss

    torch.manual_seed(0)
    b, t, v = args.shape
    dtype, device = getattr(torch, DTYPES[args.dtype]), torch.device(args.device)
    student = torch.randn(b, t, v, device=device, dtype=dtype).mul_(3).requires_grad_(True)
    teacher = torch.randn(b, t, v, device=device, dtype=dtype).mul_(3)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    mask[: b // 2, int(t * (1 - args.pad)):] = False  # half the sequences end in padding
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = rss_bytes()
    start = time.perf_counter()
    if args.variant == "chunked":
        value = token_kd_loss(student, teacher, mask, loss=args.loss, chunk_tokens=args.chunk_tokens)
    else:
        value = naive_token_kd_loss(student, teacher, mask, loss=args.loss)
    value.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {"loss_value": float(value), "seconds": seconds, "grad_dtype": str(student.grad.dtype),
              "cpu_peak_above_inputs": peak_rss - base_rss,
              "inputs_bytes": 2 * student.numel() * student.element_size()}
    if cuda:
        result["cuda_peak_above_inputs"] = torch.cuda.max_memory_allocated() - base
    return result


def measure(args: argparse.Namespace, loss: str, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--loss", loss, "--variant", variant, "--shape", *map(str, args.shape),
           "--dtype", args.dtype, "--device", args.device, "--pad", str(args.pad)]
    if args.chunk_tokens:
        cmd += ["--chunk-tokens", str(args.chunk_tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{loss}/{variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def table(meta: dict, results: dict) -> str:
    key = "cuda_peak_above_inputs" if meta["device"] == "cuda" else "cpu_peak_above_inputs"
    lines = [f"LM loss peak memory above the inputs, forward + backward ({meta['device']}, {meta['dtype']}, logits "
             f"{meta['shape']}, {meta['pad']:.0%} padding in half the rows; each variant in a fresh process; "
             f"the student gradient, {gib(meta['grad_bytes'])} GiB, is in both)", "",
             "| loss | naive GiB | chunked GiB | chunked / naive | same value |", "|---|---:|---:|---:|---|"]
    for loss, r in results.items():
        lines.append(f"| {loss} | {gib(r['naive'][key])} | {gib(r['chunked'][key])} | {r['ratio']:.3f}x | "
                     f"{r['rel_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[8, 1024, 32000], metavar=("B", "T", "V"))
    parser.add_argument("--losses", nargs="+", default=["forward_kl", "jsd"])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pad", type=float, default=0.25, help="padded fraction of the padded rows")
    parser.add_argument("--chunk-tokens", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    key = "cuda_peak_above_inputs" if args.device == "cuda" else "cpu_peak_above_inputs"
    results = {}
    for loss in args.losses:
        runs = {variant: measure(args, loss, variant) for variant in ("naive", "chunked")}
        naive, chunked = runs["naive"], runs["chunked"]
        runs["ratio"] = chunked[key] / naive[key]
        runs["rel_diff"] = abs(chunked["loss_value"] - naive["loss_value"]) / abs(naive["loss_value"])
        results[loss] = runs
        print(f"{loss}: naive {gib(naive[key])} GiB ({naive['seconds']:.1f} s), chunked {gib(chunked[key])} GiB "
              f"({chunked['seconds']:.1f} s), ratio {runs['ratio']:.3f}x, value rel. diff {runs['rel_diff']:.1e}",
              flush=True)
    b, t, v = args.shape
    meta = {"shape": args.shape, "dtype": args.dtype, "device": args.device, "pad": args.pad,
            "chunk_tokens": args.chunk_tokens, "grad_bytes": b * t * v * (4 if args.dtype == "fp32" else 2),
            "python": platform.python_version(), "machine": platform.machine(), "measure": key}
    if args.device == "cuda":
        import torch

        meta["gpu"] = torch.cuda.get_device_name()
    tag = args.tag or f"lm_loss_memory_{args.device}_{args.dtype}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{tag}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (args.out / f"{tag}.md").write_text(table(meta, results) + "\n")
    print(table(meta, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
