"""The storage report: what keeping T binary masks costs in each format (docs/METHOD.md §8).

Explicit formats (`compression.codecs`: csc16, bitpack, entropy, delta) are measured by really
encoding every mask, decoding it back and comparing. The Hopfield store is measured by really
storing the masks, as ±1 patterns z = 2m − 1, in fixed-size memories (`supsup_hopfield.memory`)
and checking which masks are fixed points:

    masks (T, *shape) -> flattened (T, L) -> blocks of `hopfield_dim` entries (last one shorter)
    one HopfieldMemory per block; its weights are the whole cost, shared by all tasks, fixed;
    a mask is held exactly iff every one of its blocks is a fixed point of its block's memory
    (a 1-entry remainder joins the block before it, since a memory needs dim >= 2).

Being a fixed point means little if the memory is saturated (the projection rule's Ψ becomes
the identity once its span is full, and then *every* ±1 state is stable), so the report also
gives the fraction of random ±1 probes that are fixed points (`random_probe_stable`; want 0).

Throughput is MB/s of raw mask bytes (1 byte per entry, as numpy bool) over all masks; for the
Hopfield store "encode" is store time and "decode" the final stability check.

A run's own memory. For a run archive the Hopfield rows price the memories the run KEPT
(`memories` and the slots its config records, see `run_memory`), not memories built here: their
bytes (`nbytes`), and how many of the run's explicit masks they give back exactly (a keyed memory
by recall from each task's key, `keyed.KeyedMemory.recall`; an attractor memory as fixed points,
`stable`). A joint memory (all layers' masks concatenated) cannot be split by layer: it is
priced once, in the run's total, and each layer's report names it (`memory.joint`). The memory
at fewer bits: an attractor memory's Ψ in float16 and int8 (as above); a keyed memory's W as a
float32 copy, as stored (int16/int32, exact by construction) and rounded to 8, 6, 4 and 3 bits
with a float32 scale per row (`keyed.quantize`), each checked by decoding every mask it holds.
"Encode" is not measured for the run's memory (it was stored while training): shown as "-".
"""
from __future__ import annotations

import math
import time

import numpy as np

from supsup_hopfield.compression.codecs import CODECS, check_mask, entropy_bits
from supsup_hopfield.errors import UserError, check_fits
from supsup_hopfield.dynamics import sign
from supsup_hopfield.memory import HopfieldMemory, block_edges
from supsup_hopfield.rules import theoretical_capacity

EXPLICIT = ("csc16", "bitpack", "entropy", "delta", "delta-context")
FORMATS = EXPLICIT + ("hopfield",)
DEFAULT_HOPFIELD_DIM = 2048  # the paper's masked-layer width (HopSupSup, d = 2048)
PROBES, PROBE_SEED = 16, 12345  # random ±1 states checked per memory block for saturation
LOW_PRECISIONS = ("float16", "int8")  # the Hopfield memory also reported stored at these
KEYED_BITS = (8, 6, 4, 3)  # a keyed memory's W also reported rounded to these (a float32 scale per row)


def synthetic_masks(tasks: int, shape, density: float, flips: float | None = None, seed: int = 0):
    """Random masks (tasks, *shape) of density p, and their bases when `flips` is given.

    Without `flips`: each mask is i.i.d. Bernoulli(p), bases is None. With `flips` = F: each task
    draws a base mask Bernoulli(p) and its mask is the base with exactly round(F·L) of its bits
    flipped (a trained mask close to its seeded initial mask); the bases serve `delta`.
    """
    tasks, shape = _check_tasks(tasks), _check_shape(shape)
    density = _check_fraction(density, "density")
    flips = None if flips is None else _check_fraction(flips, "flips")
    n = math.prod(shape)
    check_fits("these synthetic masks", {"masks": tasks * n, "bases": tasks * n if flips is not None else 0},
               "pass fewer `tasks` or a smaller `shape`")
    rng = np.random.default_rng(seed)
    masks = np.empty((tasks, *shape), dtype=bool)
    bases = None if flips is None else np.empty_like(masks)
    for t in range(tasks):
        base = rng.random(shape) < density
        if flips is None:
            masks[t] = base
            continue
        bases[t] = base
        mask = base.ravel().copy()
        mask[rng.choice(n, size=round(flips * n), replace=False)] ^= True
        masks[t] = mask.reshape(shape)
    return masks, bases


def storage_report(masks, bases=None, hopfield_dim=None, hopfield_rule="projection",
                   hopfield_dtype="float32", formats=None, curve_points=10, seeded=None, memories=None,
                   slots=None, layer=None, _measured=None) -> dict:
    """Measure every storage format on `masks` (tasks, *shape); see the module docstring.

    `formats` picks a subset of FORMATS (default: all; delta only when `bases` is given,
    delta-context only when `seeded` = (initial scores (tasks, *shape), base weights (*shape)),
    what a threshold-mask run rebuilds from its seed, is given). `curve_points` task counts
    (about evenly spaced) at which the Hopfield exact fraction is measured while the masks are
    stored incrementally (1: only at the end).

    `memories`, `slots`, `layer`: `masks` are layer `layer` of a run that kept `memories` (see
    `run_memory`); the Hopfield rows then price that layer's own memories, not memories built
    here (`hopfield_dim`, `hopfield_rule`, `hopfield_dtype` and `curve_points` are not used), and
    the report's "memory" section says what they are, or that the layer's masks are in a joint
    memory, or that the run kept none.
    """
    masks = check_mask(masks, "masks")
    if masks.ndim < 1 or masks.shape[0] < 1:
        raise UserError(f"masks: expected an array (tasks, *shape) with tasks >= 1, got shape {masks.shape}")
    if bases is not None:
        bases = check_mask(bases, "bases")
        if bases.shape != masks.shape:
            raise UserError(f"bases: expected shape {masks.shape} (one base per mask), got {bases.shape}")
    if seeded is not None:
        scores, weights = (np.asarray(a) for a in seeded)
        if scores.shape != masks.shape or weights.shape != masks.shape[1:]:
            raise UserError(f"seeded: expected initial scores of shape {masks.shape} and weights of shape "
                            f"{masks.shape[1:]}, got {scores.shape} and {weights.shape}; pass those of these masks")
        seeded = scores, weights
    formats = _check_formats(formats, bases is not None, seeded is not None)
    own = None  # the run's own memories of this layer, measured
    if memories is not None and "hopfield" in formats:
        if layer is None:
            raise UserError("layer: expected the name of the run's layer these masks are (its memories' slots "
                            "name it), got None; pass layer=")
        own = _measure_memories(memories, slots, {layer: masks}, only=layer)
        formats = [f for f in formats if f != "hopfield"]
    tasks, entries = masks.shape[0], math.prod(masks.shape[1:])
    density = float(masks.mean()) if masks.size else 0.0
    report = {
        "tasks": tasks,
        "mask_shape": list(masks.shape[1:]),
        "entries_per_mask": entries,
        "density": density,
        "entropy_bits_per_entry": entropy_bits(density),
        "formats": [],
    }
    if bases is not None:
        flip = float((masks ^ bases).mean()) if masks.size else 0.0
        report["flip_fraction"] = flip
        report["delta_entropy_bits_per_entry"] = entropy_bits(flip)
    rows, low_rows = {}, {}
    for name in formats:
        if name == "hopfield":
            rows[name], report["hopfield"], low = _measure_hopfield(masks, hopfield_dim, hopfield_rule,
                                                                    hopfield_dtype, curve_points)
            # the same memory at fewer bits, listed after the formats
            low_rows = {f"hopfield-{precision}": row for precision, row in low.items()}
        else:
            rows[name] = _measure_codec(name, masks, bases, seeded)
    rows.update(low_rows)
    if _measured is not None:  # what `run_report` adds up over layers
        _measured.update(rows)
    report["formats"] = [_finish_row(name, row, tasks, entries, report["entropy_bits_per_entry"])
                         for name, row in rows.items()]
    if own is not None:
        _attach(report, *_memory_section(own, tasks, layer))
    return report


def run_report(layers: dict, bases: dict | None = None, seeded: dict | None = None, memories: dict | None = None,
               slots: dict | None = None, **options) -> dict:
    """`storage_report` of every layer of a run (`layers`: name -> masks (tasks, *shape), one row
    per task in every layer, in the run's layer order; `bases`: name -> the seeded initial masks,
    for delta) and the run's total: {"layers": [per-layer reports, each with its "layer" name],
    "total": {"entries_per_mask", "tasks", "density", "entropy_bits_per_entry", "formats": [...]}},
    the total's formats with the per-layer keys, bytes and seconds summed over layers; a task
    counts as exact when every one of its layers is.

    `memories` and `slots` (see `run_memory`): the run's own memories, priced in place of
    memories built here. Each is measured once: a per-layer memory in its layer's report, every
    memory in the total (a joint one only there), and each report gets a "memory" section."""
    if not layers:
        raise UserError("layers: expected at least one layer's masks, got none")
    own = None
    if memories is not None:
        formats = _check_formats(options.pop("formats", None), bases is not None, seeded is not None)
        if "hopfield" in formats:
            own = _measure_memories(memories, slots, layers)
        options["formats"] = [f for f in formats if f != "hopfield"]
    reports, measured = [], {}
    for name, masks in layers.items():
        rows = {}
        report = storage_report(masks, None if bases is None else bases[name], _measured=rows,
                                seeded=None if seeded is None else seeded[name], **options)
        if own is not None:
            _attach(report, *_memory_section(own, report["tasks"], name))
        reports.append({"layer": name, **report})
        for fmt, row in rows.items():
            measured.setdefault(fmt, []).append(row)
    tasks = {r["tasks"] for r in reports}
    if len(tasks) != 1:
        raise UserError(f"layers: expected the same number of tasks in every layer, got "
                        f"{ {r['layer']: r['tasks'] for r in reports} }")
    tasks = tasks.pop()
    entries = sum(r["entries_per_mask"] for r in reports)
    density = sum(r["density"] * r["entries_per_mask"] for r in reports) / entries
    total = {"entries_per_mask": entries, "tasks": tasks, "density": density,
             "entropy_bits_per_entry": entropy_bits(density), "formats": []}
    for fmt, rows in measured.items():
        if len(rows) != len(reports):
            continue  # a format some layer could not be measured in (delta without bases)
        exact = np.logical_and.reduce([np.asarray(r["exact"], dtype=bool) for r in rows])
        row = {"total_bytes": sum(r["total_bytes"] for r in rows), "exact": exact,
               "encode_s": sum(r["encode_s"] for r in rows), "decode_s": sum(r["decode_s"] for r in rows)}
        total["formats"].append(_finish_row(fmt, row, tasks, entries, total["entropy_bits_per_entry"]))
    if own is not None:
        _attach(total, *_memory_section(own, tasks))
    return {"layers": reports, "total": total}


def run_memory(memories: dict, slots: dict, layers: dict, layer: str | None = None):
    """The run's own memories priced (module docstring): (rows, info).

    `memories`: name -> `memory.HopfieldMemory` or `keyed.KeyedMemory`, as the run kept them ({}:
    the run kept none). `slots`: name -> (layer name, or None for a joint memory, start, stop),
    the mask entries each memory holds (a run archive's `memory_slots`, layer numbers turned into
    layer names). `layers`: name -> the run's explicit masks (tasks, *shape), in the run's layer
    order; a joint slot indexes their concatenation. `layer`: only that layer's memories (a joint
    memory is then only named); None: every memory, as in a run's total.

    rows: {"hopfield": the memories as kept, "hopfield-<precision>": the same at fewer bits}, each
    {"total_bytes", "exact" (per task), "encode_s", "decode_s"} (empty when nothing is priced);
    info: the report's "memory" section ({"rule", "memories", "joint", "note", ...})."""
    tasks = _same_tasks(layers)
    return _memory_section(_measure_memories(memories, slots, layers, only=layer), tasks, layer)


def format_run_table(report) -> str:
    """Each layer's table, then the run's total."""
    parts = [f"layer {r['layer']}: " + format_table(r) for r in report["layers"]]
    t = report["total"]
    parts.append("total: " + format_table({**t, "mask_shape": None}))
    return "\n\n".join(parts)


def crossings(report) -> dict:
    """Task count at which the Hopfield store's fixed size equals each explicit format's."""
    rows = {r["name"]: r for r in report["formats"]}
    if "hopfield" not in rows:
        return {}
    fixed = rows["hopfield"]["total_bytes"]
    return {name: fixed / r["bytes_per_task"] for name, r in rows.items()
            if not name.startswith("hopfield") and r["bytes_per_task"] > 0}


def format_table(report) -> str:
    """An aligned text table, one row per format, with a header line and Hopfield notes."""
    head = ("format", "total bytes", "bytes/task", "bits/entry", "x H(p)", "exact", "enc MB/s", "dec MB/s")
    rows = [(r["name"], f"{r['total_bytes']:,}", f"{r['bytes_per_task']:,.1f}", f"{r['bits_per_entry']:.4f}",
             "-" if r["ratio_to_entropy"] is None else f"{r['ratio_to_entropy']:.3f}",
             f"{r['exact_fraction']:.3f}", _rate(r["encode_mb_s"]), _rate(r["decode_mb_s"]))
            for r in report["formats"]]
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [f"{report['tasks']} masks x {report['entries_per_mask']:,} entries, density {report['density']:.4f},"
           f" H(p) = {report['entropy_bits_per_entry']:.4f} bits/entry"]
    if "flip_fraction" in report:
        out.append(f"delta against bases: {report['flip_fraction']:.4f} of bits flipped,"
                   f" H = {report['delta_entropy_bits_per_entry']:.4f} bits/entry")
    out += [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    if "hopfield" in report:
        h = report["hopfield"]
        out.append(f"hopfield: {h['blocks']} memories of dim <= {h['dim']} ({h['rule']}, {h['dtype']}),"
                   f" fixed size shared by all tasks; x H(p) is against H of the mask density")
        out.append(f"hopfield: random +-1 probes that are fixed points: {h['random_probe_stable']:.3f}"
                   f" (near 1: saturated, every pattern is 'held', so exact means nothing)")
        keeps = h["keeps_every_pattern"]
        out.append("hopfield: every stored mask stays a fixed point at " + (", ".join(keeps) if keeps else "no precision")
                   + " (hopfield-float16: Ψ in float16; hopfield-int8: int8 with a float32 scale per row)")
        cross = crossings(report)
        if cross:
            out.append("hopfield's fixed size equals " + ", ".join(
                f"{name} at {n:,.0f} tasks" for name, n in cross.items()) +
                f" (if it could hold that many: {_holds(h['rule'], h['dim'])})")
    if "memory" in report:
        out += _memory_lines(report)
    return "\n".join(out)


def _memory_lines(report) -> list:
    """The notes under a table whose Hopfield rows are the run's own memory."""
    m = report["memory"]
    if not m["memories"]:
        return [f"memory: {m['note']}"]
    keyed = m["keys"] is not None
    count = f"{m['count']} {m['rule']} memor{'y' if m['count'] == 1 else 'ies'} ({m['layout']})"
    size = (f"{m['dim']:,} mask entries x {m['keys']:,} keys" if keyed else
            f"dim {'<= ' if len({f['dim'] for f in m['memories']}) > 1 else ''}{m['dim']:,}")
    out = [f"hopfield: the run's own memory, {count}: {size}, {m['dtype']}, {m['nbytes']:,} bytes, fixed size "
           f"shared by all tasks; x H(p) is against H of the mask density"]
    held = "" if m["held"] >= m["tasks"] else f" (it holds the first {m['held']:,}; the rest are kept explicitly only)"
    if keyed:
        out.append(f"hopfield: gives back {m['given_back']:,} of the run's {m['tasks']:,} masks exactly, each "
                   f"completed from its seeded key{held}")
    else:
        out.append(f"hopfield: {m['given_back']:,} of the run's {m['tasks']:,} masks are exact fixed points{held}; "
                   f"random +-1 probes that are fixed points: {m['random_probe_stable']:.3f} (near 1: saturated, "
                   f"every pattern is 'held', so exact means nothing)")
    what = "every mask it holds given back exactly" if keyed else "every mask it holds stays a fixed point"
    out.append(f"hopfield at fewer bits, {what}: "
               + ", ".join(f"{p['name']} {'yes' if p['keeps_every_mask'] else 'NO'}" for p in m["precisions"])
               + " (" + "; ".join(f"{p['name']}: {p['note']}" for p in m["precisions"]) + ")")
    smallest = next((p for p in m["precisions"] if p["name"] == m["smallest_exact"]), None)
    out.append("hopfield: smallest precision that keeps every mask: " + (
        f"{smallest['name']}, {smallest['total_bytes']:,} bytes ({m['nbytes'] / smallest['total_bytes']:.2f}x "
        f"smaller than as stored)" if smallest else "none"))
    cross = crossings(report)
    if cross:
        holds = (f"this keyed memory holds {m['capacity']:,} masks, one per key" if keyed
                 else _holds(m["rule"], m["capacity"]))
        out.append("hopfield's fixed size equals " + ", ".join(
            f"{name} at {n:,.0f} tasks" for name, n in cross.items()) + f" (if it could hold that many: {holds})")
    return out


def _holds(rule, dim) -> str:
    cap = theoretical_capacity(rule, dim)
    what = "random masks by theory" if rule != "projection" else "linearly independent masks"
    return (f"a d = {dim} {rule} memory holds about {cap:,.0f} {what}" if cap is not None
            else f"a d = {dim} {rule} memory holds about 0.2·d random masks, measured at d = 512")


def plot_storage(report, path) -> None:
    """PNG: total bytes vs number of tasks per format (log-log), and Hopfield exact fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["name"]: r for r in report["formats"]}
    cross = crossings(report)
    measured = report["tasks"]
    x_max = max([measured * 2, 10] + [2 * n for n in cross.values()])
    x = np.geomspace(1, x_max, 200)
    has_curve = "hopfield" in report  # a memory built here (a run's own memory has no curve)
    own = report.get("memory") if "hopfield" in rows and not has_curve else None
    fig, axes = plt.subplots(2 if has_curve else 1, 1, figsize=(8, 8.5 if has_curve else 5),
                             gridspec_kw={"height_ratios": [2, 1]} if has_curve else None, squeeze=False)
    ax = axes[0, 0]
    colors = dict(zip(FORMATS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = {"csc16": "-", "bitpack": "-", "entropy": "--", "delta": "-", "delta-context": "-."}
    for name, r in rows.items():
        if name.startswith("hopfield"):
            continue
        where = f"; = hopfield at {cross[name]:,.0f} tasks" if name in cross else ""
        ax.plot(x, r["bytes_per_task"] * x, styles[name], color=colors[name],
                label=f"{name}: {r['bits_per_entry']:.3g} bits/entry{where}")
    if has_curve or own is not None:
        fixed, hc = rows["hopfield"]["total_bytes"], colors["hopfield"]
        ax.axvspan(1, measured, color="0.92", zorder=0, label=f"measured here: {measured} tasks")
        if has_curve:
            h = report["hopfield"]
            capacity, beyond = h["dim"], "no rule here holds them exactly"
            label = f"hopfield: {h['blocks']} x dim<={h['dim']} {h['dtype']} ({_human(fixed)}, fixed)"
        else:
            capacity = own["capacity"]
            beyond = "it has no more keys" if own["keys"] is not None else "no rule here holds them exactly"
            label = (f"hopfield: the run's {own['rule']} memory ({_human(fixed)}, fixed; gives back "
                     f"{own['given_back']} of {own['tasks']})")
        held = min(capacity, x_max)
        ax.plot([1, held], [fixed, fixed], color=hc, lw=2.5, label=label)
        if held < x_max:
            ax.plot([held, x_max], [fixed, fixed], ":", color=hc, lw=2.5,
                    label=f"hopfield beyond {capacity} tasks: {beyond}")
            ax.axvline(held, color=hc, ls=":", lw=1)
        for name, n in cross.items():
            ax.plot([n], [fixed], "o", color=colors[name], ms=7, mfc="white", mew=2, zorder=5)
    ax.set(xscale="log", yscale="log", xlabel="number of tasks", ylabel="total bytes",
           title=f"storing {report['entries_per_mask']:,}-entry masks (density {report['density']:.3g})",
           xlim=(1, x_max))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    if has_curve:
        c = report["hopfield"]["curve"]
        ax2 = axes[1, 0]
        ax2.plot(c["tasks"], c["exact_fraction"], "o-", color=colors["hopfield"], label="stored masks exact")
        ax2.plot(c["tasks"], c["random_probe_stable"], "x--", color="0.4",
                 label="random ±1 probes also stable (saturation; should stay 0)")
        ax2.legend(fontsize=7.5, loc="center right")
        ax2.set(xlabel="number of tasks stored", ylabel="fraction of masks exact", ylim=(-0.05, 1.05),
                title=f"hopfield ({report['hopfield']['rule']}): masks held as exact fixed points")
        ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
def _measure_codec(name, masks, bases, seeded=None):
    codec = CODECS[name]
    bases_or_none = bases if name == "delta" else [None] * len(masks)
    if name == "delta-context":
        bases_or_none = [(scores, seeded[1]) for scores in seeded[0]]
    t0 = time.perf_counter()
    blobs = [codec.encode(m, base=b) for m, b in zip(masks, bases_or_none)]
    t1 = time.perf_counter()
    decoded = [codec.decode(blob, base=b) for blob, b in zip(blobs, bases_or_none)]
    t2 = time.perf_counter()
    exact = [d.shape == m.shape and bool(np.array_equal(d, m)) for d, m in zip(decoded, masks)]
    return {"total_bytes": sum(len(b) for b in blobs), "exact": np.array(exact, dtype=bool),
            "encode_s": t1 - t0, "decode_s": t2 - t1}


def _measure_hopfield(masks, dim, rule, dtype, curve_points):
    tasks = masks.shape[0]
    flat = masks.reshape(tasks, -1)
    length = flat.shape[1]
    if length < 2:
        raise UserError(f"hopfield: expected masks with at least 2 entries, got {length}; drop 'hopfield' from formats")
    dim = min(length, DEFAULT_HOPFIELD_DIM) if dim is None else dim
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2:
        raise UserError(f"hopfield_dim: expected an integer >= 2, got {dim!r}")
    dim = int(dim)
    check_fits("the Hopfield memory", {"one memory block": (min(dim, length) + 1) ** 2 * np.dtype(dtype).itemsize},
               "pass a smaller `hopfield_dim`")
    edges = block_edges(length, dim)
    points = np.unique(np.linspace(1, tasks, max(1, min(int(curve_points), tasks))).round().astype(int))
    points[-1] = tasks
    _warm_up(rule, dtype)
    ok = np.ones((len(points), tasks), dtype=bool)  # ok[k, i]: mask i exact after points[k] tasks
    low = {name: {"total_bytes": 0, "exact": np.ones(tasks, dtype=bool), "encode_s": 0.0, "decode_s": 0.0}
           for name in LOW_PRECISIONS}  # the final memories rounded to fewer bits
    # random ±1 probes that are fixed points reveal a saturated memory (e.g. projection with
    # Ψ = I once its span is full): it then "holds" every mask, and so tells none apart
    probe_rng = np.random.default_rng(PROBE_SEED)
    probe_ok = np.zeros(len(points), dtype=np.int64)  # (block, probe) pairs that are fixed points
    total = blocks = 0
    store_s = check_s = 0.0
    for start, stop in zip(edges[:-1], edges[1:]):
        block = flat[:, start:stop]  # (T, b), b <= dim (+1 for a folded 1-entry remainder)
        memory = HopfieldMemory(block.shape[1], rule=rule, dtype=dtype)
        probes = probe_rng.random((PROBES, block.shape[1])) < 0.5
        done = 0
        for k, n in enumerate(points):
            t0 = time.perf_counter()
            memory.store(block[done:n]).weights  # reading Ψ makes a margin memory learn: timed here
            t1 = time.perf_counter()
            ok[k, :n] &= np.asarray(memory.stable(block[:n]), dtype=bool)
            store_s += t1 - t0
            if k == len(points) - 1:
                check_s += time.perf_counter() - t1
            probe_ok[k] += int(np.count_nonzero(memory.stable(probes)))
            done = n
        for name, row in low.items():
            t0 = time.perf_counter()
            couplings, nbytes = _rounded(memory, name)
            t1 = time.perf_counter()
            row["exact"] &= _fixed_points(couplings, block)
            row["total_bytes"] += nbytes
            row["encode_s"] += t1 - t0
            row["decode_s"] += time.perf_counter() - t1
        total += int(memory.nbytes)
        blocks += 1
        del memory
    curve = {"tasks": [int(n) for n in points],
             "exact_fraction": [float(ok[k, :n].mean()) for k, n in enumerate(points)],
             "random_probe_stable": [float(c / (blocks * PROBES)) for c in probe_ok]}
    info = {"dim": dim, "blocks": blocks, "rule": rule, "dtype": str(np.dtype(dtype)), "curve": curve,
            "random_probe_stable": curve["random_probe_stable"][-1],
            "keeps_every_pattern": [str(np.dtype(dtype))] * bool(ok[-1].all()) +
                                   [name for name, row in low.items() if row["exact"].all()]}
    return {"total_bytes": total, "exact": ok[-1].copy(), "encode_s": store_s, "decode_s": check_s}, info, low


def _rounded(memory, precision):
    """The couplings `memory`'s dynamics use, its Ψ stored at `precision` and read back, and
    the bytes that storage takes: float16 (2 bytes a weight), or int8 with a float32 scale per
    row (max |row| / 127; a row's scale never changes the sign of its field, so it does not
    change which states are fixed points)."""
    w = np.asarray(memory.couplings, dtype=np.float32)  # what the dynamics use (no diagonal for -zd rules)
    if precision == "float16":
        rounded, nbytes = w.astype(np.float16).astype(np.float32), 2 * w.size
    else:
        scale = np.abs(w).max(axis=1, keepdims=True) / 127
        scale[scale == 0] = 1
        rounded, nbytes = np.round(w / scale).clip(-127, 127) * scale, w.size + 4 * w.shape[0]
    return rounded, nbytes + memory.nbytes - memory.weights.nbytes  # a margin memory's patterns stay


def _fixed_points(couplings, masks):
    """Which masks (n, d) are fixed points of sign(J z), z = 2m − 1."""
    z = np.where(masks, 1, -1).astype(np.float32)
    return (sign(z @ couplings.T) == z).all(axis=1)


def _measure_memories(memories, slots, layers, only=None) -> dict:
    """Each of the run's memories (`run_memory`'s arguments): name -> {"facts": what it is,
    and, unless it is left out by `only` (another layer's, or a joint one), "rows" (measured,
    as `run_memory` returns them), "precisions" [(name, bytes, keeps every mask, note)] and
    "probe" (the fraction of random ±1 states that are fixed points; None for a keyed memory)}."""
    if not isinstance(memories, dict):
        raise UserError(f"memories: expected a dict name -> memory, got {type(memories).__name__}")
    slots = {} if slots is None else dict(slots)
    tasks = _same_tasks(layers)
    names = list(layers)
    flat = {n: np.asarray(m).reshape(tasks, -1) for n, m in layers.items()}
    joint = None  # every layer's masks concatenated, made once if a joint memory needs it
    out = {}
    for name, mem in memories.items():
        if name not in slots:
            raise UserError(f"memories: {name!r} has no recorded slot (which mask entries it holds); pass the slots "
                            f"the run recorded (its config's memory_slots), or price a memory built here "
                            f"(`hopfield_rule='projection'`)")
        where, start, stop = slots[name]
        keyed = getattr(mem, "rule", None) == "keyed"
        facts = {"name": name, "rule": mem.rule, "layer": where, "start": int(start), "stop": int(stop),
                 "dim": int(mem.dim), **({"keys": int(mem.keys)} if keyed else {}),
                 "dtype": str(mem.weights.dtype), "n_stored": int(mem.n_stored), "nbytes": int(mem.nbytes)}
        out[name] = {"facts": facts}
        if only is not None and where != only:
            continue
        if where is None:
            if joint is None:
                joint = np.concatenate([flat[n] for n in names], axis=1)
            entries, source = joint, "every layer's masks concatenated"
        elif where in flat:
            entries, source = flat[where], f"layer {where}"
        else:
            raise UserError(f"memories: {name!r} holds entries of layer {where!r}, which is not among the masks "
                            f"({', '.join(names)}); pass that layer's masks")
        if not 0 <= start < stop <= entries.shape[1] or stop - start != mem.dim:
            raise UserError(f"memories: {name!r} (dim {mem.dim}) is recorded as holding entries {start}..{stop} of "
                            f"{source} ({entries.shape[1]} entries); pass the slots the run recorded")
        out[name].update(_measure_keyed(mem, entries[:, start:stop]) if keyed else
                         _measure_attractor(mem, entries[:, start:stop]))
        out[name]["facts"]["given_back"] = int(out[name]["rows"]["hopfield"]["exact"].sum())
    return out


def _held(mem, masks):
    """How many of the run's masks (tasks, dim) the memory holds (the first ones), and a row per task."""
    n = min(int(mem.n_stored), len(masks))
    return n, np.zeros(len(masks), dtype=bool)


def _measure_keyed(mem, masks) -> dict:
    """A keyed memory: which masks it gives back from their keys, as stored, as a float32 copy and
    rounded to KEYED_BITS bits with a float32 scale per row (`keyed.quantize`)."""
    from supsup_hopfield.keyed import quantize

    n, exact = _held(mem, masks)
    z = np.where(masks[:n], 1, -1).astype(np.int8)
    t0 = time.perf_counter()
    got = mem.recall(np.arange(n))
    exact[:n] = (got == z).all(axis=1)
    rows = {"hopfield": {"total_bytes": int(mem.nbytes), "exact": exact, "encode_s": None,
                         "decode_s": time.perf_counter() - t0}}
    dim, keys = mem.weights.shape
    # the same integers in float32 decode the same masks: exact by construction, not re-decoded
    rows["hopfield-float32"] = {"total_bytes": 4 * dim * keys, "exact": exact.copy(), "encode_s": None,
                                "decode_s": None}
    whole = bool(exact[:n].all())
    precisions = [("float32", 4 * dim * keys, whole, "a float copy of W"),
                  (str(mem.weights.dtype), int(mem.nbytes), whole, "as stored, exact by construction")]
    for bits in KEYED_BITS:
        t0 = time.perf_counter()
        rounded = quantize(mem.weights, bits)
        t1 = time.perf_counter()
        again = mem.recall(np.arange(n), weights=rounded)
        row_exact = np.zeros_like(exact)
        row_exact[:n] = (again == z).all(axis=1)
        nbytes = dim * (-(-keys * bits // 8) + 4)  # bits per entry, rounded up per row, and a float32 scale
        rows[f"hopfield-int{bits}"] = {"total_bytes": nbytes, "exact": row_exact, "encode_s": t1 - t0,
                                       "decode_s": time.perf_counter() - t1}
        # every mask it holds given back exactly: the same as `got` wherever the memory itself is exact
        precisions.append((f"int{bits}", nbytes, bool(row_exact[:n].all()), f"{bits} bits, a float32 scale per row"))
        del rounded, again
    return {"rows": rows, "precisions": precisions, "probe": None}


def _measure_attractor(mem, masks) -> dict:
    """An attractor memory: which masks are fixed points, as stored and with Ψ at LOW_PRECISIONS
    (`_rounded`), and how many random ±1 probes are fixed points too (saturation)."""
    n, exact = _held(mem, masks)
    t0 = time.perf_counter()
    exact[:n] = np.asarray(mem.stable(masks[:n]), dtype=bool)
    rows = {"hopfield": {"total_bytes": int(mem.nbytes), "exact": exact, "encode_s": None,
                         "decode_s": time.perf_counter() - t0}}
    precisions = [(str(mem.weights.dtype), int(mem.nbytes), bool(exact[:n].all()), "as stored")]
    for name in LOW_PRECISIONS:
        t0 = time.perf_counter()
        couplings, nbytes = _rounded(mem, name)
        t1 = time.perf_counter()
        row_exact = np.zeros_like(exact)
        row_exact[:n] = _fixed_points(couplings, masks[:n])
        rows[f"hopfield-{name}"] = {"total_bytes": nbytes, "exact": row_exact, "encode_s": t1 - t0,
                                    "decode_s": time.perf_counter() - t1}
        precisions.append((name, nbytes, bool(row_exact[:n].all()),
                           "Ψ in float16" if name == "float16" else "8 bits, a float32 scale per row"))
    probes = np.random.default_rng(PROBE_SEED).random((PROBES, mem.dim)) < 0.5
    return {"rows": rows, "precisions": precisions,
            "probe": float(np.count_nonzero(mem.stable(probes))) / PROBES}


def _memory_section(measured: dict, tasks: int, layer=None):
    """(rows, info) of the memories `_measure_memories` measured: those of `layer` (None: all)."""
    priced = [m for m in measured.values() if layer is None or m["facts"]["layer"] == layer]
    joint = [m["facts"] for m in measured.values() if layer is not None and m["facts"]["layer"] is None]
    rules = sorted({m["facts"]["rule"] for m in measured.values()})
    info = {"rule": ", ".join(rules) or None, "memories": [m["facts"] for m in priced],
            "joint": [f["name"] for f in joint], "note": None}
    if not measured:
        info["note"] = "no memory was kept (memory_rule none): only the explicit formats are priced"
        return {}, info
    if not priced:
        info["note"] = (f"this layer's masks are held by the run's joint {info['rule']} memory "
                        f"({', '.join(repr(f['name']) for f in joint)}, {sum(f['nbytes'] for f in joint):,} bytes) "
                        f"over every layer's masks at once; it cannot be split by layer, so it is priced once, in "
                        f"the run's total" if joint else "no memory of the run holds this layer's masks")
        return {}, info
    rows = {}
    for name in priced[0]["rows"]:  # one rule per run: every memory has the same rows
        parts = [m["rows"][name] for m in priced if name in m["rows"]]
        if len(parts) != len(priced):
            continue
        seconds = {k: None if any(p[k] is None for p in parts) else sum(p[k] for p in parts)
                   for k in ("encode_s", "decode_s")}
        rows[name] = {"total_bytes": sum(p["total_bytes"] for p in parts),
                      "exact": np.logical_and.reduce([p["exact"] for p in parts]), **seconds}
    precisions = []
    for k, (name, _, _, note) in enumerate(priced[0]["precisions"]):
        same = [m["precisions"][k] for m in priced if len(m["precisions"]) > k and m["precisions"][k][0] == name]
        if len(same) == len(priced):
            precisions.append({"name": name, "total_bytes": sum(p[1] for p in same),
                               "keeps_every_mask": all(p[2] for p in same), "note": note})
    keeps = [p for p in precisions if p["keeps_every_mask"]]
    facts = info["memories"]
    keyed = all(f["rule"] == "keyed" for f in facts)
    probes = [m["probe"] for m in priced if m["probe"] is not None]
    info.update({
        "layout": "joint" if any(f["layer"] is None for f in facts) else "per-layer",
        "count": len(facts),
        "dim": max(f["dim"] for f in facts),
        "keys": min(f["keys"] for f in facts) if keyed else None,
        "dtype": ", ".join(sorted({f["dtype"] for f in facts})),
        "nbytes": sum(f["nbytes"] for f in facts),
        "tasks": int(tasks),
        "held": min(min(f["n_stored"] for f in facts), int(tasks)),
        "given_back": int(rows["hopfield"]["exact"].sum()),
        "capacity": min(f["keys"] for f in facts) if keyed else min(f["dim"] for f in facts),
        "random_probe_stable": float(np.mean(probes)) if probes else None,
        "precisions": precisions,
        "keeps_every_mask": [p["name"] for p in keeps],
        # the fewest bytes; of equal ones (bits rounded up per row) the last, i.e. the fewest bits
        "smallest_exact": min(reversed(keeps), key=lambda p: p["total_bytes"])["name"] if keeps else None,
    })
    return rows, info


def _attach(report: dict, rows: dict, info: dict) -> None:
    """Add the run's memory rows (after the formats) and its "memory" section to a report."""
    report["memory"] = info
    report["formats"] += [_finish_row(name, row, report["tasks"], report["entries_per_mask"],
                                      report["entropy_bits_per_entry"]) for name, row in rows.items()]


def _same_tasks(layers: dict) -> int:
    counts = {len(m) for m in layers.values()}
    if len(counts) != 1:
        raise UserError(f"layers: expected the same number of tasks in every layer, got "
                        f"{ {n: len(m) for n, m in layers.items()} }")
    return counts.pop()


def _warm_up(rule, dtype):
    """Run the memory's code paths once on a tiny memory, so JIT compile time is not timed."""
    z = np.random.default_rng(0).random((17, 16)) < 0.5
    HopfieldMemory(16, rule=rule, dtype=dtype).store(z[:1]).store(z[1:]).stable(z)


def _finish_row(name, row, tasks, entries, h):
    raw_mb = tasks * entries / 1e6
    bits = 8 * row["total_bytes"] / (tasks * entries) if entries else 0.0
    return {
        "name": name,
        "total_bytes": int(row["total_bytes"]),
        "bytes_per_task": row["total_bytes"] / tasks,
        "bits_per_entry": bits,
        "ratio_to_entropy": bits / h if h > 0 else None,
        "exact_fraction": float(np.mean(row["exact"])),  # over tasks
        # None: not measured (the run's own memory was stored while training)
        "encode_mb_s": None if row["encode_s"] is None else raw_mb / max(row["encode_s"], 1e-9),
        "decode_mb_s": None if row["decode_s"] is None else raw_mb / max(row["decode_s"], 1e-9),
    }


def _rate(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3g}"


def _human(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _check_tasks(tasks):
    if isinstance(tasks, bool) or not isinstance(tasks, (int, np.integer)) or tasks < 1:
        raise UserError(f"tasks: expected an integer >= 1, got {tasks!r}")
    return int(tasks)


def _check_shape(shape):
    try:
        dims = tuple(int(s) for s in np.atleast_1d(shape))
    except (TypeError, ValueError):
        dims = ()
    if not dims or any(s < 0 for s in dims):
        raise UserError(f"shape: expected a tuple of non-negative integers such as (300, 784), got {shape!r}")
    return dims


def _check_fraction(value, name):
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name}: expected a fraction in [0, 1], got {value}")
    return value


def _check_formats(formats, have_bases, have_seeded=False):
    if formats is None:
        return [f for f in FORMATS if (f != "delta" or have_bases) and (f != "delta-context" or have_seeded)]
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"formats: expected names from {list(FORMATS)}, got {unknown}")
    if "delta" in formats and not have_bases:
        raise UserError("formats: 'delta' needs bases, got none; pass bases= or drop 'delta'")
    if "delta-context" in formats and not have_seeded:
        raise UserError("formats: 'delta-context' needs the seeded scores and weights, got none; pass seeded= "
                        "or drop 'delta-context'")
    return formats
