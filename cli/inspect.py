"""`supsup-hf inspect ARCHIVE [--json]`: what an archive holds, after checking all of it.

Prints the schema version, tasks finished, dataset, model, the memories (rule, dim, patterns
stored), the explicit masks' shapes, per-task metrics and evaluations. The whole file is
verified (every checksum), so a damaged archive fails here with one line and exit code 2.
"""
import json

import click

from supsup_hopfield.archive import Header, read_header


def _get(d, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def summary(h: Header) -> dict:
    """The JSON `inspect --json` prints (keys documented in docs/ARCHIVE.md)."""
    cfg = h.config
    net = _get(cfg, "base_network") or {}
    n_tasks = len(h.per_task) or (next(iter(h.masks.values()))[0] if h.masks else 0)
    return {
        "schema_version": h.schema_version,
        "tasks": n_tasks,
        "dataset": _get(cfg, "stream", "name") or _get(cfg, "run", "dataset") or cfg.get("dataset"),
        "model": net.get("architecture") or _get(cfg, "run", "model") or cfg.get("model"),
        "network": net or None,
        "memory": {k: {"rule": m.rule, "dim": m.dim, "n_stored": m.n_stored, "dtype": m.dtype,
                       **({"keys": m.keys} if m.keys else {})}
                   for k, m in h.memories.items()},
        "masks": None if h.masks is None else {k: list(s) for k, s in h.masks.items()},
        "per_task": [{"task": r.get("task", i), "accuracy": r.get("accuracy"),
                      "mask_sha256": r.get("mask_sha256"),
                      **{k: v for k, v in r.items() if k not in ("task", "accuracy", "mask_sha256")}}
                     for i, r in enumerate(h.per_task)],
        "evaluations": h.evaluations,
        "versions": h.versions,
    }


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    out += ["  " + "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
            for row in cells]
    return out


def render(s: dict, max_rows: int = 20) -> str:
    """The readable report: header lines, then the memory and per-task tables."""
    net = s["network"] or {}
    model = s["model"] or "-"
    if net.get("widths"):
        model += f" (hidden {'-'.join(map(str, net['widths']))}, {net.get('outputs', '?')} outputs, " \
                 f"seed {net.get('seed', '?')}, init {net.get('init', '?')})"
    lines = [f"schema version  {s['schema_version']}", f"tasks finished  {s['tasks']}",
             f"dataset         {s['dataset'] or '-'}", f"model           {model}"]
    if s["memory"]:
        lines.append("memory")
        lines += _table([{"layer": k, **m} for k, m in s["memory"].items()],
                        ["layer", "rule", "dim", *(["keys"] if any("keys" in m for m in s["memory"].values()) else []),
                         "n_stored", "dtype"])
    else:
        lines.append("memory          none")
    if s["masks"] is not None:
        lines.append("masks           " + ", ".join(f"{k} {tuple(v)}" for k, v in s["masks"].items()))
    if s["per_task"]:
        rows = [{**r, "mask_sha256": (r["mask_sha256"] or "-")[:16]} for r in s["per_task"]]
        extra = [k for k in ("density", "final_loss", "seconds") if any(k in r for r in rows)]
        shown = rows if len(rows) <= max_rows else rows[: max_rows // 2] + rows[-max_rows // 2:]
        lines.append("per task")
        table = _table(shown, ["task", "accuracy", *extra, "mask_sha256"])
        if len(rows) > max_rows:  # keep the header, the first and the last rows
            skipped = len(rows) - len(shown)
            table.insert(1 + max_rows // 2, f"  ... {skipped} more tasks (use --json for all)")
        lines += table
        accs = [r["accuracy"] for r in rows if isinstance(r["accuracy"], (int, float))]
        if accs:
            lines.append(f"  mean accuracy {sum(accs) / len(accs):.4f} over {len(accs)} tasks")
    lines.append(f"evaluations     {len(s['evaluations'])}")
    for e in s["evaluations"]:
        lines.append("  " + json.dumps(e, sort_keys=True)[:200])
    return "\n".join(line.rstrip() for line in lines)


@click.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(archive, as_json):
    """Show what ARCHIVE (an .h5 file written by `train`) holds, after verifying it."""
    s = summary(read_header(archive, verify=True))
    click.echo(json.dumps(s, indent=2) if as_json else render(s))
