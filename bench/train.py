"""Benchmark supermask training throughput against the plain ways, in the same run.

    python bench/train.py                  # all three parts, CPU (or CUDA when present)
    python bench/train.py --part cli       # one part: cli, grid or pipeline
    python bench/train.py --quick          # fewer steps and repeats
    python bench/train.py --device cuda    # on the GPU (default: auto = CUDA when present)
    python bench/train.py --threads 1      # torch CPU threads (default 2), here and in the CLI runs

Part `cli`: the path a user takes. `supsup-hf train` runs as a subprocess, once with few and once
with many steps per task; the difference is the marginal cost of a training step through the
command line (start-up, data loading and evaluation cancel out), compared with a plain torch step
on in-memory tensors (`train_step` on pre-made batches) in this process, same threads. lenet
(300 and 1300 steps, float32) and hopnet (100 and 300 steps, both precisions; the GG accuracy of
the 300-step tasks is printed per precision). Targets: lenet within 1.5x of the plain step;
hopnet bf16-mixed >= 1.5x faster than 32, accuracy within 1 point.

Part `grid`: task-steps/s of `training.train_tasks` (what `train --parallel-tasks K` runs per
group) for K = 1, 4, 16 and precision 32 / bf16-mixed, on permuted Fashion-MNIST, against K = 1
in float32 (the plain way), with the step's matrix-product rate and its fraction of this
device's GEMM rate at that precision (measured now on the model's largest product at batch
128·K; K = 8 too). Target: lenet K = 8 >= 1.1x K = 1 in float32.

Part `pipeline`: for each model, task-steps per second (one step = one batch of 128: forward,
backward, optimiser step on the scores) of:
  * end-to-end — `training.train_task` on a `streams` task: uint8 dataset on the device, batch
                 gathered, permuted and normalised there;
  * plain      — the same step (same net, scores, optimiser) on pre-made float batches already on
                 the device: the compute bound, no data work at all;
  * classic    — the same step fed by torchvision's FashionMNIST dataset read from the IDX files,
                 a per-sample ToTensor/Normalize(/pixel permutation) transform and a DataLoader
                 (shuffle, batch 128, `--workers` worker processes, default 0; pinned memory and a
                 non-blocking copy to the GPU when the step runs there).
GPU timings end with a `torch.cuda.synchronize()`. The last columns give the step's matrix-product
work (forward and the backward the scores need; frozen weights get no gradient) and the plain
step's rate as a fraction of this device's float32 GEMM rate.
lenet (784-300-100-500, weight masks, RMSProp) runs permuted-fashion-mnist; hopnet
(784-2048-2048-10, neuron masks, SGD) runs split-fashion-mnist task 0 (classes 0 and 1).
Targets: end-to-end >= 3x classic and within 1.5x of plain. On a CPU hopnet's step is ~2.6 GFLOP
of matrix products, close to the GEMM rate, so end-to-end/classic is bounded near 1.3x there
however fast the data path is; the 3x gap shows for lenet (and on a GPU, where the step is cheap).
"""
import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import islice

import torch

from supsup_hopfield.basenet import _resnet_blocks, _resnet_convs, build_basenet
from supsup_hopfield.data import DEFAULT_DIRS, find_idx_files, load_dataset
from supsup_hopfield.masks import init_scores
from supsup_hopfield.streams import make_stream, task_permutation
from supsup_hopfield.archive import read_header
from supsup_hopfield.training import (DEVICES, PRECISIONS, TrainConfig, make_optimizer, resolve_device, train_step,
                                      train_task, train_tasks)

BATCH = 128


def sync(device):
    """Wait for the GPU, so a timing covers the work it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_macs(spec):
    """Multiply-adds per sample of each layer's product, in forward order (resnet18: each
    convolution at its output resolution, 32x32 halved at every stride 2)."""
    if spec.architecture != "resnet18":
        return [o * i for o, i in spec.weight_shapes]
    width = spec.widths[0]
    # a convolution with o output channels belongs to stage log2(o / width): output side 32 / (o / width)
    macs = [o * i * k * k * (32 * width // o) ** 2 for (o, i, k, _), _ in _resnet_convs(width)]
    o, i = spec.weight_shapes[-1]
    return macs + [o * i]


def step_gflop(spec, batch=BATCH):
    """Matrix-product work of one training step, in GFLOP: the forward pass, and the backward
    products the scores need (input gradients of every layer but the first; for weight masks
    also each layer's weight-shaped gradient, dL/dM = dL/dW' * W). Elementwise work is left out."""
    per_layer = layer_macs(spec)
    macs = sum(per_layer)
    backward = sum(per_layer[1:])
    if spec.mask_kind == "weight":
        backward += macs
    return 2 * batch * (macs + backward) / 1e9


def gemm_gflops(device, m, k, n, repeat=20, dtype=torch.float32):
    """This device's rate on an (m, k)·(k, n) product in `dtype`, GFLOP/s."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        for _ in range(repeat):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / repeat)
    return 2 * m * k * n / best / 1e9


def make_step(net, config, task_index=0):
    """One training step of `net`'s scores, as `train_task` does it."""
    scores = init_scores(net, config.mask_config, config.seed, task_index, device=net.device)
    optimizer = make_optimizer(scores, config)

    def step(x, y):
        train_step(net, scores, optimizer, config, x, y)

    return step


def time_end_to_end(net, task, config, steps):
    sync(net.device)
    t = time.perf_counter()
    train_task(net, task, TrainConfig(**{**config.to_dict(), "steps": steps}), task_index=0)
    sync(net.device)
    return time.perf_counter() - t


def time_plain(net, task, config, steps):
    """Seconds for `steps` plain steps on pre-made batches."""
    g = torch.Generator(device=task.device).manual_seed(0)
    batches = list(islice(task.batches(BATCH, g), 16))  # pre-made float tensors, on the device
    step = make_step(net, config)
    sync(net.device)
    t = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    sync(net.device)
    return time.perf_counter() - t


def classic_loader(root, kind, perm, workers, pin):
    """torchvision dataset + per-sample transforms + DataLoader: the usual pipeline."""
    from torchvision import datasets, transforms

    steps = [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]
    if kind == "permuted":
        p = torch.from_numpy(perm)
        steps.append(transforms.Lambda(lambda x: x.view(-1)[p]))
    else:
        steps.append(transforms.Lambda(lambda x: x.view(-1)))
    dataset = datasets.FashionMNIST(root, train=True, download=False, transform=transforms.Compose(steps))
    if kind == "split":
        rows = torch.nonzero(dataset.targets <= 1).squeeze(1).tolist()
        dataset = torch.utils.data.Subset(dataset, rows)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                       drop_last=True, pin_memory=pin,
                                       generator=torch.Generator().manual_seed(0))


def time_classic(net, loader, config, steps):
    step = make_step(net, config)
    device = net.device

    def batches():
        while True:
            yield from loader

    it = batches()
    next(it)  # start the loader (and any workers) outside the timing
    sync(device)
    t = time.perf_counter()
    for x, y in islice(it, steps):
        step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - t


def torchvision_root(tmp):
    """torchvision's FashionMNIST wants the uncompressed IDX files in <root>/FashionMNIST/raw:
    decompress (or link, when already raw) the Debian files there."""
    raw = os.path.join(tmp, "FashionMNIST", "raw")
    os.makedirs(raw)
    for path in find_idx_files(DEFAULT_DIRS["fashion-mnist"]).values():
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as src, open(os.path.join(raw, path.stem), "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            os.symlink(path, os.path.join(raw, path.name))
    return tmp


def cli_runs(device, threads, quick):
    """Part `cli`: marginal step cost through `supsup-hf train` against the plain step."""
    runs = {"lenet": ((100, 400) if quick else (300, 1300), ["32"]),
            "hopnet": ((50, 150) if quick else (100, 300), list(PRECISIONS))}
    dataset = load_dataset("fashion-mnist", device=device)
    task = make_stream("permuted-fashion-mnist", dataset=dataset).task(0)
    print(f"cli: `supsup-hf train --tasks 2 --dataset permuted-fashion-mnist --threads {threads}`, "
          f"marginal ms per step from two step counts (best of {1 if quick else 2} runs each); plain torch "
          f"step in this process (best of 3)")
    print(f"{'model':<8}{'precision':>11}{'steps':>11}{'cli ms':>9}{'plain ms':>10}{'cli/plain':>11}{'GG acc':>8}")
    failed, marginal = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, ((few, many), precisions) in runs.items():
            net = build_basenet(model, outputs=500 if model == "lenet" else 10, seed=0, device=device)
            for precision in precisions:
                seconds, accuracy = {}, None
                for steps in (few, many):
                    out = os.path.join(tmp, f"{model}-{precision}-{steps}.h5")
                    cmd = [sys.executable, "-m", "supsup_hopfield.cli", "train", "--tasks", "2", "--steps", str(steps),
                           "--model", model, "--dataset", "permuted-fashion-mnist", "--memory-rule", "none",
                           "--precision", precision, "--device", device.type, "--threads", str(threads),
                           "--outputs", "500" if model == "lenet" else "10", "--out", out]
                    seconds[steps] = float("inf")
                    for _ in range(1 if quick else 2):  # best of: other processes share the cores
                        t = time.perf_counter()
                        subprocess.run(cmd + ["--force"], check=True, capture_output=True)
                        seconds[steps] = min(seconds[steps], time.perf_counter() - t)
                    if steps == many:
                        per_task = read_header(out, verify=False).per_task
                        accuracy = sum(r["accuracy"] for r in per_task) / len(per_task)
                cli = (seconds[many] - seconds[few]) / (2 * (many - few))
                config = TrainConfig.for_architecture(model, device=device.type, precision=precision)
                time_plain(net, task, config, 3)
                plain = min(time_plain(net, task, config, 100 if model == "lenet" else 20) for _ in range(3))
                plain /= 100 if model == "lenet" else 20
                marginal[model, precision] = (cli, accuracy)
                print(f"{model:<8}{precision:>11}{f'{few}/{many}':>11}{cli * 1e3:>9.2f}{plain * 1e3:>10.2f}"
                      f"{cli / plain:>10.2f}x{accuracy:>8.4f}")
                if model == "lenet" and cli / plain > 1.5:
                    failed.append(f"lenet: cli step {cli / plain:.2f}x the plain step (target <= 1.5x)")
    if ("hopnet", "bf16-mixed") in marginal:
        (full, acc32), (half, acc16) = marginal["hopnet", "32"], marginal["hopnet", "bf16-mixed"]
        print(f"hopnet bf16-mixed: {full / half:.2f}x faster per step than 32, GG accuracy "
              f"{100 * (acc16 - acc32):+.2f} points")
        failed += [f"hopnet bf16-mixed only {full / half:.2f}x faster (target >= 1.5x)"] * (full / half < 1.5)
        failed += [f"hopnet bf16-mixed accuracy {100 * (acc16 - acc32):+.2f} points (target within 1)"] * (
            abs(acc16 - acc32) > 0.01)
    return failed


def grid(device, quick):
    """Part `grid`: K tasks per step x precision, task-steps/s of train_tasks."""
    dataset = load_dataset("fashion-mnist", device=device)
    stream = make_stream("permuted-fashion-mnist", dataset=dataset)
    ks = (1, 4, 8, 16)
    print("grid: training.train_tasks on permuted-fashion-mnist, K tasks per batched step")
    print(f"{'model':<8}{'precision':>11}{'K':>4}{'steps':>7}{'task-steps/s':>14}{'vs K=1, 32':>12}"
          f"{'GFLOP/s':>9}{'of GEMM':>9}")
    failed = []
    for model in ("lenet", "hopnet"):
        net = build_basenet(model, outputs=500 if model == "lenet" else 10, seed=0, device=device)
        work = step_gflop(net.spec)
        out, inp = max(net.spec.weight_shapes, key=lambda s: s[0] * s[1])
        base = None
        for precision in PRECISIONS:
            for k in ks:
                steps = (20 if model == "lenet" else 5) if quick else (60 if model == "lenet" else 12)
                if device.type == "cuda":
                    steps *= 4
                config = TrainConfig.for_architecture(model, steps=steps, device=device.type, precision=precision)
                tasks = [stream.task(i) for i in range(k)]
                train_tasks(net, tasks, TrainConfig(**{**config.to_dict(), "steps": 2}), range(k))  # warm-up
                best = float("inf")
                for _ in range(2 if quick else 3):
                    sync(device)
                    t = time.perf_counter()
                    train_tasks(net, tasks, config, range(k))
                    sync(device)
                    best = min(best, time.perf_counter() - t)
                rate = k * steps / best
                base = base or rate
                dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
                gemm = gemm_gflops(device, BATCH * k, inp, out, repeat=5, dtype=dtype)
                print(f"{model:<8}{precision:>11}{k:>4}{steps:>7}{rate:>14.1f}{rate / base:>11.2f}x"
                      f"{work * rate:>9.0f}{work * rate / gemm:>9.0%}")
                if model == "lenet" and precision == "32" and k == 8 and rate / base < 1.1:
                    failed.append(f"lenet K=8: {rate / base:.2f}x K=1 (target >= 1.1x)")
    print("(GEMM: this device's rate at that precision on the largest product at batch 128*K, measured now)")
    return failed


def pipeline(device, threads, workers, quick):
    """Part `pipeline`: end-to-end train_task against plain steps and torchvision's DataLoader."""
    repeat = 2 if quick else 3
    steps = {"lenet": 60, "hopnet": 15} if quick else {"lenet": 300, "hopnet": 60}
    if device.type == "cuda":  # a GPU step is cheap: more steps for a stable timing
        steps = {k: 4 * v for k, v in steps.items()}

    dataset = load_dataset("fashion-mnist", device=device)
    setups = {
        "lenet": (build_basenet("lenet", outputs=500, seed=0, device=device), "permuted",
                  make_stream("permuted-fashion-mnist", dataset=dataset).task(0),
                  TrainConfig(device=device.type)),
        "hopnet": (build_basenet("hopnet", outputs=10, seed=0, device=device), "split",
                   make_stream("split-fashion-mnist", dataset=dataset).task(0),
                   TrainConfig.for_architecture("hopnet", device=device.type)),
    }
    print(f"pipeline: classic DataLoader workers {workers}, best of {repeat}")
    print(f"{'model':<8}{'steps':>6}{'end-to-end':>12}{'plain':>10}{'classic':>10}"
          f"{'e2e/classic':>13}{'plain/e2e':>11}{'GFLOP/step':>12}{'plain GFLOP/s':>15}{'of GEMM':>9}")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(tmp)
        for name, (net, kind, task, config) in setups.items():
            n = steps[name]
            loader = classic_loader(root, kind, task_permutation(0, 0), workers, device.type == "cuda")
            best = {"e2e": float("inf"), "plain": float("inf"), "classic": float("inf")}
            time_plain(net, task, config, 3)  # warm-up
            for _ in range(repeat):  # interleaved, so load from other processes hits all three
                best["e2e"] = min(best["e2e"], time_end_to_end(net, task, config, n))
                best["plain"] = min(best["plain"], time_plain(net, task, config, n))
                best["classic"] = min(best["classic"], time_classic(net, loader, config, n))
            rate = {k: n / v for k, v in best.items()}
            work = step_gflop(net.spec)
            out, inp = max(net.spec.weight_shapes, key=lambda s: s[0] * s[1])
            gemm = gemm_gflops(device, BATCH, inp, out)
            speedup, gap = rate["e2e"] / rate["classic"], rate["plain"] / rate["e2e"]
            print(f"{name:<8}{n:>6}{rate['e2e']:>12.1f}{rate['plain']:>10.1f}{rate['classic']:>10.1f}"
                  f"{speedup:>12.2f}x{gap:>10.2f}x{work:>12.3f}{work * rate['plain']:>15.0f}"
                  f"{work * rate['plain'] / gemm:>9.0%}")
            failed += [f"{name}: end-to-end {speedup:.2f}x classic (target >= 3x)"] * (speedup < 3)
            failed += [f"{name}: plain {gap:.2f}x end-to-end (target <= 1.5x)"] * (gap > 1.5)
    print("(task-steps/s; GEMM rate of this device on the largest product at batch 128, measured now)")
    return failed


class PlainResNet(torch.nn.Module):
    """The same resnet18 as torch users write it: nn.Conv2d / nn.BatchNorm2d modules, weights
    trained (the plain step the masked one is compared with)."""

    def __init__(self, spec):
        super().__init__()
        convs = _resnet_convs(spec.widths[0])
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(i, o, k, stride, k // 2, bias=False)
                                         for (o, i, k, _), stride in convs)
        self.bns = torch.nn.ModuleList(torch.nn.BatchNorm2d(o, affine=False) for (o, *_), _ in convs)
        self.blocks = _resnet_blocks(spec.widths[0])[1]
        self.linear = torch.nn.Linear(8 * spec.widths[0], spec.outputs, bias=False)

    def forward(self, x):
        layers = iter(zip(self.convs, self.bns))

        def conv_bn(h):
            conv, bn = next(layers)
            return bn(conv(h))

        h = torch.relu(conv_bn(x.view(-1, 3, 32, 32)))
        for block in self.blocks:
            out = conv_bn(torch.relu(conv_bn(h)))
            h = torch.relu(out + (conv_bn(h) if len(block) == 3 else h))
        return self.linear(torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


def resnet(device, quick, width=20):
    """Part `resnet`: the masked resnet18 step against a plain torch step of the same model."""
    net = build_basenet("resnet18", widths=(width,), outputs=5, seed=0, device=device)
    config = TrainConfig(optimizer="adam", lr=1e-3, batch_size=64, device=device.type)
    batch = config.batch_size
    x = torch.randn(8, batch, 3072, device=device)
    y = torch.randint(0, 5, (8, batch), device=device)
    scores = init_scores(net, config.mask_config, 0, 0, device=device)
    optimizer = make_optimizer(scores, config)
    stats = net.new_batchnorm()
    plain = PlainResNet(net.spec).to(device)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def masked_step(i):
        train_step(net, scores, optimizer, config, x[i % 8], y[i % 8], stats)

    def plain_step(i):
        loss = torch.nn.functional.cross_entropy(plain(x[i % 8]), y[i % 8])
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    steps = 3 if quick else 10
    best = {}
    for name, step in (("masked", masked_step), ("plain", plain_step)):
        step(0)  # warm-up
        best[name] = float("inf")
        for _ in range(2 if quick else 3):
            sync(device)
            t = time.perf_counter()
            for i in range(steps):
                step(i)
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - t) / steps)
    work = step_gflop(net.spec, batch)
    # this device's rate on the convolution with the most work, forward, at this batch
    (o, i, k, _), stride = max(_resnet_convs(width), key=lambda c: c[0][0] * c[0][1] * (32 * width // c[0][0]) ** 2)
    side = 32 * width // o * stride
    inp, w = torch.randn(batch, i, side, side, device=device), torch.randn(o, i, k, k, device=device)
    torch.nn.functional.conv2d(inp, w, stride=stride, padding=k // 2)
    sync(device)
    t = time.perf_counter()
    for _ in range(5):
        torch.nn.functional.conv2d(inp, w, stride=stride, padding=k // 2)
    sync(device)
    conv_rate = 2 * batch * o * i * k * k * (side // stride) ** 2 / ((time.perf_counter() - t) / 5) / 1e9
    print(f"resnet: resnet18 width {width} (1.09 M masked weights at 20), batch {batch}, Adam; in-memory batches")
    print(f"{'step':<8}{'ms':>9}{'GFLOP/step':>12}{'GFLOP/s':>9}{'of conv':>9}")
    for name in ("masked", "plain"):
        rate = work / best[name]  # the same product work: the plain step's weight gradients match dL/dM's
        print(f"{name:<8}{best[name] * 1e3:>9.1f}{work:>12.2f}{rate:>9.1f}{rate / conv_rate:>9.0%}")
    print(f"masked/plain {best['masked'] / best['plain']:.2f}x; conv rate {conv_rate:.0f} GFLOP/s "
          f"({o}x{i}x{k}x{k} at {side}x{side}, stride {stride}, measured now)")
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cli", "grid", "pipeline", "resnet"], action="append",
                        help="run only this part (repeatable) [all]")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the classic pipeline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"torch {torch.__version__}, {where}, batch {BATCH}")
    failed = []
    for part in args.part or ["cli", "grid", "pipeline", "resnet"]:
        if part == "resnet":
            failed += resnet(device, args.quick)
        elif part == "cli":
            failed += cli_runs(device, args.threads, args.quick)
        elif part == "grid":
            failed += grid(device, args.quick)
        else:
            failed += pipeline(device, args.threads, args.workers, args.quick)
        print()
    print("targets met" if not failed else "targets missed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
