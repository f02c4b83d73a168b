"""What the attention layer of a CelebA-64 model does on held-out faces, with controls.

Part 1, the ablation at inference, per hole-ratio bin (``csa_lib.metrics.held_out_faces``: fixed NVIDIA
masks): PSNR of the model as trained, with its attention layer replaced by the identity, and by contextual
attention with 1x1 patches (``contextual_ksize=1``: active wherever there is a hole cell). Every row carries
its activity check: the share of images with at least one hole cell at the 8x8 attention level, with a
complete known 3x3 window (the condition for DeepFill's 3x3 contextual attention to act), and on which
the layer changed the output at all.

Part 2, where the search looks: holes of 2x2 cells on the left eye, the mouth, the forehead and a cheek;
the share of sources adjacent to the hole cell, at its horizontal mirror (+-1 cell), each against chance,
a distance-matched chance, a random-init network and the nearest-known rule; and the mean cosine between
known features by distance.

    python benchmarks/face_attention.py --model pretrained:celeba64 -n 1000 --out benchmarks/results/face_attention

Writes ``ablation.md``, ``search.md`` and ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REGIONS = {"left eye": (24, 16), "mouth": (40, 24), "forehead": (8, 24), "cheek": (40, 8)}  # top-left, 16x16 px


def load_model(spec: str):
    """A generator in eval mode from ``pretrained:NAME`` (or a shipped name), a checkpoint file or a run folder."""
    from csa_lib.inference import load_model as load

    return load(spec.removeprefix("pretrained:")).generator


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="pretrained:celeba64")
    ap.add_argument("-n", type=int, default=1000, help="held-out faces (from face 9,001)")
    ap.add_argument("--search-n", type=int, default=200, help="faces for part 2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from csa_lib.ablation import generator_fill
    from csa_lib.attention_stats import (activity, feature_cosine_by_distance, format_statistics,
                                         measure_attention, replaced_attention)
    from csa_lib.metrics import NVIDIA_BINS, held_out_faces, psnr
    from csa_lib.attention_stats import run_with_attention_input

    G = load_model(args.model)
    protocol = held_out_faces(n=args.n)
    images = torch.stack([protocol[j][0] for j in range(len(protocol))])
    masks = torch.stack([protocol[j][1] for j in range(len(protocol))])
    labels = protocol.labels

    def scores(ctx=None, **kw):
        if ctx is None:
            fill = generator_fill(G, images, masks)
        else:
            with replaced_attention(G, ctx, **kw):
                fill = generator_fill(G, images, masks)
        return psnr(fill, images, reduction="none")

    own = scores()
    ident = scores("identity")
    ctx1 = scores("contextual", contextual_ksize=1)
    act_own = activity(G, images, masks, ksize=3)  # one pass; per-bin shares from its per-image booleans
    with replaced_attention(G, "contextual", contextual_ksize=1):
        act_ctx = activity(G, images, masks, ksize=1)
    lines = ["| bin | N | >= 1 hole cell | a complete 3x3 window | CSA changed the output | CSA (dB) | "
             "identity at inference (dB) | contextual 1x1 at inference (dB) | contextual changed the output |",
             "|---|---|---|---|---|---|---|---|---|"]
    results = {}
    for b in list(NVIDIA_BINS) + ["all"]:
        sel = torch.tensor([b == "all" or lab == b for lab in labels])
        n = int(sel.sum())
        if n == 0:
            continue

        def share(key, act=act_own):
            return float(act[key][sel].float().mean())

        ch_ctx = share("per_image_changed", act_ctx)
        r = {"n": n, "has_hole_cell": share("per_image_has_hole_cell"), "has_window": share("per_image_has_window"),
             "csa_changed": share("per_image_changed"), "csa": float(own[sel].mean()),
             "identity": float(ident[sel].mean()), "contextual1": float(ctx1[sel].mean()),
             "contextual_changed": ch_ctx}
        results[b] = r
        lines.append(f"| {b} | {n} | {100 * r['has_hole_cell']:.0f} % | {100 * r['has_window']:.0f} % | "
                     f"{100 * r['csa_changed']:.0f} % | {r['csa']:.2f} | {r['identity']:.2f} "
                     f"({r['identity'] - r['csa']:+.3f}) | {r['contextual1']:.2f} ({r['contextual1'] - r['csa']:+.3f}) | "
                     f"{100 * ch_ctx:.0f} % |")
    args.out.mkdir(parents=True, exist_ok=True)
    ablation_md = "\n".join(lines)
    (args.out / "ablation.md").write_text(
        f"{args.model} on {args.n} held-out faces with fixed NVIDIA masks; PSNR of the composite, whole image. "
        "The attention layer replaced at inference (the rest of the network as trained).\n\n" + ablation_md + "\n")
    print(ablation_md)

    faces = images[: args.search_n]
    search, md = {}, []
    for name, (t0, l0) in REGIONS.items():
        m = torch.zeros(len(faces), 1, 64, 64)
        m[..., t0:t0 + 16, l0:l0 + 16] = 1
        st = measure_attention(G, faces, m, mirror=True)
        search[name] = st
        md.append(f"**{name}** (16x16 px hole at row {t0}, column {l0})\n\n" + format_statistics(
            st, ["adjacent", "chance_adjacent", "mirror", "mirror_pm1", "chance_mirror", "chance_mirror_pm1",
                 "dm_mirror", "mirror_far", "chance_mirror_far"]))
    eye = torch.zeros(len(faces), 1, 64, 64)
    eye[..., 24:40, 16:32] = 1
    _, feats, fhole = run_with_attention_input(G, faces, eye)
    cosine = feature_cosine_by_distance(feats.cpu(), fhole.cpu())
    md.append("Mean cosine between the features of two known cells (eye-hole faces) by chessboard distance: "
              + ", ".join(f"{d}: {c:.3f}" for d, c in cosine.items()))
    (args.out / "search.md").write_text(
        f"Where the search of {args.model} looks, {len(faces)} held-out faces (shares in %). mirror = the cell at "
        "(y, w-1-x); dm = a random known cell at the mirror cell's distance.\n\n" + "\n\n".join(md) + "\n")
    print("\n\n".join(md))
    (args.out / "results.json").write_text(json.dumps(
        {"model": args.model, "n": args.n, "ablation": results, "search": search, "cosine_by_distance": cosine,
         "torch": torch.__version__}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
