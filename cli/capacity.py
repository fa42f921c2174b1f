"""`supsup-hf capacity`: how many random patterns a Hopfield rule holds."""
import json

import click

from supsup_hopfield.capacity import CapacityConfig, format_table, measure_capacity, plot_capacity
from supsup_hopfield.cli.paths import OutputFile
from supsup_hopfield.cli.progress import progress_bar
from supsup_hopfield.dynamics import MODES
from supsup_hopfield.rules import RULES


@click.command()
@click.option("--dim", type=int, required=True, help="Pattern length d (memory is d×d).")
@click.option("--rule", type=click.Choice(RULES), default="storkey", show_default=True)
@click.option("--max-patterns", type=int, required=True, help="Store up to this many patterns.")
@click.option("--step", type=int, default=0, help="Measure every K patterns [default: max/20].")
@click.option("--noise", type=float, default=0.1, show_default=True,
              help="Fraction of bits flipped in each recall cue.")
@click.option("--bias", type=float, default=0.5, show_default=True, help="Probability of +1.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plot", "plot_path", type=OutputFile(),
              help="Write a PNG plot here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def capacity(dim, rule, max_patterns, step, noise, bias, seed, plot_path, as_json):
    """Store random ±1 patterns and measure fixed points and recall from noisy cues."""
    cfg = CapacityConfig(dim=dim, rule=rule, max_patterns=max_patterns, step=step,
                         noise=noise, bias=bias, seed=seed)
    if step < 0:
        raise click.BadParameter(f"expected >= 1, got {step}", param_hint="--step")
    with progress_bar("point") as progress:
        result = measure_capacity(cfg, progress)
    if plot_path:
        plot_capacity(result, plot_path)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_table(result))
        if plot_path:
            click.echo(f"plot written to {plot_path}")


def _floats(ctx, param, value):
    try:
        out = tuple(float(v) for v in value.split(","))
    except ValueError:
        out = ()
    if not out:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}")
    return out


def _rules(ctx, param, value):
    out = RULES if value == "all" else tuple(v.strip() for v in value.split(","))
    bad = [r for r in out if r not in RULES]
    if bad:
        raise click.BadParameter(f"expected 'all' or rules from {', '.join(RULES)}, got {', '.join(bad)}")
    return out


@click.command()
@click.option("--dim", type=int, default=512, show_default=True, help="Pattern length d.")
@click.option("--rules", callback=_rules, default="all", show_default=True, help="Rules, comma-separated.")
@click.option("--loads", callback=_floats, default="0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.6", show_default=True,
              help="Loads n/d at which to measure.")
@click.option("--noise", "noises", callback=_floats, default="0.05,0.1,0.2", show_default=True,
              help="Fractions of bits flipped in the cues.")
@click.option("--recall", "mode", type=click.Choice(MODES), default="async", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plot", "plot_path", type=OutputFile(), help="Write a PNG plot here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def basins(dim, rules, loads, noises, mode, seed, plot_path, as_json):
    """Fraction of stored patterns recalled exactly against load, for every rule and cue noise."""
    from supsup_hopfield.capacity import BasinsConfig, format_basins, measure_basins, plot_basins

    cfg = BasinsConfig(dim=dim, rules=rules, loads=loads, noises=noises, mode=mode, seed=seed)
    with progress_bar("point") as progress:
        result = measure_basins(cfg, progress)
    if plot_path:
        plot_basins(result, plot_path)
    click.echo(json.dumps(result, indent=2) if as_json else format_basins(result))
