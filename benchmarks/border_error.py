"""Why is the first pixel inside the hole worse than biharmonic? (issue 25)

Squared error and mean signed error (bias) of hole pixels by chessboard distance to the known region, for
biharmonic inpainting, each model's composite and its coarse stage; how well the refined output reproduces
the known pixels next to the hole; 1-px pixels inside thin strokes vs beside wide holes; and two
post-processing candidates (the 1-px ring blended with the mean of its known 8-neighbours, or the first two
rings with the biharmonic fill). Several models are scored on the same faces (biharmonic is solved once);
the last table puts them side by side.

    python benchmarks/border_error.py [--model NAME=SPEC ...] [-n 300] [--framing 0]

SPEC: ``pretrained:celeba64``, a checkpoint file or a run folder (a bare SPEC is its own name). Faces:
held-out 9,001+ (``csa_lib.metrics.held_out_faces``), only those of the 30-60 % bins; ``--framing`` picks a
framing of ``eval_framings.FRAMINGS`` (0 = the training crop).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _spec(text: str) -> tuple[str, str]:
    name, sep, spec = text.partition("=")
    return (name, spec) if sep and not name.startswith("pretrained:") else (text, text)


def main(argv=None) -> int:
    from eval_framings import FRAMINGS, load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", type=_spec, metavar="NAME=SPEC",
                    help="a model to score (repeatable; default: pretrained:celeba64)")
    ap.add_argument("-n", type=int, default=300, help="held-out faces (half of them fall in the 30-60 %% bins)")
    ap.add_argument("--framing", type=int, default=0, choices=range(len(FRAMINGS)),
                    help="index into eval_framings.FRAMINGS (0: the training crop)")
    args = ap.parse_args(argv)
    models = dict(args.model or [_spec("pretrained:celeba64")])
    torch.set_num_threads(1)
    from csa_lib.baselines import biharmonic_inpaint
    from csa_lib.masks import border_distance
    from csa_lib.metrics import held_out_faces, to_unit

    fname, dy, dx, zoom = FRAMINGS[args.framing]
    prot = held_out_faces(n=args.n, framing=(dy, dx, zoom))
    idx = [j for j, b in enumerate(prot.labels) if b in ("30-40%", "40-50%", "50-60%")]
    x = torch.stack([prot[j][0] for j in idx])
    m = torch.stack([prot[j][1] for j in idx])
    bh = biharmonic_inpaint(x, m)
    d, d_out = border_distance(m), border_distance(1 - m)
    thin = (d == 1) & (F.max_pool2d(d.float(), 5, 1, 2) <= 1)

    def err(pred, sel):
        e = (to_unit(pred) - to_unit(x))[sel.expand(-1, 3, -1, -1)]
        return 100 * float((e ** 2).mean()), 100 * float(e.mean()), e.numel() // 3

    def line(pred, sel, name):
        sq, bias, n = err(pred, sel)
        print(f"{name:>32}: squared error {sq:.3f} %, bias {bias:+.3f} %, pixels {n}")

    print(f"{len(idx)} faces of the 30-60 % bins, framing: {fname}")
    sides = {"biharmonic": bh}
    for name, spec in models.items():
        G = load_model(spec)
        with torch.no_grad():
            out = G(x, m)
        sides[name] = out.composite
        print(f"\n== {name} ({spec})")
        for k in (1, 2, 3):
            print(f"hole pixels at distance {k}")
            line(bh, d == k, "biharmonic")
            line(out.composite, d == k, "composite")
            line(x * (1 - m) + out.coarse * m, d == k, "coarse stage")
        print("known pixels: how well the refined output reproduces them")
        line(out.refined, d_out == 1, "next to the hole")
        line(out.refined, d_out >= 4, "4+ px from the hole")
        print("distance-1 pixels inside thin strokes (no deeper hole pixel within 2 px) / beside wider holes")
        line(bh, thin, "biharmonic, thin"), line(out.composite, thin, "composite, thin")
        line(bh, (d == 1) & ~thin, "biharmonic, wide"), line(out.composite, (d == 1) & ~thin, "composite, wide")
        known = 1 - m
        nbr = F.avg_pool2d(x * known, 3, 1, 1) / F.avg_pool2d(known, 3, 1, 1).clamp_min(1e-6)
        ring = (d == 1).float()
        print("post-processing candidate: the 1-px ring blended with the mean of its known 8-neighbours")
        for a in (0.25, 0.5, 1.0):
            line(out.composite * (1 - ring * a) + nbr * ring * a, d == 1, f"blend weight {a}")
        print("option candidate: the rings at 1 and 2 px blended with the biharmonic fill (weights w1, w2)")
        for w1, w2 in ((0.5, 0.0), (0.7, 0.0), (0.7, 0.3), (0.8, 0.4), (1.0, 0.5)):
            w = (d == 1).float() * w1 + (d == 2).float() * w2
            blended = out.composite * (1 - w) + bh * w
            line(blended, d == 1, f"w1 {w1} w2 {w2}, 1 px"), line(blended, d == 2, f"w1 {w1} w2 {w2}, 2 px")
            line(blended, m.bool(), f"w1 {w1} w2 {w2}, whole hole")
        line(out.composite, m.bool(), "composite, whole hole"), line(bh, m.bool(), "biharmonic, whole hole")
    print(f"\nSquared error (% of the [0, 1] range squared) by distance to the known region, {len(idx)} faces, "
          f"framing: {fname}\n\n| fill | 1 px | 2 px | 3 px | 1 px, thin strokes | whole hole |\n|---|---|---|---|---|---|")
    for name, pred in sides.items():
        cells = [err(pred, sel)[0] for sel in (d == 1, d == 2, d == 3, thin, m.bool())]
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
