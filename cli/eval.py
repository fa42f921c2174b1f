"""`supsup-hf eval`: per-task accuracy of a saved run, with the task given or inferred, or with the
masks recovered from the Hopfield memory (also replayed under other rules)."""
import json

import click

from supsup_hopfield.cli.paths import OutputFile
from supsup_hopfield.cli.progress import progress_bar
from supsup_hopfield.evaluation import METHODS
from supsup_hopfield.run import MEMORY_RULES as RULES
from supsup_hopfield.training import PRECISIONS

RECOVERIES = ("seeded", "descent", "paper")


def _list(kind):
    def parse(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        try:
            out = [kind(v) for v in items]
        except ValueError:
            out = []
        if not out or (kind is str and any(v not in RULES for v in out)):
            expected = f"rules from {', '.join(RULES)}" if kind is str else "positive integers"
            raise click.BadParameter(f"expected {expected} separated by commas, got {value!r}")
        return out
    return parse


@click.command("eval")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--method", type=click.Choice(METHODS), default="oneshot", show_default=True,
              help="gg: task given; oneshot/binary/g: task inferred from the explicit masks; "
                   "hopfield: masks recovered from the memory.")
@click.option("--tasks", "tasks_text", metavar="START:STOP[:STEP]", help="Evaluate these tasks only [all].")
@click.option("--batch-size", type=int, help="[default: 128; hopfield: the recovery's 64]")
@click.option("--recovery", type=click.Choice(RECOVERIES), default="seeded", show_default=True,
              help="hopfield: seeded (every stored mask given back from its seeded key, or recalled from its "
                   "seeded cue by an attractor memory, then chosen by output entropy), or, for attractor "
                   "memories, the paper's descent finished by recall, or the paper's plain method.")
@click.option("--superposed", type=click.IntRange(min=0), default=0, show_default=True,
              help="hopfield, seeded: inference in superposition (the paper's one-shot) first keeps this "
                   "many candidates for the entropy screen (0: screen every candidate).")
@click.option("--memory-rule", "rules", callback=_list(str), metavar="R[,R...]",
              help="hopfield: rebuild the memory from the run's explicit masks under these rules.")
@click.option("--stored", callback=_list(int), metavar="K[,K...]",
              help="hopfield with --memory-rule: rebuild from the first K masks, for each K [all].")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the four IDX files.")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Fetch the dataset (MNIST, CIFAR-100, Fashion-MNIST) into --data-dir [default: "
                   "~/.cache/supsup-hopfield/<dataset>] when its files are missing there (needs internet); "
                   "--no-download on a machine that must not reach the network.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="32", show_default=True,
              help="bf16-mixed: the network's forward passes in bfloat16 (autocast).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--plot", type=OutputFile(),
              help="PNG: accuracy per task, or recovery against stored masks with --memory-rule.")
def eval_(archive, method, tasks_text, batch_size, recovery, superposed, rules, stored, data_dir, download, device,
          precision, as_json, plot):
    """Evaluate ARCHIVE's tasks; the result is also recorded in ARCHIVE."""
    from supsup_hopfield.archive import read_header
    from supsup_hopfield.evaluation import (evaluate_run, format_replay, format_table, parse_tasks,
                                            plot_accuracy, plot_replay, replay_recovery)
    from supsup_hopfield.recovery import RecoveryConfig

    if (rules or stored) and method != "hopfield":
        raise click.UsageError("--memory-rule and --stored replay the memory for --method hopfield; "
                               "add --method hopfield")
    if stored and not rules:
        raise click.UsageError("--stored needs --memory-rule: name the rules to rebuild the memory with")
    n = len(read_header(archive, verify=False).per_task)
    tasks = parse_tasks(tasks_text, n) if tasks_text else None
    rec = {"seeded": RecoveryConfig(superposed=superposed), "descent": RecoveryConfig(method="descent"),
           "paper": RecoveryConfig.paper()}[recovery]
    with progress_bar("task") as progress:
        if rules:
            result = replay_recovery(archive, rules, stored or [n], tasks, batch_size, data_dir, device,
                                     recovery=rec, progress=progress, precision=precision, download=download)
        else:
            result = evaluate_run(archive, method, batch_size, data_dir=data_dir, device=device, tasks=tasks,
                                  recovery=rec, progress=progress, precision=precision, download=download)
    if plot:
        (plot_replay if rules else plot_accuracy)(result, plot)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_replay(result) if rules else format_table(result))
