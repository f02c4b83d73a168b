"""Benchmark of the CSA layer: the fast layer (paper and official semantics, each chain back-end)
against the line-by-line reference, forward and forward+backward (true gradient).

Setting of the paper: C = 512 features at 32 x 32 (1/8 of a 256 image); masks are the official
120 x 120 centre hole (T = 252 hole positions at 32 x 32) and irregular masks with 30-40 % holes.
Timings are medians over repeats after warm-up, wall clock, torch.set_num_threads(--threads).

    python benchmarks/bench_csa.py                 # CPU (and CUDA when present), writes RESULTS.md
    python benchmarks/bench_csa.py --batch 1 --no-write
    python benchmarks/bench_csa.py --rounds 5       # median and spread over 5 rounds (noisy machines)
    python benchmarks/bench_csa.py --oversubscribed # B=1 while other processes keep every core busy

The table goes into benchmarks/RESULTS.md between the markers below (other sections are left alone).
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from csa_lib.csa import CoherentSemanticAttention, available_chains, csa_reference
from csa_lib.masks import center_mask, feature_mask, irregular_mask

START, END = "<!-- bench_csa:start -->", "<!-- bench_csa:end -->"
BUSY_START, BUSY_END = "<!-- bench_csa_busy:start -->", "<!-- bench_csa_busy:end -->"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def masks(kind: str, batch: int, device) -> torch.Tensor:
    """Feature-resolution hole masks bool [B, 1, 32, 32] for 256 x 256 images."""
    if kind == "centre":
        m = center_mask(256, 120)[None].expand(batch, 1, 256, 256)
    else:
        g = torch.Generator().manual_seed(0)
        m = torch.stack([irregular_mask(256, (0.3, 0.4), generator=g) for _ in range(batch)])
    return feature_mask(m.float()).to(device)


def timed(fn, device, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """Median (wall ms, process CPU ms) of fn(). On a shared, overloaded machine the CPU time (all
    threads of this process) is the steadier number; on a quiet one the two agree up to threading."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def bench_layer(layer, x, hole, device, repeats):
    """((wall, cpu) forward ms under no_grad, (wall, cpu) forward+backward ms) of layer(x, hole)."""
    warmup = 1 if repeats <= 3 else 2                     # the slow implementations get one warm-up
    with torch.no_grad():
        fwd = timed(lambda: layer(x, hole), device, repeats, warmup)
    xg = x.detach().clone().requires_grad_(True)
    w = torch.randn_like(x)

    def step():
        # backward of the weighted sum <y, w> with the layer's own ops only (no product or sum of
        # ours around it, whose thread waits would be timed as the layer's on a busy machine)
        y = layer(xg, hole)
        y.backward(w)
        xg.grad = None
    return fwd, timed(step, device, repeats, warmup)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}{gpu}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def measure(args) -> list[tuple]:
    """One round: (device, B, mask, T, semantics, implementation, (fwd wall, cpu), (fb wall, cpu)) rows."""
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() and not args.cpu_only else [])
    for device in devices:
        for batch in args.batch:
            for kind in ("centre", "irregular"):
                hole = masks(kind, batch, device)
                x = torch.randn(batch, 512, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
                T = hole.flatten(1).sum(1)
                t_desc = f"{int(T.min())}-{int(T.max())}" if T.min() != T.max() else str(int(T[0]))
                # the floor: the layer's one similarity matmul [T x C] @ [C x N] alone
                q = torch.randn(batch, int(T.max()), 512, device=device)
                F = x.reshape(batch, 512, -1)
                mm = timed(lambda: torch.bmm(q, F), device, args.repeats)
                rows.append((device.type, batch, kind, t_desc, "-", "similarity matmul alone", mm, (float("nan"),) * 2))
                for semantics in ("paper", "official"):
                    for chain in available_chains(device)[::-1]:
                        layer = CoherentSemanticAttention(semantics, chain=chain)
                        reps = args.repeats if chain != "torch" else args.ref_repeats   # the torch chain is slow
                        fwd, fb = bench_layer(layer, x, hole, device, reps)
                        rows.append((device.type, batch, kind, t_desc, semantics, f"fast ({chain})", fwd, fb))
                        print(rows[-1], flush=True)
                    if args.reference and device.type == "cpu" and batch in args.ref_batch:
                        ref = lambda z, h, s=semantics: csa_reference(z, h, s)  # noqa: E731
                        fwd, fb = bench_layer(ref, x, hole, device, args.ref_repeats)
                        rows.append((device.type, batch, kind, t_desc, semantics, "csa_reference", fwd, fb))
                        print(rows[-1], flush=True)
    return rows


def _spin() -> None:
    while True:  # one core's worth of other work
        pass


def oversubscribed(args) -> list[str]:
    """B = 1 (centre mask, T = 252, official semantics, numba chain) against the official layer (the
    line-by-line ``csa_reference``), timed on the machine as it is, then while ``os.cpu_count()`` other
    processes spin, one per core. Nothing sets thread variables: this is what ``import csa_lib`` gives a
    notebook or library user. Three ways to run the kernels: the image split over the threads
    (``CSA_SPLIT_IMAGES=1``, what the layer did before issue 12), one thread per image (``=0``), and
    ``auto`` (split unless the 1-minute load average says the cores are busy: the default)."""
    from csa_lib import _csa_backend

    device = torch.device("cpu")
    x = torch.randn(1, 512, 32, 32, generator=torch.Generator().manual_seed(1))
    hole = masks("centre", 1, device)
    layer = CoherentSemanticAttention("official", chain="numba")
    modes = {"split over threads": "1", "one thread per image": "0", "auto (default)": ""}

    def reference(z, h):
        return csa_reference(z, h, "official")

    def run(load: str) -> list[str]:
        out = []
        ref_fwd, ref_fb = bench_layer(reference, x, hole, device, args.ref_repeats)
        out.append(f"| {load} | official layer (csa_reference) | {ref_fwd[0]:.1f} ({ref_fwd[1]:.1f}) | "
                   f"{ref_fb[0]:.1f} ({ref_fb[1]:.1f}) | 1 | 1 |")
        print(out[-1], flush=True)
        for name, value in modes.items():
            os.environ["CSA_SPLIT_IMAGES"] = value
            fwd, fb = bench_layer(layer, x, hole, device, args.repeats)
            busy = f", busy: {_csa_backend.cores_busy()}" if not value else ""
            out.append(f"| {load} | {name}{busy} | {fwd[0]:.2f} ({fwd[1]:.2f}) | {fb[0]:.2f} ({fb[1]:.2f}) | "
                       f"{ref_fwd[0] / fwd[0]:.0f}x | {ref_fb[0] / fb[0]:.0f}x |")
            print(out[-1], flush=True)
        os.environ.pop("CSA_SPLIT_IMAGES", None)
        return out

    lines = [f"Machine: {machine()}; torch.set_num_threads({args.threads}), no thread variables set (a plain "
             f"`import csa_lib`); load average before: {os.getloadavg()[0]:.1f}.",
             "B = 1, 512 x 32 x 32, centre mask (T = 252), official semantics, numba chain. Medians of "
             f"{args.repeats} repeats ({args.ref_repeats} for the official layer) in ms: wall clock (CPU time "
             "of this process); speed-up = official layer's wall time / this row's.", "",
             "| other load | layer / kernels | forward ms (cpu) | fwd+bwd ms (cpu) | forward speed-up | "
             "fwd+bwd speed-up |", "|---|---|---|---|---|---|"]
    for _ in range(args.rounds):
        lines += run("as found")
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)]
        for proc in spinners:
            proc.start()
        try:
            time.sleep(args.busy_wait)  # let the 1-minute load average see the spinners (for "auto")
            lines += run(f"{len(spinners)} spinning processes")
        finally:
            for proc in spinners:
                proc.kill()
    return lines


def summarise(rounds: list[list[tuple]]) -> list[tuple]:
    """Per row: the median over rounds of each round's medians, and the [min, max] of the wall times."""
    out = []
    for same in zip(*rounds):
        key = same[0][:6]
        fwd = [r[6] for r in same]
        fb = [r[7] for r in same]
        med = lambda v, i: statistics.median(x[i] for x in v)  # noqa: E731
        out.append(key + ((med(fwd, 0), med(fwd, 1)), (med(fb, 0), med(fb, 1)),
                          (min(x[0] for x in fwd), max(x[0] for x in fwd)),
                          (min(x[0] for x in fb), max(x[0] for x in fb))))
    return out


def table(args, rows: list[tuple]) -> list[str]:
    spread = args.rounds > 1
    lines = [f"Machine: {machine()}; torch.set_num_threads({args.threads}).",
             "Input: B x 512 x 32 x 32 float32 features; masks: official 120x120 centre hole of a 256 image "
             "(T = 252 holes at 32x32) and irregular masks with 30-40 % holes (T per image).",
             "Forward under no_grad; forward+backward = true gradient of a weighted sum (y.backward(w)). Medians in ms: "
             "wall clock, and in brackets the CPU time of the process (all threads)."
             + (f" {args.rounds} rounds, one after the other: the median over rounds of each round's median, "
                "then [lowest - highest round median] of the wall clock." if spread else ""),
             "", "| device | B | mask | T | semantics | implementation | forward ms (cpu) | fwd+bwd ms (cpu) |",
             "|---|---|---|---|---|---|---|---|"]
    for dev, b, kind, t, sem, impl, fwd, fb, fwd_range, fb_range in rows:
        rf = f" [{fwd_range[0]:.2f} - {fwd_range[1]:.2f}]" if spread else ""
        rb = f" [{fb_range[0]:.2f} - {fb_range[1]:.2f}]" if spread else ""
        back = "-" if fb[0] != fb[0] else f"{fb[0]:.2f} ({fb[1]:.2f}){rb}"
        lines.append(f"| {dev} | {b} | {kind} | {t} | {sem} | {impl} | {fwd[0]:.2f} ({fwd[1]:.2f}){rf} | {back} |")
    return lines


def write_section(lines: list[str], note: str, path: Path = RESULTS, markers=(START, END),
                  title: str = "CSA layer (benchmarks/bench_csa.py)") -> None:
    """Replace (or append) the bench_csa section of RESULTS.md, leaving other sections alone."""
    start, end = markers
    body = "\n".join([start, f"## {title}", "", *([note, ""] if note else []), *lines, end])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--ref-repeats", type=int, default=3)
    p.add_argument("--ref-batch", type=int, nargs="+", default=[1], help="batch sizes that also time csa_reference")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--cpu-only", action="store_true")
    p.add_argument("--no-write", dest="write", action="store_false")
    p.add_argument("--note", default="", help="a sentence about the conditions, put above the table")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole measurement and report the median and spread over rounds "
                        "(timings on a shared virtual machine drift by tens of per cent within minutes)")
    p.add_argument("--oversubscribed", action="store_true",
                   help="only the B=1 layer with and without other processes spinning on every core")
    p.add_argument("--busy-wait", type=float, default=60.0,
                   help="seconds the spinners run before timing (the load average follows in about a minute)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.oversubscribed:
        lines = oversubscribed(args)
        print("\n".join(lines))
        if args.write:
            write_section(lines, args.note, markers=(BUSY_START, BUSY_END),
                          title="CSA layer on a busy machine (bench_csa.py --oversubscribed)")
            print(f"wrote {RESULTS}")
        return
    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1} of {args.rounds}", flush=True)
        rounds.append(measure(args))
    lines = table(args, summarise(rounds))
    print("\n".join(lines))
    if args.write:
        write_section(lines, args.note)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
