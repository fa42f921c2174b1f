"""`supsup-hf storage-report`: compare what storing the masks costs in each format (docs/METHOD.md §8)."""
import json

import click

from supsup_hopfield.cli.paths import OutputFile
from supsup_hopfield.compression import report as rep
from supsup_hopfield.errors import UserError
from supsup_hopfield.rules import RULES


def _shape(ctx, param, value):
    parts = value.split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(parts) not in (1, 2) or not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"expected R,C of positive integers (e.g. 300,784), got {value!r}")
    return dims


def _masks_from_archive(path, layer):
    """The archive's masks by layer (name -> (tasks, *layer_shape)), all of them or only
    `layer`; the seeded initial masks of the run's tasks as bases for `delta` and the seeded
    contexts for `delta-context` (rebuilt from the archive's config; None when the archive holds
    no run); and the archive itself."""
    from supsup_hopfield.archive import read_archive
    from supsup_hopfield.run import MASK_KINDS, initial_masks, layer_key, seeded_context

    archive = read_archive(path)
    if not archive.masks:
        raise UserError(f"{path}: holds no explicit masks (trained with --no-keep-masks); "
                        "use --synthetic or an archive with masks")
    names = sorted(archive.masks, key=lambda n: (len(n), n))  # layer2 before layer10
    if layer is not None and layer not in archive.masks:
        raise UserError(f"--layer: expected one of {', '.join(names)}, got {layer!r}")
    chosen = names if layer is None else [layer]
    numbers = {layer_key(l): l for l in range(len(names))}
    bases = seeded = None
    if "run" in archive.config and all(n in numbers for n in chosen):
        if MASK_KINDS.get(archive.config["run"].get("model")) == "weight":  # a weight per mask entry
            seeded = {n: seeded_context(archive.config, numbers[n], len(archive.masks[n])) for n in chosen}
            seeded = None if any(v is None for v in seeded.values()) else seeded
        if seeded is not None:  # threshold masks: the initial mask is scores >= 0, drawn once
            bases = {n: scores >= 0 for n, (scores, _) in seeded.items()}
        else:
            bases = {n: initial_masks(archive.config, numbers[n], len(archive.masks[n])) for n in chosen}
    return {n: archive.masks[n] for n in chosen}, bases, seeded, archive


def _run_memories(archive, path):
    """The memories the run kept (name -> memory; {} for none) and the mask entries each holds
    (name -> (layer name, or None for a joint memory, start, stop)), as `report.run_memory` takes them."""
    from supsup_hopfield.run import SavedRun, layer_key

    if not archive.memories:
        return {}, {}
    slots = {s.name: (None if s.layer is None else layer_key(s.layer), s.start, s.stop)
             for s in SavedRun.from_config(archive.config, str(path)).slots}
    return archive.memories, slots


@click.command("storage-report")
@click.argument("archive", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--synthetic", is_flag=True, help="Use random masks instead of an ARCHIVE.")
@click.option("--tasks", type=click.IntRange(min=1), default=100, show_default=True,
              help="Synthetic: number of masks.")
@click.option("--shape", default="300,784", show_default=True, callback=_shape,
              help="Synthetic: mask shape R,C.")
@click.option("--density", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Synthetic: fraction of ones in each (base) mask.")
@click.option("--flips", type=click.FloatRange(0, 1), default=None,
              help="Synthetic: each mask is a random base with this fraction of bits flipped (enables delta).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic: random seed.")
@click.option("--hopfield-dim", type=click.IntRange(min=2), default=None,
              help="Entries per block of a Hopfield memory built here [default: min(entries, 2048)]; "
                   "with an ARCHIVE, price such a memory instead of the run's own.")
@click.option("--hopfield-rule", type=click.Choice(RULES), default=None,
              help="Learning rule of a Hopfield memory built here for the masks [--synthetic: projection]; "
                   "with an ARCHIVE, price such a memory instead of the memory the run kept (the default).")
@click.option("--layer", default=None, help="ARCHIVE: only this layer's masks [every layer, and the total].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--plot", type=OutputFile(), default=None,
              help="Write a PNG of total bytes and Hopfield exactness against number of tasks.")
def storage_report(archive, synthetic, tasks, shape, density, flips, seed, hopfield_dim, hopfield_rule, layer,
                   as_json, plot):
    """Compare storing masks as csc16, bitpack, entropy, delta and in Hopfield memories.

    For an ARCHIVE the Hopfield rows price the memory the run kept: its bytes, how many of the
    run's masks it gives back exactly, and the same at fewer bits (a joint memory only in the
    total). --hopfield-rule / --hopfield-dim price a memory built here instead."""
    if synthetic == (archive is not None):
        raise UserError("storage-report: expected either --synthetic or an ARCHIVE path, got "
                        + ("both" if synthetic else "neither") + "; pass exactly one")
    built = synthetic or hopfield_rule is not None or hopfield_dim is not None  # else: the run's own memory
    options = dict(hopfield_dim=hopfield_dim, hopfield_rule=hopfield_rule or "projection",
                   curve_points=10 if plot else 1)
    if synthetic or layer is not None:
        if synthetic:
            masks, bases = rep.synthetic_masks(tasks, shape, density, flips=flips, seed=seed)
        else:
            layers, bases, seeded, saved = _masks_from_archive(archive, layer)
            masks, bases = layers[layer], None if bases is None else bases[layer]
            options["seeded"] = None if seeded is None else seeded[layer]
            if not built:
                memories, slots = _run_memories(saved, archive)
                options.update(memories=memories, slots=slots, layer=layer)
        report = rep.storage_report(masks, bases, **options)
        if plot:
            rep.plot_storage(report, plot)
        click.echo(json.dumps(report, indent=2) if as_json else rep.format_table(report))
        return
    layers, bases, seeded, saved = _masks_from_archive(archive, None)
    if not built:
        memories, slots = _run_memories(saved, archive)
        options.update(memories=memories, slots=slots)
    report = rep.run_report(layers, bases, seeded, **options)
    if plot:
        rep.plot_storage(report["layers"][0] if len(layers) == 1 and built else report["total"], plot)
    click.echo(json.dumps(report, indent=2) if as_json else rep.format_run_table(report))
