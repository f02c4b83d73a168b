"""Training: the two-stage generator against an image and a feature discriminator.

One optimisation step (the official order, docs/method.md, "Training")::

    out   = G(image, mask)                          # coarse, refined, composite, CSA features
    D, F  <- Adam on  L_D(out.detach(), image)      # both discriminators, RaLSGAN
    G     <- Adam on  L_G(out, image, mask, D, F)   # L1 + consistency + adversarial, D and F frozen
    every LR <- LambdaLR: constant, then linear decay to 0 from ``decay_start`` to ``steps``

What the trainer adds around that step:

- batches of several images, each with its own mask; bf16 autocast on CUDA and on CPUs with native bf16
  (``train.amp``: ``auto`` | ``bf16`` | ``off``);
- a data order that is a pure function of ``(seed, images seen)``: epoch ``e`` visits the images in the
  permutation drawn from a generator seeded by ``(seed, e)``, and sample ``k`` (mask, flip) draws its
  randomness from a generator seeded by ``(seed, k)``. A checkpoint therefore only needs a counter, and a
  resumed run sees exactly the batches that an uninterrupted run would have seen;
- checkpoints written atomically (temporary file, fsync, ``os.replace``) with every state needed for an
  exact resume: models, optimisers, schedulers, RNG states, step, preset, the partial sums of the next log
  line; the previous good checkpoint is kept as ``prev.pt``. A resume repairs what a ``kill -9`` can
  leave (an unrenamed ``next.pt``, orphan temporary files, a torn ``last.pt`` or last log line). The
  file handling itself is :mod:`csa_lib.runfiles` (its names are also importable from here);
- a lock on the run folder (:class:`~csa_lib.runfiles.RunLock`) while training: a second writer is refused;
- a stop with :class:`NonFiniteLossError` on the first NaN/Inf loss (or gradient), before anything is
  written, so the last good checkpoint stays intact;
- logs: a tqdm bar, ``log.jsonl`` (one JSON object per logged step), TensorBoard when installed, and sample
  grids (input | coarse | refined | composite | ground truth) under ``samples/``;
- under ``torchrun`` (:mod:`csa_lib.distributed`): G, D and F in DistributedDataParallel, each rank its
  slice of the global batch, losses over the global batch, logs averaged over the ranks, files, the run
  lock and the repairs on resume by rank 0 only.

Determinism. On the CPU a killed and resumed run ends bit-identical to an uninterrupted one (tested). On
CUDA what resumes exactly is the state: the data order, the masks and flips, the RNG states, the step
and the schedule; the arithmetic does not repeat bit for bit, even between two fresh runs: the training
steps run with cuDNN autotuning (``cudnn.benchmark``: the algorithm can differ between processes) and
TF32 matmuls (:func:`cuda_speed_flags`), and atomic-add kernels (``scatter_add`` in the CSA backward,
index backward) sum in a varying order. So a resumed CUDA run follows the uninterrupted one closely, not
exactly. The speed flags are set only around the trainer's own steps and restored after each one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .config import AMP_MODES, MAX_BASE_CHANNELS, Preset, apply_override, check_choice, in_jupyter  # noqa: F401
from .data import build_dataset
from .devices import resolve_device
from .errors import first_line
from .losses import InpaintingLoss, needs_vgg
from .networks import (ATTENTION_INPUT_PREFIXES, BORDER_HEAD_PREFIX, SWAPPABLE_ATTENTIONS, build_models,
                       swap_attention)
# Run-folder files (atomic saves, checkpoint rotation, the lock, the log) live in runfiles; the names are
# also public here, where notebooks and older code import them from.
from .runfiles import (CKPT_DIR, LAST, LOCK_FILE, NEXT, PREV, TEMP_NAME, RunInUseError, RunLock,  # noqa: F401
                       append_line, atomic_save, checkpoint_candidates, finish_interrupted_save, has_checkpoint,
                       keep_snapshot, kill_point, load_checkpoint, read_log, remove_orphan_temps, run_dir_of,
                       save_rotated, trim_log)
from .vgg import VGG16Features

#: Shown on the progress bar (the rest goes to log.jsonl / TensorBoard).
BAR_KEYS = {"G/l1_refined": "l1", "G/total": "G", "D/total": "D", "images_per_s": "img/s"}


class NonFiniteLossError(RuntimeError):
    """A loss (or gradient) became NaN/Inf; ``step`` and ``term`` say where. Nothing was saved."""

    def __init__(self, step: int, term: str, value: float, checkpoint: Path | None = None):
        self.step, self.term, self.value = step, term, value
        where = f"; last good checkpoint untouched: {checkpoint}" if checkpoint else ""
        super().__init__(f"non-finite {term} = {value} at step {step}; training stopped{where}")


# --------------------------------------------------------------------------------------------------
# Settings, speed flags, seeds and the learning-rate schedule
# --------------------------------------------------------------------------------------------------
def check_train_config(preset: Preset) -> None:
    """Refuse settings that cannot work, with one line naming the field (``ValueError``).

    Every section's own rules (``Preset.validate``: a field assigned directly, not through
    ``apply_override``, is checked here too), then :func:`check_model_config`'s rule across sections.
    """
    preset.validate()
    check_model_config(preset)
    t = preset.train
    if t.attention_warmup_steps >= t.steps:
        raise ValueError(f"train.attention_warmup_steps={t.attention_warmup_steps} must be below train.steps={t.steps}: "
                         "the model's own attention would never be trained (set both)")
    if t.attention_warmup_steps and preset.model.attention not in SWAPPABLE_ATTENTIONS:
        raise ValueError(f"train.attention_warmup_steps needs a parameter-free model.attention (csa, identity or "
                         f"contextual) to swap in at the switch, got {preset.model.attention!r}")


def check_model_config(preset: Preset, data: bool = True, where: str = "") -> None:
    """Refuse model settings that cannot build a network, with one line naming the field (``ValueError``).

    ``ModelConfig.validate`` (``model.base_channels`` an integer in [1, :data:`MAX_BASE_CHANNELS`],
    ``model.image_size`` a power of two >= 16, ...) and, with ``data``, ``data.image_size`` equal to
    ``model.image_size`` (the generator only takes images of its own size). ``where`` prefixes the
    message (a checkpoint's name).
    """
    try:
        preset.model.validate()
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    size = preset.model.image_size
    if data and preset.data.image_size != size:
        raise ValueError(f"{where}data.image_size={preset.data.image_size!r} differs from model.image_size={size}: "
                         f"the generator takes {size}-px images only; set both to the same power of two")


@contextmanager
def cuda_speed_flags(device: torch.device):
    """On CUDA, cuDNN autotuning (``cudnn.benchmark``) and TF32 fp32 matmuls (precision "high") for the
    block, the previous settings restored after it; elsewhere nothing. Scoped rather than set once: both
    are process-wide switches, and fp32 work after training in the same process (evaluation, a notebook's
    comparisons, tests) must not inherit them."""
    if torch.device(device).type != "cuda":
        yield
        return
    prev = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN time and pick its kernels
    torch.set_float32_matmul_precision("high")  # fp32 matmuls outside autocast may use TF32
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = prev[0]
        torch.set_float32_matmul_precision(prev[1])


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (x86 ``avx512_bf16`` or ``amx_bf16``).

    Only then is bf16 autocast the fast path on the CPU (measured on an AVX512-BF16 EPYC: 1.5-1.7x the
    fp32 images/s, benchmarks/RESULTS.md); elsewhere oneDNN emulates bf16 and it is slower than fp32.
    ``CSA_CPU_BF16=0`` / ``=1`` overrides the detection.
    """
    env = os.environ.get("CSA_CPU_BF16")
    if env is not None and env != "":
        return env.lower() not in ("0", "false", "no", "off")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # not Linux: no cheap way to know, keep fp32
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``.

    ``"auto"``: bf16 on CUDA, and on a CPU with native bf16 (:func:`cpu_has_native_bf16`), else fp32;
    ``"bf16"``: always bf16; ``"off"`` (or ``"fp32"``): always full fp32. In every case the CSA layer,
    the losses' reductions and the optimiser stay in fp32.
    """
    check_choice("train.amp", amp, AMP_MODES)
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto" and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())):
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``derive_seed(seed, epoch)``.

    Plain ``seed + epoch`` would make (seed 0, epoch 1) and (seed 1, epoch 0) identical; SeedSequence
    hashes the tuple instead.
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def lr_factor(step: int, steps: int, decay_start: int | None) -> float:
    """The official schedule: 1 until ``decay_start``, then linear to 0 at ``steps``.

    >>> [lr_factor(s, 10, 6) for s in (0, 5, 6, 8, 10)]
    [1.0, 1.0, 1.0, 0.5, 0.0]
    """
    if decay_start is None or step < decay_start or steps <= decay_start:
        return 1.0
    return max(0.0, (steps - step) / (steps - decay_start))


def make_scheduler(opt: torch.optim.Optimizer, steps: int, decay_start: int | None, start: int = 0):
    """The official schedule (:func:`lr_factor`) as a ``LambdaLR`` on ``opt``, positioned at step ``start``
    (> 0 needs ``"initial_lr"`` in the optimiser's parameter groups: the base rate the factor scales)."""
    # A closure (a plain function) keeps the LambdaLR state free of the schedule's numbers, so a run
    # resumed with more steps follows the new preset instead of the checkpoint's.
    def factor(step: int) -> float:
        return lr_factor(step, steps, decay_start)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor, last_epoch=start - 1)


# --------------------------------------------------------------------------------------------------
# Data order as a function of (seed, images seen)
# --------------------------------------------------------------------------------------------------
class StepBatchSampler:
    """Yields, for each step from ``start_step``, a batch of ``(index, sample_seed)`` pairs.

    Sample ``k`` (counting images since the start of training) is image ``perm_e[k % N]`` with
    ``e = k // N`` and ``perm_e = randperm(N, seed=(seed, e))``; its own randomness is seeded by
    ``(seed, k)``. Nothing here has state beyond ``start_step``.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, steps: int):
        if n <= 0:
            raise ValueError("the training dataset is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.steps = start_step, steps

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=g)

    def batch(self, step: int) -> list[tuple[int, int]]:
        out, perm, perm_epoch = [], None, -1
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch = k // self.n
            if epoch != perm_epoch:
                perm, perm_epoch = self.permutation(epoch), epoch
            out.append((int(perm[k % self.n]), derive_seed(self.seed, 1_000_003, k)))
        return out

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)


class SeededSamples(Dataset):
    """Wraps a dataset so that ``ds[(i, s)]`` is ``dataset[i]`` drawn with all global RNGs seeded by ``s``.

    The datasets draw masks and flips from the global generators; forking them here makes every sample a
    function of its seed (also inside DataLoader workers) and leaves the trainer's own RNG stream alone.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            seed_everything(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


# --------------------------------------------------------------------------------------------------
# RNG state (only tensors and primitive containers: loadable with weights_only=True), loading weights
# --------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors/primitives."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


def init_generator(generator: nn.Module, path: str | Path) -> None:
    """Load generator weights into ``generator`` from a shipped weights file (a state dict, e.g.
    ``weights/csa_celeba64.pt``, fp16 cast to the model's dtype) or a training checkpoint (its
    ``"generator"`` entry). Errors name the file (``FileNotFoundError`` / ``ValueError``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise ValueError(f"train.init_from: cannot read {path}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and "generator" in state:
        state = state["generator"]
    try:
        state = {k: v.float() for k, v in state.items()}
        # Weights saved without the optional border head (model.border_head) start it at its identity
        # initialisation; every other missing or unexpected name is an error.
        own = generator.state_dict()
        for k in own:
            if k.startswith(BORDER_HEAD_PREFIX) and k not in state:
                state[k] = own[k]
        generator.load_state_dict(state)
    except (RuntimeError, AttributeError) as e:
        raise ValueError(f"train.init_from: {path} does not fit this model: {str(e).splitlines()[0]}") from None


#: ``train.freeze`` names that stand for several prefixes.
FREEZE_ALIASES = {"attention_input": ATTENTION_INPUT_PREFIXES}


def frozen_parameters(module: nn.Module, prefixes) -> list[nn.Parameter]:
    """The parameters of ``module`` whose names start with one of ``prefixes`` (``train.freeze``; an alias of
    :data:`FREEZE_ALIASES` such as ``"attention_input"`` is expanded). A prefix that matches no parameter is
    one ``ValueError`` line naming it."""
    hits: list[nn.Parameter] = []
    for prefix in prefixes:
        for p in FREEZE_ALIASES.get(prefix, (prefix,)):
            found = [q for name, q in module.named_parameters() if name.startswith(p)]
            if not found:
                raise ValueError(f"train.freeze: no generator parameter starts with {p!r}")
            hits += found
    return hits


def freeze_parameters(module: nn.Module, prefixes) -> int:
    """Set ``requires_grad=False`` on :func:`frozen_parameters` (``train.freeze``); Adam then never updates
    them (their gradient stays None). Returns the number of frozen tensors."""
    hits = frozen_parameters(module, prefixes)
    for p in hits:
        p.requires_grad_(False)
    return len(hits)


def preset_of(ckpt: dict) -> Preset:
    """The :class:`Preset` a loaded checkpoint was trained with; a setting its sections refuse (e.g. a
    hand-edited ``model.base_channels=100000``) is one ``ValueError`` line naming the checkpoint."""
    try:
        return Preset.from_dict(ckpt["preset"])
    except ValueError as e:
        raise ValueError(f"checkpoint {ckpt['path']}: {e}") from None


def load_generator(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """``(generator in eval mode on device, Preset)`` from a checkpoint file or run folder."""
    ckpt = load_checkpoint(checkpoint)
    preset = preset_of(ckpt)
    generator = build_models(preset.model)[0]
    generator.load_state_dict(ckpt["generator"])
    return generator.to(device).eval(), preset


# --------------------------------------------------------------------------------------------------
# Small helpers for the step
# --------------------------------------------------------------------------------------------------
def detach_output(out):
    """A copy of an ``InpaintOutput`` whose tensors are detached (the discriminator step must not
    backpropagate into the generator)."""
    changes = {f.name: getattr(out, f.name).detach() for f in dataclasses.fields(out)
               if isinstance(getattr(out, f.name), torch.Tensor)}
    return dataclasses.replace(out, **changes)


def set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


def grad_norm(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def masked_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the network sees, for pictures: known pixels, holes painted white. ``[B,3,H,W]``."""
    return image * (1 - mask) + mask


def sample_grid(image, mask, out, path: Path) -> Path:
    """PNG with one row per image: input | coarse | refined | composite | ground truth."""
    from torchvision.utils import save_image

    cols = [masked_input(image, mask), out.coarse, out.refined, out.composite, image]
    rows = torch.stack([c.detach().float().cpu().clamp(-1, 1) for c in cols], dim=1)  # [B,5,3,H,W]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(rows.flatten(0, 1) * 0.5 + 0.5, path, nrow=len(cols), padding=2, pad_value=1.0)
    return path


def _new_window(saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The running sums of the next log line: ``{"t", "steps", "images", "sums"}``."""
    saved = saved or {}
    return {"t": time.perf_counter(), "steps": int(saved.get("steps", 0)), "images": int(saved.get("images", 0)),
            "sums": {k: float(v) for k, v in saved.get("sums", {}).items()}}


def _check_resume_overrides(stored: Preset, overrides: dict[str, Any]) -> None:
    """Refuse overrides that a resumed run cannot honour, with one line naming the setting.

    The model's shape is in the checkpoint's tensors, and the data order is a function of the seed
    (and the batch size): changing them on resume would fail deep in ``load_state_dict`` or silently
    train on a different order. Start a new run (``--out``) instead.
    """
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        old = getattr(getattr(stored, section, None), name, value)
        if old == value or (isinstance(old, tuple) and tuple(value or ()) == old):
            continue
        if section == "model":
            raise ValueError(f"{key}={value!r}: the model cannot change on resume (the checkpoint has "
                             f"{key}={old!r}); start a new run with --out")
        if key in ("train.seed", "train.batch_size"):
            raise ValueError(f"{key}={value!r}: cannot change on resume (the checkpoint has {old!r}): the data "
                             "order depends on it; start a new run with --out")
        if key == "data.image_size":
            raise ValueError(f"{key}={value!r}: cannot change on resume (the checkpoint has {old!r}): the model "
                             "was built for that size; start a new run with --out")
        if key == "data.root" and not _same_folder(old, value):
            warnings.warn(f"resuming on other data: {key}={value!r} (the checkpoint trained on {old!r}); the "
                          "run goes on with the new images", stacklevel=3)


def _same_folder(a: str | None, b: str | None) -> bool:
    """Whether two ``data.root`` values name one folder (``data/x`` and ``./data/x/``)."""
    if a is None or b is None:
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _check_resume_steps(preset: Preset, step: int) -> None:
    """``ValueError`` when ``train.steps`` is below the checkpoint's ``step`` (nothing left to train)."""
    if preset.train.steps < step:
        raise ValueError(f"train.steps={preset.train.steps} is below the checkpoint's step {step}: a resume "
                         f"cannot go back; give --steps {step} or more (or leave it out)")


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------
class Trainer:
    """Trains ``build_models(preset.model)`` with ``InpaintingLoss(preset.loss, vgg)``.

    >>> t = Trainer(get_preset("smoke"))      # doctest: +SKIP
    >>> t.fit()                                # writes runs/smoke/{log.jsonl,samples/,checkpoints/}

    ``vgg`` may be passed in to share one frozen network between trainers (tests, notebooks).
    """

    def __init__(self, preset: Preset, vgg: nn.Module | None = None, progress: bool = True):
        check_train_config(preset)
        self.preset, self.progress = preset, progress
        cfg = preset.train
        self.device = distributed.rank_device(resolve_device(cfg.device))  # under torchrun: this rank's GPU
        self.world = distributed.world_size()  # ranks sharing the global batch (1 without torchrun)
        distributed.per_rank_batch(cfg.batch_size, self.world)  # an uneven split: one-line error
        self.amp = amp_dtype(cfg.amp, self.device)
        self.out_dir = Path(cfg.out_dir)
        seed_everything(cfg.seed)  # model initialisation is a function of the seed

        self.G, self.D, self.F = (m.to(self.device) for m in build_models(preset.model))
        if cfg.init_from:
            init_generator(self.G, cfg.init_from)
        frozen_parameters(self.G, cfg.freeze)  # a prefix that matches nothing: refused now, not at the switch
        if cfg.attention_warmup_steps and cfg.freeze and self.world > 1:
            raise ValueError("train.attention_warmup_steps with train.freeze cannot run under torchrun: "
                             "DistributedDataParallel fixes the trained parameters when it wraps the model")
        self.step = 0
        self._apply_attention_phase()  # step 0: the warm-up's attention, or the model's own with the freeze
        # Under torchrun the steps go through DistributedDataParallel wrappers (they share the parameters);
        # self.G/D/F stay the plain modules: checkpoints, samples and the frozen-D generator phase use them.
        self.ddp = tuple(distributed.wrap(m, self.device) for m in (self.G, self.D, self.F))
        # "auto" falls back to random weights (with a warning) rather than download
        if vgg is None and needs_vgg(preset.loss):
            vgg = VGG16Features(preset.loss.vgg_weights)
        self.criterion = InpaintingLoss(preset.loss, vgg).to(self.device)

        def adam(module):
            return torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))

        self.opt = {"G": adam(self.G), "D": adam(self.D), "F": adam(self.F)}
        self.sched = {k: make_scheduler(o, cfg.steps, cfg.decay_start) for k, o in self.opt.items()}
        self.train_set = build_dataset(preset.data, "train")
        self.eval_set = build_dataset(preset.data, "eval")
        self.elapsed_s = 0.0  # training time summed over all sessions of this run
        self._writer = None
        self._no_tensorboard = False  # the tensorboard package turned out to be missing (the preset stays as given)
        self._lock: RunLock | None = None  # held from resume() or fit() to the end of fit()
        self._last_ok: bool | None = None  # does checkpoints/last.pt load? (None: not checked yet)
        self._window = _new_window()  # sums for the next log line (saved in checkpoints: exact logs)

    # ---- the attention curriculum ---------------------------------------------------------------------
    def _apply_attention_phase(self) -> str:
        """Set the attention layer and the freeze for ``self.step`` (``train.attention_warmup_steps``):
        before the switch contextual attention with 1x1 patches and nothing frozen; from the switch on the
        model's own attention and ``train.freeze``. Returns the phase, "warmup" or "main"."""
        cfg = self.preset.train
        if cfg.attention_warmup_steps and self.step < cfg.attention_warmup_steps:
            swap_attention(self.G, "contextual", contextual_ksize=1)
            return "warmup"
        if cfg.attention_warmup_steps:
            swap_attention(self.G, self.preset.model.attention)
        freeze_parameters(self.G, cfg.freeze)
        return "main"

    def _switch_attention(self) -> None:
        """The end of the warm-up: the model's attention takes over, the freeze starts, and the generator's
        Adam moments start afresh (the moments of the soft phase belong to another layer)."""
        self._apply_attention_phase()
        self.opt["G"].state.clear()
        if self.progress and distributed.is_main():
            from tqdm import tqdm

            tqdm.write(f"step {self.step}: attention warm-up over; {self.preset.model.attention} from here on, "
                       f"{len(frozen_parameters(self.G, self.preset.train.freeze))} parameter tensors frozen")

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.G.state_dict(), "image_D": self.D.state_dict(),
            "feature_D": self.F.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.opt.items()},
            "schedulers": {k: s.state_dict() for k, s in self.sched.items()},
            "rng": rng_state(),
            # The data order is a function of these numbers only (see StepBatchSampler).
            "sampler": {"seed": self.preset.train.seed, "step": self.step,
                        "batch_size": self.preset.train.batch_size, "dataset_len": len(self.train_set),
                        "world_size": self.world},
            "step": self.step, "elapsed_s": self.elapsed_s,
            "processes": distributed.describe(self.preset.train.batch_size),  # world size, backend, per-rank batch
            # The partial sums of the next log line: a resumed run logs the same averages.
            "log_window": {k: self._window[k] for k in ("steps", "images", "sums")},
            "preset": self.preset.to_dict(),
            "versions": {"torch": str(torch.__version__)},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        s = ckpt["sampler"]
        if s["batch_size"] != self.preset.train.batch_size:
            raise ValueError(f"cannot resume: the checkpoint was trained with train.batch_size={s['batch_size']}, "
                             f"this run asks for {self.preset.train.batch_size}")
        if s["dataset_len"] != len(self.train_set):
            # Images were added or removed: go on, but the order is no longer the uninterrupted run's.
            warnings.warn(f"the training set now has {len(self.train_set)} images, the checkpoint's had "
                          f"{s['dataset_len']}: resuming, but from here on the data order is not exactly the "
                          "one an uninterrupted run would have seen", stacklevel=2)
        if s.get("world_size", 1) != self.world and distributed.is_main():
            warnings.warn(f"resuming a run trained on {s.get('world_size', 1)} process(es) with {self.world}: the "
                          f"global batch ({s['batch_size']}) and the data order stay the same, but the gradients "
                          "are summed in another order, so the run follows an uninterrupted one to float "
                          "tolerance, not bit for bit", stacklevel=2)
        self.G.load_state_dict(ckpt["generator"])
        self.D.load_state_dict(ckpt["image_D"])
        self.F.load_state_dict(ckpt["feature_D"])
        for k, o in self.opt.items():
            o.load_state_dict(ckpt["optimizers"][k])
        for k, sch in self.sched.items():
            sch.load_state_dict(ckpt["schedulers"][k])
        set_rng_state(ckpt["rng"])
        self.step, self.elapsed_s = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        distributed.check_same(self.step, "the step to resume from", self.device)  # same checkpoint everywhere
        self._window = _new_window(ckpt.get("log_window"))
        self._sync_schedule()
        self._apply_attention_phase()
        if Path(ckpt.get("path", "")).name == LAST:
            self._last_ok = True

    def _sync_schedule(self) -> None:
        """Put the learning rate of the current step, under this preset's ``lr``/``steps``/``decay_start``,
        into the optimisers and schedulers (a loaded state carries the checkpoint's: without this, a
        resume with a new ``train.lr`` or ``decay_start`` would run its first step, or all of them, on the
        old values). Unchanged settings leave the loaded state exactly as it is; changed ones rebuild the
        scheduler at the current step (``LambdaLR``'s own ``last_epoch`` argument: the same product
        ``lr * factor`` as LambdaLR's steps, and ``get_last_lr()`` reports it from the first step on)."""
        cfg = self.preset.train
        lr = cfg.lr * lr_factor(self.step, cfg.steps, cfg.decay_start)
        for k, sched in self.sched.items():
            groups = self.opt[k].param_groups
            if (sched.base_lrs == [cfg.lr] * len(groups) and [g["initial_lr"] for g in groups] == sched.base_lrs
                    and [g["lr"] for g in groups] == sched.get_last_lr() == [lr] * len(groups)):
                continue  # the checkpoint's schedule is this preset's at this step
            for group in groups:
                group["initial_lr"] = cfg.lr
            self.sched[k] = make_scheduler(self.opt[k], cfg.steps, cfg.decay_start, start=self.step)

    def save(self, path: str | Path) -> Path:
        """Write the full training state atomically to ``path``."""
        return atomic_save(self.state_dict(), path)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CKPT_DIR / LAST

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/last.pt``, keeping the one it replaces as ``prev.pt``.

        The sequence is :func:`~csa_lib.runfiles.save_rotated`'s (each rename atomic, a kill between any
        two is repaired on resume). A ``last.pt`` that does not load (a resume fell back to ``prev.pt``) is
        never rotated: it is replaced, and the good ``prev.pt`` stays.

        With ``train.keep_every = K``, a checkpoint written at a multiple of K steps is also kept as
        ``checkpoints/step_XXXXXXX.pt`` (a hard link where the file system allows: no extra space).
        """
        last = save_rotated(self.state_dict(), self.checkpoint_path, self._last_ok, self.step)
        self._last_ok = True
        keep = self.preset.train.keep_every
        if keep and self.step % keep == 0:
            keep_snapshot(last, self.step)
        return last

    @classmethod
    def resume(cls, path: str | Path, overrides: dict[str, Any] | None = None, **kwargs) -> "Trainer":
        """A trainer in the exact state of the checkpoint at ``path`` (file or run folder).

        ``overrides`` (dotted keys, e.g. ``{"train.steps": 2000}``) change the stored preset; the run keeps
        writing into the folder it was resumed from unless ``train.out_dir`` is overridden.
        """
        overrides = dict(overrides or {})
        path = Path(path)
        run_dir = run_dir_of(path)
        out_dir = Path(overrides.get("train.out_dir", run_dir))
        # Writing into the folder: lock it first (refused while another process trains there), then
        # repair what a kill may have left (only the lock holder may rename files there).
        # Under torchrun, rank 0's lock stands for the whole job, and only rank 0 repairs; the other ranks
        # read the checkpoint once it has (the barrier), so that every rank resumes from the same file.
        main = distributed.is_main()
        lock = RunLock(out_dir).acquire() if main else RunLock(out_dir)
        try:
            if main and out_dir.resolve() == run_dir.resolve():
                remove_orphan_temps(run_dir)
                finish_interrupted_save(run_dir)
            distributed.barrier()
            ckpt = load_checkpoint(path)
            preset = preset_of(ckpt)
            _check_resume_overrides(preset, overrides)
            preset.train.out_dir = str(run_dir_of(Path(ckpt["path"])))
            for key, value in overrides.items():
                apply_override(preset, key, value)
            _check_resume_steps(preset, int(ckpt["step"]))
            trainer = cls(preset, **kwargs)
            trainer._lock = lock
            trainer.load_state_dict(ckpt)
        except BaseException:
            lock.release()
            raise
        return trainer

    # ---- one step ---------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _check(self, total: torch.Tensor, logs: dict[str, float], what: str) -> None:
        for term, value in {**logs, f"{what} total": float(total.detach())}.items():
            if not math.isfinite(value):
                ckpt = self.checkpoint_path if self.checkpoint_path.exists() else None
                raise NonFiniteLossError(self.step + 1, f"{what} loss term {term!r}", value, ckpt)

    def _check_grad(self, module: nn.Module, what: str) -> float:
        norm = grad_norm(module.parameters())
        if self.preset.train.grad_check and not math.isfinite(norm):
            ckpt = self.checkpoint_path if self.checkpoint_path.exists() else None
            raise NonFiniteLossError(self.step + 1, f"{what} gradient norm", norm, ckpt)
        return norm

    def train_step(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """One D step then one G step on ``image [B,3,H,W]`` in [-1,1] and ``mask [B,1,H,W]`` (1 = hole),
        with the CUDA speed flags on for the step only (:func:`cuda_speed_flags`)."""
        with cuda_speed_flags(self.device):
            return self._train_step(image, mask)

    def _train_step(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        # Under torchrun: this rank's share of the global batch; the DDP wrappers average the gradients
        # over the ranks, the losses' batch means are global (distributed.global_batch) and the logged
        # values are averaged over the ranks, so that one NaN stops every rank at the same step.
        G, D, F = self.ddp
        with self._autocast():
            out = G(image, mask)
        self_target = None
        if self.criterion.needs_self_target:  # the search's features on the ground truth (no hole), no graph
            with torch.no_grad(), self._autocast():
                self_target = self.G(image, torch.zeros_like(mask)).csa_in.float()

        if self.criterion.needs_discriminators:
            gn_d, gn_f, logs_d = self._discriminator_step(out, image, D, F)
        else:  # lambda_d = 0 (the copy task): the discriminators play no part
            gn_d = gn_f = 0.0
            logs_d = {"d_image": 0.0, "d_feature": 0.0, "d_total": 0.0}

        # Generator: the discriminators are frozen so that no gradient accumulates in them. They run as
        # the plain modules (not the DDP wrappers): no parameter gradient there, so nothing to all-reduce.
        set_requires_grad([self.D, self.F], False)
        try:
            with self._autocast(), distributed.global_batch():
                # self_target only when used: a criterion with the five-argument signature (a notebook's
                # poisoned loss, an older subclass) keeps working
                extra = {} if self_target is None else {"self_target": self_target}
                loss_g, logs_g = self.criterion.generator(out, image, mask, self.D, self.F, **extra)
            logs_g = distributed.mean_over_ranks(logs_g, self.device)
            self._check(loss_g, logs_g, "generator")
            self.opt["G"].zero_grad(set_to_none=True)
            loss_g.backward()
            gn_g = self._check_grad(self.G, "generator")
            self.opt["G"].step()
        finally:
            set_requires_grad([self.D, self.F], True)

        lr = self.sched["G"].get_last_lr()[0]  # the rate this step used
        for k, s in self.sched.items():
            if k == "G" or self.criterion.needs_discriminators:  # idle discriminators: no optimiser step
                s.step()
        self.step += 1
        return {**{f"G/{k}": float(v) for k, v in logs_g.items() if not k.endswith("total")},
                "G/total": logs_g["g_total"],  # the loss's value (averaged over the ranks under torchrun)
                **{f"D/{k}": float(v) for k, v in logs_d.items() if not k.endswith("total")},
                "D/total": logs_d["d_total"],
                "grad/G": gn_g, "grad/D": gn_d, "grad/F": gn_f, "lr": lr}

    def _discriminator_step(self, out, image, D, F) -> tuple[float, float, dict[str, float]]:
        """Discriminators: real images against the (detached) generated ones. Returns the two gradient
        norms and the logs."""
        with self._autocast(), distributed.global_batch():
            loss_d, logs_d = self.criterion.discriminator(detach_output(out), image, D, F)
        logs_d = distributed.mean_over_ranks(logs_d, self.device)
        self._check(loss_d, logs_d, "discriminator")
        self.opt["D"].zero_grad(set_to_none=True)
        self.opt["F"].zero_grad(set_to_none=True)
        loss_d.backward()
        gn_d = self._check_grad(self.D, "image discriminator")
        gn_f = self._check_grad(self.F, "feature discriminator")
        self.opt["D"].step()
        self.opt["F"].step()
        return gn_d, gn_f, logs_d

    # ---- data -------------------------------------------------------------------------------------
    def loader(self) -> DataLoader:
        """Batches for steps ``self.step .. steps-1`` in the order fixed by (seed, images seen)."""
        cfg = self.preset.train
        sampler = StepBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed, self.step, cfg.steps)
        if self.world > 1:  # this rank's slice of each global batch
            sampler = distributed.ShardedStepSampler(sampler, distributed.rank(), self.world)
        # No worker processes inside a Jupyter kernel (see config.in_jupyter); same batches either way.
        workers = 0 if in_jupyter() else self.preset.data.num_workers
        return DataLoader(SeededSamples(self.train_set), batch_sampler=sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def fixed_batch(self, n: int | None = None):
        """The first ``n`` readable evaluation samples (fixed masks): the same pictures at every sample step.

        An unreadable image is skipped with a warning, as in training (``data.skip_bad_images``; False:
        the error stops the run). Returns ``(images [n,3,S,S] in [-1,1], masks [n,1,S,S])``.
        """
        n = min(n or self.preset.train.num_samples, len(self.eval_set))
        items = []
        for i in range(len(self.eval_set)):
            if len(items) == n:
                break
            try:
                items.append(self.eval_set[i])
            except OSError as e:
                if not getattr(self.preset.data, "skip_bad_images", True):
                    raise
                warnings.warn(f"sample grids: skipping unreadable image ({first_line(e)})", stacklevel=2)
        if not items:
            raise ValueError(f"no readable image among the {len(self.eval_set)} evaluation images")
        images, masks = zip(*items)
        return torch.stack(images).to(self.device), torch.stack(masks).to(self.device)

    # ---- logging ----------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not distributed.is_main():  # under torchrun rank 0 logs (the values are averaged over ranks)
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        append_line(self.out_dir / "log.jsonl", json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, record["step"])

    def _tensorboard(self):
        if self._writer is None and self.preset.train.tensorboard and not self._no_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._no_tensorboard = True
                return None
            # purge_step drops events a killed run wrote after its last checkpoint.
            self._writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step)
        return self._writer

    def _acquire_run_lock(self) -> None:
        """Hold the run folder's :class:`RunLock` (until the end of :meth:`fit` or :meth:`close`) and
        delete the temporary files a killed process left there."""
        if not distributed.is_main():  # under torchrun rank 0's lock stands for the whole job
            return
        if self._lock is None:
            self._lock = RunLock(self.out_dir).acquire()
        remove_orphan_temps(self.out_dir)

    def _release_run_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @torch.no_grad()
    def save_samples(self, batch=None) -> Path:
        """Sample grid of the fixed evaluation batch at the current step, ``samples/step_XXXXXXX.png``."""
        image, mask = batch if batch is not None else self.fixed_batch()
        self.G.eval()
        try:
            with self._autocast():
                out = self.G(image, mask)
        finally:
            self.G.train()
        return sample_grid(image, mask, out, self.out_dir / "samples" / f"step_{self.step:07d}.png")

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self, callback: Callable[["Trainer", dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Train from ``self.step`` to ``preset.train.steps`` (or until ``time_budget_s``).

        Returns ``{"step", "stopped": "done" | "time_budget", "elapsed_s", "images_per_s", "checkpoint"}``.
        ``callback(trainer, logs)`` runs after every step (notebooks use it to collect curves).
        The run folder is locked for the duration (:class:`RunLock`).
        """
        self._acquire_run_lock()
        try:
            return self._fit(callback)
        finally:
            self._release_run_lock()

    def _fit(self, callback) -> dict[str, Any]:
        from tqdm import tqdm  # the text bar: readable in a terminal and in a saved notebook

        cfg = self.preset.train
        self.G.train(), self.D.train(), self.F.train()
        main = distributed.is_main()  # under torchrun only rank 0 writes logs, samples and checkpoints
        if main:
            trim_log(self.out_dir / "log.jsonl", self.step)  # on resume: drop what came after the checkpoint
        sample_batch = self.fixed_batch() if main else None
        start, stopped, images = time.perf_counter(), "done", 0
        window = self._window  # averages between two log lines (restored from a checkpoint on resume)
        window["t"] = start
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.preset.name,
                   disable=not (self.progress and main), dynamic_ncols=True)
        try:
            for image, mask in self.loader():
                image = image.to(self.device, non_blocking=True)
                mask = mask.to(self.device, non_blocking=True)
                logs = self.train_step(image, mask)
                if self.step == cfg.attention_warmup_steps:
                    self._switch_attention()
                n = image.shape[0] * self.world  # the global batch: every rank took an equal share
                images += n
                window["steps"] += 1
                window["images"] += n
                for k, v in logs.items():
                    window["sums"][k] = window["sums"].get(k, 0.0) + v
                if callback is not None:
                    callback(self, logs)
                bar.update(1)
                kill_point("step", self.step)
                last = self.step == cfg.steps
                if cfg.time_budget_s is not None and distributed.any_rank(
                        time.perf_counter() - start > cfg.time_budget_s, self.device):  # all ranks stop together
                    stopped = "done" if last else "time_budget"
                if self.step % cfg.log_every == 0 or last or stopped != "done":
                    record = self._log_window(window, start)
                    bar.set_postfix({name: f"{record[k]:.3g}" for k, name in BAR_KEYS.items() if k in record})
                if main and (self.step % cfg.sample_every == 0 or last):
                    self.save_samples(sample_batch)
                if main and (self.step % cfg.ckpt_every == 0 or last or stopped != "done"):
                    self._save_with_time(start)
                if stopped != "done":
                    break
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        session = time.perf_counter() - start
        self.elapsed_s += session
        return {"step": self.step, "stopped": stopped, "elapsed_s": self.elapsed_s,
                "images_per_s": images / max(session, 1e-9), "checkpoint": str(self.checkpoint_path)}

    def _log_window(self, window: dict[str, Any], start: float) -> dict[str, Any]:
        """Write the averages since the last log line (and the throughput), then reset the window."""
        now = time.perf_counter()
        record = {"step": self.step, **{k: v / window["steps"] for k, v in window["sums"].items()},
                  "images_per_s": window["images"] / max(now - window["t"], 1e-9),
                  "elapsed_s": self.elapsed_s + now - start,
                  **distributed.describe(self.preset.train.batch_size)}
        self._log(record)
        window.update(t=now, steps=0, images=0, sums={})
        return record

    def _save_with_time(self, start: float) -> None:
        # The checkpoint records the training time so far (this session included).
        before = self.elapsed_s
        self.elapsed_s = before + time.perf_counter() - start
        try:
            self.save_checkpoint()
        finally:
            self.elapsed_s = before

    def close(self) -> None:
        self._release_run_lock()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
