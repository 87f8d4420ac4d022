"""Data-parallel SVI: two gloo processes must fit what one process fits over the same batches."""

import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist

from fit_process import config, loader, problem
from pyro_dirichlet.infer.checkpoint import FitCheckpoint
from pyro_dirichlet.infer.distributed import DataParallel
from pyro_dirichlet.infer.fit import fit

SCRIPT = Path(__file__).with_name("fit_process.py")

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("rank, expected", [(0, ([0, 1, 2], 0.6)), (1, ([3, 4], 0.4))])
def test_shards_split_a_batch_and_weigh_by_size(rank, expected):
    indices, weight = DataParallel(rank=rank, world_size=2).shard(torch.arange(5))
    assert (indices.tolist(), weight) == expected


def test_an_empty_shard_runs_one_example_with_weight_zero():
    # a last batch smaller than the world: rank 1 still draws and reduces, with no say
    assert DataParallel(rank=1, world_size=2).shard(torch.tensor([7])) == (torch.tensor([7]), 0.0)
    assert DataParallel.current() is None  # no process group in the test process


@needs_gloo
def test_two_gloo_ranks_fit_what_one_process_fits(tmp_path):
    # 225 examples in batches of 32: the last batch holds one example, so rank 1 gets none.
    n, epochs, batch_size = 225, 2, 32
    out, checkpoint = tmp_path / "out", tmp_path / "fit.ckpt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(SCRIPT), str(out), "--examples", str(n), "--epochs", str(epochs), "--batch-size", str(batch_size),
               "--threads", "1", "--checkpoint", str(checkpoint)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert finished.returncode == 0, finished.stderr[-4000:]

    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    # every rank took the same all-reduced steps: identical to the bit
    assert torch.equal(ranks[0]["elbo"], ranks[1]["elbo"])
    for name, concentration in ranks[0]["concentrations"].items():
        assert torch.equal(concentration, ranks[1]["concentrations"][name])
    assert FitCheckpoint.load(checkpoint).step == epochs * 8  # written by rank 0

    pyro.clear_param_store()
    single = fit(*problem(n), config(epochs, batch_size))
    # Same switch draws, same batches; only the order of float additions differs (the ranks
    # sum their weighted gradients in float64), so agreement is to float32 rounding:
    # 1.2e-6 relative at most when measured; rtol 1e-4 leaves room for other builds.
    torch.testing.assert_close(ranks[0]["elbo"], torch.tensor(single.elbo, dtype=torch.float64), rtol=1e-4, atol=0)
    for name, concentration in single.concentrations.items():
        torch.testing.assert_close(ranks[0]["concentrations"][name], concentration, rtol=1e-4, atol=0)


@needs_gloo
def test_two_gloo_ranks_fit_a_hierarchical_prior_alike(tmp_path):
    # The autoguide's parameters join the all-reduce (in name order on every rank).
    n, batch_size = 96, 32
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(SCRIPT), str(out), "--examples", str(n), "--epochs", "1", "--batch-size", str(batch_size),
               "--threads", "1", "--hierarchical"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert sorted(ranks[0]["params"]) == sorted(
        ["AutoGuideList.1.locs.alpha", "AutoGuideList.1.scales.alpha", "conv1.switch.concentration",
         "conv2.switch.concentration", "fc1.switch.concentration"]
    )
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name

    pyro.clear_param_store()
    single = fit(*problem(n, hierarchical=True), config(1, batch_size))
    torch.testing.assert_close(ranks[0]["elbo"], torch.tensor(single.elbo, dtype=torch.float64), rtol=1e-4, atol=0)
    for name, value in pyro.get_param_store().named_parameters():
        torch.testing.assert_close(ranks[0]["params"][name], value.detach(), rtol=1e-4, atol=1e-6)


@needs_gloo
def test_two_gloo_ranks_stream_a_dataloader_as_one_process_does(tmp_path):
    # Each rank reads its DistributedSampler shard (16 of every 32 examples); the single
    # process reads the same permutation whole. 226 examples: the last global batch has 2.
    n, epochs, batch_size = 226, 2, 32
    out, checkpoint = tmp_path / "out", tmp_path / "fit.ckpt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(SCRIPT), str(out), "--examples", str(n), "--epochs", str(epochs), "--batch-size", str(batch_size),
               "--threads", "1", "--checkpoint", str(checkpoint), "--loader"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert torch.equal(ranks[0]["elbo"], ranks[1]["elbo"])
    for name, concentration in ranks[0]["concentrations"].items():
        assert torch.equal(concentration, ranks[1]["concentrations"][name])
    assert FitCheckpoint.load(checkpoint).step == epochs * 8

    pyro.clear_param_store()
    switches, data = problem(n)
    single = fit(switches, loader(data, batch_size, single_process=True), config(epochs, batch_size))
    assert len(single.elbo) == epochs * 8
    torch.testing.assert_close(ranks[0]["elbo"], torch.tensor(single.elbo, dtype=torch.float64), rtol=1e-4, atol=0)
    for name, concentration in single.concentrations.items():
        torch.testing.assert_close(ranks[0]["concentrations"][name], concentration, rtol=1e-4, atol=0)
    # and the order matters: a single process reading another permutation ends elsewhere
    pyro.clear_param_store()
    other = fit(switches, loader(data, batch_size), config(epochs, batch_size))
    assert not torch.allclose(torch.tensor(other.elbo, dtype=torch.float64), ranks[0]["elbo"], rtol=1e-4, atol=0)
