"""Ray workers (supsup_hopfield/executors.py): a private Ray on 127.0.0.1 only, results in order,
dead workers retried, and a run's masks the same wherever its tasks are learned."""
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from supsup_hopfield.archive import read_archive  # noqa: E402
from supsup_hopfield.cli.main import app  # noqa: E402
from supsup_hopfield.executors import RayExecutor, exposed_sockets  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
# workers unpickle this module's functions by value: they cannot import the tests folder
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def executor():
    with RayExecutor(workers=2, threads=1) as ex:
        yield ex
    assert not ray.is_initialized()  # the Ray it started is shut down


def _listening(pid):
    import psutil

    tree = {p.pid for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]}
    return [c.laddr for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in tree]


def test_private_ray_listens_on_loopback_only(executor):
    listening = _listening(os.getpid())
    assert len(listening) >= 3, listening  # GCS, raylet, workers: the check looked at real sockets
    assert exposed_sockets() == [], listening
    assert all(a.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for a in listening)


def _square_dying_once(item, marker):
    """item²; the worker learning item 2 dies the first time (as a killed process would)."""
    time.sleep(0.05 * (5 - item))  # later items finish first
    if item == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return item * item


class _Job:
    def __init__(self, marker):
        self.marker = marker

    def __call__(self, item):
        return (_square_dying_once(item, self.marker), torch.get_num_threads())


def test_map_keeps_order_and_retries_a_worker_that_died(executor, tmp_path):
    results = list(executor.map(_Job(str(tmp_path / "died")), range(6)))
    assert [r for r, _ in results] == [i * i for i in range(6)]
    assert (tmp_path / "died").exists()  # a worker did die, and its item was run again
    assert {threads for _, threads in results} == {1}  # each worker runs with `threads` torch threads
    with pytest.raises(ray.exceptions.WorkerCrashedError):  # no retries left: the error reaches the driver
        list(RayExecutor(workers=2, retries=0).map(_Job(str(tmp_path / "again")), [2]))


def test_refuses_bad_sizes():
    with pytest.raises(ValueError, match="workers/threads: expected at least 1 each, got 0/1"):
        RayExecutor(workers=0)


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_ray_run_gives_the_masks_accuracies_and_memory_of_a_local_run(executor, tmp_path):
    args = ["train", "--tasks", "4", "--steps", "50", "--model", "hopnet", "--widths", "256,256", "--threads", "1",
            "--dataset", "permuted-fashion-mnist", "--device", "cpu"]
    threads = torch.get_num_threads()
    try:
        local = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "local.h5")])
    finally:
        torch.set_num_threads(threads)
    remote = CliRunner().invoke(app, [*args, "--executor", "ray", "--workers", "2", "--out", str(tmp_path / "ray.h5")])
    assert local.exit_code == 0 and remote.exit_code == 0, local.output + remote.output
    a, b = read_archive(tmp_path / "local.h5"), read_archive(tmp_path / "ray.h5")
    assert [t["mask_sha256"] for t in a.per_task] == [t["mask_sha256"] for t in b.per_task]
    assert [t["accuracy"] for t in a.per_task] == [t["accuracy"] for t in b.per_task]
    assert np.mean([t["accuracy"] for t in b.per_task]) > 0.6
    for name, memory in a.memories.items():
        np.testing.assert_array_equal(memory.weights, b.memories[name].weights)
    # the summary the command prints (mean accuracy, memories, fixed points) is the same
    assert local.stdout.splitlines() == [line.replace("ray.h5", "local.h5") for line in remote.stdout.splitlines()]
    assert local.stdout.count("\n") == 2, local.stdout  # the tasks line, and the one joint keyed memory
