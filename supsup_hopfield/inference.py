"""Task inference over explicit, bit-packed masks (Wortsman et al. 2020, §3.3 "Task inference";
docs/METHOD.md §6).

The k learned masks stay bit-packed (`packed.PackedMaskBank`); inference never builds a float
copy of all masks, only the superposition S = Σ_i α_i M_i and the inner products ⟨G, M_i⟩ that
the bank computes from the bits.

One-shot inference (the paper's `se_oneshot_*_minimization`):
  1. S_l = (1/k) sum_i M_{i,l} for every masked layer l (the bank's superposition).
  2. Forward the batch with the masks replaced by S_l (weights * S_l for weight masks, S_l as
     the BatchNorm scale for hopnet's neuron masks); objective E on the logits.
  3. dE/dS_l by autograd on the (entries,) leaf tensors S_l.
  4. dE/dalpha_i = sum_l <dE/dS_l, M_{i,l}> (the bank's inner products): the chain rule through S = sum alpha M.
  5. task = argmin_i dE/dalpha_i, i.e. argmax of -dE/dalpha (the mask whose weight, raised,
     lowers E fastest).
Objectives: `entropy` H = mean over the batch of the softmax entropy over ALL outputs; `g` =
mean over the batch of logsumexp over all s outputs, with the ell real outputs' logits detached, so
only the s - ell superfluous outputs carry gradient. Training by cross-entropy pushes the
superfluous logits down under the right mask, so the right task is again the one whose alpha
lowers the objective most (the same argmin as for H; the paper's code minimises both).
`binary`: ceil(log2 k) rounds, alpha uniform over the remaining candidates, each round keeps the
ceil(half) with the lowest gradient.

Scoring (docs/METHOD.md §6): inference is per batch; a batch whose task is inferred wrongly counts all its
samples as wrong (the paper's `unshared_labels`). The accuracy of the predictions made with the
inferred mask (what the paper reports when labels are shared) is returned beside it.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, Optional

import numpy as np
import torch

from supsup_hopfield.errors import UserError
from supsup_hopfield.packed import PackedMaskBank
from supsup_hopfield.training import predict

METHODS = ("oneshot", "binary", "g", "binary-g")
OBJECTIVES = ("entropy", "g")
_METHOD_OBJECTIVE = {"oneshot": "entropy", "binary": "entropy", "g": "g", "binary-g": "g"}


# --------------------------------------------------------------------------------- inference
def entropy_objective(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the softmax entropy over all outputs: logits (B, outputs) give a
    scalar; (P, B, outputs), a batch under P candidates, give (P,)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean(dim=-1)


def g_objective(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean over the batch of logsumexp over all outputs, the first `n_classes` (real) logits
    detached: only the superfluous outputs carry gradient."""
    z = torch.cat([logits[:, :n_classes].detach(), logits[:, n_classes:]], dim=1)
    return torch.logsumexp(z, dim=1).mean()


def _check_inputs(net, bank: PackedMaskBank, objective: str, n_classes: int) -> None:
    if objective not in OBJECTIVES:
        raise UserError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {objective!r}; pick one of those")
    if [tuple(s) for s in net.mask_shapes] != bank.shapes:
        raise UserError(f"mask bank: expected layer shapes {[tuple(s) for s in net.mask_shapes]} of this "
                        f"network, got {bank.shapes}; pass masks learned on this base network")
    outputs = net.spec.outputs
    if objective == "g" and not 1 <= n_classes < outputs:
        raise UserError(f"g objective: expected superfluous outputs (outputs > n_classes), got outputs={outputs}, "
                        f"n_classes={n_classes}; build the network with more outputs (e.g. `outputs=500`)")


def alpha_gradient(net, bank: PackedMaskBank, x: torch.Tensor, rows=None, objective: str = "entropy",
                   n_classes: int = 10) -> np.ndarray:
    """dE/dalpha_r at alpha uniform (1/len(rows)) over `rows` (default: every task), for the
    objective E ("entropy" or "g") on the batch x (B, 784): float64 (len(rows),)."""
    _check_inputs(net, bank, objective, n_classes)
    rows = bank.check_rows(rows)
    device = net.device
    # 1. the superposed masks, one (entries,) leaf per layer
    supers = [torch.from_numpy(s).to(device).requires_grad_(True) for s in bank.superpose(rows=rows)]
    # 2. forward under S and the objective
    with torch.enable_grad():
        logits = net(x.to(device), [s.view(shape) for s, shape in zip(supers, bank.shapes)])  # (B, outputs)
        value = entropy_objective(logits) if objective == "entropy" else g_objective(logits, n_classes)
        grads = torch.autograd.grad(value, supers)  # 3. dE/dS_l, (entries,) each
    # 4. dE/dalpha_r = sum_l <dE/dS_l, M_{r,l}>
    return bank.inner([g.detach().cpu().numpy() for g in grads], rows=rows)


def infer_task(net, bank: PackedMaskBank, x: torch.Tensor, method: str = "oneshot", n_classes: int = 10) -> int:
    """The row of `bank` whose mask best explains the batch x (B, 784), by `method`:
    "oneshot" (entropy), "g" (one-shot, g objective), "binary" (entropy), "binary-g"."""
    if method not in METHODS:
        raise UserError(f"method: expected one of {', '.join(METHODS)}, got {method!r}; pick one of those")
    objective = _METHOD_OBJECTIVE[method]
    if not method.startswith("binary"):
        return int(np.argmin(alpha_gradient(net, bank, x, None, objective, n_classes)))
    candidates = np.arange(bank.k, dtype=np.int64)
    while candidates.size > 1:  # ceil(log2 k) rounds, keeping the better half each time
        grad = alpha_gradient(net, bank, x, candidates, objective, n_classes)
        keep = np.argsort(grad, kind="stable")[: (candidates.size + 1) // 2]
        candidates = candidates[np.sort(keep)]
    return int(candidates[0])


def evaluate_inference(net, bank: PackedMaskBank, stream, tasks: Optional[Iterable[int]] = None,
                       method: str = "oneshot", batch_size: int = 128,
                       n_classes: Optional[int] = None, progress=None) -> Dict[int, dict]:
    """Per task (bank row i is task i of `stream`; default all bank rows): infer the task of every
    test batch of `batch_size`, then score it. Returns {task: dict} with

    - accuracy: correct / samples, a batch with a wrongly inferred task counting as all wrong
      (docs/METHOD.md §6, the paper's unshared-labels scoring);
    - accuracy_inferred_mask: the predictions made with the inferred mask, right or wrong;
    - task_given_accuracy: with the true task's mask (scenario GG), same batches;
    - task_inference_accuracy: fraction of batches whose task was inferred right;
    - seconds_per_batch: mean wall time of `infer_task`; batches.

    `progress(done, total)` is called after every task.
    """
    n_classes = int(stream.n_classes if n_classes is None else n_classes)
    tasks = list(range(bank.k) if tasks is None else tasks)
    results = {}
    for k, t in enumerate(tasks):
        t = bank.check_task(t)
        true_masks = bank.unpack(t)
        correct = inferred_correct = given_correct = samples = right_batches = batches = 0
        seconds = 0.0
        for x, y in stream.task(t).test_batches(batch_size):
            start = time.perf_counter()
            guess = infer_task(net, bank, x, method, n_classes)
            seconds += time.perf_counter() - start
            y = y.to(net.device)
            given = int((predict(net, true_masks, x) == y).sum())
            guessed = given if guess == t else int((predict(net, bank.unpack(guess), x) == y).sum())
            given_correct += given
            inferred_correct += guessed
            correct += given if guess == t else 0
            right_batches += guess == t
            samples += y.shape[0]
            batches += 1
        results[t] = {"accuracy": correct / samples, "accuracy_inferred_mask": inferred_correct / samples,
                      "task_given_accuracy": given_correct / samples,
                      "task_inference_accuracy": right_batches / batches,
                      "seconds_per_batch": seconds / batches, "batches": batches}
        if progress is not None:
            progress(k + 1, len(tasks))
    return results
