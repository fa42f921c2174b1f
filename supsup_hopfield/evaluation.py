"""Evaluating a saved run (`supsup-hf eval`): per-task accuracy with the task given (GG), with
the task inferred from the explicit masks (oneshot / binary / g, DESIGN.md §1 "Task inference"),
or with each task's masks recovered from the Hopfield memory (hopfield, §1 "HopSupSup").

The run is rebuilt from its archive: base network from its seed, stream from its recipe, masks
and memories from the file. The result is one JSON-ready dict, and is appended to the archive's
`evaluations` (rewritten atomically).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from supsup_hopfield.archive import read_archive, write_archive
from supsup_hopfield.errors import UserError
from supsup_hopfield.run import RunConfig, stream_and_net

METHODS = ("gg", "oneshot", "binary", "g", "hopfield")


def evaluate_run(path, method: str = "oneshot", batch_size: int | None = None, data_dir=None,
                 device: str = "auto", record: bool = True) -> dict:
    """Evaluate every finished task of the run in archive `path` with `method`. batch_size None:
    128 (inference, gg), or the recovery's own default (hopfield)."""
    from supsup_hopfield.recovery import RecoveryConfig

    if method not in METHODS:
        raise UserError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if batch_size is None:
        batch_size = RecoveryConfig().batch_size if method == "hopfield" else 128
    if batch_size < 2:
        raise UserError(f"batch size: expected at least 2, got {batch_size}")
    path = Path(path)
    archive = read_archive(path, packed_masks=True)  # masks stay bit-packed (8x less RAM)
    if "run" not in archive.config or not archive.per_task:
        raise UserError(f"{path}: holds no trained tasks to evaluate; train into it with supsup-hf train")
    run, net_cfg = archive.config["run"], archive.config["base_network"]
    tasks = len(archive.per_task)
    if method == "hopfield":
        if net_cfg["architecture"] != "hopnet" or run["memory_layout"] != "per-layer":
            raise UserError(f"{path}: the hopfield method recovers hopnet neuron masks from per-layer "
                            f"memories; this run is {net_cfg['architecture']} with "
                            f"{run['memory_layout'] if run['memory_rule'] else 'no'} memory")
    elif not archive.masks:
        raise UserError(f"{path}: method {method} needs the explicit masks, and this run was trained "
                        f"with --no-keep-masks; use --method hopfield")
    cfg = RunConfig.from_dict(run)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))
    stream, net = stream_and_net(cfg, tasks, data_dir, download=False)
    start = time.perf_counter()
    if archive.config.get("scenario") == "nns":
        per_task = _nns(net, archive, stream, tasks, method, batch_size)
    elif method == "gg":
        per_task = _gg(net, archive, stream, tasks, batch_size)
    elif method == "hopfield":
        per_task = _hopfield(net, archive, stream, tasks, batch_size)
    else:
        per_task = _inferred(net, archive, stream, tasks, method, batch_size)
    found = [t["task_inference_accuracy"] for t in per_task if t["task_inference_accuracy"] is not None]
    result = {
        "method": method,
        "batch_size": batch_size,
        "tasks": tasks,
        "mean_accuracy": float(np.mean([t["accuracy"] for t in per_task])),
        "task_inference_accuracy": float(np.mean(found)) if found else None,
        "seconds_per_batch": float(np.mean([t.pop("seconds_per_batch") for t in per_task])),
        "seconds": time.perf_counter() - start,
        "per_task": per_task,
    }
    if record:
        archive.evaluations.append(result)
        write_archive(path, archive)
    return result


def _layer_masks(archive, t):
    return [archive.masks[f"layer{l}"][t] for l in range(len(archive.masks))]


def _gg(net, archive, stream, tasks, batch_size):
    import torch

    from supsup_hopfield.masks import masks_to_tensors

    out = []
    for t in range(tasks):
        masks = masks_to_tensors(_layer_masks(archive, t), device=net.device)
        correct = total = batches = 0
        seconds = 0.0
        with torch.no_grad():
            for x, y in stream.task(t).test_batches(batch_size):
                t0 = time.perf_counter()
                pred = net(x.to(net.device), masks).argmax(dim=1)
                seconds += time.perf_counter() - t0
                correct += int((pred == y.to(net.device)).sum())
                total += y.shape[0]
                batches += 1
        out.append({"task": t, "accuracy": correct / total, "task_inference_accuracy": 1.0,
                    "seconds_per_batch": seconds / batches})
    return out


def _inferred(net, archive, stream, tasks, method, batch_size):
    from supsup_hopfield.inference import PackedMaskBank, evaluate_inference

    # the archive's rows are the bank's rows: no unpacking
    bank = PackedMaskBank([archive.masks[f"layer{l}"].bits[:tasks] for l in range(len(archive.masks))],
                          net.mask_shapes)
    res = evaluate_inference(net, bank, stream, range(tasks), method=method, batch_size=batch_size)
    return [{"task": t, "accuracy": r["accuracy"], "task_inference_accuracy": r["task_inference_accuracy"],
             "task_given_accuracy": r["task_given_accuracy"], "seconds_per_batch": r["seconds_per_batch"]}
            for t, r in sorted(res.items())]


def _nns(net, archive, stream, tasks, method, batch_size):
    """An NNs run has its own masks, not one per task: infer among all of them per batch."""
    from supsup_hopfield.nns import evaluate_nns

    if method not in ("oneshot", "binary", "g"):
        raise UserError(f"method: an NNs run has no task ids to give (gg) and keeps its masks "
                        f"explicitly; use --method oneshot, binary or g, got {method!r}")
    n = len(archive.masks["layer0"])
    masks = [[archive.masks[f"layer{l}"][i] for l in range(len(archive.masks))] for i in range(n)]
    mapping = [t.get("mask") for t in archive.per_task]
    t0 = time.perf_counter()
    res = evaluate_nns(net, masks, stream, range(tasks), mapping, method, batch_size)
    per_batch = (time.perf_counter() - t0) / max(1, sum(r["batches"] for r in res.values()))
    return [{"task": t, "accuracy": r["accuracy"], "task_inference_accuracy": r.get("mapped_fraction"),
             "seconds_per_batch": per_batch} for t, r in sorted(res.items())]


def _hopfield(net, archive, stream, tasks, batch_size):
    from supsup_hopfield.recovery import RecoveryConfig, evaluate_recovery

    rows = evaluate_recovery(net, archive, stream, range(tasks), RecoveryConfig(batch_size=batch_size))
    # the task counts as found when every layer's recovered mask is the stored one (unknown
    # without explicit masks); time per batch = recovery time over the descent's steps
    return [{"task": r["task"], "accuracy": r["accuracy"],
             "task_inference_accuracy": None if r["hamming"] is None else float(not any(r["hamming"])),
             "hamming": r["hamming"], "steps": r["steps"], "task_given_accuracy": r["gg_accuracy"],
             "seconds_per_batch": r["seconds"] / max(1, r["steps"])} for r in rows]


def format_table(result: dict) -> str:
    lines = [f"method {result['method']}, {result['tasks']} tasks, batches of {result['batch_size']}",
             f"{'task':>5}  {'accuracy':>8}  {'task found':>10}" +
             ("  hamming per layer  steps" if result["method"] == "hopfield" else "")]
    for t in result["per_task"]:
        found = t["task_inference_accuracy"]
        line = f"{t['task']:>5}  {t['accuracy']:>8.4f}  {'?' if found is None else f'{found:.3f}':>10}"
        if "hamming" in t:
            line += f"  {str(t['hamming']):>17}  {t['steps']}"
        lines.append(line)
    found = result["task_inference_accuracy"]
    lines.append(f"mean accuracy {result['mean_accuracy']:.4f}; task found for "
                 f"{'?' if found is None else f'{found:.1%}'} of "
                 f"{'tasks' if result['method'] == 'hopfield' else 'batches'}; "
                 f"{result['seconds_per_batch'] * 1e3:.1f} ms per batch")
    return "\n".join(lines)


def plot_accuracy(result: dict, path) -> None:
    """PNG: accuracy against task index (and the task-given accuracy where known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = [t["task"] for t in result["per_task"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(tasks, [t["accuracy"] for t in result["per_task"]], "o-", ms=3,
            label=f"{result['method']} (mean {result['mean_accuracy']:.3f})")
    gg = [t.get("task_given_accuracy") for t in result["per_task"]]
    if all(g is not None for g in gg) and result["method"] != "gg":
        ax.plot(tasks, gg, "--", color="gray", label=f"task given (mean {np.mean(gg):.3f})")
    ax.set_xlabel("task")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(f"Accuracy per task, method {result['method']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
