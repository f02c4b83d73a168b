"""The trainer: exact resume, crash-safe checkpoints, NaN stop, schedule, data order, time budget."""
import hashlib
import random
import warnings

import numpy as np
import pytest
import torch

from csa_lib.config import Preset, get_preset
from csa_lib.train import (NonFiniteLossError, StepBatchSampler, Trainer, atomic_save, lr_factor,
                           load_checkpoint, load_generator, make_scheduler, read_log, rng_state,
                           set_rng_state)


@pytest.fixture(scope="module")
def vgg():
    from csa_lib.vgg import VGG16Features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random VGG weights" is the point of a smoke run
        return VGG16Features("none")


def smoke(out_dir, **overrides) -> Preset:
    # On the CPU: bit-identical resume is promised there (the smoke preset's own device is "auto").
    settings = {"train.out_dir": str(out_dir), "train.tensorboard": False, "train.device": "cpu", "train.steps": 4,
                "train.decay_start": 2, "train.ckpt_every": 2, "train.sample_every": 2, "train.log_every": 1}
    settings.update(overrides)
    return get_preset("smoke", **settings)


def parameters(trainer):
    return [p.detach().clone() for m in (trainer.G, trainer.D, trainer.F) for p in m.parameters()]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Killed(Exception):
    """Stands in for a process being killed between two checkpoints."""


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(tmp_path, vgg):
    full = Trainer(smoke(tmp_path / "full"), vgg=vgg, progress=False)
    assert full.fit()["step"] == 4
    want = parameters(full)

    run = Trainer(smoke(tmp_path / "run"), vgg=vgg, progress=False)

    def kill_at_3(trainer, logs):
        if trainer.step == 3:  # after the step-2 checkpoint, before the next one
            raise Killed

    with pytest.raises(Killed):
        run.fit(callback=kill_at_3)
    resumed = Trainer.resume(tmp_path / "run", vgg=vgg, progress=False)
    assert resumed.step == 2
    assert resumed.fit()["step"] == 4
    got = parameters(resumed)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))

    # Same batches, same losses; the killed session's extra log line was dropped on resume.
    log_full, log_run = read_log(tmp_path / "full/log.jsonl"), read_log(tmp_path / "run/log.jsonl")
    assert [r["step"] for r in log_run] == [1, 2, 3, 4]
    for a, b in zip(log_full, log_run):
        assert a["G/total"] == b["G/total"] and a["D/total"] == b["D/total"]
    assert all(r["images_per_s"] > 0 for r in log_run)
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == ["step_0000002.png",
                                                                          "step_0000004.png"]
    # Optimiser settings of the paper, and the generator as evaluation code loads it.
    assert all(o.param_groups[0]["betas"] == (0.5, 0.999) for o in resumed.opt.values())
    generator, preset = load_generator(tmp_path / "run", device="cpu")
    assert preset == resumed.preset and not generator.training
    assert all(torch.equal(a, b) for a, b in zip(generator.parameters(), resumed.G.parameters()))


def test_checkpoint_loads_with_weights_only_and_keeps_previous(tmp_path, vgg):
    trainer = Trainer(smoke(tmp_path), vgg=vgg, progress=False)
    trainer.fit()
    ckpt_dir = tmp_path / "checkpoints"
    last = torch.load(ckpt_dir / "last.pt", weights_only=True)
    prev = torch.load(ckpt_dir / "prev.pt", weights_only=True)
    assert (last["step"], prev["step"]) == (4, 2)
    assert Preset.from_dict(last["preset"]) == trainer.preset
    assert set(last["rng"]) == {"torch", "cuda", "numpy", "python"}
    # A torn last.pt (e.g. the disk filled up outside our atomic write) falls back to prev.pt.
    (ckpt_dir / "last.pt").write_bytes(b"not a checkpoint")
    assert load_checkpoint(tmp_path)["step"] == 2


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, vgg, monkeypatch):
    trainer = Trainer(smoke(tmp_path, **{"train.steps": 2}), vgg=vgg, progress=False)
    trainer.fit()
    last = tmp_path / "checkpoints" / "last.pt"
    before = sha(last)

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    trainer.step = 3  # pretend training went on
    with pytest.raises(OSError, match="simulated crash"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert sha(last) == before
    assert load_checkpoint(tmp_path)["step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]  # no temporary files left


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path, vgg):
    trainer = Trainer(smoke(tmp_path), vgg=vgg, progress=False)
    real_generator_loss = trainer.criterion.generator

    def poisoned(out, image, mask, image_D, feature_D):
        total, logs = real_generator_loss(out, image, mask, image_D, feature_D)
        if trainer.step == 2:  # computing step 3
            logs = {**logs, "l1_refined": float("nan")}
            total = total * float("nan")
        return total, logs

    trainer.criterion.generator = poisoned
    ckpt = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(NonFiniteLossError, match=r"l1_refined.*step 3") as err:
        trainer.fit()
    assert err.value.step == 3 and "l1_refined" in err.value.term
    assert str(ckpt) in str(err.value)
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    assert not (ckpt.parent / "prev.pt").exists()  # nothing was written after the bad step


def test_nan_gradient_is_caught(tmp_path, vgg):
    trainer = Trainer(smoke(tmp_path), vgg=vgg, progress=False)
    with torch.no_grad():
        next(trainer.D.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="step 1"):
        trainer.fit()
    assert not (tmp_path / "checkpoints").exists()


def test_time_budget_stops_early_with_a_checkpoint(tmp_path, vgg):
    trainer = Trainer(smoke(tmp_path, **{"train.time_budget_s": 0.0}), vgg=vgg, progress=False)
    result = trainer.fit()
    assert result["stopped"] == "time_budget" and result["step"] == 1
    assert load_checkpoint(tmp_path)["step"] == 1


def test_bf16_autocast_step_runs_on_cpu(tmp_path, vgg):
    # The CUDA path (amp="auto" -> bf16) exercised on the CPU: a finite step, weights stay fp32.
    trainer = Trainer(smoke(tmp_path, **{"train.steps": 1, "train.amp": "bf16"}), vgg=vgg, progress=False)
    assert trainer.amp == torch.bfloat16
    trainer.fit()
    record = read_log(tmp_path / "log.jsonl")[-1]
    assert all(np.isfinite(v) for k, v in record.items() if k.startswith(("G/", "D/")))
    assert all(p.dtype == torch.float32 for p in trainer.G.parameters())


def test_lr_schedule_values():
    assert [lr_factor(s, 10, 6) for s in range(11)] == [1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert [lr_factor(s, 10, None) for s in (0, 5, 10)] == [1.0, 1.0, 1.0]
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4, betas=(0.5, 0.999))
    sched = make_scheduler(opt, steps=8, decay_start=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-4] * 5 + [1.5e-4, 1e-4, 0.5e-4])
    assert opt.param_groups[0]["lr"] == 0.0


def test_data_order_is_a_function_of_seed_and_step():
    full = list(StepBatchSampler(n=5, batch_size=2, seed=3, start_step=0, steps=6))
    tail = list(StepBatchSampler(n=5, batch_size=2, seed=3, start_step=4, steps=6))
    assert tail == full[4:]
    indices = [i for batch in full for i, _ in batch]
    assert sorted(indices[:5]) == sorted(indices[5:10]) == list(range(5))  # each epoch: a permutation
    assert indices[:5] != indices[5:10]  # a new order every epoch
    seeds = [s for batch in full for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # every sample draws its own mask and flip
    other = list(StepBatchSampler(n=5, batch_size=2, seed=4, start_step=0, steps=6))
    assert other != full


def test_rng_state_round_trips_through_weights_only_file(tmp_path):
    state = rng_state()
    want = (torch.rand(3), np.random.rand(3), random.random())
    atomic_save({"rng": state}, tmp_path / "rng.pt")
    torch.rand(5), np.random.rand(5), random.random()  # move every stream on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    atomic_save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a csa_lib training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_amp_auto_picks_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    from csa_lib.train import amp_dtype, cpu_has_native_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setenv("CSA_CPU_BF16", "1")
    assert cpu_has_native_bf16() and amp_dtype("auto", cpu) == torch.bfloat16
    assert amp_dtype("off", cpu) is None and amp_dtype("fp32", cpu) is None  # the way to force fp32
    monkeypatch.setenv("CSA_CPU_BF16", "0")
    assert amp_dtype("auto", cpu) is None and amp_dtype("bf16", cpu) == torch.bfloat16
    assert amp_dtype("auto", cuda) == torch.bfloat16
    with pytest.raises(ValueError, match="train.amp"):
        amp_dtype("fp16", cpu)
    monkeypatch.delenv("CSA_CPU_BF16")
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.slow
def test_bf16_resume_is_bit_identical(tmp_path, vgg):
    # bf16 autocast on the CPU keeps exact resume: the same weights after a kill and a resume.
    kw = {"train.amp": "bf16"}
    full = Trainer(smoke(tmp_path / "full", **kw), vgg=vgg, progress=False)
    full.fit()
    run = Trainer(smoke(tmp_path / "run", **kw), vgg=vgg, progress=False)

    def kill_at_3(trainer, logs):
        if trainer.step == 3:
            raise Killed

    with pytest.raises(Killed):
        run.fit(callback=kill_at_3)
    resumed = Trainer.resume(tmp_path / "run", vgg=vgg, progress=False)
    assert resumed.amp == torch.bfloat16 and resumed.fit()["step"] == 4
    assert all(torch.equal(a, b) for a, b in zip(parameters(resumed), parameters(full)))


def test_keep_every_keeps_snapshots(tmp_path, vgg):
    trainer = Trainer(smoke(tmp_path, **{"train.keep_every": 2, "train.steps": 4}), vgg=vgg, progress=False)
    trainer.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert names == ["step_0000002.pt", "step_0000004.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "step_0000002.pt")["step"] == 2


def test_trainer_never_changes_the_preset_it_was_given(tmp_path, vgg, monkeypatch):
    """Issue 22: without the tensorboard package the trainer remembers that itself; the preset (which goes
    into every checkpoint) keeps ``train.tensorboard`` as given."""
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `from torch.utils.tensorboard import` fails
    preset = smoke(tmp_path, **{"train.tensorboard": True})
    before = preset.to_dict()
    trainer = Trainer(preset, vgg=vgg, progress=False)
    assert trainer._tensorboard() is None and trainer._tensorboard() is None
    assert preset.to_dict() == before and trainer.state_dict()["preset"] == before


def test_resume_with_a_new_schedule_reports_its_rate_and_keeps_an_unchanged_one_as_loaded(tmp_path, vgg):
    """The learning rate of a resumed run follows the new preset through public scheduler API only (no
    write to LambdaLR's private ``_last_lr``); with unchanged settings the loaded scheduler state stays."""
    Trainer(smoke(tmp_path), vgg=vgg, progress=False).fit()  # steps 4, decay from 2: the factor is 0 at step 4
    same = Trainer.resume(tmp_path, vgg=vgg, progress=False)
    saved = load_checkpoint(tmp_path)["schedulers"]["G"]
    assert same.sched["G"].state_dict() == saved
    same.close()
    new = Trainer.resume(tmp_path, overrides={"train.steps": 8, "train.lr": 1e-4, "train.decay_start": 6},
                         vgg=vgg, progress=False)
    assert new.sched["G"].get_last_lr() == [1e-4] == [g["lr"] for g in new.opt["G"].param_groups]
    assert new.sched["G"].last_epoch == 4 and new.sched["G"].base_lrs == [1e-4]
    new.close()
