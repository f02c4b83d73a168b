"""The ``csa`` command: train, evaluate, inpaint one image, and the CPU demo.

    csa train --preset demo [--data DIR] [--masks DIR] [--vgg-weights SPEC] [--steps N] [--out DIR]
              [--resume] [--set section.field=value ...]
    csa eval CHECKPOINT [--data DIR] [--masks DIR] [--range START:STOP]
    csa inpaint CHECKPOINT IMAGE MASK -o OUT.png
    csa import-official FOLDER [--epoch E] [--image-size N] [--semantics official|paper] -o FILE
    csa demo                                     # what `make demo` runs

Expected failures (a missing file, a mask that is not binary, an image and a mask of different sizes, an
unknown preset or setting) print one line ``csa: error: ...`` on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

# torch is imported inside the commands: argument and file errors are then reported in a fraction
# of a second, and `csa --help` is instant.
from .config import PRESETS, Preset, apply_override, get_preset


class CLIError(Exception):
    """An expected user error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------------
# --set section.field=value
# --------------------------------------------------------------------------------------------------
def parse_value(text: str, current: Any) -> Any:
    """Turn the text of ``--set`` into a value of the same kind as the field's ``current`` value.

    >>> parse_value("3", 1), parse_value("1e-4", 0.1), parse_value("0.1,0.5", (0.1, 0.6))
    (3, 0.0001, (0.1, 0.5))
    >>> parse_value("none", 5), parse_value("false", True), parse_value("cpu", "auto")
    (None, False, 'cpu')
    """
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if isinstance(current, bool):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(current, str) or (current is None and not _looks_like_literal(text)):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"cannot parse {text!r}") from None
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(f"expected a {type(current).__name__}, got {text!r}")
    return value


def _looks_like_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
        return True
    except (ValueError, SyntaxError):
        return False


def parse_set(items: list[str], preset: Preset) -> dict[str, Any]:
    """``["train.steps=10", ...]`` -> ``{"train.steps": 10, ...}`` typed like the preset's fields."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        section, _, name = key.partition(".")
        target = getattr(preset, section, None)
        if not sep or target is None or name not in {f.name for f in fields(target)}:
            raise CLIError(f"--set {item!r}: expected section.field=value with a known field "
                           "(sections: data, model, loss, train)")
        try:
            out[key] = parse_value(text, getattr(target, name))
        except ValueError as e:
            raise CLIError(f"--set {item!r}: {e}") from None
    return out


# --------------------------------------------------------------------------------------------------
# csa train
# --------------------------------------------------------------------------------------------------
def train_overrides(args, preset: Preset) -> dict[str, Any]:
    """The dotted overrides that the flags of ``csa train`` stand for."""
    ov: dict[str, Any] = {}
    if args.data is not None:
        _need_dir(args.data, "--data")
        ov["data.root"] = str(args.data)
    if args.masks is not None:
        _need_dir(args.masks, "--masks")
        ov.update({"data.masks": "folder", "data.mask_dir": str(args.masks)})
    if args.vgg_weights is not None:
        ov["loss.vgg_weights"] = args.vgg_weights
    if args.out is not None:
        ov["train.out_dir"] = str(args.out)
    if args.device is not None:
        ov["train.device"] = args.device
    if args.time_budget is not None:
        ov["train.time_budget_s"] = args.time_budget
    if args.amp is not None:
        ov["train.amp"] = args.amp
    if getattr(args, "strict_images", False):
        ov["data.skip_bad_images"] = False
    if args.steps is not None:
        if args.steps <= 0:
            raise CLIError(f"--steps must be positive, got {args.steps}")
        ov["train.steps"] = args.steps
        # Keep the schedule's shape: decay starts at the same fraction of the run.
        if not args.resume and preset.train.decay_start is not None:
            ov["train.decay_start"] = round(preset.train.decay_start * args.steps / preset.train.steps)
    ov.update(parse_set(args.set, preset))
    return ov


def cmd_train(args) -> int:
    from .train import Trainer, has_checkpoint, resolve_device

    _setup_threads(args)
    preset = get_preset(args.preset)
    ov = train_overrides(args, preset)
    out_dir = Path(ov.get("train.out_dir", preset.train.out_dir))
    if "train.device" in ov:
        resolve_device(ov["train.device"])  # an unknown or absent device: one line, before any work
    if args.resume:
        trainer = Trainer.resume(out_dir, ov, progress=not args.quiet)
        print(f"resuming {out_dir} at step {trainer.step}")
    else:
        # Also a run whose last save was cut between next.pt and last.pt: never start it over silently.
        if has_checkpoint(out_dir):
            raise CLIError(f"{out_dir} already holds a checkpoint; pass --resume to continue it "
                           "or --out to start a new run")
        for key, value in ov.items():
            apply_override(preset, key, value)
        trainer = Trainer(preset, progress=not args.quiet)
    result = trainer.fit()
    trainer.close()
    print(_train_summary(trainer, result))
    return 0


def _train_summary(trainer, result: dict[str, Any]) -> str:
    out = trainer.out_dir
    how = "stopped by the time budget" if result["stopped"] == "time_budget" else "done"
    return (f"{how}: step {result['step']}/{trainer.preset.train.steps}, "
            f"{result['elapsed_s'] / 60:.1f} min, {result['images_per_s']:.1f} images/s\n"
            f"  checkpoint: {result['checkpoint']}\n  log:        {out / 'log.jsonl'}\n"
            f"  samples:    {out / 'samples'}")


def _need_dir(path, flag: str) -> None:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such folder")


# --------------------------------------------------------------------------------------------------
# csa eval
# --------------------------------------------------------------------------------------------------
def parse_range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise CLIError(f"--range {text!r}: expected START:STOP, e.g. 9000:10000") from None
    if not 0 <= start < stop:
        raise CLIError(f"--range {text!r}: expected 0 <= START < STOP")
    return start, stop


def _check_eval_args(args) -> None:
    """One-line errors for values that would otherwise be accepted and misread (``--max-images -5``
    used to score 3 images), or fail deep inside torch (``--device tpu``, a ``--fid`` file that is not
    Inception weights)."""
    if args.max_images is not None and args.max_images < 1:
        raise CLIError(f"--max-images must be a positive number of images, got {args.max_images}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    _device(args.device)
    if args.fid not in (None, "auto", "none", "torchvision"):
        from .metrics import load_inception

        _need_file(args.fid, "--fid weights")
        try:
            load_inception(args.fid)
        except Exception as e:  # noqa: BLE001 - any failure means: not usable Inception-v3 weights
            from .train import first_line

            raise CLIError(f"--fid {args.fid}: not usable Inception-v3 weights ({first_line(e)})") from None


def cmd_eval(args) -> int:
    from .metrics import evaluate_checkpoint, results_table

    _setup_threads(args)
    _need_file(args.checkpoint, "checkpoint")
    _check_eval_args(args)
    result = evaluate_checkpoint(args.checkpoint, data_dir=args.data, mask_dir=args.masks,
                                 eval_range=parse_range(args.range), batch_size=args.batch_size,
                                 device=_device(args.device), composite=not args.raw,
                                 max_images=args.max_images, progress=not args.quiet,
                                 fid=args.fid)
    print(results_table({Path(args.checkpoint).stem: result}))
    return 0


# --------------------------------------------------------------------------------------------------
# csa inpaint
# --------------------------------------------------------------------------------------------------
def _need_file(path, what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p}: no such file")


def read_image_and_mask(image_path, mask_path):
    """``(image [3,H,W] in [-1,1], mask [1,H,W] in {0,1})`` from files, validated.

    The mask must be binary: values {0, 255} or {0, 1}, with the larger value meaning hole (white = hole,
    as in the NVIDIA masks), and the same size as the image.
    """
    from PIL import Image, UnidentifiedImageError

    _need_file(image_path, "image")
    _need_file(mask_path, "mask")
    try:
        img = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)
        raw = np.asarray(Image.open(mask_path).convert("L"))
    except UnidentifiedImageError as e:
        raise CLIError(f"cannot read {e.filename or image_path} as an image") from None
    if img.shape[:2] != raw.shape:
        raise CLIError(f"size mismatch: image {image_path} is {img.shape[1]}x{img.shape[0]} but mask "
                       f"{mask_path} is {raw.shape[1]}x{raw.shape[0]} (width x height)")
    values = set(np.unique(raw).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        raise CLIError(f"mask {mask_path} is not binary: {len(values)} grey levels (expected 0 = known, "
                       "255 = hole)")
    hole = raw == max(values) if values != {0} else raw > 0
    import torch

    image = torch.from_numpy(img).permute(2, 0, 1) / 127.5 - 1
    mask = torch.from_numpy(hole.astype(np.float32))[None]
    return image, mask


def inpaint(generator, image, mask, image_size: int):
    """Fill the hole of one image of any size with a generator trained at ``image_size``.

    The image is resized to a square of the training size (the official pre-processing), the refined
    output is resized back, and only hole pixels are taken from it: known pixels stay bit-exact.

    Args: image ``[3,H,W]`` in [-1,1], mask ``[1,H,W]`` (1 = hole). Returns ``[3,H,W]`` in [-1,1].
    """
    import torch
    import torch.nn.functional as F

    device = next(generator.parameters()).device
    H, W = image.shape[-2:]
    x = F.interpolate(image[None], size=(image_size, image_size), mode="bilinear", antialias=True,
                      align_corners=False)
    m = F.interpolate(mask[None], size=(image_size, image_size), mode="nearest")
    with torch.no_grad():
        out = generator(x.to(device).clamp(-1, 1), m.to(device)).refined.float().cpu()
    out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)[0].clamp(-1, 1)
    return image * (1 - mask) + out * mask  # known pixels come from the input, exactly


def save_image(x, path) -> Path:
    """Save ``[3,H,W]`` in [-1,1] as an 8-bit PNG (or any format PIL knows from the suffix)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)
    return path


def cmd_inpaint(args) -> int:
    image, mask = read_image_and_mask(args.image, args.mask)
    _need_file(args.checkpoint, "checkpoint")
    from .train import load_generator

    _setup_threads(args)
    generator, preset = load_generator(args.checkpoint, device=_device(args.device))
    result = inpaint(generator, image, mask, preset.model.image_size)
    print(f"wrote {save_image(result, args.output)} ({mask.mean():.0%} of the pixels filled)")
    return 0


def cmd_import_official(args) -> int:
    """Convert a folder of official CSA checkpoints (<epoch>_net_G/P.pth) to one csa_lib checkpoint."""
    from .official import import_official

    ckpt = import_official(args.folder, args.output, epoch=args.epoch, image_size=args.image_size,
                           semantics=args.semantics)
    model = ckpt["preset"]["model"]
    print(f"wrote {ckpt['path']} (official epoch {ckpt['official']['epoch']}, {model['image_size']} px, "
          f"width {model['base_channels']}, CSA semantics {model['csa_semantics']})")
    return 0


# --------------------------------------------------------------------------------------------------
# csa demo
# --------------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    """Train the demo preset on the embedded photos (or reuse a finished run), then write figures."""
    from .train import Trainer, has_checkpoint, load_checkpoint

    _setup_threads(args)
    preset = get_preset("demo")
    ov = {"train.out_dir": str(args.out)}
    if args.steps is not None:
        ov.update({"train.steps": args.steps,
                   "train.decay_start": round(preset.train.decay_start * args.steps / preset.train.steps)})
    if args.device is not None:
        ov["train.device"] = args.device
    for key, value in ov.items():
        apply_override(preset, key, value)
    out = Path(args.out)
    t0 = time.perf_counter()
    if has_checkpoint(out) and not args.retrain:
        done = int(load_checkpoint(out)["step"])
        if done >= preset.train.steps:
            print(f"found a finished demo run in {out} (step {done}); pass --retrain to train again")
        else:
            print(f"resuming the demo run in {out} at step {done}")
            _fit(Trainer.resume(out, {"train.steps": preset.train.steps}, progress=not args.quiet))
    else:
        if args.retrain and out.exists():
            for name in ("last.pt", "prev.pt", "next.pt"):
                (out / "checkpoints" / name).unlink(missing_ok=True)
            (out / "log.jsonl").unlink(missing_ok=True)
        import torch

        print(f"training the demo preset ({preset.train.steps} steps, batch {preset.train.batch_size}, "
              f"{preset.data.image_size} px, {torch.get_num_threads()} CPU threads) -> {out}")
        _fit(Trainer(preset, progress=not args.quiet))
    paths = demo_figures(out, device=_device(args.device))
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; figures:")
    for name, path in paths.items():
        print(f"  {name:<12} {path}")
    return 0


def _fit(trainer) -> None:
    result = trainer.fit()
    trainer.close()
    print(_train_summary(trainer, result))


def demo_figures(run_dir, device: str = "cpu", n: int = 6) -> dict[str, Path]:
    """Figures of a trained run on its held-out evaluation crops: results grid, attention, data samples,
    loss curves; and a metrics table. Returns ``{name: path}``."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    import torch

    from . import viz
    from .data import build_dataset
    from .metrics import describe_masks, describe_split, evaluate, results_table
    from .train import load_generator, read_log

    run_dir = Path(run_dir)
    generator, preset = load_generator(run_dir, device=device)
    eval_set = build_dataset(preset.data, "eval")
    n = min(n, len(eval_set))
    image, mask = (torch.stack(v) for v in zip(*(eval_set[i] for i in range(n))))
    with torch.no_grad():
        out = generator(image.to(device), mask.to(device), return_attention=True)
    paths = {}

    fig = viz.inpainting_grid(_cpu(out), image, mask, n=n, columns=["coarse", "refined", "composite"])
    fig.suptitle(f"{preset.name} after {_trained_steps(run_dir)} steps, evaluation crops (fixed masks)",
                 fontsize=10, y=1.01)
    paths["inpainting"] = _savefig(fig, run_dir / "inpainting.png")

    att = out.attention
    if att is not None:
        i = int(torch.argmax(att.count))  # the image with the most hole positions shows the most
        fig = viz.plot_attention(image[i], mask[i], att, i=i)
        fig.suptitle("CSA attention: offsets to the chosen source, one attention row, chain balance",
                     fontsize=10)
        paths["attention"] = _savefig(fig, run_dir / "attention.png")

    train_set = build_dataset(preset.data, "train")
    k = min(8, len(train_set))
    timgs, tmasks = zip(*(train_set[i] for i in range(k)))
    fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.4), squeeze=False)
    for j in range(k):
        axes[0, j].imshow(viz.to_display(timgs[j]))
        axes[1, j].imshow(viz.masked_display(timgs[j], tmasks[j]))
        for ax in axes[:, j]:
            ax.set_axis_off()
    lo, hi = preset.data.hole_ratio
    fig.suptitle(f"training samples and their random {preset.data.masks} masks "
                 f"(hole ratio {lo:.0%}-{hi:.0%})", fontsize=10)
    fig.tight_layout()
    paths["data"] = _savefig(fig, run_dir / "data_samples.png")

    log = read_log(run_dir / "log.jsonl")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    steps = [r["step"] for r in log]
    for key in sorted(k for k in log[-1] if k.startswith("G/") and k != "G/total"):
        axes[0].plot(steps, [r.get(key, float("nan")) for r in log], label=key[2:])
    axes[0].set_yscale("log")
    axes[0].set_title("generator loss terms")
    for key in sorted(k for k in log[-1] if k.startswith("D/") and k != "D/total"):
        axes[1].plot(steps, [r.get(key, float("nan")) for r in log], label=key[2:])
    axes[1].set_title("discriminator loss terms")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["losses"] = _savefig(fig, run_dir / "losses.png")

    result = evaluate(generator, eval_set, batch_size=8, device=device, progress=False,
                      masks=describe_masks(preset.data), split=describe_split(preset.data, len(eval_set)))
    table = results_table({"demo": result})
    (run_dir / "metrics.md").write_text(table + "\n")
    print(table)
    paths["metrics"] = run_dir / "metrics.md"
    return paths


def _trained_steps(run_dir) -> int:
    from .train import load_checkpoint

    return int(load_checkpoint(run_dir)["step"])


def _cpu(out):
    from .train import detach_output

    d = detach_output(out)
    return {k: getattr(d, k).float().cpu() for k in ("coarse", "refined", "composite")}


def _savefig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------------
def cpu_threads(requested: int | None = None) -> int:
    """Threads for CPU work: ``requested``, else the cores that are idle now (at least one).

    PyTorch's OpenMP threads spin at every barrier; when another process holds one of the cores, a
    thread per core makes every operation wait for the descheduled one, which can be several times
    slower than one thread. ``OMP_NUM_THREADS`` set by the user wins.
    """
    if requested is not None:
        return max(1, requested)
    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]  # runnable processes, averaged over the last minute
    except (OSError, AttributeError):  # not available on Windows
        busy = 0.0
    return max(1, min(n, round(n - busy)))


def _setup_threads(args) -> None:
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads(getattr(args, "threads", None)))


def _device(name: str | None) -> str:
    """``--device`` as a torch device string; unknown or absent devices are a one-line ``ValueError``."""
    from .train import resolve_device

    return str(resolve_device(name or "auto"))


def version_string() -> str:
    """``csa 0.1.0 (torch 2.15.0, torchvision 0.29.2, Python 3.11.9)``: read from the installed
    packages' metadata, so ``csa --version`` stays instant (no torch import)."""
    from importlib import metadata

    from . import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"csa {__version__} (torch {installed('torch')}, torchvision {installed('torchvision')}, "
            f"Python {sys.version.split()[0]})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csa", description="Coherent Semantic Attention for image inpainting")
    p.add_argument("--version", action="version", version=version_string())
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,eval,inpaint,import-official,weights,demo}")

    t = sub.add_parser("train", help="train a preset (smoke, demo, celeba64, paper256)")
    t.add_argument("--preset", default="demo", help=f"one of {', '.join(PRESETS)} (default demo)")
    t.add_argument("--data", help="image folder (default: the preset's; embedded photos for smoke/demo)")
    t.add_argument("--masks", help="folder of mask PNGs, white = hole (switches data.masks to 'folder')")
    t.add_argument("--vgg-weights", help="auto | torchvision | none | PATH[:caffe|:torchvision]")
    t.add_argument("--steps", type=int, help="total steps (the decay start scales with it)")
    t.add_argument("--out", help="run folder (default: the preset's train.out_dir)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--device", help="auto | cpu | cuda")
    t.add_argument("--time-budget", type=float, help="stop (with a checkpoint) after this many seconds")
    t.add_argument("--amp", choices=("auto", "bf16", "off"),
                   help="mixed precision: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), "
                        "else fp32; off = force fp32 (same as --set train.amp=off)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any preset field, e.g. --set train.batch_size=4 (repeatable)")
    t.add_argument("--strict-images", action="store_true",
                   help="stop at an unreadable training image instead of skipping it with a warning "
                        "(same as --set data.skip_bad_images=false)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.add_argument("--threads", type=int, help="CPU threads (default: the idle cores)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="L1/L2/PSNR/SSIM of a checkpoint on fixed evaluation masks")
    e.add_argument("checkpoint", help="a checkpoint file (run/checkpoints/last.pt)")
    e.add_argument("--data", help="image folder (default: the preset's evaluation split)")
    e.add_argument("--masks", help="folder of mask PNGs, white = hole (results binned by hole ratio)")
    e.add_argument("--range", help="START:STOP slice of the sorted image list")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-images", type=int)
    e.add_argument("--raw", action="store_true", help="score the raw output instead of the composite")
    e.add_argument("--fid", nargs="?", const="auto", metavar="WEIGHTS",
                   help="also FID; local Inception-v3 weights: a path, or none = torchvision's cache "
                        "(never downloaded)")
    e.add_argument("--device", help="auto | cpu | cuda")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.add_argument("--threads", type=int, help="CPU threads (default: the idle cores)")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("inpaint", help="fill the hole of one image")
    i.add_argument("checkpoint")
    i.add_argument("image", help="RGB image file")
    i.add_argument("mask", help="binary mask file of the same size, white (255) = hole")
    i.add_argument("-o", "--output", required=True, help="output image file (PNG)")
    i.add_argument("--device", help="auto | cpu | cuda")
    i.add_argument("--threads", type=int, help="CPU threads (default: the idle cores)")
    i.set_defaults(func=cmd_inpaint)

    o = sub.add_parser("import-official", help="convert official CSA checkpoints (<epoch>_net_G/P.pth) "
                                               "to a checkpoint for inpaint and eval")
    o.add_argument("folder", help="the official checkpoints folder (checkpoints_dir/name)")
    o.add_argument("--epoch", default="latest", help="epoch label of the files (default latest: "
                   "latest_net_*.pth, else the highest numbered epoch)")
    o.add_argument("--image-size", type=int, default=256, help="image size (the official nets: 256)")
    o.add_argument("--semantics", choices=("official", "paper"), default="official",
                   help="CSA layer forward: the official code's similarities (default) or the paper's")
    o.add_argument("-o", "--output", required=True, help="checkpoint file to write (.pt)")
    o.set_defaults(func=cmd_import_official)

    d = sub.add_parser("demo", help="train the demo preset on the embedded photos and write figures")
    d.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    d.add_argument("--steps", type=int, help="override the number of training steps")
    d.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    d.add_argument("--device", help="auto | cpu | cuda")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.add_argument("--threads", type=int, help="CPU threads (default: the idle cores)")
    d.set_defaults(func=cmd_demo)
    return p


def is_expected(e: BaseException) -> bool:
    """User errors (bad files, arguments, settings, a diverged run) as opposed to bugs."""
    if isinstance(e, (CLIError, OSError, ValueError)):
        return True
    # Library errors; their modules are only loaded (with torch) when a command got that far.
    for module, name in (("csa_lib.train", "NonFiniteLossError"), ("csa_lib.train", "RunInUseError"),
                         ("csa_lib.vgg", "VGGWeightsUnavailable"),
                         ("csa_lib.metrics", "InceptionWeightsUnavailable")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csa`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and the message
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if not is_expected(e) or os.environ.get("CSA_DEBUG"):
            raise  # a bug (or CSA_DEBUG=1): keep the traceback
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        print(f"csa: error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("csa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
