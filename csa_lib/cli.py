"""The ``csa`` command: train, evaluate, inpaint your photos, fetch weights, and the CPU demo.

    csa train --preset demo [--data DIR] [--masks DIR] [--vgg-weights SPEC] [--steps N] [--out DIR]
              [--resume] [--set section.field=value ...]
    torchrun --standalone --nproc_per_node N -m csa_lib.cli train ...   # N GPUs (README: several GPUs)
    csa eval CHECKPOINT [--data DIR] [--masks DIR] [--range START:STOP]
    csa inpaint IMAGE MASK -o OUT.png [--checkpoint CKPT]  # or --mask center|irregular; or a folder
    csa weights [vgg16] [inception_v3]           # fetch torchvision's VGG16 / Inception weights (the one download)
    csa import-official FOLDER [--epoch E] [--image-size N] [--semantics official|paper] -o FILE
    csa demo                                     # what `make demo` runs

Expected failures (a missing file, an image and a mask of different sizes, an
unknown preset or setting) print one line ``csa: error: ...`` on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import secrets
import sys
import textwrap
import time
import warnings
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

# torch is imported inside the commands: argument and file errors are then reported in a fraction
# of a second, and `csa --help` is instant.
from .config import AMP_MODES, CSA_SEMANTICS, PRESETS, Preset, apply_override, get_preset
from .errors import NO_CODE, TORCH_ADVICE, error_line  # noqa: F401  (also public here)


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
    from . import distributed
    from .devices import resolve_device
    from .runfiles import has_checkpoint
    from .train import Trainer

    _setup_threads(args)
    preset = get_preset(args.preset)
    ov = train_overrides(args, preset)
    out_dir = Path(ov.get("train.out_dir", preset.train.out_dir))
    if "train.device" in ov:
        resolve_device(ov["train.device"])  # an unknown or absent device: one line, before any work
    # Started by torchrun (WORLD_SIZE set): every rank runs this same command inside one process group
    # (csa_lib.distributed); without torchrun this is a plain single-process run.
    with distributed.process_group(ov.get("train.device", "auto" if args.resume else preset.train.device)):
        main = distributed.is_main()
        if args.resume:
            with _one_line_warnings():  # e.g. resuming on another --data folder
                trainer = Trainer.resume(out_dir, ov, progress=not args.quiet)
            if main:
                print(f"resuming {out_dir} at step {trainer.step}")
        else:
            # Also a run whose last save was cut between next.pt and last.pt: never start it over silently.
            if has_checkpoint(out_dir):
                raise CLIError(f"{out_dir} already holds a checkpoint; pass --resume to continue it "
                               "or --out to start a new run")
            for key, value in ov.items():
                apply_override(preset, key, value)
            trainer = Trainer(preset, progress=not args.quiet)
        if main:
            print(_start_line(trainer))
            _warn_if_masks_empty(trainer.preset.data)
        result = trainer.fit()
        trainer.close()
        if main:
            print(_train_summary(trainer, result))
    return 0


@contextmanager
def _one_line_warnings(about=None):
    """Python warnings raised inside the block are printed as one line each, ``csa: warning: ...`` on
    stderr (``csa: warning: ABOUT: ...`` naming e.g. the image), when it ends (also when it fails);
    repeated messages once."""
    prefix = "" if about is None else f"{about}: "
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for text in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
                print(f"csa: warning: {prefix}{text}", file=sys.stderr)


def _warn_if_masks_empty(data_cfg, sample: int = 64) -> None:
    """One ``csa: warning:`` line when a training mask folder (``data.masks=folder``) holds no hole: up
    to ``sample`` files spread over the folder are read as training reads them (> 127 = hole)."""
    if data_cfg.masks != "folder" or not data_cfg.mask_dir:
        return
    from .masks import MaskFolder

    folder = MaskFolder(data_cfg.mask_dir, data_cfg.image_size, augment=False)
    picked = sorted({int(i) for i in np.linspace(0, len(folder) - 1, min(sample, len(folder))).round()})
    try:
        if any(folder.hole_ratio(i) > 0 for i in picked):
            return
    except OSError:  # an unreadable mask is reported where training reads it
        return
    which = f"all {len(folder)}" if len(picked) == len(folder) else f"{len(picked)} (spread over {len(folder)})"
    print(f"csa: warning: {which} masks checked in {data_cfg.mask_dir} have no hole (no pixel > 127; white = "
          "hole): the network would learn to fill nothing", file=sys.stderr)


def _start_line(trainer) -> str:
    """One line before the progress bar: preset, device, and the processes sharing the batch (a torchrun
    run says so: world size, backend, per-rank batch)."""
    from . import distributed

    p = distributed.describe(trainer.preset.train.batch_size)
    procs = (f"{p['world_size']} processes ({p['backend']}), batch {trainer.preset.train.batch_size} = "
             f"{p['per_rank_batch']} per rank" if p["world_size"] > 1
             else f"1 process, batch {trainer.preset.train.batch_size}")
    return (f"training {trainer.preset.name} on {trainer.device}: {procs}, steps {trainer.step} -> "
            f"{trainer.preset.train.steps}, run folder {trainer.out_dir}")


def _train_summary(trainer, result: dict[str, Any], vgg_note: bool = True) -> str:
    out = trainer.out_dir
    how = "stopped by the time budget" if result["stopped"] == "time_budget" else "done"
    return (f"{how}: step {result['step']}/{trainer.preset.train.steps}, "
            f"{result['elapsed_s'] / 60:.1f} min, {result['images_per_s']:.1f} images/s\n"
            f"  checkpoint: {result['checkpoint']}\n  log:        {out / 'log.jsonl'}\n"
            f"  samples:    {out / 'samples'}" + (_random_vgg_note(trainer) if vgg_note else ""))


def _random_vgg_note(trainer) -> str:
    """The warning of ``--vgg-weights auto`` falling back to random weights, repeated at the end of the
    run (the first one scrolled away under the progress bar); empty otherwise."""
    source = str(getattr(getattr(getattr(trainer, "criterion", None), "vgg", None), "source", ""))
    if not source.startswith("random (spec 'auto'"):
        return ""
    return ("\n  WARNING: VGG16 had RANDOM weights (--vgg-weights auto found none), so the consistency loss "
            "and the feature discriminator saw meaningless features. Run `csa weights` once online, or "
            "pass --vgg-weights PATH.")


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
            raise CLIError(f"--fid {args.fid}: not usable Inception-v3 weights ({error_line(e)})") from None


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


#: How ``csa inpaint`` reads masks (``csa_lib.inference.read_mask`` implements it), for ``--help``.
MASK_RULE = ("a mask is read as greyscale and thresholded: > 127 = hole (white), <= 127 = known, so "
             "anti-aliased and JPEG masks work; a mask holding only the values 0 and 1 is read as 1 = hole")

#: What the shipped face model is, in one sentence (``csa inpaint --help``; the README's quick start says
#: the same).
SHIPPED_MODEL_LIMITS = ("The shipped model (celeba64) is a 64-px face model: it sees the photo's square "
                        "centre crop at 64x64 px, computes the fill there and upscales it to the photo, knows "
                        "only faces framed roughly like CelebA crops (trained with the crop shifted by up to 8 % "
                        "and zoomed by up to 15 %; other photos get face-like smears), and, like CelebA, is for "
                        "non-commercial research and education only.")


def image_format(path) -> str:
    """PIL's format name for an output file's suffix (``.png`` -> ``"PNG"``), or ``ValueError`` naming it."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"output {path}: unknown image format {Path(path).suffix or '(no suffix)'!r}; "
                         "use .png (lossless) or .jpg")
    return fmt


def save_image(x, path) -> Path:
    """Save a PIL image, or ``[3,H,W]`` in [-1,1], as an 8-bit PNG (or any format PIL knows from the
    suffix), atomically.

    The image goes to a temporary file in the same folder (``.NAME.PID-RANDOM.tmp``), is fsynced and
    renamed over ``path``: a full disk, a file-size limit or a kill leaves the old ``path`` (a photo, an
    earlier output) untouched, and two writers of one ``path`` leave one complete image. A failed write
    removes the temporary file and raises ``OSError`` naming ``path``.
    """
    from PIL import Image

    path = Path(path)
    fmt = image_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(x, Image.Image):
        from .inference import to_pil

        x = to_pil(x)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # new file, permissions from the umask like any output
            x.save(f, format=fmt)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception):
            reason = " ".join(str(e).split()) or type(e).__name__
            raise OSError(f"cannot write {path}: {reason} (disk full or not writable?); "
                          "nothing was replaced") from None
        raise
    return path


def load_inpaint_model(args):
    """The model of ``csa inpaint``: ``--checkpoint`` when given, else the shipped ``--model``
    (``csa_lib.inference.load_model``); a missing shipped model names ``--checkpoint`` as the way out."""
    from .inference import load_model
    from .pretrained import list_pretrained

    device = _device(args.device)
    if args.checkpoint is not None:
        return load_model(Path(args.checkpoint), device)
    if args.model not in list_pretrained():
        raise CLIError(f"--model {args.model!r}: no such shipped model; available: {', '.join(list_pretrained())} "
                       "(a checkpoint is --checkpoint PATH)")
    try:
        return load_model(args.model, device)
    except FileNotFoundError as e:
        raise CLIError(f"{error_line(e)}; pass --checkpoint RUN/checkpoints/last.pt to use a model you "
                       "trained") from None


#: Folder mode's mask names, stated in ``csa inpaint --help``.
FOLDER_RULE = ("Folder mode: the mask of IMAGE.EXT is IMAGE_mask.EXT2 or IMAGE_maskN.EXT2 (N = digits, "
               "EXT2 any image type) in the same folder; with --masks DIR those names in DIR, or else "
               "DIR/IMAGE.EXT2 (the same name). Files named like a mask (..._mask, ..._maskN) are never "
               "inpainted; 'anna_masked.png' or 'gas_mask_portrait.jpg' are photos. Every photo needs a "
               "mask (or --mask); several masks give one output each, named after the mask. Outputs are "
               "IMAGE.png, or IMAGE_EXT.png when two photos share a name (a.jpg, a.png). Files that are "
               "skipped are listed. The output folder may not be the image or the mask folder.")
_MASK_NAME = re.compile(r"(?P<stem>.+)_mask\d*")


def _mask_of(p: Path) -> str | None:
    """The image stem a file's name makes it the mask of (``face_mask1.png`` -> ``face``), else None."""
    m = _MASK_NAME.fullmatch(p.stem)
    return m.group("stem") if m else None


def _image_files(folder: Path) -> list[Path]:
    from .data import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _masks_for(image: Path, mask_dir: Path, files: list[Path]) -> list[Path]:
    """Masks of ``image`` among ``files`` (of ``mask_dir``) by :data:`FOLDER_RULE`: ``<stem>_mask[N].<ext>``,
    else, when the masks have a folder of their own, ``<stem>.<ext>``."""
    found = [p for p in files if _mask_of(p) == image.stem]
    if not found and mask_dir != image.parent:
        found = [p for p in files if p.stem == image.stem]
    return found


def _same_path(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one existing file or folder (links and ``..`` resolved)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _unique_outputs(named: list[tuple[Path, str]], out: Path) -> list[Path]:
    """Output paths ``out/<name>.png`` for ``[(image, name)]``, never two alike (compared case-blind).

    A name shared by photos of different types (``a.jpg``, ``a.png``) becomes ``a_jpg``, ``a_png``;
    anything still alike gets ``_2``, ``_3``, ...
    """
    count: dict[str, int] = {}
    for _, name in named:
        count[name.casefold()] = count.get(name.casefold(), 0) + 1
    used, paths = set(), []
    for image, name in named:
        if count[name.casefold()] > 1:
            name = f"{name}_{image.suffix[1:].lower()}"
        base, k = name, 1
        while name.casefold() in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name.casefold())
        paths.append(out / f"{name}.png")
    return paths


def _skip_note(files: list[str], folder: Path, why: str) -> list[str]:
    if not files:
        return []
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return [f"skipped {len(files)} file(s) in {folder}: {shown} ({why})"]


def folder_jobs(args, folder: Path, out: Path) -> tuple[list[tuple[Path, Path | None, Path]], list[str]]:
    """Folder mode of ``csa inpaint`` by :data:`FOLDER_RULE`: ``(jobs, notes)``, the notes saying which
    files were skipped and why."""
    from .data import IMAGE_EXTENSIONS

    if out.is_file() or out.suffix.lower() in (".png", ".jpg", ".jpeg"):
        raise CLIError(f"-o {out}: in folder mode the output is a folder")
    mask_dir = Path(args.masks) if args.masks is not None else folder
    if not mask_dir.is_dir():
        raise CLIError(f"--masks {mask_dir}: no such folder")
    for inputs, what in ((folder, "the image folder"), (mask_dir, "the mask folder")):
        if _same_path(out, inputs):
            raise CLIError(f"-o {out} is {what}: the outputs would replace or mix with your files; "
                           "choose another output folder")
    files = _image_files(folder)
    images = [p for p in files if _mask_of(p) is None]
    if not images:
        raise CLIError(f"no images found in {folder}")
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() not in IMAGE_EXTENSIONS)
    notes = _skip_note(others, folder, "not an image type: " + " ".join(IMAGE_EXTENSIONS))
    if args.mask is not None:
        names = [p for p in files if _mask_of(p) is not None]
        notes += _skip_note([p.name for p in names], folder, "named like a mask")
        outs = _unique_outputs([(p, p.stem) for p in images], out)
        return [(p, None, o) for p, o in zip(images, outs)], notes
    mask_files = _image_files(mask_dir) if mask_dir != folder else [p for p in files if _mask_of(p)]
    pairs, missing, used = [], [], set()
    for p in images:
        masks = _masks_for(p, mask_dir, mask_files)
        missing += [] if masks else [p.name]
        used.update(masks)
        pairs += [(p, m, m.stem if len(masks) > 1 else p.stem) for m in masks]
    if missing:
        raise CLIError(f"no mask for {len(missing)} image(s) in {mask_dir} (expected e.g. "
                       f"{Path(missing[0]).stem}_mask.png; see --help): {', '.join(missing[:5])}")
    unused = [m.name for m in mask_files if m not in used]
    notes += _skip_note(unused, mask_dir, "a mask name without a matching photo")
    if mask_dir != folder:
        notes += _skip_note([p.name for p in files if _mask_of(p) is not None], folder,
                            "named like a mask; the masks come from --masks")
    outs = _unique_outputs([(p, name) for p, _, name in pairs], out)
    return [(p, m, o) for (p, m, _), o in zip(pairs, outs)], notes


def _refuse_input_as_output(out: Path, inputs: list[tuple[Path, str]], overwrite: bool, flag: str = "-o") -> None:
    """``CLIError`` when ``-o`` (or ``--save-mask``) is one of the input files (the photo, its mask, the
    checkpoint), unless ``--overwrite`` (then the file is replaced atomically, by :func:`save_image`)."""
    for path, what in inputs:
        if _same_path(out, path) and not overwrite:
            raise CLIError(f"{flag} {out} is the {what} {path}: writing there would replace it; choose another "
                           f"{flag}, or pass --overwrite to replace it")


def _mask_outputs(args, jobs: list, folder_mode: bool, inputs: list[tuple[Path, str]]) -> list:
    """Jobs with a fourth entry: where ``--save-mask`` writes the hole (white = hole) as the model used it,
    or None. One image: the file ``--save-mask PATH``; folder mode: ``PATH/<output name>_mask.png``."""
    if not getattr(args, "save_mask", None):
        return [(*job, None) for job in jobs]
    target = Path(args.save_mask)
    if not folder_mode:
        if target.is_dir():
            raise CLIError(f"--save-mask {target} is a folder; give a file such as {target / 'mask.png'}")
        image_format(target)
        if _same_path(target, jobs[0][2]) or target.resolve() == jobs[0][2].resolve():
            raise CLIError(f"--save-mask {target} is also the output -o; give the mask its own file")
        _refuse_input_as_output(target, inputs, getattr(args, "overwrite", False), flag="--save-mask")
        return [(*jobs[0], target)]
    if target.is_file() or target.suffix.lower() in (".png", ".jpg", ".jpeg"):
        raise CLIError(f"--save-mask {target}: in folder mode the masks go to a folder")
    for folder, what in inputs:
        if _same_path(target, folder):
            raise CLIError(f"--save-mask {target} is {what}: the masks would mix with your files; "
                           "choose another folder (the output folder is fine)")
    out = [(*job, target / f"{job[2].stem}_mask.png") for job in jobs]
    written = [p for job in out for p in job[2:]]
    if len({str(p.resolve()).casefold() for p in written}) < len(written):
        raise CLIError(f"--save-mask {target}: a mask name would be the name of an output; choose another folder")
    return out


def inpaint_jobs(args) -> list[tuple[Path, Path | None, Path, Path | None]]:
    """``[(image, mask file or None (generated), output, mask output or None)]`` from the command line,
    every file checked before any work starts. Folder mode's notes about skipped files go to ``args.notes``."""
    paths = [Path(p) for p in args.paths]
    out = Path(args.output)
    args.notes = []
    if args.mask is not None and args.masks is not None:
        raise CLIError("give either --mask (center | irregular) or --masks DIR, not both")
    if paths[0].is_dir():
        if len(paths) > 1:
            raise CLIError(f"folder mode takes one folder ({paths[0]}); give mask files with --masks DIR")
        jobs, args.notes = folder_jobs(args, paths[0], out)
        mask_dir = Path(args.masks) if args.masks is not None else paths[0]
        return _mask_outputs(args, jobs, True, [(paths[0], "the image folder"), (mask_dir, "the mask folder")])
    _need_file(paths[0], "image")
    if args.masks is not None:
        raise CLIError("--masks DIR is for folder mode; give one image's mask as the second argument")
    if len(paths) > 2:
        raise CLIError(f"expected IMAGE [MASK], got {len(paths)} paths (the checkpoint is --checkpoint)")
    if (len(paths) == 2) == (args.mask is not None):
        raise CLIError("give a mask: a file (IMAGE MASK), --mask center or --mask irregular")
    if len(paths) == 2:
        _need_file(paths[1], "mask")
    if out.is_dir():
        raise CLIError(f"-o {out} is a folder; give an output file such as {out / (paths[0].stem + '.png')}")
    image_format(out)
    inputs = [(paths[0], "input image"), *([(paths[1], "mask")] if len(paths) == 2 else [])]
    if getattr(args, "checkpoint", None):
        inputs.append((Path(args.checkpoint), "checkpoint"))
    _refuse_input_as_output(out, inputs, getattr(args, "overwrite", False))
    return _mask_outputs(args, [(paths[0], paths[1] if len(paths) == 2 else None, out)], False, inputs)


def _legacy_checkpoint(args) -> None:
    """``csa inpaint CHECKPOINT IMAGE MASK`` (the old form): the first of three paths, or a ``.pt`` file
    before an image, is the checkpoint."""
    p = Path(args.paths[0])
    if args.checkpoint is None and len(args.paths) >= 2 and (len(args.paths) == 3 or p.suffix in (".pt", ".pth")):
        args.checkpoint, args.paths = args.paths[0], args.paths[1:]


def _read_checked_image(path):
    """``csa_lib.inference.read_image`` (an RGB PIL image, EXIF applied), refusing an image with a side
    under ``inference.MIN_SIDE`` pixels in one line naming the file."""
    from .inference import MIN_SIDE, read_image

    image = read_image(path)
    if min(image.size) < MIN_SIDE:
        raise CLIError(f"image {path} is {image.width}x{image.height} px: too small to inpaint (each side needs "
                       f"at least {MIN_SIDE} px)")
    return image


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure (Python's ``MemoryError``, torch's "can't allocate memory",
    CUDA's out of memory)."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text or "cannot allocate memory" in text))


def _image_size_text(path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return f"{im.size[0]}x{im.size[1]} px"
    except Exception:  # noqa: BLE001 - only for the message
        return "size unknown"


def _inpaint_one(args, model, n, job, first):
    """``(result PIL image, mask [1,H,W])`` of job ``n`` = ``(image, mask file or None, output, mask
    output or None)``; ``first`` holds the already read first image and mask."""
    from . import inference

    image_path, mask_path = job[0], job[1]
    with _one_line_warnings(about=image_path):  # the library's one-sentence warnings, naming the image
        image = first[0] if n == 0 else _read_checked_image(image_path)
        if n == 0 and first[1] is not None:
            mask = first[1]
        elif mask_path is None:
            mask = inference.generate_mask(args.mask, image.height, image.width, model, seed=args.seed + n)
        else:
            mask = inference.read_mask(mask_path, (image.height, image.width))
        return inference.inpaint(model, image, mask, border_blend=args.border_blend), mask


def cmd_inpaint(args) -> int:
    from tqdm.auto import tqdm

    from .inference import mask_to_pil, read_mask

    _legacy_checkpoint(args)
    jobs = inpaint_jobs(args)
    for note in args.notes:
        print(f"csa: note: {note}", file=sys.stderr)
    # The first image and its mask file are read before the model: a bad input fails at once.
    first = _guard_memory(jobs[0][0], lambda: _read_checked_image(jobs[0][0]))
    with _one_line_warnings(about=jobs[0][0]):
        first_mask = None if jobs[0][1] is None else read_mask(jobs[0][1], (first.height, first.width))
    _setup_threads(args)
    model = load_inpaint_model(args)
    if not args.quiet:
        pre = model.preprocessing
        print(f"model: {model.description}; the network sees {pre['image_size']} px ({pre.get('resize', 'square')})")
    bar = tqdm(jobs, desc="inpaint", unit="image", disable=args.quiet or len(jobs) == 1, ascii=True)
    for n, job in enumerate(bar):
        result, mask = _guard_memory(job[0], lambda: _inpaint_one(args, model, n, job, (first, first_mask)))
        save_image(result, job[2])
        if job[3] is not None:
            save_image(mask_to_pil(mask), job[3])
        if len(jobs) == 1:
            print(f"wrote {job[2]} ({float(mask.mean()):.0%} of the pixels filled)"
                  + (f"; the mask (white = hole): {job[3]}" if job[3] is not None else ""))
    if len(jobs) > 1:
        print(f"wrote {len(jobs)} images to {Path(args.output)}"
              + (f", their masks to {Path(args.save_mask)}" if getattr(args, "save_mask", None) else ""))
    return 0


def _guard_memory(image_path, work):
    """``work()``, an allocation failure turned into one line naming the image and its size."""
    try:
        return work()
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        raise CLIError(f"not enough memory to inpaint {image_path} ({_image_size_text(image_path)}); "
                       "resize it first, or free memory") from None


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
# csa weights
# --------------------------------------------------------------------------------------------------
def weight_urls() -> dict[str, str]:
    """torchvision's ImageNet weights this project can use: VGG16 (the losses) and Inception-v3 (FID)."""
    from torchvision.models import Inception_V3_Weights, VGG16_Weights

    return {"vgg16": VGG16_Weights.IMAGENET1K_V1.url, "inception_v3": Inception_V3_Weights.IMAGENET1K_V1.url}


def fetch_weights(names=("vgg16", "inception_v3"), progress: bool = True) -> dict[str, Path]:
    """Fetch torchvision's weights into torchvision's own cache (``<torch hub dir>/checkpoints``), where
    ``--vgg-weights auto`` and ``csa eval --fid`` look; this is the only command that downloads.

    Every file, new or already there, is checked against the SHA-256 prefix in its name
    (``vgg16-397923af.pth``) and read with ``weights_only=True``. Returns ``{name: path}``.
    """
    import torch

    from .vgg import read_torchvision_cache, torchvision_hash_prefix

    urls = weight_urls()
    unknown = [n for n in names if n not in urls]
    if unknown:
        raise CLIError(f"unknown weights {', '.join(unknown)}; choose from {', '.join(urls)}")
    paths = {}
    for name in names:
        url = urls[name]
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, str(path), hash_prefix=torchvision_hash_prefix(path),
                                               progress=progress)
            except OSError as e:  # URLError and socket errors: offline, proxy, DNS
                reason = getattr(e, "reason", None) or e
                raise CLIError(f"cannot download {name} weights from {url} ({reason}); offline? Copy "
                               f"{path.name} into {path.parent} by hand") from None
            except RuntimeError as e:  # torch.hub's hash check
                raise CLIError(f"{name} weights from {url}: {str(e).splitlines()[0]}") from None
        read_torchvision_cache(path)  # hash and format check; a bad file raises ValueError naming it
        paths[name] = path
    return paths


def cmd_weights(args) -> int:
    for name, path in fetch_weights(args.names or ("vgg16", "inception_v3"), progress=not args.quiet).items():
        print(f"{name:<13} {path} (SHA-256 prefix checked)")
    return 0


# --------------------------------------------------------------------------------------------------
# csa demo
# --------------------------------------------------------------------------------------------------
#: Expected conditions of ``csa demo``: the start of a Python warning's message -> the one plain sentence
#: printed instead (``make demo`` prints no ``file.py:N: UserWarning`` lines).
DEMO_NOTES = {
    "no VGG16 weights found": (
        "note: there are no VGG16 weights on this machine, so the demo trains with random VGG16 features: "
        "its consistency loss and feature discriminator learn nothing useful, and the figures show the "
        "mechanics rather than a good model; `csa weights` (once, online, 528 MB) fetches the weights "
        "for the next run."),
}


@contextmanager
def _plain_warnings(notes: dict[str, str]):
    """Python warnings inside the block printed as they happen, one line each and each once: for an
    expected condition (a message starting with a key of ``notes``) its plain sentence on stdout, else
    ``csa: warning: ...`` on stderr; never Python's ``file:line: UserWarning`` and source line."""
    said = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        note = next((v for k, v in notes.items() if text.startswith(k)), None)
        if (note or text) not in said:
            said.add(note or text)
            if note:
                print(note, flush=True)
            else:
                print(f"csa: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def cmd_demo(args) -> int:
    """Train the demo preset on the embedded photos (or reuse a finished run), then write figures."""
    with _plain_warnings(DEMO_NOTES):
        return _demo(args)


def _demo(args) -> int:
    from .runfiles import has_checkpoint, load_checkpoint
    from .train import Trainer

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
    fit = None
    if has_checkpoint(out) and not args.retrain:
        done = int(load_checkpoint(out)["step"])
        if done >= preset.train.steps:
            print(f"found a finished demo run in {out} (step {done}); pass --retrain to train again")
        else:
            print(f"resuming the demo run in {out} at step {done}")
            fit = _fit(Trainer.resume(out, {"train.steps": preset.train.steps}, progress=not args.quiet))
    else:
        import torch

        lock = _clear_for_retrain(out) if args.retrain else None
        try:
            print(f"training the demo preset ({preset.train.steps} steps, batch {preset.train.batch_size}, "
                  f"{preset.data.image_size} px, {torch.get_num_threads()} CPU threads) -> {out}")
            trainer = Trainer(preset, progress=not args.quiet)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        trainer._lock = lock  # fit() keeps the lock taken before the deletions, and releases it at the end
        fit = _fit(trainer)
    paths = demo_figures(out, device=_device(args.device))
    paths.update(shipped_model_demo(out))
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min; figures:")
    for name, path in paths.items():
        print(f"  {name:<12} {path}")
    if fit is not None and fit["stopped"] == "time_budget":
        print(f"note: the time budget stopped training at step {fit['step']}/{preset.train.steps} (the figures "
              "show that model); run `make demo` (or `csa demo`) again to continue this run where it stopped")
    return 0


def _clear_for_retrain(out: Path):
    """Lock the run folder ``out`` (:class:`csa_lib.runfiles.RunLock`), then delete its checkpoints and log
    for ``csa demo --retrain``; returns the held lock. A folder another process trains in is refused
    (``RunInUseError``) before anything is deleted."""
    from .runfiles import CKPT_DIR, LAST, NEXT, PREV, RunLock

    lock = RunLock(out).acquire()
    for name in (LAST, PREV, NEXT):
        (out / CKPT_DIR / name).unlink(missing_ok=True)
    (out / "log.jsonl").unlink(missing_ok=True)
    return lock


def shipped_model_demo(out_dir, n_masks: int = 4) -> dict[str, Path]:
    """The shipped CelebA-64 model (through ``csa_lib.inference``) on the astronaut's face (embedded in
    scikit-image, no download), and on one photo that is not a face.

    Four holes in the face (the centre, then free-form masks of growing size), then the centre hole in
    the coffee cup: a failure case shown on purpose, since the model knows only faces. Each is filled by
    biharmonic inpainting, by the model's coarse stage and by the full model; the figure goes to
    ``out_dir/shipped_model_face.png`` and the composited PSNR of each is printed. Returns ``{}`` when
    the weights are not in this checkout.
    """
    import torch

    from .baselines import biharmonic_inpaint
    from .data import EMBEDDED_PHOTOS, astronaut_face, embedded_photos, prepare_image, to_tensor
    from .inference import inpaint, load_model
    from .masks import center_mask, irregular_mask
    from .metrics import psnr
    from .pretrained import list_pretrained
    from .viz import inpainting_grid

    if "celeba64" not in list_pretrained(available_only=True):
        print("no shipped model in weights/ (weights/csa_celeba64.pt): skipping its demo")
        return {}
    model = load_model("celeba64")
    S, pre = model.image_size, model.preprocessing
    g = torch.Generator().manual_seed(0)
    masks = [center_mask(S)] + [irregular_mask(S, (lo, lo + 0.1), generator=g) for lo in (0.2, 0.3, 0.4)][: n_masks - 1]
    coffee = prepare_image(embedded_photos()[EMBEDDED_PHOTOS.index("coffee")], S, pre["resize"], pre.get("crop_top"))
    images = [astronaut_face(S)] * len(masks) + [to_tensor(coffee)]
    masks.append(center_mask(S))
    rows = [inpaint(model, x, m, return_details=True) for x, m in zip(images, masks)]
    image, mask = torch.stack(images), torch.stack(masks)
    coarse = torch.stack([details.coarse for _, details in rows])
    columns = {"biharmonic": biharmonic_inpaint(image, mask),
               "coarse stage": image * (1 - mask) + coarse * mask,
               "CSA (shipped)": torch.stack([to_tensor(filled) for filled, _ in rows])}
    for name, x in columns.items():
        values = psnr(x, image, reduction="none").tolist()
        print(f"  shipped-model demo, {name:<14} PSNR per hole: " + " ".join(f"{v:5.2f}" for v in values[:-1])
              + f" dB on the face; {values[-1]:5.2f} dB on the coffee cup (not a face)")
    labels = ["face: centre hole"] + [f"face: {lo}-{lo + 10} % hole" for lo in (20, 30, 40)][: n_masks - 1]
    labels.append("not a face (fails:\nit paints a face)")
    fig = inpainting_grid(columns, image, mask, n=len(rows), row_labels=labels,
                          title=f"shipped model ({model.card.get('trained_steps', '?')} steps on 64-px CelebA "
                                "faces): a face it never saw, and a photo that is not a face")
    return {"shipped": _savefig(fig, Path(out_dir) / "shipped_model_face.png")}


def _fit(trainer) -> dict[str, Any]:
    result = trainer.fit()
    trainer.close()
    print(_train_summary(trainer, result, vgg_note=False))  # the demo said it once, in plain words
    return result


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
                     fontsize=10, y=1.0, va="bottom")  # above the panel titles, not on them
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
    fig, axes = plt.subplots(1, 2, figsize=(11, 3))
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
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the curves, not on them
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
    from .runfiles import load_checkpoint

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


def _thread_environment(args) -> None:
    """Fix every OpenMP runtime's thread count (and passive waiting) before torch or numba loads one.

    A process holds two OpenMP runtimes: torch's and the system libgomp that numba's kernels use. Each
    reads ``OMP_NUM_THREADS`` once, when it loads; ``torch.set_num_threads`` reaches only the first. With
    the other left at one thread per core, and OpenMP threads spinning at barriers while another process
    holds a core, ``csa train --threads 1`` on a busy 2-core machine ran 3-5x slower (measured: 10 s
    instead of 38 s of CPU for the same benchmark steps, benchmarks/RESULTS.md). Values the user set win.
    """
    if "torch" in sys.modules or not hasattr(args, "threads"):
        return  # called as a library after torch was loaded: too late to matter
    n = os.environ.get("OMP_NUM_THREADS") or str(cpu_threads(args.threads))
    os.environ.setdefault("OMP_NUM_THREADS", n)
    os.environ.setdefault("NUMBA_NUM_THREADS", n)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _setup_threads(args) -> None:
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads(getattr(args, "threads", None)))


def _device(name: str | None) -> str:
    """``--device`` as a torch device string; unknown or absent devices are a one-line ``ValueError``."""
    from .devices import resolve_device

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

    t = sub.add_parser("train", help=f"train a preset ({', '.join(PRESETS)})")
    t.add_argument("--preset", default="demo", help=f"one of {', '.join(PRESETS)} (default demo)")
    t.add_argument("--data", help="image folder (default: the preset's; embedded photos for smoke/demo)")
    t.add_argument("--masks", help="folder of mask PNGs, white = hole (switches data.masks to 'folder')")
    t.add_argument("--vgg-weights", help="auto | torchvision | none | PATH[:caffe|:torchvision]")
    t.add_argument("--steps", type=int, help="total steps (the decay start scales with it)")
    t.add_argument("--out", help="run folder (default: the preset's train.out_dir)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--device", help="auto | cpu | cuda")
    t.add_argument("--time-budget", type=float, help="stop (with a checkpoint) after this many seconds")
    t.add_argument("--amp", choices=AMP_MODES,
                   help="mixed precision: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), "
                        "else fp32; off (or fp32) = force fp32 (same as --set train.amp=off)")
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

    i = sub.add_parser(
        "inpaint", help="fill the holes of your own photos (the shipped face model, or a checkpoint)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Fill holes in images of any size (csa_lib.inference does the work). Without --checkpoint, "
            "the shipped model is used. The network sees only the part it was trained on (the face "
            "model: the square centre crop, resized to 64 px); its output is resized back and pasted at "
            "the input's size, and only hole pixels change: known pixels are written unchanged. EXIF "
            "orientation is applied to images and masks.", 88)
            # no break at hyphens: "non-commercial" stays one word (tests find the sentence in the help)
            + "\n\n" + textwrap.fill(SHIPPED_MODEL_LIMITS, 88, break_on_hyphens=False)
            + "\n\n" + textwrap.fill("A fill upscaled more than 4x (for the face model: a crop over 256 px) "
                                     "is warned about: downscale the photo or crop it closer around the "
                                     "face.", 88),
        epilog=textwrap.fill("Masks: " + MASK_RULE + ".", 88) + "\n\n" + textwrap.fill(FOLDER_RULE, 88)
               + "\n\n" + textwrap.fill("Outputs are written to a temporary file beside them and renamed: "
                                        "an existing file is replaced whole or not at all.", 88)
               + "\n\nExamples:\n"
               "  csa inpaint photo.jpg mask.png -o filled.png\n"
               "  csa inpaint photo.jpg --mask irregular --seed 3 -o filled.png --save-mask hole.png\n"
               "  csa inpaint photos/ -o filled/          # photos/x.png with photos/x_mask.png beside it\n"
               "  csa inpaint photos/ --masks masks/ -o filled/\n"
               "  csa inpaint photo.png mask.png --checkpoint runs/demo/checkpoints/last.pt -o out.png")
    i.add_argument("paths", nargs="+", metavar="PATH",
                   help="IMAGE MASK (two files), IMAGE with --mask, or a FOLDER of images")
    i.add_argument("-o", "--output", required=True, help="output image (PNG), or output folder in folder mode")
    i.add_argument("--mask", choices=("center", "irregular"),
                   help="generate the hole instead of reading it: the centre square, or free-form strokes")
    i.add_argument("--seed", type=int, default=0, help="seed of --mask irregular (folder mode: seed + index)")
    i.add_argument("--save-mask", metavar="PATH",
                   help="also write the hole the model filled (white = hole), e.g. of --mask: a file, or in "
                        "folder mode a folder (<output name>_mask.png; the output folder is fine)")
    i.add_argument("--masks", metavar="DIR",
                   help="folder mode: masks in their own folder (<stem>_mask.png, <stem>_maskN.png or <stem>.png)")
    i.add_argument("--overwrite", action="store_true",
                   help="allow -o to be the input image (or its mask): replace it with the result")
    i.add_argument("--border-blend", action="store_true",
                   help="post-processing: mix the fill with the biharmonic continuation in the hole's first two "
                        "pixel rings at the network's size (made for face model version 2; the shipped version 3 "
                        "gains nothing from it: benchmarks/RESULTS.md, 'Version 3: the border head')")
    i.add_argument("--checkpoint", help="a training checkpoint (file or run folder) instead of the shipped model")
    i.add_argument("--model", default="celeba64", help="which shipped model (default celeba64)")
    i.add_argument("--device", help="auto | cpu | cuda")
    i.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    i.add_argument("--threads", type=int, help="CPU threads (default: the idle cores)")
    i.set_defaults(func=cmd_inpaint)

    o = sub.add_parser("import-official", help="convert official CSA checkpoints (<epoch>_net_G/P.pth) "
                                               "to a checkpoint for inpaint and eval")
    o.add_argument("folder", help="the official checkpoints folder (checkpoints_dir/name)")
    o.add_argument("--epoch", default="latest", help="epoch label of the files (default latest: "
                   "latest_net_*.pth, else the highest numbered epoch)")
    o.add_argument("--image-size", type=int, default=256, help="image size (the official nets: 256)")
    o.add_argument("--semantics", choices=CSA_SEMANTICS, default="official",
                   help="CSA layer forward: the official code's similarities (default) or the paper's")
    o.add_argument("-o", "--output", required=True, help="checkpoint file to write (.pt)")
    o.set_defaults(func=cmd_import_official)

    w = sub.add_parser("weights", help="fetch torchvision's VGG16 and Inception-v3 weights (needs internet)",
                       description="Download torchvision's ImageNet weights into torchvision's cache, where "
                                   "--vgg-weights auto and csa eval --fid find them, checking each file's "
                                   "SHA-256 prefix. Nothing else in this project downloads.")
    w.add_argument("names", nargs="*", metavar="NAME", help="vgg16 and/or inception_v3 (default: both)")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    w.set_defaults(func=cmd_weights)

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
    if isinstance(e, (CLIError, OSError, ValueError, MemoryError)) or _out_of_memory(e):
        return True
    # Library errors; their modules are only loaded (with torch) when a command got that far.
    for module, name in (("csa_lib.train", "NonFiniteLossError"), ("csa_lib.runfiles", "RunInUseError"),
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
    _thread_environment(args)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if not is_expected(e) or os.environ.get("CSA_DEBUG"):
            raise  # a bug (or CSA_DEBUG=1): keep the traceback
        print(f"csa: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("csa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
