"""`csa train` under torchrun: 2 CPU ranks (gloo) against one process, rank-0-only files, a killed rank,
exact resume, NaN on one rank, a dead rank's timeout.

Each torchrun launch costs a few seconds of start-up per process; the runs are 3 smoke steps at a global
batch of 4 (2 images per rank). ``OMP_NUM_THREADS=1`` per rank: two ranks on two cores.
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from csa_lib.config import REPO_ROOT
from csa_lib.distributed import ShardedStepSampler, per_rank_batch
from csa_lib.train import RunInUseError, RunLock, StepBatchSampler, Trainer, load_checkpoint, read_log

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available()
                                     and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
STEPS = 3
# Constant learning rate (decay_start=none): then train.steps only says where to stop, and a run killed
# on its way to 1000 steps and resumed with --steps 3 must match a run to 3 steps exactly.
TRAIN = ["train", "--preset", "smoke", "--device", "cpu", "--amp", "off", "-q",
         "--set", "train.batch_size=4", "--set", "train.decay_start=none", "--set", "train.ckpt_every=1",
         "--set", "train.log_every=1", "--set", "train.tensorboard=false"]
TIME_KEYS = ("images_per_s", "elapsed_s")
PROCESS_KEYS = ("world_size", "backend", "per_rank_batch")  # say how the run was launched: differ by design

# Launched by torchrun on every rank: `csa train ARGS`, with test-only switches from the environment.
WORKER = textwrap.dedent("""
    import os, sys
    rank, args = os.environ["RANK"], sys.argv[1:]
    if os.environ.get("T_OUT_PER_RANK"):  # each rank names its own run folder: only rank 0's may appear
        args += ["--out", os.path.join(os.environ["T_OUT_PER_RANK"], "rank" + rank)]
    if os.environ.get("T_NAN_RANK") == rank:  # this rank's discriminator loss is NaN at step T_NAN_STEP
        from csa_lib import losses
        original, calls = losses.InpaintingLoss.discriminator, [0]
        def poisoned(self, *a, **k):
            calls[0] += 1
            total, logs = original(self, *a, **k)
            if calls[0] == int(os.environ["T_NAN_STEP"]):
                total, logs = total * float("nan"), {**logs, "d_total": float("nan")}
            return total, logs
        losses.InpaintingLoss.discriminator = poisoned
    from csa_lib.cli import main
    code = main(args)
    print(f"rank {rank} exit {code}", flush=True)
    sys.exit(code)
""")


def env(**extra) -> dict:
    # One thread per rank for torch and for numba's CSA kernels, fixed here: the kernels' float results
    # depend on numba's thread pool, and the exact-resume test compares runs bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "PYTHONPATH": str(REPO_ROOT), "CSA_DIST_TIMEOUT_S": "120", "PYTHONWARNINGS": "ignore", **extra}


def torchrun(args, tmp: Path, timeout=600, **extra) -> subprocess.CompletedProcess:
    """Run ``WORKER args`` on 2 ranks; the output of both ranks comes back in ``.stdout``."""
    script = tmp / "worker.py"
    script.write_text(WORKER)
    return subprocess.run(TORCHRUN + [str(script), *args], cwd=REPO_ROOT, env=env(**extra), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses_of(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS + PROCESS_KEYS} for r in read_log(run / "log.jsonl")]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """A 2-rank run of STEPS steps; each rank was told to write into its own folder ``rank<R>``."""
    base = tmp_path_factory.mktemp("two_ranks")
    done = torchrun([*TRAIN, "--steps", str(STEPS)], base, T_OUT_PER_RANK=str(base))
    assert done.returncode == 0, done.stdout[-3000:]
    (base / "stdout.txt").write_text(done.stdout)  # beside the rank folders (test_only_rank_0 lists rank0)
    return base


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The same run in this process (one rank, the whole batch of 4)."""
    from csa_lib.cli import main

    out = tmp_path_factory.mktemp("one_process") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random VGG weights: the point of a smoke run
        assert main([*TRAIN, "--steps", str(STEPS), "--out", str(out)]) == 0
    return out


# --------------------------------------------------------------------------------------------------
# The data split (no processes)
# --------------------------------------------------------------------------------------------------
def test_ranks_split_each_global_batch_into_disjoint_slices():
    sampler = StepBatchSampler(n=10, batch_size=4, seed=3, start_step=0, steps=6)
    shards = [list(ShardedStepSampler(sampler, r, 2)) for r in range(2)]
    for step, whole in enumerate(sampler):
        assert shards[0][step] + shards[1][step] == whole  # together: exactly the single-process batch


def test_a_batch_that_does_not_split_evenly_is_refused():
    assert per_rank_batch(8, 4) == 2
    with pytest.raises(ValueError, match="train.batch_size=6 cannot be split evenly over 4 ranks"):
        per_rank_batch(6, 4)


# --------------------------------------------------------------------------------------------------
# 2 ranks against 1 process
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_match_one_process(two_ranks, one_process):
    """Same losses and weights as one process at the same global batch, to float tolerance.

    Not bit for bit: DDP sums two half-batch gradients (conv backward over 2 + 2 images instead of 4),
    and the batch-coupled loss terms add two partial sums: the float32 roundings differ (measured:
    losses and gradient norms within 2e-6 relative, weights within 3e-6 after 3 steps). The forward
    pass itself is per-sample (InstanceNorm has no batch statistics). One class of parameters is left
    out of the weight comparison, the biases whose true gradient is 0: those of convolutions followed by
    InstanceNorm (the norm subtracts them again) and that of the image discriminator's last layer (the
    relativistic loss only sees D(x) - E[D(.)]). Adam turns their rounding noise (~1e-10) into full
    +-lr steps, so they differ by up to ~lr per step, and change no output (compared below).
    """
    two = two_ranks / "rank0"
    want, got = losses_of(one_process), losses_of(two)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for a, b in zip(want, got):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), (a["step"], k)

    ca, cb = load_checkpoint(one_process), load_checkpoint(two)
    for net in ("generator", "image_D", "feature_D"):
        for name, w in ca[net].items():
            if name.endswith("weight"):
                torch.testing.assert_close(cb[net][name], w, rtol=0, atol=1e-5, msg=f"{net}.{name}")

    from csa_lib.train import load_generator

    g1, preset = load_generator(one_process)
    g2, _ = load_generator(two)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Trainer(preset, progress=False)
    image, mask = t.fixed_batch()

    def centred_d(state):  # what the relativistic loss sees of the image discriminator
        t.D.load_state_dict(state)
        score = t.D(image)
        return score - score.mean()

    with torch.no_grad():
        torch.testing.assert_close(g2(image, mask).refined, g1(image, mask).refined, rtol=0, atol=1e-4)
        torch.testing.assert_close(centred_d(cb["image_D"]), centred_d(ca["image_D"]), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_only_rank_0_writes_files(two_ranks, one_process):
    """Rank 1 was given its own run folder: nothing may appear there. Rank 0 writes what one process does."""
    assert not (two_ranks / "rank1").exists()
    files = {p.relative_to(two_ranks / "rank0") for p in (two_ranks / "rank0").rglob("*")}
    assert files == {p.relative_to(one_process) for p in one_process.rglob("*")}
    assert load_checkpoint(two_ranks / "rank0")["sampler"]["world_size"] == 2


@pytest.mark.slow
def test_a_torchrun_run_says_it_is_distributed(two_ranks, one_process, capsys):
    """World size, backend and per-rank batch: in the start line, in every log line and in the checkpoint;
    a plain run says 1 process, backend "none", the whole batch."""
    out = (two_ranks / "stdout.txt").read_text()
    assert "2 processes (gloo), batch 4 = 2 per rank" in out, out[-2000:]
    assert out.count("training smoke on cpu") == 1  # rank 0 alone prints it
    want = {"world_size": 2, "backend": "gloo", "per_rank_batch": 2}
    assert all({k: r[k] for k in want} == want for r in read_log(two_ranks / "rank0" / "log.jsonl"))
    assert load_checkpoint(two_ranks / "rank0")["processes"] == want
    plain = {"world_size": 1, "backend": "none", "per_rank_batch": 4}
    assert all({k: r[k] for k in plain} == plain for r in read_log(one_process / "log.jsonl"))
    assert load_checkpoint(one_process)["processes"] == plain


@pytest.mark.slow
def test_resume_with_another_world_size_warns_and_keeps_the_global_batch(two_ranks, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_ranks / "rank0", run)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        with pytest.warns(UserWarning, match="trained on 2 process.*with 1: the global batch \\(4\\)"):
            t = Trainer.resume(run, {"train.steps": STEPS + 1}, progress=False)
        assert t.fit()["step"] == STEPS + 1


# --------------------------------------------------------------------------------------------------
# Failures: a killed rank, NaN on one rank, a rank that stops answering
# --------------------------------------------------------------------------------------------------
def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (a child of the torchrun process)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"RANK={rank}".encode() in (stat.parent / "environ").read_bytes().split(b"\0"):
                return int(stat.parent.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a rank's pid")
def test_sigkill_one_rank_then_resume_exactly(two_ranks, tmp_path):
    run = tmp_path / "run"
    log = open(tmp_path / "killed.log", "w")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    job = subprocess.Popen(TORCHRUN + [str(script), *TRAIN, "--steps", "1000", "--out", str(run)],
                           cwd=REPO_ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "last.pt").exists():
            assert job.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        # The run folder's lock is held for the whole job (by rank 0; rank 1 does not contend for it).
        with pytest.raises(RunInUseError):
            RunLock(run).acquire().release()
        pid = _rank_pid(job.pid, 1)
        assert pid is not None, "rank 1 not found among torchrun's children"
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        rc = job.wait(timeout=180)  # the job must end, not hang on the dead rank
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    assert rc != 0
    assert time.monotonic() - start < 180
    killed_at = int(load_checkpoint(run)["step"])  # the last checkpoint loads
    assert 1 <= killed_at < 1000

    # Resume on 2 ranks up to STEPS (or a little further if the kill came late) and compare with an
    # uninterrupted 2-rank run of that length: bit for bit.
    stop = max(STEPS, killed_at + 1)
    if stop == STEPS:
        reference = two_ranks / "rank0"
    else:
        reference = tmp_path / "reference"
        done = torchrun([*TRAIN, "--steps", str(stop), "--out", str(reference)], tmp_path)
        assert done.returncode == 0, done.stdout[-3000:]
    done = torchrun([*TRAIN, "--resume", "--steps", str(stop), "--out", str(run)], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"resuming {run} at step {killed_at}" in done.stdout

    want, got = load_checkpoint(reference), load_checkpoint(run)
    assert got["step"] == want["step"] == stop
    for net in ("generator", "image_D", "feature_D"):
        for name, w in want[net].items():
            assert torch.equal(got[net][name], w), f"{net}.{name}"
    for k in ("G", "D", "F"):
        for a, b in zip(want["optimizers"][k]["state"].values(), got["optimizers"][k]["state"].values()):
            assert all(torch.equal(a[s], b[s]) for s in a)
    assert losses_of(run)[killed_at:] == losses_of(reference)[killed_at:stop]


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank(tmp_path):
    run = tmp_path / "run"
    done = torchrun([*TRAIN, "--steps", "1000", "--out", str(run)], tmp_path, timeout=300,
                    T_NAN_RANK="1", T_NAN_STEP="2")
    assert done.returncode != 0
    # Both ranks stopped by themselves at step 2 with the one-line error (none was killed waiting).
    assert "rank 0 exit 2" in done.stdout and "rank 1 exit 2" in done.stdout, done.stdout[-3000:]
    assert done.stdout.count("csa: error: non-finite discriminator loss term") == 2
    assert "at step 2" in done.stdout
    assert load_checkpoint(run)["step"] == 1  # nothing saved after the last good step


DEAD_RANK = textwrap.dedent("""
    import os, signal, sys, time
    from csa_lib import distributed
    import torch
    distributed.setup("cpu")
    if distributed.rank() == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # alive but silent, its sockets open: a hung machine
    start = time.monotonic()
    try:
        distributed.mean_over_ranks({"loss": 1.0}, torch.device("cpu"))
    except Exception as e:
        print(f"rank 0 gave up after {time.monotonic() - start:.0f} s: {type(e).__name__}", flush=True)
        os._exit(3)
    os._exit(0)
""")


@pytest.mark.slow
def test_a_rank_that_stops_answering_times_out(tmp_path):
    """No launcher to the rescue: rank 0 must give up after CSA_DIST_TIMEOUT_S, not wait forever."""
    script = tmp_path / "dead_rank.py"
    script.write_text(DEAD_RANK)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=str(port), CSA_DIST_TIMEOUT_S="5"))
             for r in range(2)]
    try:
        out, _ = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 3, out[-3000:]
    assert "rank 0 gave up after" in out
