"""The streaming benchmark's harness on a tiny ImageFolder: both paths fit, and memory is read from /proc (issue 12, item 5)."""

import os
import zipfile

import pytest
import torch
from PIL import Image

from benchmarks.streaming import _memory_of_tree, extract_imagefolder, measure_path
from pyro_dirichlet.measure import peak_rss_bytes


@pytest.fixture
def tiny_archive(tmp_path):
    """A train.zip of 24 random 32x32 JPEGs in 3 classes, as the CIFAR-10 copy lays them out."""
    archive = tmp_path / "train.zip"
    generator = torch.Generator().manual_seed(0)
    with zipfile.ZipFile(archive, "w") as out:
        for index in range(24):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8).numpy()
            path = tmp_path / "image.jpg"
            Image.fromarray(pixels).save(path)
            out.write(path, f"train/class{index % 3}/{index:04d}.jpg")
    return archive


@pytest.mark.slow
def test_both_paths_fit_the_same_steps_and_report_their_memory(tiny_archive, tmp_path):
    threads = torch.get_num_threads()
    try:
        root = extract_imagefolder(tiny_archive, tmp_path / "folder")
        assert sum(1 for _ in root.glob("*/*.jpg")) == 24
        loader = measure_path("loader", root, steps=2, batch_size=8, workers=0, threads=1)
        preloaded = measure_path("preloaded", root, steps=2, batch_size=8, workers=0, threads=1)
        assert (root.parent / "train-float32.pt").is_file()  # the decoded tensor, kept for the next round
        again = measure_path("preloaded", root, steps=2, batch_size=8, workers=0, threads=1)
    finally:
        torch.set_num_threads(threads)
    for run in (loader, preloaded, again):
        assert run["steps"] == 2 and run["examples"] == 24 and run["seconds_per_step"] > 0
        assert run["peak_rss_process_bytes"] >= run["rss_before_data_bytes"] > 0
    assert loader["workers"] == 0 and preloaded["load_seconds"] > 0


def test_memory_is_read_for_a_process_and_its_children():
    mine = _memory_of_tree(os.getpid())
    assert 0 < mine <= peak_rss_bytes() and peak_rss_bytes(current=True) > 0
    assert _memory_of_tree(2**22 + 12345) == 0  # no such process: nothing resident
