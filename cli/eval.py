"""`supsup-hf eval`: per-task accuracy of a saved run, with the task given or inferred."""
import json

import click

from supsup_hopfield.evaluation import METHODS


@click.command("eval")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--method", type=click.Choice(METHODS), default="oneshot", show_default=True,
              help="gg: task given; oneshot/binary/g: task inferred from the explicit masks; "
                   "hopfield: masks recovered from the memory.")
@click.option("--batch-size", type=int, help="[default: 128; hopfield: the recovery's 64]")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the four IDX files.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), help="PNG of accuracy per task.")
def eval_(archive, method, batch_size, data_dir, device, as_json, plot):
    """Evaluate ARCHIVE's tasks; the result is also recorded in ARCHIVE."""
    from supsup_hopfield.evaluation import evaluate_run, format_table, plot_accuracy

    result = evaluate_run(archive, method, batch_size, data_dir=data_dir, device=device)
    if plot:
        plot_accuracy(result, plot)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))
