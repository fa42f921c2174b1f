"""Where a run's task groups are learned when not in the driver's own process: Ray workers
(docs/METHOD.md §9).

Tasks are independent once the base network is fixed, so a run can hand its groups of tasks to
workers on this machine or on a cluster: `RayExecutor.map(job, groups)` runs `job(group)` on
Ray workers (`threads` CPU cores each, or a share of a GPU) and yields the results in the order of
`groups`, so the driver feeds masks into the memory and checkpoints exactly as when it learns them
itself. A worker that dies is replaced and its group run again (`retries` times).

Ray's services accept jobs from anyone who can reach them, without authentication. A Ray this
module starts itself therefore listens on 127.0.0.1 only and has no dashboard; a cluster is
joined only at an address the user passes. On Linux Ray binds its services (GCS, raylet, the
workers' gRPC servers, its agents) to the loopback address only when the node's address is a
loopback one, and it takes the machine's routable address unless its "cluster mode" is off
(environment variable RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when Ray is imported; passing
`_node_ip_address="127.0.0.1"` alone does not do it). After starting, the executor checks every
listening socket of its Ray processes and refuses to run if one is reachable from outside.
"""
from __future__ import annotations

import ipaddress
import os
from collections import deque
from typing import Callable, Iterable, Iterator

from supsup_hopfield.errors import UserError

LOCALHOST = "127.0.0.1"
OBJECT_STORE_BYTES = 512 * 2**20  # results are a group's masks: megabytes
_END = object()


def _call(job: Callable, item, threads: int):
    """Run on a worker: `job(item)` with `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    return job(item)


class RayExecutor:
    """Ray workers for a run: `workers` groups at once, `threads` cores each (and 1/`workers` of
    each GPU when the cluster has GPUs). Use as a context manager: a Ray started here is shut
    down on exit; an existing cluster (`address`) is only disconnected from."""

    def __init__(self, workers: int = 2, threads: int = 1, address: str | None = None, retries: int = 3):
        if int(workers) < 1 or int(threads) < 1:
            raise UserError(f"workers/threads: expected at least 1 each, got {workers}/{threads}; "
                            "pass `workers=1` `threads=1` or more")
        if not address:  # before Ray's first import: a private Ray binds the loopback address only
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("executor ray: Ray is not installed; install it with "
                            "pip install 'supsup-hopfield[ray]' (or pip install -e '.[ray]' in a checkout)") from None
        self.workers, self.threads, self.address, self.retries = int(workers), int(threads), address, int(retries)
        self._started = False

    def __enter__(self) -> "RayExecutor":
        import ray

        if ray.is_initialized():
            return self
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
            self._started = True
            return self
        # a private Ray on this machine: every service on the loopback address, no dashboard
        try:  # where Ray was imported before this executor set the variable (the check below stays)
            import ray._private.ray_constants as constants

            constants.ENABLE_RAY_CLUSTER = False
        except ImportError:
            pass
        ray.init(num_cpus=self.workers * self.threads, include_dashboard=False, log_to_driver=False,
                 object_store_memory=OBJECT_STORE_BYTES)
        self._started = True
        exposed = exposed_sockets()
        if exposed:
            self.__exit__()
            raise RuntimeError(f"the local Ray listened beyond {LOCALHOST} ({exposed[:3]}); it was shut down. "
                               "This Ray version binds differently: pass an existing cluster's address instead")
        return self

    def __exit__(self, *exc):
        import ray

        if self._started:
            ray.shutdown()
            self._started = False

    def _options(self) -> dict:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        options = {"num_cpus": self.threads, "max_retries": self.retries}
        if gpus:
            options["num_gpus"] = min(1.0, gpus / self.workers)
        return options

    def map(self, job: Callable, items: Iterable) -> Iterator:
        """`job(item)` for every item on the workers, yielded in the order of `items`; at most
        2 × workers items are under way at once (what they return waits in the driver's RAM)."""
        import ray

        if not ray.is_initialized():
            raise UserError("executor: Ray is not running; use the executor as `with RayExecutor(...) as ex:`")
        remote = ray.remote(_call).options(**self._options())
        job_ref = ray.put(job)
        pending = deque()
        items = iter(items)
        try:
            while True:
                while len(pending) < 2 * self.workers:
                    item = next(items, _END)
                    if item is _END:
                        break
                    pending.append(remote.remote(job_ref, item, self.threads))
                if not pending:
                    return
                yield ray.get(pending.popleft())
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def exposed_sockets(root_pid: int | None = None) -> list:
    """Listening TCP sockets of process `root_pid` (default this one) and all its descendants
    (every process of a Ray it started) bound to anything but a loopback address, as
    (pid, process name, address, port)."""
    try:
        import psutil
    except ImportError:  # Ray ships its own copy, on the path once Ray is imported
        import ray  # noqa: F401
        import psutil
    root = psutil.Process(root_pid or os.getpid())
    exposed = []
    for process in [root, *root.children(recursive=True)]:  # per process: no root rights needed
        try:
            connections = getattr(process, "net_connections", None) or process.connections
            listening = [c for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            name = process.name()
        except psutil.Error:  # it ended meanwhile
            continue
        for c in listening:
            address = ipaddress.ip_address(c.laddr.ip.split("%")[0])
            address = getattr(address, "ipv4_mapped", None) or address
            if not address.is_loopback:
                exposed.append((process.pid, name, c.laddr.ip, c.laddr.port))
    return exposed
