"""Export the two copy-task models that ship in weights/ (CSA and its identity twin) with their model cards.

    python benchmarks/export_copytask.py --csa runs/ct4_csa --identity runs/ct4_identity \
        --results benchmarks/results/copytask/results.json

    python benchmarks/export_copytask.py --task twin --csa runs/pl_tw128_s2h_frozen --identity runs/pl_tw128_id \
        --results benchmarks/results/copytask_twin128_s2h/results.json

Writes ``weights/csa_copytask.{pt,json,md}`` and ``weights/csa_copytask_identity.{pt,json,md}`` (``--task periodic``,
the default) or ``weights/csa_copytask_twin{,_identity}.{pt,json,md}`` (``--task twin``): fp16 generator
weights (``csa_lib.pretrained.export_generator``), a JSON card (what ``load_pretrained`` reads) and a short
Markdown card for people. The evaluation numbers come from the ablation's ``results.json`` (measured, not typed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from csa_lib.networks import ATTENTION_INPUT_PREFIXES  # noqa: E402

MACHINE = "2-core AMD EPYC VM with AVX512-BF16, no GPU, torch 2.15.0, Python 3.11, 1 training thread, shared with other jobs"


PERIODIC_COMMANDS = [
    "OMP_NUM_THREADS=1 nice csa train --preset copytask --out {run} --set model.attention={kind} "
    "--set train.keep_every=100 --set train.ckpt_every=100 --quiet   # steps 0-1,500 (then stopped)",
    "OMP_NUM_THREADS=1 nice csa train --preset copytask --out {run} --resume --set train.keep_every=500 --quiet"
    "   # steps 1,500-3,000 (exact resume)"]
TWIN = ("--set data.image_size=128 --set model.image_size=128 --set data.copy_kind=twin "
        "--set 'data.copy_hole_cells=(2,)' --set data.copy_ring=16")
FREEZE = f"\"train.freeze={ATTENTION_INPUT_PREFIXES!r}\"".replace(" ", "")  # the CSA layer's input, frozen
TWIN_COMMANDS = {
    "csa": [
        "OMP_NUM_THREADS=1 nice python benchmarks/copytask_pilot.py --out runs/pl_tw128_ctx1 --set model.attention=contextual "
        f"--set model.contextual_ksize=1 {TWIN} --set train.ckpt_every=250 --set train.steps=1500   # the soft phase; its step-750 checkpoint "
        "(checkpoints/prev.pt when step 1,000 was written) was kept as runs/pl_tw128_ctx1/step750.pt",
        f"OMP_NUM_THREADS=1 nice python benchmarks/copytask_pilot.py --out {{run}} --set model.attention=csa {TWIN} "
        f"--set {FREEZE} --set train.ckpt_every=250 --set train.steps=750 --set train.init_from=runs/pl_tw128_ctx1/step750.pt --every 125"
        "   # the hard phase: CSA, the features it searches with frozen"],
    "identity": [
        f"OMP_NUM_THREADS=1 nice python benchmarks/copytask_pilot.py --out {{run}} --set model.attention=identity {TWIN} "
        "--set train.steps=1500   # from scratch, the same 1,500-step budget"]}

TASKS = {
    "periodic": {
        "names": ("csa_copytask", "csa_copytask_identity"), "size": 64,
        "task": ("csa_lib.copytask: periodic random textures with one hidden rectangle whose content is visible one "
                 "period away"),
        "train": "CopyTask(seed 0): 64-px periodic textures of 8-px colour blocks, periods 16-40 px per axis, "
                 "holes of 2-3 cells a side on the 8-px grid",
        "optimiser": "Adam lr 5e-4, betas (0.5, 0.999), batch 16, bf16 autocast on the CPU; 3,000 steps, "
                     "constant lr to step 2,000, then linear decay to 0",
        "commands": PERIODIC_COMMANDS},
    "twin": {
        "names": ("csa_copytask_twin", "csa_copytask_twin_identity"), "size": 128,
        "task": ("csa_lib.copytask, kind 'twin': a 128-px mosaic of random 8-px colour blocks in which a 2x2-cell block "
                 "and its 16-px ring appear twice at random places; the hole hides one twin, the other stays visible"),
        "train": "CopyTask.from_config (seed 0): 128 px, copy_kind='twin', copy_hole_cells=(2,), copy_ring=16",
        "optimiser": {
            "csa": ("Adam lr 5e-4, betas (0.5, 0.999), batch 16, bf16 autocast on the CPU, constant lr. A curriculum "
                    "(not in the paper): 750 steps with contextual attention of 1x1 patches in the layer's place "
                    "(a softmax: its choice gets a gradient), then 750 steps with CSA from those weights, a fresh "
                    "optimiser, and everything that computes the CSA layer's input frozen (train.freeze: the coarse "
                    "net and the refinement encoder up to the layer), so that the features CSA searches with cannot "
                    "drift. CSA trained from scratch on this task, or warm-started without the freeze, loses the twin "
                    "(benchmarks/RESULTS.md, 'The copy task', rounds 3 and 4)"),
            "identity": ("Adam lr 5e-4, betas (0.5, 0.999), batch 16, bf16 autocast on the CPU, constant lr; 1,500 "
                         "steps from scratch (the CSA model's step budget)")},
        "commands": TWIN_COMMANDS},
}


def card_fields(kind: str, run: str, evaluation: dict, task: str = "periodic") -> dict:
    t = TASKS[task]
    what = ("with the CSA layer at 1/8 resolution" if kind == "csa"
            else "with the identity in place of the CSA layer (the ablation twin: same network, same data, same seed)")
    return {
        "description": (f"Copy-task inpainting generator {what}, trained by this repository on the synthetic copy task "
                        f"({t['task']}). A teaching model: it shows what attention does where attention "
                        "is necessary; it is not an inpainting model for photos."),
        "licence": "MIT, like the repository's code: the training data are generated by csa_lib.copytask, no third-party data.",
        "data": {"train": t["train"], "eval": f"CopyTask(seed 777), {evaluation.get('n', 256)} held-out samples, scored inside the hole"},
        "recipe": {"preset": "copytask (csa_lib.config)",
                   "losses": "L1 of coarse and refined output with hole pixels counted 6 times; no consistency or "
                             "adversarial term (lambda_c = lambda_d = 0: no VGG, no discriminators)",
                   "optimiser": t["optimiser"] if isinstance(t["optimiser"], str) else t["optimiser"][kind]},
        "training": {"commands": [c.format(run=run, kind=kind) for c in
                                  (t["commands"] if isinstance(t["commands"], list) else t["commands"][kind])],
                     "machine": MACHINE},
        "evaluation": {k: v for k, v in evaluation.items() if k != "n"},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csa", required=True)
    ap.add_argument("--identity", required=True)
    ap.add_argument("--results", type=Path, required=True, help="results.json of benchmarks/copytask_ablation.py")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--task", choices=sorted(TASKS), default="periodic")
    args = ap.parse_args(argv)

    from csa_lib.pretrained import export_generator
    from csa_lib.train import load_checkpoint

    res = json.loads(args.results.read_text())
    summary = {line["method"]: line for line in res["summary"]}
    t = TASKS[args.task]
    for kind, run, name in (("csa", args.csa, t["names"][0]), ("identity", args.identity, t["names"][1])):
        seed0 = res["per_seed"][kind][0]
        evaluation = {"n": res["n"], "held_out": f"{res['n']} CopyTask samples of seed {res['seed']}, inside the hole",
                      "this_model": {"hole_psnr_db": round(seed0["psnr"], 2), "hole_l1_percent": round(seed0["l1"], 2),
                                     "attention_changed_output": seed0["active"]},
                      "method_over_seeds": {k: summary[kind][k] for k in ("seeds", "psnr", "psnr_sd", "l1", "l1_sd")}}
        if kind == "csa" and res.get("attention", {}).get("csa"):
            st = res["attention"]["csa"][0]
            evaluation["search"] = {row: {k: round(100 * v, 1) for k, v in st[row].items()
                                          if k in ("true", "true_pm1", "chance_true", "adjacent")}
                                    for row in st}
        fields = card_fields(kind, run, evaluation, args.task)
        card = export_generator(Path(run) / "checkpoints" / "last.pt", args.weights / f"{name}.pt", fields)
        ckpt = load_checkpoint(Path(run) / "checkpoints" / "last.pt")
        assert int(ckpt["step"]) == card["trained_steps"]
        md = [f"# Model card: `{name}`", "", fields["description"], "",
              "| | |", "|---|---|",
              f"| file | `weights/{name}.pt` ({card['size_bytes'] / 2**20:.1f} MiB, float16) |",
              f"| sha256 | `{card['sha256']}` |",
              f"| network | `CSAInpainter(ModelConfig(image_size={t['size']}, base_channels={card['model']['base_channels']}, "
              f"attention='{kind}'))` |",
              f"| input | image `[B,3,{t['size']},{t['size']}]` in [-1, 1], mask `[B,1,{t['size']},{t['size']}]` float, "
              "1 = hole (copy-task samples) |",
              f"| trained | {card['trained_steps']:,} steps of batch 16 = {card['images_seen']:,} images, "
              f"{card['training_time_s'] / 60:.1f} min"
              + (" (the last phase; 750 steps of contextual attention came first, see the recipe)"
                 if args.task == "twin" and kind == "csa" else "") + " |",
              f"| licence | {fields['licence']} |", "",
              f"Load it with `csa_lib.pretrained.load_pretrained(\"{name.replace('csa_', '')}\")`.", "",
              "## Evaluation (measured by benchmarks/copytask_ablation.py)", "",
              f"- this model: hole PSNR {seed0['psnr']:.2f} dB, hole L1 {seed0['l1']:.2f} % on {res['n']} held-out samples"
              + ("" if seed0["active"] is None else f"; the CSA layer changed the output on {100 * seed0['active']:.0f} % of them"),
              f"- the method over {summary[kind]['seeds']} seed(s): {summary[kind]['psnr']:.2f} ± {summary[kind]['psnr_sd']:.2f} dB",
              *([f"- against the identity twin (paired 95 % interval over images x seeds): "
                 f"{summary[kind]['vs_ref']['mean']:+.2f} dB [{summary[kind]['vs_ref']['lo']:+.2f}, "
                 f"{summary[kind]['vs_ref']['hi']:+.2f}]"] if summary[kind].get("vs_ref") else []),
              *([f"- its search: {v['true']:.1f} % of hole cells on a true copy ({row}; chance {v['chance_true']:.1f} %)"
                 for row, v in evaluation["search"].items()] if "search" in evaluation else []),
              f"- recipe: {fields['recipe']['optimiser']}",
              "- the full table, the paired intervals and where the search looks: benchmarks/RESULTS.md, \"The copy task\"",
              "", "## Training", "", *[f"- `{c}`" for c in fields["training"]["commands"]],
              f"- machine: {MACHINE}", ""]
        (args.weights / f"{name}.md").write_text("\n".join(md))
        print(f"wrote {name}: {card['size_bytes'] / 2**20:.1f} MiB, sha256 {card['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
