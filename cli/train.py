"""`supsup-hf train`: learn one supermask per task and feed them into the Hopfield memory."""
import sys

import click

from supsup_hopfield.basenet import ARCHITECTURES
from supsup_hopfield.cli.paths import OutputFile
from supsup_hopfield.run import MEMORY_RULES
from supsup_hopfield.streams import STREAMS
from supsup_hopfield.training import DEVICES, OPTIMIZERS, PRECISIONS

def _widths(ctx, param, value):
    if value is None:
        return None
    try:
        widths = tuple(int(w) for w in value.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas (e.g. 2048,2048), got {value!r}")
    return widths


@click.command()
@click.option("--tasks", type=int, required=True, help="Number of tasks to learn.")
@click.option("--scenario", type=click.Choice(["gg", "nns"]), default="gg", show_default=True,
              help="gg: the task is given while training (GG, and the training of GNs/GNu: choose "
                   "the inference at eval); nns: never given, the learner allocates masks itself.")
@click.option("--check-every", type=int, default=100, show_default=True,
              help="nns: decide every K batches whether the data needs a new mask.")
@click.option("--budget", type=int, help="nns: at most this many masks.")
@click.option("--dataset", type=click.Choice(STREAMS), default="permuted-mnist", show_default=True)
@click.option("--model", type=click.Choice(ARCHITECTURES), default="hopnet", show_default=True)
@click.option("--widths", callback=_widths, help="Hidden widths, e.g. 2048,2048 [default: the model's].")
@click.option("--outputs", type=int, default=10, show_default=True,
              help="Output neurons (more than the classes adds superfluous neurons, e.g. 500).")
@click.option("--steps", type=int, help="Batches per task [default: 1000].")
@click.option("--batch-size", type=int, help="[default: 128]")
@click.option("--lr", type=float, help="[default: 1e-4 rmsprop; hopnet 0.1 sgd]")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="[default: rmsprop; hopnet sgd]")
@click.option("--momentum", type=float, help="[default: 0; hopnet 0.9]")
@click.option("--weight-decay", type=float, help="[default: 0; hopnet 1e-4]")
@click.option("--mask", type=click.Choice(["threshold", "topk"]), help="How scores become masks [threshold].")
@click.option("--density", type=float, help="topk: fraction of entries kept [0.5].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="32", show_default=True,
              help="bf16-mixed: matrix products in bfloat16 (autocast); scores, optimiser state and "
                   "masks stay float32. Recorded in --out (resume with the same).")
@click.option("--parallel-tasks", type=click.IntRange(min=1), default=1, show_default=True,
              help="Learn K consecutive tasks together in one batched step (same masks as K = 1, up "
                   "to rounding).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: learn tasks on Ray workers (pip install 'supsup-hopfield[ray]').")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="ray: task groups learned at once.")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads per worker [torch's default; ray: 1].")
@click.option("--ray-address", help="ray: join this existing cluster (e.g. ray://head:10001 or auto) "
                                    "instead of starting a private local Ray on 127.0.0.1.")
@click.option("--memory-rule", type=click.Choice(["auto", *MEMORY_RULES, "none"]), default="auto", show_default=True,
              help="auto: a keyed memory that gives every one of --tasks masks back exactly (said, with "
                   "its bytes, before training); an attractor rule for comparison; none: explicit masks only.")
@click.option("--memory-layout", type=click.Choice(["per-layer", "joint"]),
              help="One memory per masked layer, or one over all layers [keyed: joint; others: per-layer].")
@click.option("--memory-keys", type=int,
              help="keyed: masks the memory can hold, a power of two [the smallest >= --tasks].")
@click.option("--hopfield-dim", type=int, help="Split long masks into memories of this many entries.")
@click.option("--keep-masks/--no-keep-masks", default=True, show_default=True,
              help="Keep the explicit (bit-packed) masks beside the memory.")
@click.option("--out", type=OutputFile(), default="run.h5", show_default=True)
@click.option("--checkpoint-every", type=int, default=10, show_default=True, help="Save every K tasks.")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the four IDX files.")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Fetch the dataset (MNIST, CIFAR-100, Fashion-MNIST) into --data-dir [default: "
                   "~/.cache/supsup-hopfield/<dataset>] when its files are missing there (needs internet); "
                   "--no-download on a machine that must not reach the network.")
@click.pass_context
def train(ctx, tasks, scenario, check_every, budget, dataset, model, widths, outputs, seed, device, precision,
          parallel_tasks, executor, workers, threads, ray_address, memory_rule, memory_layout, memory_keys,
          hopfield_dim, keep_masks, out, checkpoint_every, resume, force, data_dir, download, **train_opts):
    """Learn --tasks supermasks one after another; store them in the memory and --out."""
    import torch

    from supsup_hopfield.run import RunConfig, choose_memory, train_run
    from supsup_hopfield.training import TrainConfig, bf16_is_native, resolve_device

    if executor == "local" and (ray_address or workers > 1):
        raise click.UsageError("--workers and --ray-address are for --executor ray; add --executor ray")
    if threads and executor == "local":
        torch.set_num_threads(threads)

    notes = []  # said once the run has passed its checks, so that a refusal stays one line
    if resume and memory_rule == "auto":  # the run's own memory, whatever auto would pick now
        memory_rule, memory_layout, memory_keys = _saved_memory(out, memory_layout, memory_keys)
    else:
        choice = choose_memory(model, widths, tasks, memory_rule, memory_layout, hopfield_dim, memory_keys, outputs)
        memory_rule, memory_layout, memory_keys = choice.rule, choice.layout, choice.keys
        if choice.note:
            from supsup_hopfield.cli.main import in_flags

            notes.append(in_flags(choice.note, ctx.command.params))
    given = {k: v for k, v in train_opts.items() if v is not None}
    train_cfg = TrainConfig.for_architecture(model, seed=seed, device=device, precision=precision, **given)
    if precision == "bf16-mixed" and not bf16_is_native(resolve_device(device)):
        notes.append("this device has no bfloat16 arithmetic, so bf16-mixed is emulated and slower than "
                     "--precision 32 (a hopnet step: 1.8x to 130x as long, measured)")
    cfg = RunConfig(dataset=dataset, model=model, widths=widths, outputs=outputs, seed=seed,
                    memory_rule=memory_rule, memory_layout=memory_layout, memory_keys=memory_keys,
                    hopfield_dim=hopfield_dim,
                    keep_masks=keep_masks, train=train_cfg)
    if scenario == "nns":
        if resume:
            raise click.UsageError("--resume: NNs runs are not resumable; start again with --force")
        if executor != "local" or parallel_tasks > 1:
            raise click.UsageError("--executor and --parallel-tasks: the NNs learner sees one stream in order, "
                                   "so it trains in this process one batch at a time; drop them")
        for note in notes:
            click.echo(f"note: {note}", err=True)
        _train_nns(cfg, tasks, out, force, check_every, budget, data_dir, download)
        return
    bar = _Bar(notes)
    try:
        with _executor(executor, workers, threads, ray_address) as runner:
            archive = train_run(cfg, tasks, out, resume=resume, force=force, checkpoint_every=checkpoint_every,
                                data_dir=data_dir, download=download, progress=bar, parallel_tasks=parallel_tasks,
                                executor=runner)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"interrupted: {bar.finished} finished tasks are saved in {out}; "
                   f"rerun with --resume to continue", err=True)
        ctx.exit(130)
    bar.close()
    click.echo(summary(archive, out))


def _executor(kind, workers, threads, address):
    import contextlib

    if kind == "local":
        return contextlib.nullcontext()
    from supsup_hopfield.executors import RayExecutor

    return RayExecutor(workers=workers, threads=threads or 1, address=address)


def _saved_memory(out, layout, keys):
    from supsup_hopfield.archive import read_header
    from supsup_hopfield.run import SavedRun

    try:
        run = SavedRun.from_config(read_header(out, verify=False).config).run
    except (ValueError, OSError):
        return None, layout or "per-layer", keys  # train_run says what is wrong with the file
    return run.memory_rule, layout or run.memory_layout or "per-layer", keys or run.memory_keys


def _train_nns(cfg, tasks, out, force, check_every, budget, data_dir, download):
    from tqdm import tqdm

    from supsup_hopfield.run import train_nns_run

    with tqdm(total=tasks * cfg.train.steps, unit="step", disable=None, dynamic_ncols=True) as bar:
        def progress(step, loss, slot):
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix_str(f"mask {slot}, loss {float(loss):.3f}", refresh=False)

        archive, report = train_nns_run(cfg, tasks, out, force=force, check_every=check_every, budget=budget,
                                        data_dir=data_dir, download=download, progress=progress)
    steps = [a["step"] for a in report["allocations"]]
    acc = [r["accuracy"] for r in archive.per_task]
    click.echo(f"NNs: allocated {report['n_masks']} masks for {tasks} true tasks; allocations at steps "
               f"{steps}, true task boundaries at {report['boundaries']}")
    click.echo(f"task -> mask: {report['task_to_mask']}; mean accuracy with the mask inferred per batch "
               f"(oneshot) {sum(acc) / len(acc):.4f}; saved in {out}")


def summary(archive, out) -> str:
    import numpy as np

    from supsup_hopfield.run import SavedRun, format_bytes, masks_by_layer, slot_pattern

    acc = [r["accuracy"] for r in archive.per_task]
    lines = [f"{len(acc)} tasks in {out}; mean accuracy with the task given (GG) {np.mean(acc):.4f}"]
    masks = archive.masks
    slots = SavedRun.from_config(archive.config).slots
    for slot in slots:
        mem = archive.memories[slot.name]
        keyed = mem.rule == "keyed"
        line = (f"memory {slot.name}: {mem.rule}, d = {mem.dim}" + (f" x {mem.keys} keys" if keyed else "") +
                f" ({format_bytes(mem.nbytes)}), {mem.n_stored} masks stored")
        if masks:
            layers = masks_by_layer(masks)
            patterns = np.stack([slot_pattern(slot, [m[t] for m in layers]) for t in range(mem.n_stored)])
            given = "given back exactly from their keys" if keyed else "exact fixed points"
            line += f", {int(mem.stable(patterns).sum())} of them {given}"
        lines.append(line)
    return "\n".join(lines)


class _Bar:
    """tqdm bar over task-steps: task, step, loss, tasks per hour, ETA."""

    def __init__(self, notes=()):
        self.bar = None
        self.finished = 0
        self.notes = list(notes)

    def start(self, done, total, steps):
        import time

        from tqdm import tqdm

        for note in self.notes:
            click.echo(f"note: {note}", err=True)

        self.finished, self.total, self.steps = done, total, steps
        self.t0, self.done0 = time.perf_counter(), done
        self.bar = tqdm(total=(total - done) * steps, unit="step", dynamic_ncols=True, disable=None,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}{postfix}]")

    def step(self, tasks, step, losses):
        self.bar.update(len(tasks))
        if step % 25 == 0 or step == self.steps:
            which = f"task {tasks[0] + 1}" if len(tasks) == 1 else f"tasks {tasks[0] + 1}-{tasks[-1] + 1}"
            self.bar.set_description(f"{which}/{self.total}", refresh=False)
            self.bar.set_postfix_str(f"loss {float(losses.mean()):.3f}, {self._rate()}", refresh=False)

    def task_done(self, record):
        self.finished += 1
        behind = (self.finished - self.done0) * self.steps - self.bar.n  # tasks learned elsewhere: no steps seen
        if behind > 0:
            self.bar.update(behind)
            self.bar.set_description(f"task {self.finished}/{self.total}", refresh=False)
            self.bar.set_postfix_str(self._rate(), refresh=False)
        self.bar.write(f"task {record['task']}: accuracy {record['accuracy']:.4f} "
                       f"({record['seconds']:.1f} s, {record['flip_fraction']:.1%} of mask flipped)",
                       file=sys.stderr)

    def saved(self, path, tasks):
        pass

    def _rate(self):
        import time

        hours = (time.perf_counter() - self.t0) / 3600
        return f"{(self.finished - self.done0) / hours:.0f} tasks/h" if self.finished > self.done0 else "- tasks/h"

    def close(self):
        if self.bar is not None:
            self.bar.close()
