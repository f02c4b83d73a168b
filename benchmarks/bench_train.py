"""Training throughput (images/s) under fp32 and bf16 autocast, on the CPU or a GPU.

    python benchmarks/bench_train.py                        # celeba64 (shared data) or demo, base 32, batch 16
    python benchmarks/bench_train.py --base 16 32 --amp off bf16 --steps 10 --threads 2

Each configuration builds a fresh :class:`csa_lib.train.Trainer` on the preset (``celeba64`` when
``../shared/data`` is there, else ``demo`` on the embedded photos), runs ``--warmup`` steps (first-call
compiles, allocator warm-up) and then times ``--steps`` full training steps (G forward, both
discriminator updates, the generator update). The configurations alternate in rounds (``--rounds``)
so that a noisy machine affects them alike; the median over rounds is printed with the spread.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csa_lib.config import SHARED_ROOT, get_preset  # noqa: E402


def make_trainer(base: int, batch: int, amp: str, device: str, out: str):
    from csa_lib.train import Trainer

    name = "celeba64" if (SHARED_ROOT / "data" / "celeba_10k").is_dir() else "demo"
    preset = get_preset(name, **{"model.base_channels": base, "train.batch_size": batch, "train.amp": amp,
                                 "train.device": device, "data.num_workers": 0, "train.tensorboard": False,
                                 "train.out_dir": out})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random-VGG fallback warning does not change the speed
        return Trainer(preset, progress=False), name


def time_steps(trainer, warmup: int, steps: int) -> float:
    """Images per second over ``steps`` training steps after ``warmup`` untimed ones."""
    batches = iter(trainer.loader())
    for _ in range(warmup):
        trainer.train_step(*next(batches))
    # The data loading is timed too: it is part of what a training run pays per step.
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    n = 0
    for _ in range(steps):
        image, mask = next(batches)
        trainer.train_step(image.to(trainer.device), mask.to(trainer.device))
        n += image.shape[0]
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=int, nargs="+", default=[32])
    ap.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=["off", "bf16", "auto"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from csa_lib.train import cpu_has_native_bf16

    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, "
          f"native CPU bf16: {cpu_has_native_bf16()}, batch {args.batch}, {args.steps} timed steps")
    results: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for base in args.base:
            for amp in args.amp:
                trainers[base, amp], preset_name = make_trainer(base, args.batch, amp, args.device,
                                                                f"{tmp}/{base}_{amp}")
        print(f"preset {preset_name}")
        for r in range(args.rounds):
            for key, trainer in trainers.items():
                results.setdefault(key, []).append(time_steps(trainer, args.warmup if r == 0 else 0,
                                                              args.steps))
    print(f"\n| base | amp | images/s (median of {args.rounds}) | range |")
    print("|---|---|---|---|")
    for (base, amp), v in results.items():
        print(f"| {base} | {amp} | {statistics.median(v):.1f} | {min(v):.1f}-{max(v):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
