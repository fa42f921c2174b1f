"""Shared fixtures: a small trained run (hopnet 64-64 on split Fashion-MNIST) reused by tests."""
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """Archive of 3 tasks x 30 steps of hopnet (64, 64) on split Fashion-MNIST, per-layer projection-zd."""
    if not FASHION.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    from supsup_hopfield.run import RunConfig, train_run
    from supsup_hopfield.training import TrainConfig

    path = tmp_path_factory.mktemp("run") / "small.h5"
    cfg = RunConfig(dataset="split-fashion-mnist", model="hopnet", widths=(64, 64),
                    train=TrainConfig.for_architecture("hopnet", steps=30, device="cpu"))
    train_run(cfg, 3, path)
    return path
