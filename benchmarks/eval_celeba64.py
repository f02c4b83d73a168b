"""Evaluate CelebA-64 models and baselines on the same held-out faces and the same fixed masks.

Protocol (``csa_lib.metrics.BinnedMaskProtocol``): faces 9,001-10,000 of ``../shared/data/celeba_10k``
(centre crop, 64 px, as the ``celeba64`` preset prepares them); face ``j`` gets a fixed NVIDIA mask from
hole-ratio bin ``j mod 6`` (bins 0-10 % ... 50-60 % of the file's hole ratio), drawn once by seed 1234.
Outputs are composited (prediction in the hole, known pixels from the input) and scored with L1, L2,
PSNR and SSIM per bin and overall.

    python benchmarks/eval_celeba64.py --model CSA=pretrained:celeba64 --coarse CSA --biharmonic \
        --out benchmarks/results/celeba64

``--model NAME=SPEC`` (repeatable): SPEC is a checkpoint file, a run folder, or ``pretrained:NAME``.
``--coarse NAME`` also scores that model's coarse stage; ``--biharmonic`` adds scikit-image's
``inpaint_biharmonic``. Writes ``results.json``, ``table.md`` and ``figure.png`` (input | biharmonic |
coarse | models | truth, one face per bin) into ``--out``.
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


def load_model(spec: str):
    """A generator in eval mode from ``pretrained:NAME``, a checkpoint file or a run folder."""
    if spec.startswith("pretrained:"):
        from csa_lib.pretrained import load_pretrained

        return load_pretrained(spec.split(":", 1)[1])
    from csa_lib.train import load_generator

    return load_generator(spec)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=SPEC")
    ap.add_argument("--coarse", action="append", default=[], metavar="NAME",
                    help="also score the coarse stage of this model")
    ap.add_argument("--biharmonic", action="store_true", help="add scikit-image's inpaint_biharmonic")
    add_face_arguments(ap)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--reuse", action="store_true",
                    help="reuse per-model results already saved in --out (scores/<name>.pt) instead of recomputing")
    args = parse_face_arguments(ap, argv)

    from csa_lib.baselines import biharmonic_inpaint
    from csa_lib.metrics import evaluate, held_out_faces, results_table
    from csa_lib.viz import inpainting_grid

    protocol = held_out_faces(n=args.n, seed=args.seed, data_dir=args.data, mask_dir=args.masks)
    split = f"{args.data.name} faces 9001-{9000 + len(protocol)} at 64 px"
    kw = dict(batch_size=args.batch_size, masks_by_bin=protocol.labels, masks=protocol.describe(),
              split=split, progress=True)
    models = dict(m.split("=", 1) for m in args.model)
    results, timings = {}, {}
    scores = args.out / "scores"

    def score(name, fn, **extra):
        """Evaluate (or, with --reuse, load the saved per-image scores of) one row of the table."""
        from csa_lib.metrics import EvalResult

        cache = scores / f"{name.replace(' ', '_')}.pt"
        if args.reuse and cache.is_file():
            saved = torch.load(cache, weights_only=True)
            results[name] = EvalResult(values=saved["values"], bins=list(saved["bins"]), output=saved["output"],
                                       stage=saved["stage"], masks=saved["masks"], split=saved["split"])
            return
        t = time.perf_counter()
        results[name] = r = evaluate(fn, protocol, **kw, **extra)
        timings[name] = time.perf_counter() - t
        scores.mkdir(parents=True, exist_ok=True)
        torch.save({"values": r.values, "bins": r.bins, "output": r.output, "stage": r.stage,
                    "masks": r.masks, "split": r.split}, cache)

    if args.biharmonic:
        score("biharmonic", biharmonic_inpaint)
    generators = {}
    for name, spec in models.items():
        generators[name] = load_model(spec)
        if name in args.coarse:
            score(f"{name} coarse", generators[name], stage="coarse")
        score(name, generators[name])

    args.out.mkdir(parents=True, exist_ok=True)
    table = results_table(results)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    summary = {name: r.summary() for name, r in results.items()}
    (args.out / "results.json").write_text(json.dumps(
        {"protocol": {"split": split, "masks": protocol.describe(), "seed": args.seed, "n": len(protocol)},
         "models": models, "results": summary, "seconds": timings,
         "threads": args.threads, "torch": torch.__version__}, indent=2) + "\n")

    # Where in the hole each method wins: squared error by distance to the known region, large-hole bins.
    from csa_lib.metrics import error_by_border_distance

    big = [j for j, b in enumerate(protocol.labels) if b in ("30-40%", "40-50%", "50-60%")]
    fills = {"biharmonic": biharmonic_inpaint} if args.biharmonic else {}
    for name, g in generators.items():
        if name in args.coarse:
            fills[f"{name} coarse"] = (lambda g: lambda x, m: x * (1 - m) + g(x, m).coarse * m)(g)
        fills[name] = (lambda g: lambda x, m: g(x, m).composite)(g)
    sums: dict[str, dict[str, list[float]]] = {}
    for k in range(0, len(big), args.batch_size):
        idx = big[k:k + args.batch_size]
        x = torch.stack([protocol[j][0] for j in idx])
        m = torch.stack([protocol[j][1] for j in idx])
        for name, fill in fills.items():
            with torch.no_grad():
                bands = error_by_border_distance(fill(x, m).float(), x, m)
            for band, (mse, n) in bands.items():
                acc = sums.setdefault(name, {}).setdefault(band, [0.0, 0])
                acc[0] += (mse * n) if n else 0.0
                acc[1] += n
    names = list(next(iter(sums.values()))) if sums else []
    lines = ["| fill | " + " | ".join(f"distance {b} px" for b in names) + " |",
             "|---|" + "---|" * len(names)]
    for name, bands in sums.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * s / max(n, 1):.2f}" for s, n in bands.values()) + " |")
    counts = [n for _, n in next(iter(sums.values())).values()] if sums else []
    lines += ["", f"Mean squared error (% of the [0, 1] range squared) of hole pixels by chessboard distance to "
              f"the nearest known pixel; {len(big)} faces of the 30-60 % bins; hole pixels per band: "
              + ", ".join(f"{b}: {n:,}" for b, n in zip(names, counts)) + "."]
    (args.out / "border.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    # One face per bin: input | biharmonic | coarse | models | truth.
    idx = list(range(min(6, len(protocol))))
    image = torch.stack([protocol[j][0] for j in idx])
    mask = torch.stack([protocol[j][1] for j in idx])
    columns = {}
    with torch.no_grad():
        if args.biharmonic:
            columns["biharmonic"] = biharmonic_inpaint(image, mask)
        for name, g in generators.items():
            out = g(image, mask)
            if name in args.coarse:
                columns[f"{name} coarse"] = image * (1 - mask) + out.coarse * mask
            columns[name] = out.composite
    fig = inpainting_grid(columns, image, mask, n=len(idx))
    for row, j in enumerate(idx):
        fig.axes[row * (len(columns) + 2)].set_ylabel(protocol.labels[j], fontsize=9)
    fig.savefig(args.out / "figure.png", dpi=110, bbox_inches="tight")
    print(f"wrote {args.out / 'table.md'}, results.json, figure.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
