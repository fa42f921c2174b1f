"""Benchmark one-shot task inference from packed masks against the plain way, in the same run.

    python bench/infer.py            # 10, 250 and 2500 masks, both ways
    python bench/infer.py --quick    # 10 and 250 masks, fewer repetitions
    python bench/infer.py --threads 1
    python bench/infer.py --passive  # OMP_WAIT_POLICY=PASSIVE: steadier on shared cores

Network: LeNet 784-300-100-500 (315,200 mask entries per task); masks: random, 50% dense; one
batch of 128 random images. Per configuration, a fresh subprocess (so its peak memory is its own):
  * packed — `packed.PackedMaskBank` (39,400 bytes per task) and `inference.infer_task`:
             superposition by the count kernel, autograd w.r.t. the (entries,) superposed masks,
             dH/dalpha by the inner-product kernel;
  * plain  — the paper's way: per layer a (k, entries) float32 tensor of all masks in memory,
             S = alpha @ M, autograd w.r.t. alpha (which computes M @ dH/dS).
Both ways see the same masks (the plain way unpacks the packed ones, a few hundred rows at a
time) and must pick the same task. Time: median over repetitions of the whole one-shot inference
of a batch. Peak: the subprocess's maxrss (getrusage) at the end minus maxrss just before the masks
are built (after imports, the model and a warm-up on a tiny bank, so kernels are compiled): masks
plus everything inference allocates. Target: packed <= 120 ms per batch at 2500 masks on 2 cores,
peak < 2 x packed masks + model.

On cores shared with other busy processes, OpenMP's default spin-waiting (torch's and numba's
thread pools both) makes every thread barrier stall for up to a scheduler time slice: both ways
then run several times slower with 2 threads than with 1. `--passive` (OMP_WAIT_POLICY=PASSIVE)
or `--threads 1` give the steady figures there; the header prints the load average to compare.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numba
import numpy as np
import torch

from supsup_hopfield.basenet import build_basenet
from supsup_hopfield.inference import entropy_objective, infer_task
from supsup_hopfield.packed import PackedMaskBank, packed_bytes

OUTPUTS = 500
BATCH = 128
SEED = 0


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def random_packed(net, k):
    rng = np.random.default_rng(SEED)
    return [rng.integers(0, 256, size=(k, packed_bytes(int(np.prod(s)))), dtype=np.uint8) for s in net.mask_shapes]


def warm_up(x):
    """Load the kernels (both inner kernels) and start torch's autograd and thread pools on a
    tiny network, so that none of it counts in the peak."""
    tiny = build_basenet("lenet", widths=(8, 8), outputs=12)
    for k in (4, 80):
        infer_task(tiny, PackedMaskBank(random_packed(tiny, k), tiny.mask_shapes), x[:4])


def run_packed(net, k, reps, x):
    base = maxrss_bytes()
    packed = random_packed(net, k)
    bank = PackedMaskBank(packed, net.mask_shapes)
    del packed  # the bank holds its own copy
    times, sup, inn = [], [], []
    answer = infer_task(net, bank, x)
    for _ in range(reps):
        t = time.perf_counter()
        infer_task(net, bank, x)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = bank.superpose()
        sup.append(time.perf_counter() - t)
        t = time.perf_counter()
        bank.inner(s)
        inn.append(time.perf_counter() - t)
    return {"answer": answer, "seconds": statistics.median(times), "superpose": statistics.median(sup),
            "inner": statistics.median(inn), "peak": maxrss_bytes() - base, "masks_bytes": bank.nbytes}


def run_plain(net, k, reps, x):
    base = maxrss_bytes()
    packed = random_packed(net, k)
    stacked = []  # per layer (k, entries) float32: the masks as the paper's code holds them
    for p, shape in zip(packed, net.mask_shapes):
        n = int(np.prod(shape))
        m = torch.empty(k, n, dtype=torch.float32)
        for r in range(0, k, 200):
            m[r:r + 200] = torch.from_numpy(np.unpackbits(p[r:r + 200], axis=1, count=n))
        stacked.append(m)
    del packed

    def infer():
        alpha = torch.full((k,), 1.0 / k, requires_grad=True)
        supers = [(alpha @ m).view(shape) for m, shape in zip(stacked, net.mask_shapes)]
        grad, = torch.autograd.grad(entropy_objective(net(x, supers)), alpha)
        return int(grad.argmin())

    answer = infer()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        infer()
        times.append(time.perf_counter() - t)
    return {"answer": answer, "seconds": statistics.median(times), "peak": maxrss_bytes() - base,
            "masks_bytes": sum(m.numel() * 4 for m in stacked)}


def child(way, k, reps, threads):
    k, reps, threads = int(k), int(reps), int(threads)
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    net = build_basenet("lenet", outputs=OUTPUTS, seed=SEED)
    x = torch.randn(BATCH, 784, generator=torch.Generator().manual_seed(SEED))
    warm_up(x)
    result = (run_packed if way == "packed" else run_plain)(net, k, reps, x)
    result["model_bytes"] = sum(w.numel() * 4 for w in net.weights)
    print(json.dumps(result))


def spawn(way, k, reps, threads, passive):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE") if passive else None
    out = subprocess.run([sys.executable, __file__, "--child", way, str(k), str(reps), str(threads)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 250 masks, fewer repetitions")
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    parser.add_argument("--passive", action="store_true",
                        help="run both ways with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead "
                             "of spinning: much steadier on cores shared with other processes)")
    parser.add_argument("--child", nargs=4, metavar=("WAY", "K", "REPS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    counts = (10, 250) if args.quick else (10, 250, 2500)
    reps = 5 if args.quick else 10
    mb = 1e6
    print(f"one-shot task inference, LeNet 784-300-100-{OUTPUTS}, batch {BATCH}, random 50% masks; "
          f"torch {torch.__version__}, {os.cpu_count()} cores, {args.threads} threads (torch and numba), "
          f"OMP_WAIT_POLICY={'PASSIVE' if args.passive else os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"load average {os.getloadavg()[0]:.2f}")
    rows = []
    for k in counts:
        fast = spawn("packed", k, reps, args.threads, args.passive)
        plain_bytes = k * 315_200 * 4
        if plain_bytes * 1.5 + 1e9 < available_bytes():
            plain = spawn("plain", k, max(2, reps // 3) if k >= 1000 else reps, args.threads, args.passive)
        else:
            plain = None
            print(f"  plain way at {k} masks skipped: {plain_bytes / mb:.0f} MB of float masks do not fit")
        rows.append((k, fast, plain))
    head = (f"{'masks':>6} | {'packed MB':>9} | {'ms/batch':>8} | {'superpose':>9} | {'inner':>6} | {'peak MB':>7} |"
            f" {'target MB':>9} | {'plain MB':>8} | {'ms/batch':>8} | {'peak MB':>7} | {'speed x':>7} |"
            f" {'memory x':>8} | same task")
    print(head)
    print("-" * len(head))
    for k, fast, plain in rows:
        target = 2 * fast["masks_bytes"] + fast["model_bytes"]
        cells = (f"{k:>6} | {fast['masks_bytes'] / mb:>9.2f} | {fast['seconds'] * 1e3:>8.1f} |"
                 f" {fast['superpose'] * 1e3:>9.1f} | {fast['inner'] * 1e3:>6.1f} | {fast['peak'] / mb:>7.1f} |"
                 f" {target / mb:>9.1f} |")
        if plain is None:
            cells += f" {'-':>8} | {'-':>8} | {'-':>7} | {'-':>7} | {'-':>8} | -"
        else:
            cells += (f" {plain['masks_bytes'] / mb:>8.0f} | {plain['seconds'] * 1e3:>8.1f} | {plain['peak'] / mb:>7.0f} |"
                      f" {plain['seconds'] / fast['seconds']:>7.1f} | {plain['peak'] / max(fast['peak'], 1):>8.1f} |"
                      f" {'yes' if plain['answer'] == fast['answer'] else 'NO'}")
        print(cells)
    print(f"load average at the end {os.getloadavg()[0]:.2f} (other processes on the same cores slow "
          "every thread barrier: compare runs made under the same load)")
    print("ms/batch: median one-shot inference of one batch; superpose/inner: the two kernels alone "
          "(ms, all layers); peak: maxrss growth from just before the masks are built; target: "
          "2 x packed masks + model; speed x / memory x: plain over packed.")


if __name__ == "__main__":
    main()
