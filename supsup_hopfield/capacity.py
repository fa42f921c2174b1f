"""Capacity and basin experiments: how many random ±1 patterns a Hopfield rule holds, and from
how far each comes back (docs/METHOD.md, "Rules with basins").

Patterns are stored incrementally into one memory; after every `step` patterns we measure
(1) the fraction of stored patterns that are exact fixed points, (2) the fraction recalled
exactly by asynchronous dynamics from cues with a fraction `noise` of their bits flipped, and
(3) the mean Hamming distance (bits) between recalled state and pattern, and (4) the fraction of
64 random ±1 states that are fixed points too: near 1 the memory is saturated (e.g. projection
past d patterns, Ψ = I) and "every pattern is a fixed point" means nothing.

`measure_basins` sweeps the load n/d for several rules at once and reports, for each cue noise,
the fraction of stored patterns recalled exactly: the basins table (`supsup-hf basins`).
"""
from dataclasses import asdict, dataclass, field

import numpy as np

from supsup_hopfield.dynamics import MODES
from supsup_hopfield.errors import UserError, check_fits
from supsup_hopfield.memory import HopfieldMemory
from supsup_hopfield.rules import RULES, flip_bits, theoretical_capacity


@dataclass(frozen=True)
class CapacityConfig:
    dim: int
    rule: str = "storkey"
    max_patterns: int = 100
    step: int = 0  # 0: max_patterns // 20, at least 1
    noise: float = 0.1  # fraction of bits flipped in each recall cue
    bias: float = 0.5  # probability of +1 in a pattern
    seed: int = 0
    max_sweeps: int = 100


@dataclass
class CapacityResult:
    config: CapacityConfig
    theoretical_capacity: float | None
    points: list = field(default_factory=list)  # dicts: patterns, stable_fraction, ...

    @property
    def max_all_stable(self) -> int:
        """Largest measured count up to which every stored pattern stayed a fixed point, at every
        count measured (0 if none): the count before the first failure, not a later recovery."""
        best = 0
        for p in self.points:
            if p["stable_fraction"] < 1.0:
                break
            best = p["patterns"]
        return best

    def to_dict(self) -> dict:
        return {**asdict(self.config), "theoretical_capacity": self.theoretical_capacity,
                "max_all_stable": self.max_all_stable, "points": self.points}


# bytes per pattern entry while measuring: float64 draw, int8 pattern and cue, float64 field
_BYTES_PER_ENTRY = 18


def _check_fits(dim: int, patterns: int):
    check_fits("this measurement", {"Hopfield memory": dim * dim * 4,
                                    "patterns and cues": patterns * dim * _BYTES_PER_ENTRY},
               "pass a smaller `dim` or fewer patterns")


def _check_dim(dim):
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
        raise UserError(f"dim: expected an integer >= 2, got {dim!r}")


def _check(cfg: CapacityConfig):
    _check_dim(cfg.dim)
    if cfg.max_patterns < 1:
        raise UserError(f"max_patterns: expected >= 1, got {cfg.max_patterns}")
    if cfg.step < 0:
        raise UserError(f"step: expected >= 1, got {cfg.step}")
    for name in ("noise", "bias"):
        v = getattr(cfg, name)
        if not 0.0 <= v <= 1.0:
            raise UserError(f"{name}: expected a fraction in [0, 1], got {v}")
    _check_fits(cfg.dim, cfg.max_patterns)


def measure_capacity(cfg: CapacityConfig, progress=None) -> CapacityResult:
    """Run the experiment; `progress(done, total)` is called after every measured point."""
    _check(cfg)
    rng = np.random.default_rng(cfg.seed)
    mem = HopfieldMemory(cfg.dim, cfg.rule)
    Z = np.where(rng.random((cfg.max_patterns, cfg.dim)) < cfg.bias, 1, -1).astype(np.int8)
    step = cfg.step or max(1, cfg.max_patterns // 20)
    counts = list(range(step, cfg.max_patterns + 1, step))
    if not counts or counts[-1] != cfg.max_patterns:
        counts.append(cfg.max_patterns)
    result = CapacityResult(cfg, theoretical_capacity(cfg.rule, cfg.dim))
    probes = np.where(rng.random((64, cfg.dim)) < 0.5, 1, -1).astype(np.int8)
    stored = 0
    for i, n in enumerate(counts):
        mem.store(Z[stored:n])
        stored = n
        P = Z[:n]
        cues = flip_bits(P, cfg.noise, rng)
        out = mem.recall(cues, mode="async", max_sweeps=cfg.max_sweeps, seed=rng.integers(2**63))
        ham = (out != P).sum(axis=1)
        result.points.append({
            "patterns": n,
            "stable_fraction": float(mem.stable(P).mean()),
            "recall_exact_fraction": float((ham == 0).mean()),
            "mean_hamming": float(ham.mean()),
            "random_stable_fraction": float(mem.stable(probes).mean()),
        })
        if progress:
            progress(i + 1, len(counts))
    return result


def format_table(result: CapacityResult) -> str:
    cfg = result.config
    th = result.theoretical_capacity
    th_s = f"{th:.0f}" if th is not None else "no closed form"
    lines = [f"rule {cfg.rule}, d = {cfg.dim}, bias {cfg.bias}, cue noise {cfg.noise}, "
             f"seed {cfg.seed}; theoretical capacity {th_s}",
             f"{'patterns':>8}  {'fixed points':>12}  {'recalled exactly':>16}  {'mean Hamming':>12}"
             f"  {'random states stable':>20}"]
    for p in result.points:
        lines.append(f"{p['patterns']:>8}  {p['stable_fraction']:>12.3f}  "
                     f"{p['recall_exact_fraction']:>16.3f}  {p['mean_hamming']:>12.2f}"
                     f"  {p['random_stable_fraction']:>20.3f}")
    lines.append(f"all stored patterns are fixed points at every count up to {result.max_all_stable} (measured)")
    if any(p["random_stable_fraction"] > 0.5 for p in result.points):
        lines.append("random states are fixed points too at some counts: the memory is saturated there "
                     "(it holds everything, so it tells nothing apart)")
    return "\n".join(lines)


def plot_capacity(result: CapacityResult, path) -> None:
    """PNG: fixed-point and exact-recall fractions against the number of stored patterns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    n = [p["patterns"] for p in result.points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(n, [p["stable_fraction"] for p in result.points], "o-", label="stored patterns that are fixed points")
    ax.plot(n, [p["recall_exact_fraction"] for p in result.points], "s-",
            label=f"recalled exactly from cues with {cfg.noise:.0%} bits flipped")
    if result.theoretical_capacity is not None and result.theoretical_capacity <= max(n) * 1.2:
        ax.axvline(result.theoretical_capacity, color="gray", ls="--",
                   label=f"theoretical capacity ≈ {result.theoretical_capacity:.0f}")
    ax.set_xlabel("patterns stored")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"Hopfield capacity: rule '{cfg.rule}', d = {cfg.dim}, bias {cfg.bias}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------ basins
@dataclass(frozen=True)
class BasinsConfig:
    dim: int = 512
    rules: tuple = RULES
    loads: tuple = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)  # patterns per unit, n/d
    noises: tuple = (0.05, 0.1, 0.2)  # fractions of bits flipped in the cues
    mode: str = "async"  # recall dynamics
    seed: int = 0
    max_sweeps: int = 100

    def __post_init__(self):
        _check_dim(self.dim)
        bad = [r for r in self.rules if r not in RULES]
        if not self.rules or bad:
            raise UserError(f"rules: expected some of {', '.join(RULES)}, got {', '.join(bad) or 'none'}")
        if not self.loads or any(not 0 < a or round(a * self.dim) < 1 for a in self.loads):
            raise UserError(f"loads: expected loads n/d > 0 with at least one pattern each, got {list(self.loads)}")
        if not self.noises or any(not 0 <= x <= 1 for x in self.noises):
            raise UserError(f"noises: expected fractions in [0, 1], got {list(self.noises)}")
        _check_fits(self.dim, max(int(round(a * self.dim)) for a in self.loads))
        if self.mode not in MODES:
            raise UserError(f"mode: expected {', '.join(MODES)}, got {self.mode!r}")


def measure_basins(cfg: BasinsConfig, progress=None) -> dict:
    """Every rule stores the same random unbiased patterns, in order; at each load n/d the
    first n are cued with each noise level (the same cues for every rule) and recalled.
    Returns {"config", "points": [{"rule", "load", "patterns", "stable_fraction", "recalled":
    {noise: fraction recalled exactly}}]}; `progress(done, total)` after every point."""
    rng = np.random.default_rng(cfg.seed)
    counts = sorted({int(round(a * cfg.dim)) for a in cfg.loads})
    Z = np.where(rng.random((counts[-1], cfg.dim)) < 0.5, 1, -1).astype(np.int8)
    cues = {(n, x): flip_bits(Z[:n], x, np.random.default_rng([cfg.seed, n, int(x * 1e6)]))
            for n in counts for x in cfg.noises}
    points, done = [], 0
    for rule in cfg.rules:
        mem, stored = HopfieldMemory(cfg.dim, rule), 0
        for n in counts:
            mem.store(Z[stored:n])
            stored = n
            recalled = {}
            for x in cfg.noises:
                out = mem.recall(cues[n, x], mode=cfg.mode, max_sweeps=cfg.max_sweeps, seed=cfg.seed)
                recalled[x] = float((out == Z[:n]).all(axis=1).mean())
            points.append({"rule": rule, "load": n / cfg.dim, "patterns": n,
                           "stable_fraction": float(mem.stable(Z[:n]).mean()), "recalled": recalled})
            done += 1
            if progress:
                progress(done, len(cfg.rules) * len(counts))
    return {"config": asdict(cfg), "points": points}


def format_basins(result: dict) -> str:
    cfg = result["config"]
    noises = cfg["noises"]
    head = f"{'rule':<14} {'load':>5} {'n':>5} {'fixed':>6}" + "".join(f" {f'{x:.0%} noise':>10}" for x in noises)
    lines = [f"basins: d = {cfg['dim']}, random unbiased patterns, {cfg['mode']} recall, seed {cfg['seed']}; "
             "fraction of stored patterns recalled exactly from cues with that fraction of bits flipped", head]
    for p in result["points"]:
        lines.append(f"{p['rule']:<14} {p['load']:>5.2f} {p['patterns']:>5} {p['stable_fraction']:>6.3f}"
                     + "".join(f" {p['recalled'][x]:>10.3f}" for x in noises))
    return "\n".join(lines)


def plot_basins(result: dict, path) -> None:
    """PNG: one panel per cue noise, fraction recalled exactly against load, one line per rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    noises = cfg["noises"]
    fig, axes = plt.subplots(1, len(noises), figsize=(4.2 * len(noises), 3.8), dpi=120, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, x in zip(axes, noises):
        for rule in cfg["rules"]:
            pts = [p for p in result["points"] if p["rule"] == rule]
            ax.plot([p["load"] for p in pts], [p["recalled"][x] for p in pts], "o-", ms=3, label=rule)
        ax.set_title(f"cues with {x:.0%} of bits flipped")
        ax.set_xlabel("load n/d")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("stored patterns recalled exactly")
    axes[0].set_ylim(-0.03, 1.03)
    axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Basins of attraction, d = {cfg['dim']}, {cfg['mode']} recall", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
