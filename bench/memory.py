"""Benchmark the Hopfield memory engine against the plain way, in the same run.

    python bench/memory.py            # d = 2048, 2048 random patterns per rule
    python bench/memory.py --quick    # d = 2048, 512 patterns, fewer repetitions

Insertion, per rule:
  * blocked   — `HopfieldMemory.store(all patterns)` (exact blocked GEMM insertion);
  * kernel    — `store(z)` one pattern at a time (Numba, two passes over Ψ);
  * plain     — the rule's definition with full d×d temporaries, one pattern at a time (as the
                paper's public code does), `rules.plain_update`;
  * sgemm     — the time this machine's sgemm needs for 6·d² flops, the blocked path's work per
                pattern (rate measured here, on a (d×d)·(d×512) float32 product).
Recall: asynchronous recall (Numba, incremental fields) against a per-neuron Python loop that
recomputes each field (`dynamics.plain_async`), same random orders.
Keyed memory (d mask entries x K keys, `keyed.KeyedMemory`; --keys, default d): storing the masks
16 at a time (one integer-exact GEMM, as a run with --parallel-tasks 16 does), one at a time (the
Numba kernel, one pass over W), the plain outer product with a key built from its definition
(`keyed.plain_store`), and decoding every stored mask (`recall()`, one GEMM) against one
matrix-vector product per mask.
"""
import argparse
import time

import numpy as np

from supsup_hopfield import dynamics, keyed, rules
from supsup_hopfield.memory import HopfieldMemory


def best_of(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def sgemm_gflops(d):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((d, d), dtype=np.float32)
    b = rng.standard_normal((d, 512), dtype=np.float32)
    return 2 * d * d * 512 / best_of(lambda: a @ b, 5) / 1e9


def copy_bandwidth_gbs():
    a = np.ones(64 * 2**20 // 4, np.float32)  # 64 MiB
    b = np.empty_like(a)
    return 2 * a.nbytes / best_of(lambda: np.copyto(b, a), 5) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--keys", type=int, help="keyed memory: keys [the dim]")
    args = ap.parse_args()
    d = args.dim
    n = 512 if args.quick else 2048
    n_plain = 3 if args.quick else 8
    rng = np.random.default_rng(0)
    Z = np.where(rng.random((n, d)) < 0.5, 1, -1).astype(np.int8)

    gflops = sgemm_gflops(d)
    bw = copy_bandwidth_gbs()
    t_gemm = 6 * d * d / (gflops * 1e9)
    print(f"d = {d}, {n} patterns; sgemm {gflops:.0f} GFLOP/s, copy bandwidth {bw:.1f} GB/s "
          f"(measured now); 6·d² flops at sgemm rate = {t_gemm * 1e3:.3f} ms")
    print(f"{'rule':<14}{'blocked ms':>11}{'kernel ms':>10}{'plain ms':>10}{'plain/blocked':>14}"
          f"{'blocked/sgemm':>14}{'GFLOP/s':>9}{'kernel GB/s':>12}")
    for rule in ("hebbian", "storkey-paper", "storkey", "projection"):  # projection-zd learns as projection;
        HopfieldMemory(d, rule).store(Z[:40])                         # margin relearns from all (no update)  # compile and warm up
        HopfieldMemory(d, rule).store(Z[0])
        t_blocked = best_of(lambda: HopfieldMemory(d, rule).store(Z), 1 if n > 1000 else 2) / n
        mem = HopfieldMemory(d, rule).store(Z[:n // 2])
        k = min(32, n // 2)

        def one_by_one():
            for z in Z[n // 2:n // 2 + k]:
                mem.store(z)
        t_kernel = best_of(one_by_one, 1) / k
        Zf = Z.astype(np.float32)

        def plain():
            W = np.zeros((d, d), np.float32)
            for z in Zf[:n_plain]:
                W = rules.plain_update(rule, W, z)
        t_plain = best_of(plain, 1) / n_plain
        print(f"{rule:<14}{t_blocked * 1e3:>11.3f}{t_kernel * 1e3:>10.2f}{t_plain * 1e3:>10.1f}"
              f"{t_plain / t_blocked:>13.0f}x{t_blocked / t_gemm:>13.2f}x"
              f"{6 * d * d / t_blocked / 1e9:>9.0f}{3 * d * d * 4 / t_kernel / 1e9:>12.1f}")

    # Asynchronous recall: Numba vs the per-neuron Python loop, same cues and orders.
    mem = HopfieldMemory(d, "storkey").store(Z[:min(n, 200)])
    cues = Z[:16].copy()
    flip = np.random.default_rng(1).random(cues.shape) < 0.1
    cues[flip] *= -1
    clamp = np.zeros(d, bool)
    mem.recall(cues[:1], mode="async", seed=0)  # compile
    t_fast = best_of(lambda: mem.recall(cues, mode="async", seed=0), 3) / len(cues)
    n_slow = 2 if args.quick else 4
    r = np.random.default_rng(0)
    t_slow = best_of(lambda: [dynamics.plain_async(mem.weights, c, clamp, 100, r) for c in cues[:n_slow]], 1) / n_slow
    out = mem.recall(cues, mode="async", seed=0)
    print(f"\nasync recall, storkey memory with {min(n, 200)} patterns, cues with 10% bits flipped "
          f"({(out == Z[:16]).all(axis=1).mean():.0%} recalled exactly):")
    print(f"  Numba {t_fast * 1e3:.2f} ms per cue, plain loop {t_slow * 1e3:.0f} ms per cue: "
          f"{t_slow / t_fast:.0f}x")
    bench_keyed(Z, args.keys or d, gflops, bw, args.quick)


def bench_keyed(Z, K, gflops, bw, quick):
    """The keyed memory: store and decode, fast paths against the plain definitions."""
    n, d = min(len(Z), K), Z.shape[1]
    Z = Z[:n]
    keyed.KeyedMemory(d, K).store(Z[:16]).store(Z[16])  # compile and warm up

    def grouped():
        mem = keyed.KeyedMemory(d, K)
        for s in range(0, n, 16):
            mem.store(Z[s:s + 16])
        return mem
    t_group = best_of(grouped, 1 if n > 1000 else 2) / n
    mem = keyed.KeyedMemory(d, K)
    k = min(32, n)
    t_one = best_of(lambda: [mem.store(z) for z in Z[:k]], 1) / k
    n_plain = 2 if quick else 4
    t_plain = best_of(lambda: keyed.plain_store(Z[:n_plain], K, 0), 1) / n_plain
    mem = grouped()
    t_decode = best_of(mem.recall, 2) / n
    Wf = mem.weights.astype(np.float32)
    keys = keyed.make_keys(np.arange(n), K, 0).astype(np.float32)
    m = min(n, 64)
    t_matvec = best_of(lambda: [Wf @ k for k in keys[:m]], 2) / m
    assert (mem.recall() == Z).all()
    item = mem.weights.itemsize
    print(f"\nkeyed memory, d = {d} x {K} keys ({item}-byte integers, {mem.nbytes / 1e6:.1f} MB), {n} masks "
          f"(all given back exactly):")
    print(f"  store 16 at a time {t_group * 1e3:.2f} ms per mask ({2 * d * K / t_group / 1e9:.0f} GFLOP/s of "
          f"GEMM work, {2 * d * K * item / t_group / 1e9:.1f} GB/s of W traffic); one at a time "
          f"{t_one * 1e3:.2f} ms ({2 * d * K * item / t_one / 1e9:.1f} GB/s, copy {bw:.1f}); plain "
          f"{t_plain * 1e3:.0f} ms: {t_plain / t_group:.0f}x the grouped path")
    print(f"  decode every mask {t_decode * 1e3:.3f} ms per mask ({2 * d * K / t_decode / 1e9:.0f} GFLOP/s, "
          f"sgemm {gflops:.0f}); one matrix-vector product per mask {t_matvec * 1e3:.2f} ms: "
          f"{t_matvec / t_decode:.1f}x")


if __name__ == "__main__":
    main()
