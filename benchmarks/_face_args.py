"""The command-line arguments every held-out-face benchmark shares (eval_celeba64, eval_framings,
face_ablation): where the faces and masks are, how many faces, threads and the output folder."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from csa_lib.config import SHARED_ROOT


def add_face_arguments(ap: argparse.ArgumentParser) -> None:
    """``--data``, ``--masks``, ``-n``, ``--threads`` and ``--out`` (required)."""
    ap.add_argument("--data", type=Path, default=SHARED_ROOT / "data" / "celeba_10k")
    ap.add_argument("--masks", type=Path, default=SHARED_ROOT / "data" / "nvidia_masks_256")
    ap.add_argument("-n", type=int, default=1000, help="held-out faces (from face 9,001)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)


def parse_face_arguments(ap: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, set torch's thread count, and stop with a one-line error naming a missing folder."""
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for what, path in (("--data", args.data), ("--masks", args.masks)):
        if not path.is_dir():
            ap.error(f"{what} {path} is not a folder")
    return args
