"""A continual-learning run: tasks in order → one supermask each → Hopfield memory → archive.

This is `supsup-hf train` without the command line (docs/METHOD.md §5, docs/ARCHIVE.md). For every task of
the stream: learn its supermask on the frozen base network (`training.train_task`), measure its
accuracy with the task given (GG), feed the mask into the Hopfield memory as z = 2m − 1, keep the
explicit mask (bit-packed in RAM as in the archive: 2500 lenet masks take 98 MB, not 788) and the
task's metrics. Every `checkpoint_every` tasks, at the end, and on Ctrl-C, the archive is
rewritten atomically, so a killed run loses at most the tasks since the last checkpoint and
`resume=True` carries on from there.

Memory. The keyed memory (`keyed.py`, d mask entries × K keys, the default `supsup-hf train`
picks by `choose_memory`) or an attractor memory (`memory.py`, d×d). Neuron masks (hopnet) go into
one memory per masked layer (`per-layer`) or one memory over all layers' masks concatenated
(`joint`). An attractor memory is d×d, so over weight masks (lenet: 315,200 entries) it must be
split: with `hopfield_dim` D, each layer's (or the joint) mask vector is cut into blocks of D
entries, one memory per block. Without D, a weight-mask model keeps explicit masks only, unless
its memory is keyed.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from supsup_hopfield.archive import Archive, read_archive, write_archive
from supsup_hopfield.basenet import DEFAULT_WIDTHS, MASK_KINDS, BaseNetSpec, build_basenet, signed_constant
from supsup_hopfield.errors import UserError, check_fits, physical_memory
from supsup_hopfield.keyed import MAX_KEYS, KeyedMemory, check_keys, keys_for, memory_bytes
from supsup_hopfield.masks import init_scores, initial_mask
from supsup_hopfield.memory import HopfieldMemory, block_edges
from supsup_hopfield.packed import PackedMaskBank, PackedMasks, mask_sha256
from supsup_hopfield.rules import RULES
from supsup_hopfield.streams import make_stream
from supsup_hopfield.training import TrainConfig, autocast, evaluate, resolve_device, train_tasks

LAYOUTS = ("per-layer", "joint")
MEMORY_RULES = (*RULES, "keyed")  # the attractor rules, and the keyed memory (keyed.py)
# Masks per memory unit (n/d) up to which the seeded recovery gave every mask back exactly with
# projection-zd: 250 trained hopnet masks per 2048-unit layer, 100 steps each (docs/METHOD.md).
RECOVERY_LOAD = 0.12


@dataclass(frozen=True)
class RunConfig:
    """What a run learns. Everything here is written into the archive; `resume` requires the
    same values (only the number of tasks may grow)."""

    dataset: str = "permuted-mnist"
    model: str = "hopnet"
    widths: tuple | None = None  # None: the model's default hidden widths
    outputs: int = 10  # output neurons; more than the classes = superfluous neurons (G objective)
    seed: int = 0  # base network, stream, scores and batches all derive from it
    memory_rule: str | None = "projection-zd"  # None: explicit masks only (`choose_memory` picks per run)
    memory_layout: str = "per-layer"
    hopfield_dim: int | None = None  # block size for memories over long (weight) masks
    memory_keys: int | None = None  # keyed memory: its keys, i.e. the masks it holds (None: as many as tasks)
    memory_dtype: str = "float32"
    keep_masks: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model not in MASK_KINDS:
            raise UserError(f"model: expected one of {', '.join(MASK_KINDS)}, got {self.model!r}")
        if self.memory_rule is not None and self.memory_rule not in MEMORY_RULES:
            raise UserError(f"memory rule: expected one of {', '.join(MEMORY_RULES)} or none, got {self.memory_rule!r}")
        if self.memory_keys is not None:
            if self.memory_rule != "keyed":
                raise UserError(f"memory keys: only a keyed memory has keys, this run's is {self.memory_rule!r}; "
                                "drop `memory_keys` or pass `memory_rule='keyed'`")
            check_keys(self.memory_keys)
        if self.memory_layout not in LAYOUTS:
            raise UserError(f"memory layout: expected one of {', '.join(LAYOUTS)}, got {self.memory_layout!r}")
        if self.hopfield_dim is not None and self.hopfield_dim < 2:
            raise UserError(f"hopfield dim: expected an integer >= 2, got {self.hopfield_dim}")
        if int(self.outputs) < 2:
            raise UserError(f"outputs: expected at least 2, got {self.outputs}")
        if self.memory_rule not in (None, "keyed") and MASK_KINDS[self.model] == "weight" and self.hopfield_dim is None:
            raise UserError(f"model {self.model} learns weight masks ({self.mask_entries():,} entries): a "
                            f"Hopfield memory over them needs `hopfield_dim=D` (one D×D memory per block "
                            f"of D entries), or use `memory_rule='none'` to keep explicit masks only")
        if not self.memory_rule and not self.keep_masks:
            raise UserError("nothing would keep the masks: with `memory_rule='none'`, use `keep_masks=True`")

    @property
    def mask_kind(self) -> str:
        return MASK_KINDS[self.model]

    def layer_sizes(self) -> list[int]:
        """Mask entries per masked layer: units (neuron masks) or weights (weight masks)."""
        if self.mask_kind == "neuron":
            return list(self.widths or DEFAULT_WIDTHS[self.model])
        return self.weight_counts()

    def weight_counts(self) -> list[int]:
        """Weights of each layer of the base network."""
        spec = BaseNetSpec(self.model, tuple(self.widths or DEFAULT_WIDTHS[self.model]), self.outputs, self.seed)
        return [int(np.prod(shape)) for shape in spec.weight_shapes]

    def mask_entries(self) -> int:
        return sum(self.layer_sizes())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths or DEFAULT_WIDTHS[self.model])
        d["train"] = {k: v for k, v in self.train.to_dict().items() if k != "device"}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        d["train"] = TrainConfig(**{"precision": "32", **d["train"]})  # older archives trained in float32
        d.setdefault("memory_keys", None)  # archives from before the keyed memory
        return cls(**d)


@dataclass(frozen=True)
class MemoryChoice:
    """The memory a run keeps (`choose_memory`): rule (None: explicit masks only), layout, keys
    (keyed memory only) and a note for the user (None when there is nothing to say)."""

    rule: str | None
    layout: str
    keys: int | None = None
    note: str | None = None


def format_bytes(n: int) -> str:
    """A size for people: bytes below 100 kB, else MB (10^6 bytes) with one decimal."""
    return f"{n:,} bytes" if n < 100_000 else f"{n / 1e6:,.1f} MB"


def choose_memory(model: str, widths, tasks: int, rule: str = "auto", layout: str | None = None,
                  hopfield_dim: int | None = None, keys: int | None = None, outputs: int = 10,
                  available: int | None = None) -> MemoryChoice:
    """The memory a run of `tasks` tasks keeps.

    rule "auto" picks the keyed memory (keyed.py), one joint memory over all masked layers with
    the smallest power of two of keys >= tasks: it gives every one of the masks back exactly.
    Its keys are capped so that it takes at most a quarter of this machine's RAM (`available`
    bytes); a run past that keeps every mask explicitly and the memory holds the first ones, which
    the note says. Weight-mask models keep explicit masks only unless `hopfield_dim` is given (a
    keyed memory of weight masks is far larger than the masks). A rule named explicitly is kept,
    with a note when recovery will not give every mask back."""
    weight = MASK_KINDS.get(model) == "weight"
    widths = list(widths or DEFAULT_WIDTHS.get(model, ()))
    entries = sum(widths) if not weight else \
        sum(int(np.prod(shape)) for shape in BaseNetSpec(model, tuple(widths), outputs, 0).weight_shapes)
    if rule == "none":
        return MemoryChoice(None, layout or "per-layer")
    if rule == "auto" and weight and not hopfield_dim:
        return MemoryChoice(None, layout or "per-layer", note=(
            f"{model} learns weight masks ({entries:,} entries each), kept explicitly; a keyed memory of them "
            f"would take {format_bytes(memory_bytes(entries, keys or keys_for(tasks)))} (`memory_rule='keyed'`)"))
    if rule in ("auto", "keyed"):
        layout = layout or "joint"
        if keys is None:
            budget = (physical_memory() if available is None else available) // 4 or 1 << 62
            keys = min(keys_for(tasks), MAX_KEYS)
            while keys > 2 and memory_bytes(entries, keys) > budget:
                keys //= 2
        keys = check_keys(keys)
        size = f"{entries:,} mask entries x {keys:,} keys, {format_bytes(memory_bytes(entries, keys))}"
        if tasks > keys:
            note = (f"keyed memory ({size}) holds the first {keys:,} of the {tasks:,} masks; every mask stays "
                    f"in the explicit masks (`keep_masks=True`)")
        else:
            note = (f"keyed memory ({size}): gives back all {tasks:,} masks exactly, each completed from its "
                    f"seeded key" + (" (chosen by auto: attractor memories give masks back from seeded cues "
                                     f"only up to load {RECOVERY_LOAD})" if rule == "auto" else ""))
        return MemoryChoice("keyed", layout, keys, note)
    if keys is not None:
        raise UserError(f"memory keys: only a keyed memory has keys, got `memory_rule={rule!r}`; drop "
                        "`memory_keys` or pass `memory_rule='keyed'`")
    d = hopfield_dim or (min(widths) if (layout or "per-layer") == "per-layer" else sum(widths))
    note = None
    if not (weight and not hopfield_dim) and tasks > RECOVERY_LOAD * d:
        note = (f"{tasks} masks in memories of d = {d} (load {tasks / d:.2f}): recovery without the task id "
                f"was measured to hold up to load {RECOVERY_LOAD} ({int(RECOVERY_LOAD * d)} masks here); "
                f"the explicit masks stay the ground truth, and `memory_rule='keyed'` gives every mask back")
    return MemoryChoice(rule, layout or "per-layer", None, note)


@dataclass(frozen=True)
class MemorySlot:
    """Which mask entries one memory holds: entries [start, stop) of layer `layer`'s flattened
    mask, or of all layers concatenated when `layer` is None (joint layout)."""

    name: str
    layer: int | None
    start: int
    stop: int


def layer_key(layer: int) -> str:
    """The name under which a run keeps masked layer `layer`'s masks (and its per-layer memory)
    in an archive: the one place a layer number becomes a name."""
    return f"layer{layer}"


def masks_by_layer(masks: dict) -> list:
    """A run archive's masks (name -> masks) as a list indexed by layer number."""
    return [masks[layer_key(l)] for l in range(len(masks))]


@dataclass(frozen=True)
class SavedRun:
    """A run archive's /config, typed: what `train` recorded (docs/ARCHIVE.md)."""

    run: RunConfig
    slots: tuple  # MemorySlot per memory, in order
    scenario: str  # "gg" (task given while training) or "nns"
    base_network: BaseNetSpec
    stream: dict  # the stream's recipe (name, seed, relabel)

    @classmethod
    def from_config(cls, config: dict, where: str = "archive") -> "SavedRun":
        try:
            b = config["base_network"]
            return cls(run=RunConfig.from_dict(config["run"]),
                       slots=tuple(MemorySlot(**s) for s in config.get("memory_slots", [])),
                       scenario=config.get("scenario", "gg"),
                       base_network=BaseNetSpec(b["architecture"], tuple(b["widths"]), b["outputs"], b["seed"]),
                       stream=dict(config["stream"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: its config is not a run's ({type(e).__name__}: {e}); pass an archive "
                            "written by supsup-hf train") from None


def memory_slots(cfg: RunConfig) -> list[MemorySlot]:
    """The memories a run keeps, in order (empty without a memory rule)."""
    if not cfg.memory_rule:
        return []
    sizes = cfg.layer_sizes()
    groups = [("joint", None, sum(sizes))] if cfg.memory_layout == "joint" else \
        [(layer_key(l), l, n) for l, n in enumerate(sizes)]
    slots = []
    for name, layer, n in groups:
        edges = block_edges(n, cfg.hopfield_dim or n)
        for b, (start, stop) in enumerate(zip(edges[:-1], edges[1:])):
            slots.append(MemorySlot(name if len(edges) == 2 else f"{name}.{b}", layer, start, stop))
    return slots


def new_memories(cfg: RunConfig) -> dict:
    """The run's memories, empty, one per slot (name -> memory); a keyed run needs its keys."""
    if cfg.memory_rule == "keyed":
        if cfg.memory_keys is None:
            raise UserError("memory keys: a keyed memory needs its number of keys; pass `memory_keys=K` (a power "
                            "of two >= the tasks, e.g. keyed.keys_for(tasks))")
        return {s.name: KeyedMemory(s.stop - s.start, cfg.memory_keys, cfg.seed) for s in memory_slots(cfg)}
    return {s.name: HopfieldMemory(s.stop - s.start, cfg.memory_rule, cfg.memory_dtype) for s in memory_slots(cfg)}


def _store_what_fits(mem, patterns: np.ndarray) -> None:
    """Store the patterns (n, dim) in order; a keyed memory that fills up keeps the first ones
    (the run's explicit masks hold the rest)."""
    room = mem.keys - mem.n_stored if mem.rule == "keyed" else len(patterns)
    if room > 0:
        mem.store(patterns[:room])


def store_masks(memories: dict, slots, layer_masks) -> None:
    """Store one task's masks (one array per masked layer) in every memory slot."""
    for slot in slots:
        _store_what_fits(memories[slot.name], slot_pattern(slot, layer_masks)[None])


def replay_memories(config: dict, masks: dict, rule: str, stored: int, dtype: str = "float32") -> dict:
    """A saved run's memories rebuilt under `rule` from its first `stored` explicit masks (its
    archive's `config` and `masks`), without retraining: what the run's memory would hold after
    `stored` tasks had it used `rule`. Same layout and slots as the run (name -> memory); a keyed
    memory has the run's keys, or enough for all the run's masks."""
    run = SavedRun.from_config(config).run
    layers = masks_by_layer(masks)
    if not 1 <= stored <= len(layers[0]):
        raise UserError(f"stored: expected 1..{len(layers[0])} (the run's explicit masks), got {stored}; "
                        "pass counts the archive holds")
    keys = (run.memory_keys or keys_for(len(layers[0]))) if rule == "keyed" else None
    cfg = dataclasses.replace(run, memory_rule=rule, memory_keys=keys, memory_dtype=dtype)
    flat = [np.asarray(m[:stored]).reshape(stored, -1) for m in layers]  # (stored, entries) per layer
    memories = new_memories(cfg)
    for slot in memory_slots(cfg):
        rows = flat[slot.layer] if slot.layer is not None else np.concatenate(flat, axis=1)
        _store_what_fits(memories[slot.name], rows[:, slot.start:slot.stop])
    return memories


def slot_pattern(slot: MemorySlot, layer_masks) -> np.ndarray:
    flat = layer_masks[slot.layer].ravel() if slot.layer is not None else \
        np.concatenate([m.ravel() for m in layer_masks])
    return flat[slot.start:slot.stop]


def initial_masks(config: dict, layer: int, tasks: int) -> np.ndarray:
    """Layer `layer`'s seeded starting mask of tasks 0..tasks−1 of a saved run (from its archive
    config): what the `delta` codec stores flips against, rebuilt at no storage cost."""
    saved = SavedRun.from_config(config)
    train = saved.run.train
    return np.stack([initial_mask(saved.base_network, train.mask_config, train.seed, t, layers=[layer])[0]
                     for t in range(tasks)])


def seeded_context(config: dict, layer: int, tasks: int):
    """What the `delta-context` codec conditions on for layer `layer` of a saved run, rebuilt
    from its seed: the initial scores of tasks 0..tasks−1 (tasks, *shape) and the base weights
    (*shape). None unless the run has threshold masks (its initial mask is then scores >= 0)."""
    saved = SavedRun.from_config(config)
    train = saved.run.train
    if train.mask != "threshold":
        return None
    scores = np.stack([init_scores(saved.base_network, train.mask_config, train.seed, t, layers=[layer])[0]
                       .detach().numpy() for t in range(tasks)])
    return scores, signed_constant(saved.base_network.weight_shapes[layer], saved.base_network.seed, layer).numpy()


class Progress:
    """Hooks a run calls; the CLI draws a progress bar with them. All optional. `step` comes
    after each training step of the group of `tasks` learned together (not from remote
    workers), with their losses as a tensor on the device: `float(...)` waits for the GPU, so
    read it rarely."""

    def start(self, done: int, total: int, steps: int) -> None: ...
    def step(self, tasks: range, step: int, losses) -> None: ...
    def task_done(self, record: dict) -> None: ...
    def saved(self, path: Path, tasks: int) -> None: ...


def train_run(cfg: RunConfig, tasks: int, out, *, resume: bool = False, force: bool = False,
              checkpoint_every: int = 10, data_dir=None, download: bool = True,
              progress: Progress | None = None, parallel_tasks: int = 1, executor=None) -> Archive:
    """Learn tasks 0..tasks−1 (those an archive already holds are kept with `resume`).

    `parallel_tasks` K: consecutive tasks are learned K at a time in one batched step
    (`training.train_tasks`); a task's mask does not depend on K beyond rounding. `executor`:
    None learns in this process; an `executors.RayExecutor` learns the groups on Ray workers.
    Either way the masks enter the memory and the archive in task order, checkpointed as
    finished tasks cross multiples of `checkpoint_every`. `download`: fetch the dataset into
    `data_dir` when its files are missing there (`data.load_dataset`); False never goes online."""
    out = Path(out)
    progress = progress or Progress()
    if tasks < 1:
        raise UserError(f"tasks: expected at least 1, got {tasks}")
    if checkpoint_every < 1:
        raise UserError(f"checkpoint every: expected at least 1 task, got {checkpoint_every}")
    if parallel_tasks < 1:
        raise UserError(f"parallel tasks: expected at least 1, got {parallel_tasks}; pass `parallel_tasks=1` or more")
    if resume and force:
        raise UserError("`resume=True` and `force=True` contradict each other; pass one")
    if out.exists() and not (resume or force):
        raise UserError(f"{out} exists; pass `resume=True` to continue it or `force=True` to overwrite it")
    if resume and not out.exists():
        raise UserError(f"{out} does not exist, so there is nothing to resume; drop `resume=True`")
    _check_out(out)
    if cfg.memory_rule == "keyed" and cfg.memory_keys is None:  # as many keys as tasks, or the run's own
        saved_keys = _saved_keys(out) if resume else None
        cfg = dataclasses.replace(cfg, memory_keys=saved_keys or keys_for(tasks))
    if cfg.memory_rule == "keyed" and tasks > cfg.memory_keys and not cfg.keep_masks:
        raise UserError(f"memory keys: the keyed memory holds {cfg.memory_keys} masks and {tasks} tasks would lose "
                        f"the rest; pass `keep_masks=True` or `memory_keys={keys_for(tasks)}`")

    check_run_fits(cfg)
    stream, net = stream_and_net(cfg, tasks, data_dir, download)
    slots = memory_slots(cfg)
    config = {"run": cfg.to_dict(), "base_network": net.spec.to_dict(), "stream": stream.recipe(),
              "memory_slots": [dataclasses.asdict(s) for s in slots]}
    config["stream"].pop("n_tasks", None)

    if resume:
        saved = read_archive(out, packed_masks=True)
        if SavedRun.from_config(saved.config, str(out)).scenario == "nns":
            raise UserError(f"{out} holds an NNs run (masks not per task), which cannot be resumed as a "
                            f"task-given run; write to a new `out`")
        _check_same_run(out, saved.config, config)
        if cfg.keep_masks and saved.masks is None and saved.per_task:
            raise UserError(f"{out} was written with `keep_masks=False`; resume it with `keep_masks=False`")
        memories, per_task, evaluations = saved.memories, list(saved.per_task), saved.evaluations
        kept = PackedMaskBank(masks_by_layer(saved.masks)) if saved.masks else None
    else:
        memories = new_memories(cfg)
        per_task, evaluations, kept = [], [], None
    if cfg.keep_masks and kept is None:
        kept = PackedMaskBank([PackedMasks.empty(shape) for shape in net.mask_shapes])  # a row per finished task
    archive = Archive(memories=memories, config=config, per_task=per_task, evaluations=evaluations)

    def save():
        if cfg.keep_masks:
            archive.masks = {layer_key(l): layer for l, layer in enumerate(kept.layers)}
        archive.config["tasks"] = len(per_task)
        write_archive(out, archive)
        progress.saved(out, len(per_task))

    done = len(per_task)
    groups = [range(i, min(i + parallel_tasks, tasks)) for i in range(done, tasks, parallel_tasks)]
    if executor is None:
        learned = (learn_group(net, stream, cfg.train, g, lambda s, losses, g=g: progress.step(g, s, losses))
                   for g in groups)
    else:
        learned = executor.map(GroupJob(cfg, tasks, None if data_dir is None else str(data_dir)), groups)
    progress.start(done, tasks, cfg.train.steps)
    try:
        for results in learned:
            before = len(per_task)
            for layer_masks, info in results:
                store_masks(memories, slots, layer_masks)
                sha = kept.task_sha256(kept.append(layer_masks)) if cfg.keep_masks else mask_sha256(layer_masks)
                record = {"task": info["task"], "accuracy": info["accuracy"], "mask_sha256": sha,
                          **{k: info[k] for k in ("seconds", "final_loss", "density", "flip_fraction", "batchnorm")
                             if k in info}}
                per_task.append(record)
                progress.task_done(record)
            if len(per_task) // checkpoint_every > before // checkpoint_every and len(per_task) < tasks:
                save()
    except KeyboardInterrupt:
        save()  # what is finished is kept; the tasks in progress are lost
        raise
    finally:
        close = getattr(learned, "close", None)
        if close is not None:
            close()  # stops the work still under way (remote groups are cancelled)
    save()
    return archive


def learn_group(net, stream, train: TrainConfig, group: range, progress=None) -> list:
    """Learn the tasks of `group` together (`training.train_tasks`) and measure each one's
    accuracy with the task given, at the training precision: [(masks, info with accuracy)]."""
    tasks = [stream.task(i) for i in group]
    learned = train_tasks(net, tasks, train, list(group), progress=progress)
    with autocast(net.device, train.precision):
        return [(masks, {**info, "accuracy": evaluate(net, masks, task, batchnorm=info.get("batchnorm"))})
                for task, (masks, info) in zip(tasks, learned)]


@dataclass(frozen=True)
class GroupJob:
    """What a worker needs to learn groups of a run's tasks: the run rebuilt from its config
    alone (base network from its seed, stream from its recipe, data from `data_dir` on the
    worker's machine). Picklable; `job(group)` returns `learn_group`'s result."""

    cfg: RunConfig
    tasks: int
    data_dir: str | None = None

    def __call__(self, group: range) -> list:
        stream, net = _worker_run(self.cfg, self.tasks, self.data_dir)
        return learn_group(net, stream, self.cfg.train, group)


@functools.lru_cache(maxsize=1)
def _worker_run(cfg: RunConfig, tasks: int, data_dir):
    """A worker builds the run's stream and network once, for all the groups it learns."""
    return stream_and_net(cfg, tasks, data_dir, download=False)


def train_nns_run(cfg: RunConfig, tasks: int, out, *, force: bool = False, check_every: int = 100,
                  budget: int | None = None, data_dir=None, download: bool = True,
                  progress=None) -> tuple[Archive, dict]:
    """The NNs scenario (docs/METHOD.md §6): the learner sees tasks 0..tasks−1 in order but is told
    neither the task nor when it changes; it allocates masks itself (`nns.train_nns`). Every
    learned mask goes into the memory and the archive; each true task is then scored with the
    mask inferred per test batch (oneshot over all learned masks). Returns (archive, report)."""
    from supsup_hopfield.nns import NNsConfig, evaluate_nns, train_nns

    out = Path(out)
    if tasks < 1:
        raise UserError(f"tasks: expected at least 1, got {tasks}")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass `force=True` to overwrite it (NNs runs are not resumable)")
    _check_out(out)
    if cfg.memory_rule == "keyed" and cfg.memory_keys is None:  # a key for every mask the budget allows
        cfg = dataclasses.replace(cfg, memory_keys=keys_for(budget or tasks))
    check_run_fits(cfg)
    nns_cfg = NNsConfig(check_every=check_every, budget=budget, train=cfg.train)
    stream, net = stream_and_net(cfg, tasks, data_dir, download)
    masks, report = train_nns(net, stream, tasks, cfg.train.steps, nns_cfg, progress=progress)
    scores = evaluate_nns(net, masks, stream, range(tasks), report["task_to_mask"], "oneshot")
    slots = memory_slots(cfg)
    memories = new_memories(cfg)
    for layer_masks in masks:
        store_masks(memories, slots, layer_masks)
    per_task = []
    for t in range(tasks):
        m = report["task_to_mask"][t]
        per_task.append({"task": t, "accuracy": scores[t]["accuracy"], "mask": m,
                         "mask_sha256": None if m is None else mask_sha256(masks[m]),
                         "mapped_fraction": scores[t]["mapped_fraction"]})
    summary = {k: v for k, v in report.items() if k != "checks"}
    config = {"run": cfg.to_dict(), "scenario": "nns", "nns": {**nns_cfg.to_dict(), "report": summary},
              "base_network": net.spec.to_dict(), "stream": stream.recipe(), "tasks": tasks,
              "memory_slots": [dataclasses.asdict(s) for s in slots]}
    archive = Archive(memories=memories, config=config, per_task=per_task)
    if cfg.keep_masks:  # one row per learned mask (not per task)
        archive.masks = {layer_key(l): np.stack([m[l] for m in masks]) for l in range(len(net.mask_shapes))}
    write_archive(out, archive)
    return archive, report


def _saved_keys(out: Path) -> int | None:
    """The keys of the keyed memory a run archive keeps (None if it cannot be read: resuming says why)."""
    from supsup_hopfield.archive import read_header

    try:
        return SavedRun.from_config(read_header(out, verify=False).config).run.memory_keys
    except (ValueError, OSError):
        return None


def _check_out(out: Path):
    """Refuse an `out` that could not be written, before any task trains."""
    if out.is_dir():
        raise UserError(f"{out} is a folder; give a file path for `out`")
    folder = out.parent
    if not folder.is_dir():
        raise UserError(f"{out}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{out}: folder {folder} is not writable; choose another `out`")


# bytes per weight while training: frozen weight, score, its gradient and optimizer state (4 B
# each, float32) and the seeded initial mask (int8)
_TRAIN_BYTES_PER_WEIGHT = 17


def check_run_fits(cfg: RunConfig, available: int | None = None):
    """Refuse a run whose memories or network would not fit in RAM, before allocating them."""
    weights = sum(cfg.weight_counts())
    itemsize = np.dtype(cfg.memory_dtype).itemsize
    memories = sum(memory_bytes(s.stop - s.start, cfg.memory_keys) if cfg.memory_rule == "keyed" else
                   (s.stop - s.start) ** 2 * itemsize for s in memory_slots(cfg))
    check_fits("this run", {"Hopfield memories": memories, "base network": weights * _TRAIN_BYTES_PER_WEIGHT},
               "pass a smaller `hopfield_dim`, `widths` or `outputs`", available)


def stream_and_net(cfg: RunConfig, tasks: int, data_dir, download: bool = True):
    """The run's task stream (data on the training device) and its frozen base network, rebuilt
    from the config alone (also how `evaluation` rebuilds a saved run)."""
    device = resolve_device(cfg.train.device)
    stream = make_stream(cfg.dataset, seed=cfg.seed, n_tasks=tasks if "split" in cfg.dataset else None,
                         data_dir=data_dir, download=download, device=device)
    images = stream.dataset.name == "cifar100"
    if images != (cfg.model == "resnet18"):
        raise UserError(f"model: {cfg.model} does not take {cfg.dataset}'s images; pass "
                        f"`model='resnet18'` for split-cifar100, and an MLP (`model='lenet'`, 'fc1024' or "
                        f"'hopnet') for the 28x28 streams")
    if cfg.outputs < stream.n_classes:
        raise UserError(f"outputs: {cfg.dataset} has labels 0..{stream.n_classes - 1}, so it needs at least "
                        f"{stream.n_classes} output neurons, got {cfg.outputs}; pass `outputs={stream.n_classes}`")
    return stream, build_basenet(cfg.model, cfg.widths, cfg.outputs, cfg.seed, device=device)


def _flat(d, prefix=""):
    """Nested dicts as {"a.b": value} (other values as they are)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_same_run(path, saved: dict, now: dict):
    saved = {**saved, "run": RunConfig.from_dict(saved["run"]).to_dict()}  # with the defaults of keys added since
    a = _flat({k: saved.get(k) for k in ("run", "base_network", "stream")})
    b = _flat({k: now.get(k) for k in ("run", "base_network", "stream")})
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if keys:
        detail = ", ".join(f"{k}: archive {a.get(k)!r} vs now {b.get(k)!r}" for k in keys[:3])
        raise UserError(f"{path} holds a different run ({detail}); resume with the same options, or write to "
                        f"a new `out`")
