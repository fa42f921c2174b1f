"""What makes seeded recovery work, measured on a trained run's archive (docs/METHOD.md, "Recovery").

    python bench/recovery.py RUN.h5 [--stored K] [--rule projection-zd] [--tasks 8]

Rebuilds the run's memory from its first K explicit masks under the rule, then prints:

1. the cue: each stored task's seeded initial mask, its overlap with that task's trained mask,
   and the largest overlap with any other stored mask (per masked layer);
2. decoding every cue, three ways, on the same memory: asynchronous recall (the plain way),
   one annealed pass, and annealing with successive cancellation (the package's way): cues
   that came back exactly, and seconds;
3. selection: on a few tasks' test batches, the mean output entropy of the task's own masks
   against the lowest entropy of any other stored task's masks (the margin entropy has to
   tell the right candidate apart).
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supsup_hopfield.archive import read_archive  # noqa: E402
from supsup_hopfield.recovery import (RecoveryConfig, _Layout, candidate_entropies, decode,  # noqa: E402
                                      seeded_cues)
from supsup_hopfield.run import SavedRun, masks_by_layer, memory_slots, replay_memories, stream_and_net  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive")
    p.add_argument("--stored", type=int, help="masks in the memory [all the run's]")
    p.add_argument("--rule", default="projection-zd")
    p.add_argument("--tasks", type=int, default=8, help="tasks whose entropies are compared")
    a = p.parse_args()

    arc = read_archive(a.archive, packed_masks=True)
    k = a.stored or len(arc.per_task)
    cfg = SavedRun.from_config(arc.config, a.archive).run
    stream, net = stream_and_net(cfg, k, None, False)
    memories = replay_memories(arc.config, arc.masks, a.rule, k)
    slots = memory_slots(dataclasses.replace(cfg, memory_rule=a.rule))
    layout = _Layout(net, memories, slots)
    true = np.concatenate([np.asarray(m[:k]).reshape(k, -1) for m in masks_by_layer(arc.masks)], axis=1)
    cues = seeded_cues(net, cfg.train.mask_config, cfg.train.seed, range(k))
    print(f"{a.archive}: {k} masks of {cfg.model} {list(cfg.widths or [])}, {cfg.train.steps} steps each; "
          f"rule {a.rule}, {len(memories)} memories of d = {sorted({m.dim for m in memories.values()})}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    print("\n1. seeded cue overlap (2·agreement − 1) with the task's own mask, and the largest with another")
    for l, (a0, b0) in enumerate(zip(layout.offsets[:-1], layout.offsets[1:])):
        Z = 2 * true[:, a0:b0].astype(np.int32) - 1
        C = 2 * cues[:, a0:b0].astype(np.int32) - 1
        O = C @ Z.T / (b0 - a0)
        own = np.diag(O)
        other = np.where(np.eye(k, dtype=bool), -np.inf, O).max(axis=1)
        print(f"   layer {l}: own {own.mean():.3f} (min {own.min():.3f}), largest other {other.mean():.3f} "
              f"(max {other.max():.3f})")

    print("\n2. decoding every cue (cues whose recalled masks equal their task's, all layers)")
    for name, config in (("asynchronous recall (plain)", RecoveryConfig(recall="async")),
                         ("annealed recall, one pass", None),
                         ("annealed, successive cancellation", RecoveryConfig())):
        t0 = time.perf_counter()
        if config is None:
            parts = [m.recall(c, mode="anneal", seed=0) > 0 for m, c in zip(layout.memories, layout.to_slots(cues))]
            got = layout.from_slots(parts)
        else:
            got = decode(net, memories, cues, config, slots).masks
        secs = time.perf_counter() - t0
        print(f"   {name:<36} {int((got == true).all(axis=1).sum()):>5} of {k}   {secs:7.2f} s")

    print("\n3. mean output entropy on 4 test batches of 64: the task's own masks vs the lowest other")
    gaps = []
    for t in np.linspace(0, k - 1, min(a.tasks, k)).astype(int):
        xs = [x for x, _ in stream.task(int(t)).test_batches(64)][:4]
        h = sum(candidate_entropies(net, x, true, layout.shapes) for x in xs).numpy() / len(xs)
        other = np.delete(h, t).min()
        gaps.append(other - h[t])
        print(f"   task {t:>4}: own {h[t]:.3f}, lowest other {other:.3f}")
    print(f"   smallest margin {min(gaps):.3f} nats")


if __name__ == "__main__":
    main()
