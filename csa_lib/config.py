"""Configuration as dataclasses with named presets.

One place for every number that a run depends on. The CLI, the notebooks and the tests all start from
``get_preset(name)`` and override single fields, so there are no copies of magic numbers elsewhere.

Presets
-------
- ``smoke``:    tiny (32-px images, 8 base channels, a handful of steps); device "auto" like every preset
                (a test that needs the CPU sets ``train.device``). Seconds. Used by tests.
- ``demo``:     the embedded scikit-image photos, 64 px, a few minutes on a laptop CPU. ``make demo``.
- ``celeba64``: a CelebA folder such as ``../shared/data/celeba_10k`` (centre crop, resize to 64),
                first 9,000 images to train, last 1,000 to evaluate, NVIDIA irregular masks.
- ``copytask``: the copy task (:mod:`csa_lib.copytask`, kind "twin", 128 px): one of two identical blocks
                is hidden and attention must fetch the other; L1 only (no VGG, no discriminators: cheap
                steps); CSA with the attention curriculum (``train.attention_warmup_steps``). Minutes.
- ``copytask_identity``: the same without attention (the ablation twin of ``copytask``).
- ``copytask_periodic``: the first, easier copy task (64-px periodic textures), notebook 10's start.
- ``paper256``: the paper's setting: 256 px, full width, centre (120x120) or NVIDIA masks, the official
                schedule (constant learning rate, then linear decay to zero).

Validation
----------
Every section checks its own fields when it is built and again after each :func:`apply_override`
(``validate()``, called by ``__post_init__``): a value outside the allowed tuple below (``LAYOUTS``,
``MASK_KINDS``, ``ATTENTIONS``, ``CSA_SEMANTICS``, ``AMP_MODES``, ...) or a size that is not positive
is one ``ValueError`` line naming the field and what it accepts. These tuples are the only list of the
allowed values: the modules that act on a setting, and the ``csa`` command's choices, read them from here.
Rules across sections (the model's and the data's image size agree) are the trainer's
(``train.check_train_config``).

Two fields no preset changes, each read by the trainer: ``train.grad_check`` (True: a NaN/Inf gradient
norm stops training like a NaN/Inf loss; False checks the losses only) and ``train.num_samples`` (how many
fixed evaluation images the periodic sample grids show).

Environment variables
---------------------
Settings that belong to the machine rather than to a run come from the environment. Every ``CSA_*``
variable the library reads, and where:

- ``CSA_SMOKE=1``: tiny sizes everywhere (tests, CI): :func:`smoke_mode`, which forces the notebook
  profile ``smoke`` (:func:`notebook_profile`).
- ``CSA_PROFILE``: a notebook's size profile, one of :data:`NOTEBOOK_PROFILES` (:func:`notebook_profile`).
- ``CSA_SHARED_ROOT``: the team's data and weights beside a checkout (:data:`SHARED_ROOT`, read once at
  import; default ``../shared``).
- ``CSA_DATA_ROOT``: an image folder that notebooks and scripts use instead of their default
  (``data.data_root``).
- ``CSA_VGG_WEIGHTS``: a VGG16 weights spec (``PATH[:caffe|:torchvision]``) for ``loss.vgg_weights="auto"``
  when torchvision's cache has none (``vgg.load_vgg16("auto")``).
- ``CSA_INCEPTION_WEIGHTS``: an Inception-v3 state dict for FID with ``"auto"``
  (``metrics.resolve_inception_weights``).
- ``CSA_CPU_BF16=0|1``: overrides the detection of native bf16 on the CPU, which decides
  ``train.amp="auto"`` there (``train.cpu_has_native_bf16``).
- ``CSA_DIST_TIMEOUT_S``: seconds a ``torchrun`` collective waits for a silent rank (``distributed.timeout_s``;
  default 300).
- ``CSA_SPLIT_IMAGES=0|1``: forces the CSA layer's load heuristic (1: the machine is idle, split an image
  over the threads; 0: busy, one thread per image) (``_csa_backend.cores_busy``).
- ``CSA_DEBUG=1``: ``csa`` shows the traceback of an expected error instead of one line (``cli.main``).
- ``CSA_KILL_AT=point@step``: fault injection for the reliability tests, the process SIGKILLs itself there
  (``runfiles.kill_point``).

Read but not ours: ``TRITON_INTERPRET=1`` lets the Triton chain run on the CPU (``_csa_backend``);
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (set by ``torchrun``, :mod:`csa_lib.distributed`);
``OMP_NUM_THREADS``, which ``csa`` sets (with ``NUMBA_NUM_THREADS`` and ``OMP_WAIT_POLICY``) before torch
loads unless the user did (``cli._thread_environment``).
"""
from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

#: Repository root (the folder holding ``csa_lib/``); notebooks resolve paths from here.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Where the team's real data lives beside a checkout (never committed; see data/README.md).
SHARED_ROOT = Path(os.environ.get("CSA_SHARED_ROOT", REPO_ROOT.parent / "shared"))

# The paper's protocol and the official code's defaults (docs/method.md: "Architecture", "Losses", "Training").
OFFICIAL_CENTER_HOLE = 120  # official default centre hole on a 256 image
PAPER_CENTER_HOLE = 128  # evaluation protocol in the literature: 128x128 on 256
FEATURE_LEVELS = 3  # the CSA layer works at 1/8 resolution
FEATURE_THRESHOLD = 5 / 16  # official downsampled-mask threshold

# The allowed values of the settings: one tuple per choice, read by the modules that act on them.
LAYOUTS = ("folder", "celeba", "places2", "paris", "copytask")  # data.layout (csa_lib.data, csa_lib.copytask)
RESIZES = ("square", "center_crop")  # data.resize (csa_lib.data.prepare_image)
#: data.copy_kind (csa_lib.copytask): a periodic texture, a twin rectangle, a sheared lattice
COPY_KINDS = ("periodic", "twin", "lattice")
MASK_KINDS = ("center", "rect", "irregular", "folder")  # data.masks (csa_lib.masks.make_mask_source)
ATTENTIONS = ("csa", "identity", "contextual", "shift")  # model.attention (csa_lib.networks.make_attention)
CSA_SEMANTICS = ("paper", "official")  # model.csa_semantics: the CSA layer's forward (csa_lib.csa)
CSA_BACKWARDS = ("autograd", "official")  # model.csa_backward: the CSA layer's backward (csa_lib.csa)
LOSS_MODES = ("paper", "official")  # loss.mode (csa_lib.losses.InpaintingLoss)
#: loss.consistency, the consistency-loss variants; formulas: csa_lib.losses.consistency_loss.
CONSISTENCY_VARIANTS = ("paper_sum", "hole_mean", "hole_mean_scaled", "official_mean")
#: loss.consistency_target: what the consistency term pulls the hole features towards (csa_lib.losses)
CONSISTENCY_TARGETS = ("vgg", "self")
AMP_MODES = ("auto", "bf16", "off", "fp32")  # train.amp (csa_lib.train.amp_dtype); "fp32" = "off"
#: The widest model accepted (model.base_channels; the paper: 64; 512 is already 4,096 channels at the CSA layer).
MAX_BASE_CHANNELS = 512


def check_choice(name: str, value: Any, allowed: tuple) -> Any:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` naming ``name`` and the allowed values.

    >>> check_choice("model.csa_semantics", "paper", CSA_SEMANTICS)
    'paper'
    """
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None, optional: bool = False,
              what: str | None = None) -> None:
    """Refuse anything but an integer in ``[minimum, maximum]`` (a bool is not one); ``optional``: None is
    fine too. ``what`` words the rule in the message (default "a positive integer" / "an integer >= N")."""
    if optional and value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        what = what or ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_image_size(name: str, value: Any) -> None:
    """The networks' image size: a power of two >= 16 (the U-Nets halve it down to 1x1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16 (the U-Nets halve it down to 1x1), got {value!r}")


def smoke_mode() -> bool:
    """True when the environment asks for small sizes (``CSA_SMOKE=1``), as tests and CI do."""
    return os.environ.get("CSA_SMOKE", "0").lower() not in ("", "0", "false", "no")


@dataclass
class DataConfig:
    """Where images and masks come from and how they are prepared."""

    root: str | None = None  # image folder; None = embedded scikit-image samples (no download)
    layout: str = "folder"  # "folder" | "celeba" | "places2" | "paris" | "copytask" (synthetic, csa_lib.copytask)
    image_size: int = 256
    resize: str = "square"  # "square" (official: resize to a square) | "center_crop" (CelebA faces)
    crop_top: float | None = None  # center_crop: square starts at this fraction of the spare rows (None = 0.5)
    masks: str = "center"  # "center" | "rect" | "irregular" | "folder"
    mask_dir: str | None = None  # folder of mask PNGs (white = hole) when masks == "folder"
    hole_size: int | None = None  # centre hole side in pixels; None = 120/256 of the image size
    hole_ratio: tuple[float, float] = (0.1, 0.6)  # requested range for random masks
    train_range: tuple[int, int] | None = None  # [start, stop) slice of the sorted file list
    eval_range: tuple[int, int] | None = None
    flip: bool = True  # random horizontal flip when training
    # Framing augmentation when training (center_crop only; data.framed_crop): the crop moves by up to
    # this fraction of its side in y and x, zooms in/out by up to this fraction, colours jitter by up to
    # this fraction (brightness, contrast, saturation). 0 = off (the crop of prepare_image).
    augment_translate: float = 0.0
    augment_scale: float = 0.0
    augment_colour: float = 0.0
    copy_block: int = 4  # layout "copytask": side of one colour block in pixels (divides the 8-px cell)
    copy_kind: str = "periodic"  # layout "copytask": "periodic" | "twin" | "lattice" (csa_lib.copytask.KINDS)
    copy_periods: tuple[int, ...] | None = None  # layout "copytask": periods in px (None = copytask.DEFAULT_PERIODS)
    copy_hole_cells: tuple[int, ...] | None = None  # layout "copytask": hole sides in 8-px cells (None = (2, 3))
    copy_ring: int = 8  # layout "copytask", kind "twin": px of repeated context around the hole and its twin
    num_workers: int = 0
    skip_bad_images: bool = True  # training: skip an unreadable image with a warning (False = stop with an error)
    eval_seed: int = 1234  # fixed evaluation masks come from this seed

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One ``ValueError`` line naming the first field no run can use (see the module docstring)."""
        check_choice("data.layout", self.layout, LAYOUTS)
        check_choice("data.resize", self.resize, RESIZES)
        check_choice("data.masks", self.masks, MASK_KINDS)
        check_choice("data.copy_kind", self.copy_kind, COPY_KINDS)
        check_int("data.copy_ring", self.copy_ring)
        check_int("data.image_size", self.image_size)
        check_int("data.hole_size", self.hole_size, optional=True)
        check_int("data.num_workers", self.num_workers, minimum=0)


@dataclass
class ModelConfig:
    """Generator and discriminator sizes; paper defaults reproduce the official layer sizes."""

    image_size: int = 256
    base_channels: int = 64  # 64 in the paper; 512 = 8 * base at the CSA layer
    csa_semantics: str = "paper"  # "paper" (cosine, guarded) | "official" (exact official forward)
    csa_backward: str = "autograd"  # "autograd" (true gradient) | "official" (custom rule)
    attention: str = "csa"  # "csa" | "identity" | "contextual" | "shift" (ablations)
    contextual_ksize: int = 3  # patch size of attention="contextual" (1 = single cells: active on small grids)
    # A small full-resolution residual head after the refinement net that sees the mask and the known pixels
    # (networks.BorderHead; not in the paper: issue 25's first-pixel error). Its last conv starts at zero, so
    # switching it on leaves a trained model's output unchanged until it is trained. False = the paper.
    border_head: bool = False
    border_head_layers: int = 3  # 3x3 convs in the border head (window 2 * layers + 1 px); >= 2

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One ``ValueError`` line naming the first field that cannot build a network."""
        check_image_size("model.image_size", self.image_size)
        # 0 failed inside a convolution, 100,000 tried to allocate terabytes
        check_int("model.base_channels", self.base_channels, maximum=MAX_BASE_CHANNELS,
                  what=f"an integer in [1, {MAX_BASE_CHANNELS}] (the paper: 64)")
        check_choice("model.csa_semantics", self.csa_semantics, CSA_SEMANTICS)
        check_choice("model.csa_backward", self.csa_backward, CSA_BACKWARDS)
        check_choice("model.attention", self.attention, ATTENTIONS)
        check_int("model.contextual_ksize", self.contextual_ksize)
        if not isinstance(self.border_head, bool):
            raise ValueError(f"model.border_head must be true or false, got {self.border_head!r}")
        check_int("model.border_head_layers", self.border_head_layers, minimum=2, maximum=16)


@dataclass
class LossConfig:
    """Loss weights (paper: lambda_r = 1, lambda_c = 0.01, lambda_d = 0.002) and the VGG source."""

    mode: str = "paper"  # "paper": all terms live | "official": detached consistency/feature-D terms
    lambda_r: float = 1.0
    lambda_c: float = 0.01
    lambda_d: float = 0.002
    vgg_weights: str = "auto"  # "torchvision" | "none" | "auto" | "PATH[:caffe|:torchvision]"
    # "paper_sum" (the paper's equation) | "hole_mean" | "hole_mean_scaled" (scale-free, in neither the
    # paper nor the official code) | "official_mean" (the official code; forced by mode="official").
    # Formulas: csa_lib.losses.consistency_loss. The default was chosen by a short run per variant
    # (benchmarks/RESULTS.md, "Consistency-loss variants").
    consistency: str = "hole_mean_scaled"
    # Weight of a hole pixel in the L1 terms relative to a known pixel. 1 = the paper's whole-image L1;
    # 6 = Liu et al. 2018 (partial convolutions), valid 1 + hole 6. Formula: csa_lib.losses.l1_loss.
    l1_hole_weight: float = 1.0
    # Weight of the hole pixels within l1_border_px pixels of the hole's edge, on top of l1_hole_weight
    # (not in the paper; issue 25's first-pixel error). 1 = off. Formula: csa_lib.losses.l1_loss.
    l1_border_weight: float = 1.0
    l1_border_px: int = 2
    # Weight of the border total-variation term (losses.border_tv_loss: smoothness of the composite across
    # the hole's edge, Liu et al. 2018 use 0.1). 0 = off, as in the paper.
    tv_weight: float = 0.0
    # "vgg" (the paper): the CSA layer's output and the decoder feature at the hole are pulled towards VGG
    # relu4_3 of the ground truth. "self" (not in the paper; the copy task's experiment): the CSA layer's
    # *input* at the hole is pulled towards the same network's input feature on the ground truth (detached),
    # so that the search compares like with like (benchmarks/RESULTS.md, "The copy task").
    consistency_target: str = "vgg"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One ``ValueError`` line naming an unknown loss mode or consistency variant."""
        check_choice("loss.mode", self.mode, LOSS_MODES)
        check_choice("loss.consistency", self.consistency, CONSISTENCY_VARIANTS)
        check_choice("loss.consistency_target", self.consistency_target, CONSISTENCY_TARGETS)
        check_int("loss.l1_border_px", self.l1_border_px)
        for name in ("l1_hole_weight", "l1_border_weight", "tv_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"loss.{name} must be a number >= 0, got {value!r}")


@dataclass
class TrainConfig:
    """Optimisation, schedule, logging and checkpoints."""

    batch_size: int = 1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    steps: int = 1000  # total optimisation steps
    decay_start: int | None = None  # step where linear decay to 0 begins; None = constant
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "auto"  # "auto" (bf16 on CUDA and on CPUs with native bf16) | "bf16" | "off" (fp32)
    log_every: int = 10
    sample_every: int = 100
    ckpt_every: int = 100
    keep_every: int | None = None  # also keep checkpoints/step_XXXXXXX.pt at multiples of this (snapshots)
    out_dir: str = "runs/default"
    time_budget_s: float | None = None  # stop early (and checkpoint) after this many seconds
    grad_check: bool = True  # stop on a NaN/Inf gradient norm as well as on a NaN/Inf loss
    tensorboard: bool = True  # also log to <out_dir>/tb when the tensorboard package is installed
    num_samples: int = 4  # images in the periodic sample grids (fixed evaluation samples)
    # Start the generator from these weights (a shipped weights/*.pt or a training checkpoint) instead of
    # the random initialisation; the discriminators and optimisers start fresh. Ignored on --resume.
    init_from: str | None = None
    # Generator parameters to keep fixed: names starting with any of these prefixes (e.g. "coarse_net.")
    # get no gradient and are not updated. Empty = train everything (the paper). The copy task's
    # experiment: freeze the features CSA searches with, whose drift its argmax cannot resist.
    # ("attention_input" names everything that computes the attention layer's input:
    # csa_lib.networks.ATTENTION_INPUT_PREFIXES.) With attention_warmup_steps > 0 the freeze starts at the switch.
    freeze: tuple[str, ...] = ()
    # The attention curriculum (not in the paper; the copy task's round 4, benchmarks/RESULTS.md): for the
    # first N steps contextual attention with 1x1 patches stands in the attention layer's place (a softmax:
    # its choice of source gets a gradient, so the features learn to find the source); at step N the model's
    # own attention (model.attention, CSA) takes over, train.freeze takes effect and the generator's Adam
    # state starts afresh. 0 = off: the model's attention from the first step (the paper).
    attention_warmup_steps: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One ``ValueError`` line naming the first setting that cannot work: without these checks
        ``batch_size=0`` failed deep inside the data loader and ``steps=-1`` "finished" and reported a
        checkpoint that was never written."""
        for name in ("batch_size", "steps", "log_every", "sample_every", "ckpt_every"):
            check_int(f"train.{name}", getattr(self, name))
        check_int("train.keep_every", self.keep_every, optional=True)
        check_int("train.num_samples", self.num_samples)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"train.lr must be a positive number, got {self.lr!r}")
        check_int("train.decay_start", self.decay_start, minimum=0, optional=True, what="None or a step >= 0")
        if self.time_budget_s is not None and not self.time_budget_s >= 0:
            raise ValueError(f"train.time_budget_s must be None or >= 0 seconds, got {self.time_budget_s!r}")
        check_choice("train.amp", self.amp, AMP_MODES)
        if isinstance(self.freeze, str) or not all(isinstance(f, str) and f for f in self.freeze):
            raise ValueError(f"train.freeze must be a tuple of parameter-name prefixes, got {self.freeze!r}")
        check_int("train.attention_warmup_steps", self.attention_warmup_steps, minimum=0, what="a step count >= 0")


@dataclass
class Preset:
    """A named, complete configuration."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """Every section's :meth:`validate` (fields changed by direct assignment are checked here)."""
        for section in (self.data, self.model, self.loss, self.train):
            section.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preset":
        loss = dict(d.get("loss", {}))
        if "consistency_norm" in loss:  # checkpoints written before the variants had names
            loss["consistency"] = {"target": "hole_mean_scaled"}.get(loss.pop("consistency_norm"), "hole_mean")
        d = {**d, "loss": loss}
        return cls(
            name=d["name"],
            data=_build(DataConfig, d.get("data", {})),
            model=_build(ModelConfig, d.get("model", {})),
            loss=_build(LossConfig, d.get("loss", {})),
            train=_build(TrainConfig, d.get("train", {})),
        )


def _build(cls, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
    # JSON turns tuples into lists; give tuples back where the default is a tuple.
    out = {}
    for f in fields(cls):
        if f.name in d:
            v = d[f.name]
            out[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**out)


def _smoke() -> Preset:
    return Preset(
        name="smoke",
        data=DataConfig(image_size=32, masks="rect", hole_ratio=(0.1, 0.4)),
        model=ModelConfig(image_size=32, base_channels=8),
        loss=LossConfig(vgg_weights="none"),
        train=TrainConfig(batch_size=2, steps=4, decay_start=2, log_every=1, sample_every=2,
                          ckpt_every=2, out_dir="runs/smoke"),
    )


def _demo() -> Preset:
    return Preset(
        name="demo",
        data=DataConfig(image_size=64, masks="irregular", hole_ratio=(0.1, 0.4)),
        model=ModelConfig(image_size=64, base_channels=16),
        loss=LossConfig(vgg_weights="auto"),
        # Measured on a 2-core CPU: ~0.8 s per step on one free core, so ~3 min of training; the time
        # budget caps a slow machine at 7 min (a second `csa demo` then resumes the run).
        train=TrainConfig(batch_size=4, steps=240, decay_start=120, log_every=10, sample_every=40,
                          ckpt_every=40, out_dir="runs/demo", time_budget_s=420.0),
    )


def _celeba64() -> Preset:
    root = SHARED_ROOT / "data"
    return Preset(
        name="celeba64",
        data=DataConfig(root=str(root / "celeba_10k"), layout="folder", image_size=64,
                        resize="center_crop", crop_top=0.75,  # faces sit below the centre (data/README.md)
                        masks="folder", mask_dir=str(root / "nvidia_masks_256"),
                        train_range=(0, 9000), eval_range=(9000, 10000), num_workers=4,
                        # framing augmentation: what the shipped model version 2 was fine-tuned with; it
                        # then beat biharmonic at every framing in this range (benchmarks/RESULTS.md,
                        # "Framing augmentation"; version 1, trained without, lost 0.4-0.8 dB at 6 % shifts)
                        augment_translate=0.08, augment_scale=0.15, augment_colour=0.1),
        model=ModelConfig(image_size=64, base_channels=64),
        loss=LossConfig(vgg_weights=str(SHARED_ROOT / "weights" / "vgg16_caffe_rgb_conv1-4_fp16.pth")
                        + ":caffe"),
        train=TrainConfig(batch_size=32, steps=20000, decay_start=10000, log_every=50,
                          sample_every=1000, ckpt_every=1000, out_dir="runs/celeba64"),
    )


def _copytask() -> Preset:
    # The copy task (csa_lib.copytask, kind "twin"): a 128-px mosaic of random 8-px colour blocks in which a
    # 2x2-cell block and its 16-px ring appear twice; the hole hides one twin. A network without attention
    # stays at the mean colour here; attention must find the other twin (benchmarks/RESULTS.md, "The copy
    # task", rounds 3-4). L1 only (hole pixels x6): no VGG, no discriminators, so a step is cheap.
    # CSA learns it with the attention curriculum: 750 steps of contextual 1x1 attention, then CSA with the
    # features it searches with frozen (CSA from the first step loses the twin: its argmax has no gradient).
    # Width 12: the pair of fp16 weights fits the repository (base 16 measured the same way in round 4).
    return Preset(
        name="copytask",
        data=DataConfig(layout="copytask", image_size=128, flip=False, eval_seed=777, copy_block=8,
                        copy_kind="twin", copy_hole_cells=(2,), copy_ring=16),
        model=ModelConfig(image_size=128, base_channels=12),
        loss=LossConfig(lambda_c=0.0, lambda_d=0.0, vgg_weights="none", l1_hole_weight=6.0),
        train=TrainConfig(batch_size=16, lr=5e-4, steps=1500, log_every=50, sample_every=250, ckpt_every=250,
                          out_dir="runs/copytask", attention_warmup_steps=750, freeze=("attention_input",)),
    )


def _copytask_identity() -> Preset:
    # The copy task's ablation twin: the same network, data and budget with the identity in the attention
    # layer's place (nothing to warm up, nothing frozen).
    p = _copytask()
    p.name = "copytask_identity"
    p.model.attention = "identity"
    p.train = replace(p.train, out_dir="runs/copytask_identity", attention_warmup_steps=0, freeze=())
    return p


def _copytask_periodic() -> Preset:
    # The first copy task (rounds 1-2): 64-px periodic textures, one hidden rectangle whose content is
    # visible one period away. Here a U-Net without attention learns much of the copy by convolution, so
    # CSA's lead over the identity is small (about 1-2 dB); notebook 10 starts with it because it trains in
    # a few minutes. Sizes and schedule chosen by measurement on the 2-core CPU.
    return Preset(
        name="copytask_periodic",
        data=DataConfig(layout="copytask", image_size=64, flip=False, eval_seed=777, copy_block=8),
        model=ModelConfig(image_size=64, base_channels=16),
        loss=LossConfig(lambda_c=0.0, lambda_d=0.0, vgg_weights="none", l1_hole_weight=6.0),
        train=TrainConfig(batch_size=16, lr=5e-4, steps=3000, decay_start=2000, log_every=50,
                          sample_every=500, ckpt_every=250, out_dir="runs/copytask_periodic"),
    )


def _paper256() -> Preset:
    # Official schedule: 20 epochs constant + 100 epochs linear decay at batch size 1. Expressed in steps
    # for a batch of 16 on a CelebA-sized training set (~160k images): 1 epoch ~ 10k steps.
    return Preset(
        name="paper256",
        data=DataConfig(image_size=256, resize="square", masks="center",
                        hole_size=OFFICIAL_CENTER_HOLE),
        model=ModelConfig(image_size=256, base_channels=64),
        loss=LossConfig(vgg_weights="auto"),
        train=TrainConfig(batch_size=16, steps=1_200_000, decay_start=200_000, log_every=100,
                          sample_every=2000, ckpt_every=2000, out_dir="runs/paper256"),
    )


PRESETS = {"smoke": _smoke, "demo": _demo, "celeba64": _celeba64, "copytask": _copytask,
           "copytask_identity": _copytask_identity, "copytask_periodic": _copytask_periodic, "paper256": _paper256}


def get_preset(name: str, **overrides: Any) -> Preset:
    """A fresh copy of preset ``name``; ``overrides`` use dotted keys, e.g. ``{"train.steps": 10}``.

    >>> get_preset("smoke", **{"train.steps": 3}).train.steps
    3
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]()
    for key, value in overrides.items():
        apply_override(preset, key, value)
    return preset


def in_jupyter() -> bool:
    """True inside a Jupyter (IPython) kernel. There DataLoader workers are avoided: forking a process that
    runs the kernel's threads (ZMQ, heartbeat) can hang, and /dev/shm in a container is often too small."""
    return "ipykernel" in sys.modules


def missing_files(preset: Preset) -> list[str]:
    """What ``preset`` reads from disk that is not there: its image folder, its mask folder (masks="folder")
    and its VGG16 weights file (a path, not "auto" / "none" / "torchvision"). [] = ready to train."""
    need = []
    if preset.data.root is not None:
        need.append(("image folder", preset.data.root))
    if preset.data.masks == "folder" and preset.data.mask_dir is not None:
        need.append(("mask folder", preset.data.mask_dir))
    vgg = preset.loss.vgg_weights
    if vgg not in ("auto", "none", "torchvision"):
        head, sep, tail = vgg.rpartition(":")
        need.append(("VGG16 weights", head if sep and tail in ("caffe", "torchvision") else vgg))
    return [f"{what} {path}" for what, path in need if not Path(path).expanduser().exists()]


def notebook_preset(name: str = "celeba64", fallback: str = "demo", **overrides: Any) -> Preset:
    """The preset a notebook's full profile trains: ``name`` when every file it reads exists (for celeba64:
    the CelebA folder, the NVIDIA masks and the VGG16 file; see :func:`missing_files`), else ``fallback``,
    with one printed line naming what is missing. Inside a Jupyter kernel ``data.num_workers`` is 0
    (:func:`in_jupyter`). ``overrides`` (dotted keys, as in :func:`get_preset`) apply to the chosen preset.
    """
    missing = missing_files(get_preset(name))
    if missing:
        print(f"preset {name!r} needs {'; '.join(missing)}: using {fallback!r} instead")
        name = fallback
    preset = get_preset(name, **overrides)
    if in_jupyter():
        preset.data.num_workers = 0
    return preset


def apply_override(preset: Preset, key: str, value: Any) -> None:
    """Set ``section.field`` (e.g. ``"train.steps"``) on ``preset`` in place, with a clear error: an unknown
    field, or a value the section's ``validate()`` refuses (the preset is then left unchanged)."""
    section, _, name = key.partition(".")
    target = getattr(preset, section, None)
    if not is_dataclass(target) or not name or not hasattr(target, name):
        raise ValueError(f"unknown setting {key!r} (expected section.field, e.g. train.steps)")
    old = getattr(target, name)
    setattr(target, name, copy.deepcopy(value))
    try:
        target.validate()  # the section's rules (__post_init__ saw the values the preset was built with)
    except ValueError:
        setattr(target, name, old)  # the preset stays as it was
        raise


#: The notebooks' size profiles, smallest first (``notebook_profile``).
NOTEBOOK_PROFILES = ("smoke", "laptop", "class", "full")


def notebook_profile() -> str:
    """The size profile a notebook runs at: ``"smoke"``, ``"laptop"``, ``"class"`` or ``"full"``.

    - ``smoke``: tiny sizes, seconds; the numbers mean nothing, every line runs (tests, CI).
    - ``laptop``: the notebooks that train do so for a few minutes on a laptop CPU (bf16 where the CPU
      has it natively, ``train.amp="auto"``); losses fall visibly and the pictures start to mean something.
    - ``class``: a class period on a 2-core laptop CPU. Notebook 06 trains the CSA model on real faces
      for about 10-15 minutes (02: the coarse net, a few minutes) when a face folder is there
      (``$CSA_DATA_ROOT``, else ``SHARED_ROOT/data/celeba_10k``), scoring it at fixed steps on held-out
      faces against biharmonic inpainting and the shipped model; without faces they say what to
      download and train on the embedded photos. Every other notebook runs as in ``laptop``.
    - ``full``: the sizes of a GPU run.

    ``CSA_SMOKE=1`` forces ``smoke`` (tests and CI set it). Otherwise ``CSA_PROFILE`` picks one; unset,
    the profile is ``full`` on a CUDA machine and ``smoke`` on a CPU (a CPU run stays short unless asked).
    """
    if smoke_mode():
        return "smoke"
    name = os.environ.get("CSA_PROFILE", "").strip().lower()
    if not name:
        import torch  # lazily: the rest of this module does not need torch

        return "full" if torch.cuda.is_available() else "smoke"
    if name not in NOTEBOOK_PROFILES:
        raise ValueError(f"CSA_PROFILE={name!r} is not a profile; choose one of {', '.join(NOTEBOOK_PROFILES)}")
    return name
