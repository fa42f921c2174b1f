"""What each context of the `delta-context` codec buys, measured on a trained run's masks.

    python bench/contexts.py run.h5

For every weight-masked layer and task, the flips against the seeded initial mask are priced
(ideal bits: each context's empirical flip rate, plus one byte per context used for its rate)
under growing context sets: none (the `delta` codec's single rate), the |initial score| bucket,
the bucket and the direction bit (initial mask xor weight sign), and the direction turned by
the row and column side bits (counted at one bit each). The last line is the codec itself, real
bytes, against `delta`'s real bytes, with its encode and decode rate, in the same run.
"""
import argparse
import time

import numpy as np

from supsup_hopfield.archive import read_archive
from supsup_hopfield.compression.codecs import CODECS, CONTEXT_BUCKETS, _side_bits
from supsup_hopfield.run import masks_by_layer, seeded_context


def ideal_bits(flips, ctx):
    n = np.bincount(ctx)
    ones = np.bincount(ctx, weights=flips)
    p = np.clip(ones / np.maximum(n, 1), 1e-12, 1 - 1e-12)
    return float(-(ones * np.log2(p) + (n - ones) * np.log2(1 - p)).sum() + 8 * np.count_nonzero(n))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    args = parser.parse_args()
    archive = read_archive(args.archive)
    layers = masks_by_layer(archive.masks)
    codec = CODECS["delta-context"]
    bits = {"delta (one rate)": 0.0, "|s0| bucket": 0.0, "bucket + direction": 0.0,
            "bucket + direction with row/column bits": 0.0}
    real = {"delta": 0, "delta-context": 0}
    entries, seconds = 0, {"encode": 0.0, "decode": 0.0}
    for l, masks in enumerate(layers):
        scores, weights = seeded_context(archive.config, l, len(masks))
        for t in range(len(masks)):
            mask = np.asarray(masks[t])
            initial, bucket, direction = codec.parts(mask.shape, (scores[t], weights))
            flips = (mask.reshape(initial.shape) ^ initial).ravel().astype(np.float64)
            rows, cols = _side_bits(flips.reshape(initial.shape).astype(bool), direction)
            turned = direction ^ rows[:, None] ^ cols[None, :]
            b = bucket.astype(np.int64).ravel()
            bits["delta (one rate)"] += ideal_bits(flips, np.zeros(flips.size, np.int64))
            bits["|s0| bucket"] += ideal_bits(flips, b)
            bits["bucket + direction"] += ideal_bits(flips, 2 * b + direction.ravel())
            bits["bucket + direction with row/column bits"] += ideal_bits(flips, 2 * b + turned.ravel()) + \
                rows.size + cols.size
            t0 = time.perf_counter()
            blob = codec.encode(mask, base=(scores[t], weights))
            t1 = time.perf_counter()
            assert np.array_equal(codec.decode(blob, base=(scores[t], weights)), mask)
            seconds["encode"] += t1 - t0
            seconds["decode"] += time.perf_counter() - t1
            real["delta-context"] += len(blob)
            real["delta"] += len(CODECS["delta"].encode(mask, base=initial.reshape(mask.shape)))
            entries += mask.size
    print(f"{args.archive}: {len(layers)} layers x {len(layers[0])} tasks, {entries:,} mask entries; "
          f"{CONTEXT_BUCKETS} |s0| buckets")
    for name, b in bits.items():
        print(f"  {name:<42} {b / entries:.4f} bits/entry (ideal)")
    ratio = real["delta-context"] / real["delta"]
    print(f"  codec: delta-context {8 * real['delta-context'] / entries:.4f} bits/entry, delta "
          f"{8 * real['delta'] / entries:.4f} ({ratio:.3f}x); delta-context encodes "
          f"{entries / seconds['encode'] / 1e6:.1f} MB/s, decodes {entries / seconds['decode'] / 1e6:.1f} MB/s")


if __name__ == "__main__":
    main()
