"""Score CelebA-64 models at several framings of the same held-out faces (issue: "a face model that survives
real framing").

The shipped model was trained on one exact crop of the aligned CelebA faces; a user's photo is never framed
like that. This script moves and zooms the crop (``csa_lib.data.framed_crop``) and scores, per framing,
biharmonic inpainting, the model's coarse stage and the model(s) on the same faces and the same fixed NVIDIA
masks (``csa_lib.metrics.held_out_faces``), plus a centred 32x32 hole.

    python benchmarks/eval_framings.py --model new=runs/face_aug --model shipped=pretrained:celeba64 \
        --coarse new -n 600 --out benchmarks/results/celeba64_framings

Writes ``tables.md`` (one table per framing, PSNR dB / L1 % per bin and the centre hole), ``summary.md``
(model minus biharmonic in the 30-60 % bins and the centre hole, every framing) and ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _face_args import add_face_arguments, parse_face_arguments  # noqa: E402  (this folder)

#: (name, dy, dx, zoom): dy/dx move the crop by that fraction of its side (down/right: the face moves
#: up/left), zoom > 1 zooms in. Within +-6 % / +-12 % is the augmentation range of the new preset.
FRAMINGS = (
    ("training crop", 0.0, 0.0, 1.0),
    ("crop 6 % up", -0.06, 0.0, 1.0),
    ("crop 6 % down", 0.06, 0.0, 1.0),
    ("crop 6 % left", 0.0, -0.06, 1.0),
    ("zoom in 12 %", 0.0, 0.0, 1.12),
    ("zoom out 12 %", 0.0, 0.0, 1 / 1.12),
    ("crop 12 % down (beyond)", 0.12, 0.0, 1.0),
    ("zoom out 30 % (beyond)", 0.0, 0.0, 1 / 1.3),
)
BIG_BINS = ("30-40%", "40-50%", "50-60%")


class CentreHole(torch.utils.data.Dataset):
    """The images of ``protocol`` with a centred square hole of ``side`` pixels."""

    def __init__(self, protocol, side: int = 32):
        self.protocol, self.side = protocol, side

    def __len__(self) -> int:
        return len(self.protocol)

    def __getitem__(self, j: int):
        image = self.protocol[j][0]
        S = image.shape[-1]
        mask = torch.zeros(1, S, S)
        lo = (S - self.side) // 2
        mask[:, lo:lo + self.side, lo:lo + self.side] = 1
        return image, mask


def load_model(spec: str):
    """A generator in eval mode from ``pretrained:NAME`` (or a shipped name), a checkpoint file or a run folder."""
    from csa_lib.inference import load_model as load

    return load(spec.removeprefix("pretrained:")).generator


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=SPEC", required=True)
    ap.add_argument("--coarse", action="append", default=[], metavar="NAME")
    ap.add_argument("--border-blend", action="append", default=[], metavar="NAME",
                    help="also score model NAME with csa_lib.baselines.border_blend (row 'NAME + blend')")
    add_face_arguments(ap)
    ap.add_argument("--framings", default="all", help="comma-separated framing numbers (0-based) or 'all'")
    ap.add_argument("--batch-size", type=int, default=50)
    args = parse_face_arguments(ap, argv)

    from csa_lib.baselines import biharmonic_inpaint, border_blend
    from csa_lib.metrics import evaluate, held_out_faces, results_table

    models = {name: load_model(spec) for name, spec in (m.split("=", 1) for m in args.model)}
    for name in args.border_blend:
        if name not in models:
            ap.error(f"--border-blend {name}: no --model of that name")

    def blended(g):
        def fill(x, m):
            with torch.no_grad():
                return border_blend(g(x, m).refined.float(), x, m)
        return fill
    scored = list(models) + [f"{name} + blend" for name in args.border_blend]
    framings = FRAMINGS if args.framings == "all" else [FRAMINGS[int(k)] for k in args.framings.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    tables, summary, raw = [], [], {}
    for fname, dy, dx, zoom in framings:
        t0 = time.perf_counter()
        protocol = held_out_faces(n=args.n, data_dir=args.data, mask_dir=args.masks, framing=(dy, dx, zoom))
        centre = CentreHole(protocol)
        fills = {"biharmonic": (biharmonic_inpaint, {})}
        for name, g in models.items():
            if name in args.coarse:
                fills[f"{name} coarse"] = (g, {"stage": "coarse"})
            fills[name] = (g, {})
            if name in args.border_blend:
                fills[f"{name} + blend"] = (blended(g), {})
        results, centre_rows = {}, {}
        for name, (fn, extra) in fills.items():
            kw = dict(batch_size=args.batch_size, progress=False, masks=protocol.describe(),
                      split=f"faces 9001-{9000 + len(protocol)}, framing {fname}")
            results[name] = evaluate(fn, protocol, masks_by_bin=protocol.labels, **kw, **extra)
            centre_rows[name] = evaluate(fn, centre, **kw, **extra).summary()["all"]
        tables.append(f"### {fname} (shift dy={dy:+.2f}, dx={dx:+.2f} of the side, zoom x{zoom:.3f})\n\n"
                      + results_table(results) + "\n\nCentre 32x32 hole: "
                      + "; ".join(f"{k} {v['psnr']:.2f} dB / {100 * v['l1']:.2f} %" for k, v in centre_rows.items()))
        summ = {name: r.summary() for name, r in results.items()}
        raw[fname] = {"bins": summ, "centre": centre_rows, "framing": [dy, dx, zoom]}
        bh = summ["biharmonic"]
        for name in scored:
            m = summ[name]
            cells = [f"{m[b]['psnr'] - bh[b]['psnr']:+.2f} / {100 * (m[b]['l1'] - bh[b]['l1']):+.2f}" for b in BIG_BINS]
            c = centre_rows[name]["psnr"] - centre_rows["biharmonic"]["psnr"]
            summary.append(f"| {fname} | {name} | " + " | ".join(cells) + f" | {c:+.2f} |")
        print(f"{fname}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(summary[-1], flush=True)
    head = ("| framing | model | " + " | ".join(f"{b} (dB / L1 pts)" for b in BIG_BINS)
            + " | centre hole (dB) |\n|---|---|---|---|---|---|")
    (args.out / "summary.md").write_text(
        f"Model minus biharmonic on {args.n} held-out faces (PSNR dB / L1 percentage points; positive dB and "
        "negative L1 = the model is better).\n\n" + head + "\n" + "\n".join(summary) + "\n")
    (args.out / "tables.md").write_text("\n\n".join(tables) + "\n")
    (args.out / "results.json").write_text(json.dumps({"n": args.n, "models": args.model, "framings": raw,
                                                        "torch": torch.__version__}, indent=2) + "\n")
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
