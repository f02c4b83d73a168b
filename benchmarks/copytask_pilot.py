"""A copy-task design pilot: train one variant of the ``copytask`` preset and score it on held-out samples
of the same variant every ``--every`` steps (hole PSNR, and for attention runs the share of hole cells
whose CSA / contextual source is a true copy). Used for the design rows of benchmarks/RESULTS.md,
"The copy task"; run two variants side by side, one thread each:

    python benchmarks/copytask_pilot.py --out runs/pl_lat_csa --set model.attention=csa \
        --set data.copy_kind=lattice --set "data.copy_periods=(16,24,32,40,48,56)" --set train.steps=1500

Prints one JSON line per scoring: step, psnr (dB, mean over ``-n`` samples), true (%), t (seconds).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from csa_lib.ablation import copytask_batch, generator_fill, hole_scores
    from csa_lib.attention_stats import layer_sources
    from csa_lib.config import get_preset
    from csa_lib.copytask import CopyTask
    from csa_lib.train import Trainer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override (repeat)")
    ap.add_argument("--every", type=int, default=250, help="score every N steps")
    ap.add_argument("-n", type=int, default=128, help="held-out samples (seed data.eval_seed)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {"train.out_dir": args.out, "train.ckpt_every": 10**6, "train.sample_every": 10**6}
    for item in args.set:
        key, _, text = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text  # a plain string such as csa
    preset = get_preset("copytask", **overrides)
    d = preset.data
    held_out = CopyTask.from_config(d, args.n, seed=d.eval_seed)
    images, masks, targets = copytask_batch(held_out)
    trainer = Trainer(preset, progress=False)
    start = time.time()

    def score(tr, logs):
        if tr.step % args.every and tr.step != preset.train.steps:
            return
        psnr = hole_scores(generator_fill(tr.G, images, masks), images, masks)["psnr"].mean()
        true = None
        if preset.model.attention != "identity":
            sources, hole, _ = layer_sources(tr.G, images, masks)
            hole = hole.flatten(1)
            hit = (targets == sources[:, None, :]).any(1) & hole & (sources >= 0)
            true = round(100 * float(hit.sum()) / max(int(hole.sum()), 1), 1)
        print(json.dumps({"step": tr.step, "psnr": round(float(psnr), 2), "true": true,
                          "t": round(time.time() - start)}), flush=True)

    trainer.fit(score)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
