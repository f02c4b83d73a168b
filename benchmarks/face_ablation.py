"""The attention ablation on faces, trained: CSA vs the identity vs contextual attention with 1x1 patches,
several seeds each, scored on held-out faces per hole-ratio bin with the activity check of every row.

Each ``--model METHOD=SPEC`` is one trained run (a run folder, a checkpoint or ``pretrained:NAME``); give the
same METHOD once per seed. Every model is scored on the same held-out faces and fixed NVIDIA masks
(``csa_lib.metrics.held_out_faces``), at one or more framings of ``eval_framings.FRAMINGS``, inside the hole
(PSNR and L1 of the composite; per image, the PSNR difference between two fills equals the whole-image one).
Per bin: the mean over seeds (± their spread), the paired difference to the reference method with a 95 %
interval (images and seeds paired), and the share of images on which the method's attention layer changed
the output (``csa_lib.attention_stats.activity``); a row whose layer changed nothing is marked inactive.

    python benchmarks/face_ablation.py --model CSA=runs/faceab/s0_csa --model CSA=runs/faceab/s1_csa \
        --model identity=runs/faceab/s0_identity --model identity=runs/faceab/s1_identity \
        --model "contextual 1x1=runs/faceab/s0_contextual1" --model "contextual 1x1=runs/faceab/s1_contextual1" \
        --reference identity --at-inference CSA -n 1000 --framings 0,2 --out benchmarks/results/celeba64_attention_ablation

Writes ``tables.md`` and ``results.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _face_args import add_face_arguments, parse_face_arguments  # noqa: E402  (this folder)
from eval_framings import FRAMINGS, load_model  # noqa: E402  (this folder: the same framings as there)


def _cell(line: dict | None, key: str = "psnr") -> str:
    if line is None:
        return "-"
    sd = f" ± {line[key + '_sd']:.2f}" if line["seeds"] > 1 else ""
    return f"{line[key]:.2f}{sd}"


def _diff(line: dict, key: str = "vs_ref") -> str:
    v = line.get(key)
    if v is None or math.isnan(v["mean"]):
        return "-"
    return f"{v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"


def _active(line: dict) -> str:
    if line["active"] is None:
        return "-"
    return "**inactive**" if line["active"] == 0 else f"{100 * line['active']:.0f} %"


def bin_table(by_bin: dict, hole_share: dict, reference: str, key: str = "psnr", unit: str = "dB",
              diff_key: str = "vs_ref", diff_unit: str = "dB") -> str:
    """One row per bin: N, the share with a hole cell at the attention level, the reference's score (``key``
    of :func:`csa_lib.ablation.summarize`'s lines), then per other method its score, its paired difference
    to the reference (``diff_key``) and its activity."""
    methods = [ln["method"] for ln in next(iter(by_bin.values()))]
    others = [m for m in methods if m != reference]
    head = (["bin", "N", ">= 1 hole cell", f"{reference} ({unit})"]
            + [c for m in others
               for c in (f"{m} ({unit})", f"{m} - {reference} ({diff_unit}, 95 % CI)", f"{m} changed the output")])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, lines in by_bin.items():
        by_name = {ln["method"]: ln for ln in lines}
        cells = [b, str(hole_share[b][0]), f"{100 * hole_share[b][1]:.0f} %", _cell(by_name[reference], key)]
        for m in others:
            ln = by_name[m]
            cells += [_cell(ln, key), _diff(ln, diff_key), _active(ln)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="METHOD=SPEC", required=True,
                    help="one trained run; repeat a METHOD once per seed")
    ap.add_argument("--reference", default="identity", help="the METHOD every other one is paired against")
    ap.add_argument("--at-inference", action="append", default=[], metavar="METHOD",
                    help="also score METHOD with its attention layer replaced by the identity at inference")
    ap.add_argument("--no-biharmonic", action="store_true", help="leave out the biharmonic row")
    add_face_arguments(ap)
    ap.add_argument("--framings", default="0", help="comma-separated framing numbers of eval_framings.FRAMINGS")
    args = parse_face_arguments(ap, argv)
    specs: dict[str, list[str]] = {}
    for m in args.model:
        if "=" not in m:
            ap.error(f"--model {m!r}: expected METHOD=SPEC")
        name, spec = m.split("=", 1)
        specs.setdefault(name, []).append(spec)
    for name in args.at_inference:
        if name not in specs:
            ap.error(f"--at-inference {name!r}: no --model of that METHOD (have {sorted(specs)})")
    if args.reference not in specs:
        ap.error(f"--reference {args.reference!r}: no --model of that METHOD (have {sorted(specs)})")
    try:
        framings = [FRAMINGS[int(k)] for k in args.framings.split(",")]
    except (ValueError, IndexError):
        ap.error(f"--framings {args.framings!r}: numbers 0-{len(FRAMINGS) - 1}, comma-separated")

    from csa_lib.ablation import ablation_row, hole_scores, replaced_row, summarize_by_group
    from csa_lib.baselines import biharmonic_inpaint
    from csa_lib.metrics import held_out_faces

    models = {name: [load_model(s) for s in ss] for name, ss in specs.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    md, raw = [], {"models": specs, "reference": args.reference, "n": args.n, "torch": torch.__version__,
                   "framings": {}}
    for fname, dy, dx, zoom in framings:
        t0 = time.perf_counter()
        protocol = held_out_faces(n=args.n, data_dir=args.data, mask_dir=args.masks, framing=(dy, dx, zoom))
        images = torch.stack([protocol[j][0] for j in range(len(protocol))])
        masks = torch.stack([protocol[j][1] for j in range(len(protocol))])
        labels = list(protocol.labels)
        rows = {}
        for name, gs in models.items():
            rows[name] = [ablation_row(g, images, masks) for g in gs]
            print(f"  {fname}: {name} ({len(gs)} seeds) scored, {time.perf_counter() - t0:.0f} s", flush=True)
            if name in args.at_inference:
                rows[f"{name} -> identity at inference"] = [replaced_row(g, images, masks, "identity") for g in gs]
        if not args.no_biharmonic:
            rows["biharmonic"] = [{**hole_scores(biharmonic_inpaint(images, masks), images, masks), "activity": None}]
        by_bin = summarize_by_group(rows, labels, reference=args.reference)
        act_source = next((r[0]["activity"] for r in rows.values() if r[0].get("activity")), None)
        hole_share = {}  # bin -> (N, share of its images with a hole cell at the attention level)
        for b in by_bin:
            keep = torch.tensor([b == "all" or lab == b for lab in labels])
            has_hole = act_source["per_image_has_hole_cell"][keep] if act_source else None
            hole_share[b] = (int(keep.sum()), float(has_hole.float().mean()) if has_hole is not None else float("nan"))
        md.append(f"### {fname} (shift dy={dy:+.2f}, dx={dx:+.2f} of the side, zoom x{zoom:.3f})\n\n"
                  "PSNR inside the hole (dB), mean over seeds ± spread:\n\n" + bin_table(by_bin, hole_share, args.reference)
                  + "\n\nL1 inside the hole (% of the [0, 1] range), mean over seeds ± spread:\n\n"
                  + bin_table(by_bin, hole_share, args.reference, key="l1", unit="%", diff_key="vs_ref_l1",
                              diff_unit="pts"))
        raw["framings"][fname] = {"framing": [dy, dx, zoom], "hole_cell_share": hole_share, "bins": by_bin}
        print(f"{fname}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(md[-1], flush=True)
    (args.out / "tables.md").write_text(
        f"Attention ablation on {args.n} held-out faces (9,001 on) with fixed NVIDIA masks; models: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in specs.items()) + ".\n\n" + "\n\n".join(md) + "\n")
    (args.out / "results.json").write_text(json.dumps(raw, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
