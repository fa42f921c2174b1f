"""Evaluating a saved run (`supsup-hf eval`): per-task accuracy with the task given (GG), with
the task inferred from the explicit masks (oneshot / binary / g, docs/METHOD.md §6),
or with each task's masks recovered from the Hopfield memory (hopfield, §1 "HopSupSup").

The run is rebuilt from its archive: base network from its seed, stream from its recipe, masks
and memories from the file. The result is one JSON-ready dict, and is appended to the archive's
`evaluations` (rewritten atomically). `replay_recovery` rebuilds the memory from the run's first
k explicit masks under other rules and measures recovery for each k (docs/METHOD.md).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from supsup_hopfield.archive import read_archive, write_archive
from supsup_hopfield.errors import UserError
from supsup_hopfield.run import SavedRun, masks_by_layer, stream_and_net
from supsup_hopfield.training import autocast, check_precision

METHODS = ("gg", "oneshot", "binary", "g", "hopfield")


def _read_run(path, tasks):
    """(archive, its SavedRun, the task indices to evaluate) of a saved run, checked."""
    archive = read_archive(path, packed_masks=True)  # masks stay bit-packed (8x less RAM)
    if "run" not in archive.config or not archive.per_task:
        raise UserError(f"{path}: holds no trained tasks to evaluate; train into it with supsup-hf train")
    n = len(archive.per_task)
    chosen = list(range(n)) if tasks is None else [int(t) for t in tasks]
    if not chosen or any(not 0 <= t < n for t in chosen):
        raise UserError(f"tasks: expected task indices in 0..{n - 1} (the run's {n} tasks), got "
                        f"{_span(chosen)}; pass e.g. `tasks='0:{n}'`")
    return archive, SavedRun.from_config(archive.config, str(path)), chosen


def _rebuild(archive, saved: SavedRun, data_dir, device, download: bool = True):
    """The saved run's stream and base network, on `device`."""
    cfg = dataclasses.replace(saved.run, train=dataclasses.replace(saved.run.train, device=device))
    return stream_and_net(cfg, len(archive.per_task), data_dir, download)


def _span(tasks) -> str:
    return "none" if not tasks else (f"[{tasks[0]}, ..., {tasks[-1]}]" if len(tasks) > 3 else str(tasks))


def parse_tasks(text: str, n: int | None = None) -> range:
    """'START:STOP[:STEP]' (Python slice syntax, STOP may be empty with `n` known) or one index."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            start = int(parts[0])
            return range(start, start + 1)
        if len(parts) not in (2, 3) or (parts[1] == "" and n is None):
            raise ValueError
        start = int(parts[0] or 0)
        stop = int(parts[1]) if parts[1] else n
        step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
    except ValueError:
        raise UserError(f"tasks: expected START:STOP[:STEP] or one index (e.g. 0:250:10), got {text!r}") from None
    if step < 1 or stop <= start or start < 0:
        raise UserError(f"tasks: expected 0 <= START < STOP and STEP >= 1, got {text!r}; pass e.g. 0:250:10")
    return range(start, stop, step)


def evaluate_run(path, method: str = "oneshot", batch_size: int | None = None, data_dir=None,
                 device: str = "auto", record: bool = True, tasks=None, recovery=None,
                 progress=None, precision: str = "32", download: bool = True) -> dict:
    """Evaluate the run in archive `path` with `method` on `tasks` (default every finished task).
    batch_size None: 128 (inference, gg), or the recovery's own default (hopfield). `recovery`:
    a RecoveryConfig for the hopfield method. `progress(done, total)` after every task. The
    network's forward passes run at `precision` ("32" or "bf16-mixed"). `download`: fetch the
    run's dataset into `data_dir` when its files are missing (`data.load_dataset`)."""
    from supsup_hopfield.recovery import RecoveryConfig

    if method not in METHODS:
        raise UserError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    recovery = RecoveryConfig() if recovery is None else recovery
    if batch_size is None:
        batch_size = recovery.batch_size if method == "hopfield" else 128
    if batch_size < 2:
        raise UserError(f"batch size: expected at least 2, got {batch_size}")
    check_precision(precision)
    path = Path(path)
    archive, saved, chosen = _read_run(path, tasks)
    if method == "hopfield" and not archive.memories:
        raise UserError(f"{path}: this run kept no Hopfield memory (`memory_rule='none'`); replay its explicit "
                        f"masks into one with `memory_rule=R` `stored=K`")
    if method != "hopfield" and not archive.masks:
        raise UserError(f"{path}: method {method} needs the explicit masks, and this run was trained "
                        f"with `keep_masks=False`; use `method='hopfield'`")
    stream, net = _rebuild(archive, saved, data_dir, device, download)
    start = time.perf_counter()
    with autocast(net.device, precision):
        if saved.scenario == "nns":
            per_task = _nns(net, archive, stream, chosen, method, batch_size, progress)
        elif method == "gg":
            per_task = _gg(net, archive, stream, chosen, batch_size, progress)
        elif method == "hopfield":
            per_task = _hopfield(net, archive, stream, chosen, dataclasses.replace(recovery, batch_size=batch_size),
                                 progress)
        else:
            per_task = _inferred(net, archive, stream, chosen, method, batch_size, progress)
    found = [t["task_inference_accuracy"] for t in per_task if t["task_inference_accuracy"] is not None]
    result = {
        "method": method,
        "batch_size": batch_size,
        "precision": precision,
        "tasks": len(chosen),
        "mean_accuracy": float(np.mean([t["accuracy"] for t in per_task])),
        "task_inference_accuracy": float(np.mean(found)) if found else None,
        "seconds_per_batch": float(np.mean([t.pop("seconds_per_batch") for t in per_task])),
        "seconds": time.perf_counter() - start,
        "per_task": per_task,
    }
    if method == "hopfield":
        result["recovery"] = recovery.to_dict()
    if record:
        archive.evaluations.append(result)
        write_archive(path, archive)
    return result


def replay_recovery(path, rules, stored, tasks=None, batch_size: int | None = None, data_dir=None,
                    device: str = "auto", recovery=None, baseline: bool = True, record: bool = True,
                    progress=None, precision: str = "32", download: bool = True) -> dict:
    """Memory replay: for every rule in `rules` and count k in `stored`, rebuild the run's memory
    from its first k explicit masks under that rule (`run.replay_memories`, no retraining) and
    recover tasks from it: those of `tasks` below k (default all k). With `baseline`, the
    paper's method (`RecoveryConfig.paper()`) runs on the same memories and tasks too.

    Returns {"method": "hopfield-replay", "rows": [one per (rule, k, recovery): rule, stored,
    recovery, tasks, exact_fraction, mean_accuracy, mean_gg_accuracy, seconds_per_task,
    per_task]}, also recorded in the archive. Forward passes run at `precision`; `download` as
    in `evaluate_run`."""
    from supsup_hopfield.recovery import RecoveryConfig, evaluate_recovery
    from supsup_hopfield.run import MEMORY_RULES as RULES, replay_memories

    recovery = RecoveryConfig() if recovery is None else recovery
    if batch_size is not None:
        recovery = dataclasses.replace(recovery, batch_size=batch_size)
    check_precision(precision)
    rules = list(rules)
    for rule in rules:
        if rule not in RULES:
            raise UserError(f"memory rule: expected one of {', '.join(RULES)}, got {rule!r}")
    path = Path(path)
    archive, saved, chosen = _read_run(path, tasks)
    if saved.scenario == "nns":
        raise UserError(f"{path}: holds an NNs run, whose masks are not one per task; replay needs a run "
                        f"trained with the task given (`scenario='gg'`)")
    if not archive.masks:
        raise UserError(f"{path}: replay rebuilds the memory from the explicit masks, and this run was "
                        f"trained with `keep_masks=False`")
    n = len(archive.per_task)
    stored = sorted({int(k) for k in stored})
    if not stored or stored[0] < 1 or stored[-1] > n:
        raise UserError(f"stored: expected counts in 1..{n} (the run's explicit masks), got {stored}; "
                        f"pass e.g. `stored=(10, {n})`")
    stream, net = _rebuild(archive, saved, data_dir, device, download)
    methods = [recovery] + ([RecoveryConfig.paper(batch_size=recovery.batch_size)] if baseline else [])
    # the paper's descent runs on an attractor memory's energy: a keyed memory has none to descend
    jobs = [(rule, k, rec) for rule in rules for k in stored for rec in methods
            if not (rule == "keyed" and rec.method == "descent")]
    total = sum(len([t for t in chosen if t < k]) for _, k, _ in jobs)
    done, gg = 0, {}  # task-given accuracies: the same for every rule and count
    rows = []
    built = {}  # (rule, k) -> memories, shared by the recovery methods
    for rule, k, rec in jobs:
        subset = [t for t in chosen if t < k]
        if not subset:
            continue
        if (rule, k) not in built:
            built = {(rule, k): replay_memories(archive.config, archive.masks, rule, k)}
        memories = built[rule, k]

        def step(i, _total, base=done):
            if progress is not None:
                progress(base + i, total)

        with autocast(net.device, precision):
            records = evaluate_recovery(net, archive, stream, subset, rec, memories=memories, progress=step,
                                        gg_cache=gg)
        done += len(subset)
        exact = [r["hamming"] is not None and not any(r["hamming"]) for r in records]
        rows.append({"rule": rule, "stored": k, "recovery": "paper" if rec.method == "descent" else rec.method,
                     "tasks": len(subset), "exact_fraction": float(np.mean(exact)),
                     "mean_accuracy": float(np.mean([r["accuracy"] for r in records])),
                     "mean_gg_accuracy": float(np.mean([r["gg_accuracy"] for r in records])),
                     "seconds_per_task": float(np.mean([r["seconds"] for r in records])),
                     "per_task": records})
    result = {"method": "hopfield-replay", "batch_size": recovery.batch_size, "precision": precision,
              "recovery": recovery.to_dict(), "rows": rows}
    if record:
        archive.evaluations.append(result)
        write_archive(path, archive)
    return result


def format_replay(result: dict) -> str:
    lines = ["recovery against stored masks (memory replayed from the run's explicit masks)",
             f"{'rule':<14} {'stored':>6} {'recovery':>8} {'tasks':>5} {'exact':>6} {'accuracy':>8} "
             f"{'task given':>10} {'s/task':>7}"]
    for r in result["rows"]:
        lines.append(f"{r['rule']:<14} {r['stored']:>6} {r['recovery']:>8} {r['tasks']:>5} "
                     f"{r['exact_fraction']:>6.3f} {r['mean_accuracy']:>8.4f} {r['mean_gg_accuracy']:>10.4f} "
                     f"{r['seconds_per_task']:>7.2f}")
    return "\n".join(lines)


def plot_replay(result: dict, path) -> None:
    """PNG: fraction of tasks recovered exactly against masks stored, one line per rule and
    recovery method, and the accuracy kept (recovered over task-given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    rules = list(dict.fromkeys(r["rule"] for r in result["rows"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rule in enumerate(rules):  # one colour and marker per rule, thinner on top: lines that
        for method in ("seeded", "paper", "descent"):  # coincide stay visible
            rows = [r for r in result["rows"] if (r["rule"], r["recovery"]) == (rule, method)]
            if not rows:
                continue
            style = dict(color=colors[i % len(colors)], marker="osD^v<>"[i % 7], ms=8 - 1.2 * i,
                         lw=3.2 - 0.5 * i, ls="--" if method == "paper" else "-", label=f"{rule}, {method}")
            ks = [r["stored"] for r in rows]
            ax.plot(ks, [r["exact_fraction"] for r in rows], **style)
            bx.plot(ks, [r["mean_accuracy"] / r["mean_gg_accuracy"] for r in rows], **style)
    ticks = sorted({r["stored"] for r in result["rows"]})
    for a, title in ((ax, "tasks recovered exactly"), (bx, "accuracy, recovered / task given")):
        a.set_xscale("log")
        a.set_xticks(ticks, [str(k) for k in ticks])
        a.set_xlabel("masks stored in the memory")
        a.set_ylim(-0.03, 1.03)
        a.set_title(title)
        a.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _layer_masks(archive, t):
    return [m[t] for m in masks_by_layer(archive.masks)]


def _tick(progress, done, total):
    if progress is not None:
        progress(done, total)


def _gg(net, archive, stream, tasks, batch_size, progress):
    from supsup_hopfield.training import evaluate

    out = []
    for k, t in enumerate(tasks):
        task = stream.task(t)
        t0 = time.perf_counter()
        accuracy = evaluate(net, _layer_masks(archive, t), task, batch_size,
                            batchnorm=archive.per_task[t].get("batchnorm"))  # resnet18: the task's own statistics
        seconds = time.perf_counter() - t0
        out.append({"task": t, "accuracy": accuracy, "task_inference_accuracy": 1.0,
                    "seconds_per_batch": seconds / task.test_batch_count(batch_size)})
        _tick(progress, k + 1, len(tasks))
    return out


def _inferred(net, archive, stream, tasks, method, batch_size, progress):
    from supsup_hopfield.inference import evaluate_inference
    from supsup_hopfield.packed import PackedMaskBank

    # the archive's packed masks are the bank's layers, handed on as they are; every task is a candidate
    bank = PackedMaskBank(masks_by_layer(archive.masks))
    res = evaluate_inference(net, bank, stream, tasks, method=method, batch_size=batch_size, progress=progress)
    return [{"task": t, "accuracy": r["accuracy"], "task_inference_accuracy": r["task_inference_accuracy"],
             "task_given_accuracy": r["task_given_accuracy"], "seconds_per_batch": r["seconds_per_batch"]}
            for t, r in sorted(res.items())]


def _nns(net, archive, stream, tasks, method, batch_size, progress):
    """An NNs run has its own masks, not one per task: infer among all of them per batch."""
    from supsup_hopfield.nns import evaluate_nns

    if method not in ("oneshot", "binary", "g"):
        raise UserError(f"method: an NNs run has no task ids to give (gg) and keeps its masks "
                        f"explicitly; use `method='oneshot'`, 'binary' or 'g', got {method!r}")
    from supsup_hopfield.packed import PackedMaskBank

    bank = PackedMaskBank(masks_by_layer(archive.masks))  # the archive's rows, one per learned mask
    mapping = [t.get("mask") for t in archive.per_task]
    t0 = time.perf_counter()
    res = evaluate_nns(net, bank, stream, tasks, mapping, method, batch_size, progress=progress)
    per_batch = (time.perf_counter() - t0) / max(1, sum(r["batches"] for r in res.values()))
    return [{"task": t, "accuracy": r["accuracy"], "task_inference_accuracy": r.get("mapped_fraction"),
             "seconds_per_batch": per_batch} for t, r in sorted(res.items())]


def _hopfield(net, archive, stream, tasks, recovery, progress):
    from supsup_hopfield.recovery import evaluate_recovery

    rows = evaluate_recovery(net, archive, stream, tasks, recovery, progress=progress)
    # the task counts as found when every layer's recovered mask is the stored one (unknown
    # without explicit masks); time per batch = the task's recovery time over its test batches
    batches = -(-stream.task(0).n_test // recovery.batch_size)
    return [{"task": r["task"], "accuracy": r["accuracy"],
             "task_inference_accuracy": None if r["hamming"] is None else float(not any(r["hamming"])),
             "hamming": r["hamming"], "steps": r["steps"], "chosen": r["chosen"],
             "task_given_accuracy": r["gg_accuracy"], "seconds": r["seconds"],
             "seconds_per_batch": r["seconds"] / batches} for r in rows]


def format_table(result: dict) -> str:
    lines = [f"method {result['method']}, {result['tasks']} tasks, batches of {result['batch_size']}",
             f"{'task':>5}  {'accuracy':>8}  {'task found':>10}" +
             ("  hamming per layer  recovered from  seconds" if result["method"] == "hopfield" else "")]
    for t in result["per_task"]:
        found = t["task_inference_accuracy"]
        line = f"{t['task']:>5}  {t['accuracy']:>8.4f}  {'?' if found is None else f'{found:.3f}':>10}"
        if "hamming" in t:
            line += f"  {str(t['hamming']):>17}  {t['chosen']:>14}  {t['seconds']:>7.2f}"
        lines.append(line)
    found = result["task_inference_accuracy"]
    if result["method"] == "hopfield":
        gg = [t["task_given_accuracy"] for t in result["per_task"]]
        given = f" (task given {np.mean(gg):.4f})" if all(g is not None for g in gg) else ""
        lines.append(f"mean accuracy {result['mean_accuracy']:.4f}{given}; recovered exactly for "
                     f"{'?' if found is None else f'{found:.1%}'} of tasks; "
                     f"{np.mean([t['seconds'] for t in result['per_task']]):.2f} s per task")
    else:
        lines.append(f"mean accuracy {result['mean_accuracy']:.4f}; task found for "
                     f"{'?' if found is None else f'{found:.1%}'} of batches; "
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
