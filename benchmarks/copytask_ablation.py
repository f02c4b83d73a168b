"""The copy-task ablation: CSA against the identity and contextual attention, several seeds, equal budget.

Every run is a ``csa train --preset copytask`` folder (the commands are in benchmarks/RESULTS.md, "The copy
task"). This script scores them on held-out copy-task samples (the runs' own task, ``CopyTask.from_config``,
drawn from ``--seed`` 777: another seed than training), inside the hole, with

- per method: mean hole PSNR / L1 over seeds, the spread over seeds, the paired difference to the identity
  (95 % interval over images x seeds), and the **activity check** (share of images on which the attention
  layer changed the output at all; a row whose layer never acted is marked inactive);
- the ceiling (the oracle that pastes the true copy) and two floors (mean colour, biharmonic);
- for every attention run: where its sources lie (the true copy, adjacent, chance), next to a random-init
  network and the nearest-known-cell rule (``csa_lib.attention_stats.measure_attention``).

    python benchmarks/copytask_ablation.py --run csa=runs/ct_csa_s0 --run csa=runs/ct_csa_s1 ... \
        --out benchmarks/results/copytask

Writes ``table.md``, ``attention.md``, ``results.json`` and ``figure.png`` into ``--out``.
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


#: The DataConfig fields that define a copy task: runs scored together must agree on all of them.
TASK_FIELDS = ("image_size", "copy_block", "copy_kind", "copy_periods", "copy_hole_cells", "copy_ring")


def load(spec: str):
    """``(generator in eval mode, its training DataConfig)`` from a run folder, checkpoint or pretrained:NAME."""
    from csa_lib.config import Preset

    if spec.startswith("pretrained:"):
        from csa_lib.pretrained import load_pretrained

        G = load_pretrained(spec.split(":", 1)[1])
        return G, Preset.from_dict(G.card["preset"]).data  # the card records the training preset
    from csa_lib.train import load_generator

    G, preset = load_generator(spec)
    return G.eval(), preset.data


def task_key(data) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in (getattr(data, f) for f in TASK_FIELDS))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="METHOD=RUN",
                    help="a run folder, checkpoint or pretrained:NAME per seed (repeat the method for more seeds)")
    ap.add_argument("-n", type=int, default=256, help="held-out samples")
    ap.add_argument("--seed", type=int, default=777, help="seed of the held-out samples")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from csa_lib.ablation import (ablation_row, baseline_fills, copytask_batch, format_ablation, generator_fill,
                                  hole_scores, mean_psnr, replaced_row, summarize)
    from csa_lib.attention_stats import format_statistics, measure_attention
    from csa_lib.copytask import CopyTask
    from csa_lib.viz import inpainting_grid

    runs: dict[str, list[str]] = {}
    for item in args.run:
        method, _, spec = item.partition("=")
        runs.setdefault(method, []).append(spec)
    models = {m: [load(s) for s in specs] for m, specs in runs.items()}
    tasks = {task_key(d): d for ms in models.values() for _, d in ms}
    if len(tasks) != 1:
        ap.error(f"the runs were trained on different copy tasks ({', '.join(TASK_FIELDS)}: {sorted(tasks, key=str)})")
    dataset = CopyTask.from_config(next(iter(tasks.values())), args.n, seed=args.seed)
    images, masks, targets = copytask_batch(dataset)

    t0 = time.perf_counter()
    rows = {m: [ablation_row(G, images, masks) for G, _ in ms] for m, ms in models.items()}
    for name, fill in baseline_fills(dataset, images, masks).items():
        rows[name] = [{**hole_scores(fill, images, masks), "activity": None}]
    reference = "identity" if "identity" in rows else None
    lines = summarize(rows, reference=reference)
    table = format_ablation(lines, reference=reference)
    per_seed = {m: [{"psnr": mean_psnr(r["psnr"]), "l1": float(r["l1"].mean()),
                     "active": None if r["activity"] is None else r["activity"]["changed"],
                     "has_hole_cell": None if r["activity"] is None else r["activity"]["has_hole_cell"],
                     "has_window": None if r["activity"] is None else r["activity"]["has_window"]}
                    for r in rs] for m, rs in rows.items()}
    attention, att_md = {}, []
    for m, ms in models.items():
        if ms[0][0].cfg.attention == "identity":
            continue
        attention[m] = []
        for k, (G, _) in enumerate(ms):
            st = measure_attention(G, images[:128], masks[:128], targets=targets[:128], control_seed=k)
            attention[m].append(st)
            att_md.append(f"**{m}, seed run {k + 1}** ({runs[m][k]})\n\n"
                          + format_statistics(st, ["true", "true_pm1", "chance_true", "dm_true", "adjacent",
                                                   "chance_adjacent", "no_source"]))
    # The inference-time ablation of every attention method's first run: its layer replaced by the identity
    # (what the decoder loses without the copies) and by contextual attention of 1x1 patches.
    swapped = {}
    for m, ms in models.items():
        G = ms[0][0]
        if G.cfg.attention not in ("csa", "contextual"):
            continue
        swapped[m] = {}
        for kind, extra in (("identity", {}), ("contextual1", {"contextual_ksize": 1})):
            swapped[m][kind] = mean_psnr(replaced_row(G, images, masks, kind.rstrip("1"), **extra)["psnr"])
        swapped[m]["own"] = per_seed[m][0]["psnr"]
        att_md.append(f"**{m}, seed run 1, its layer replaced at inference**: hole PSNR {swapped[m]['own']:.2f} dB "
                      f"with its own layer, {swapped[m]['identity']:.2f} dB with the identity, "
                      f"{swapped[m]['contextual1']:.2f} dB with contextual attention 1x1")
    args.out.mkdir(parents=True, exist_ok=True)
    note = (f"\n\n{args.n} held-out copy-task samples (seed {args.seed}), scored inside the hole; ± = spread "
            "(standard deviation) over seeds; the interval is the paired 95 % interval of the per-image "
            "difference (images x seeds). 'layer active' = share of images on which replacing the attention "
            "layer by the identity changes the output.")
    (args.out / "table.md").write_text(table + note + "\n")
    (args.out / "attention.md").write_text(
        "Hole cells by where their source lies (%), 128 held-out samples. true = a periodic copy of the hole "
        "cell (the twin's cell on the twin task); pm1 = within one cell of one; chance = a uniformly random known cell; dm = a random known cell at "
        "the distance of the nearest copy.\n\n" + "\n\n".join(att_md) + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"n": args.n, "seed": args.seed, "runs": runs, "summary": lines, "per_seed": per_seed,
         "attention": attention, "replaced_at_inference": swapped, "seconds": time.perf_counter() - t0, "torch": torch.__version__},
        indent=2, default=float) + "\n")
    print(table + note)
    print((args.out / "attention.md").read_text())

    # Figure: 6 samples, input | each method (first seed) | truth.
    idx = list(range(6))
    cols = {m: generator_fill(ms[0][0], images[idx], masks[idx]) for m, ms in models.items()}
    fig = inpainting_grid(cols, images[idx], masks[idx], n=len(idx))
    fig.savefig(args.out / "figure.png", dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}/table.md, attention.md, results.json, figure.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
