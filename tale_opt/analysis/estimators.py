"""Estimators of the mutual information I(X; Y) between a representation X and a label Y.

Both are lower bounds evaluated on held-out pairs (pairs the estimator was not fitted on), in
bits, so a positive value is information a fitted function actually finds in X about Y on new
data, not memorized noise:

* **MINE** (Belghazi et al., 2018): a small statistics network T(x, y) trained to maximize the
  Donsker-Varadhan bound ``I(X; Y) >= E_P[T] - log E_{P_X x P_Y}[exp T]``. The gradient of the
  log term over a minibatch is biased; as in the paper, its denominator is replaced by an
  exponential moving average of ``E[exp T]`` across steps (`MineSettings.ema`). For a discrete
  label the product of marginals is summed exactly over the classes (weighted by the label
  frequencies), for a continuous one it pairs x with shuffled y (training) or with every y
  (evaluation).
* **Linear probe**: a multinomial logistic regression q(y|x) (L2 strength chosen by
  cross-validation on the training pairs); since ``E[-log q(Y|X)] >= H(Y|X)`` for any q,
  ``I(X; Y) >= H(Y) - CE(q)``, with both terms measured on the held-out pairs. Cheap,
  deterministic, and only as strong as a linear read-out.

Both read standardized features (`Features`: centred and scaled with the training pairs'
statistics, then projected on their first principal components). A deterministic map of X
carries no more information about Y than X does, so the bounds stay bounds of I(X; Y).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

LN2 = math.log(2.0)


@dataclass(frozen=True)
class MineSettings:
    """MINE's statistics network and training (defaults: what the README documents).

    Attributes:
        hidden: Width of the network's two hidden layers.
        steps: Adam steps.
        lr: Adam's learning rate.
        batch: Pairs per step.
        ema: Rate of the moving average of E[exp T] (the gradient correction).
        weight_decay: Adam's L2 penalty (keeps T smooth on few pairs).
        validation: Share of the training pairs held back to stop early: every `check`
            steps the bound is measured on them, and each network ends with the parameters of
            its best check (on few pairs T soon fits noise, which a held-out bound punishes).
        check: Steps between two validation checks.
    """

    hidden: int = 64
    steps: int = 800
    lr: float = 3e-3
    batch: int = 128
    ema: float = 0.01
    weight_decay: float = 1e-4
    validation: float = 0.2
    check: int = 25

    def __post_init__(self) -> None:
        for name in ("hidden", "steps", "batch", "check"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`mine.{name} >= 1` must hold, but got {name}={value!r}")
        if not self.lr > 0:
            raise ValueError(f"`mine.lr > 0` must hold, but got lr={self.lr!r}")
        if not 0 < self.ema <= 1:
            raise ValueError(f"`0 < mine.ema <= 1` must hold, but got ema={self.ema!r}")
        if self.weight_decay < 0:
            raise ValueError(f"`mine.weight_decay >= 0` must hold, but got {self.weight_decay!r}")
        if not 0 <= self.validation < 1:
            raise ValueError(
                f"`0 <= mine.validation < 1` must hold, but got validation={self.validation!r}"
            )


class Features:
    """Standardize with the training pairs' mean and scale, then keep the first `dim`
    principal components of the training pairs (all of them when there are fewer)."""

    def __init__(self, train: torch.Tensor, dim: int | None) -> None:
        x = train.double()
        self.mean = x.mean(0)
        self.scale = x.std(0).clamp_min(1e-8)
        z = (x - self.mean) / self.scale
        _, _, vh = torch.linalg.svd(z, full_matrices=False)
        k = vh.shape[0] if dim is None else min(dim, vh.shape[0])
        self.components = vh[:k].T  # [D, k]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., D] -> [..., dim]``."""
        z = (x.double() - self.mean) / self.scale @ self.components
        return z.float()


def entropy_bits(labels: torch.Tensor) -> float:
    """Plug-in entropy of integer labels, in bits."""
    counts = torch.bincount(labels).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def _frequencies(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=n_classes).float() / len(labels)


class _Statistics(nn.Module):
    """B independent statistics networks T_b(x, y), evaluated together (one batched matmul per
    layer). For a discrete label each has one output per class (T(x, y) = out[y]); for a
    continuous one the pair goes in concatenated and one value comes out. Adam is elementwise
    and the loss a sum over the networks, so training them together is training each alone."""

    def __init__(
        self, n_nets: int, in_dim: int, out_dim: int, hidden: int, classes: int = 0
    ) -> None:
        super().__init__()
        # Per-option scoring (`_Bound`): a learnt offset per option position.
        self.class_bias = nn.Parameter(torch.zeros(n_nets, 1, classes))
        sizes = [in_dim, hidden, hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialization
            self.weights.append(
                nn.Parameter(torch.empty(n_nets, fan_in, fan_out).uniform_(-bound, bound))
            )
            self.biases.append(
                nn.Parameter(torch.empty(n_nets, 1, fan_out).uniform_(-bound, bound))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n, in] -> [B, n, out]``."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = nn.functional.elu(x)
        return x


def _log_mean_exp(values: torch.Tensor) -> torch.Tensor:
    """Over the last dimension."""
    return torch.logsumexp(values, -1) - math.log(values.shape[-1])


class _Bound:
    """The Donsker-Varadhan terms of B networks for one kind of label.

    A discrete label's scores T(x, y) for every class y come from one output per class, or,
    with `per_option` (x holds one representation per option, ``[B, n, K, d]``, and y is the
    option that is right), from one shared function g of each option's representation,
    compared within the question: T(x, y) = g(x_y) - log sum_j exp g(x_j) + b_y. A function
    of x_y alone could not express which option is right (that depends on the others); this
    form holds the bound's optimum, log p(y|x) - log p(y), when g and b are right.
    """

    def __init__(self, net: _Statistics, n_classes: int | None, per_option: bool = False) -> None:
        self.net, self.n_classes, self.per_option = net, n_classes, per_option

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """T(x, y) for every class y, ``[B, n, K]``."""
        if not self.per_option:
            return self.net(x)
        b, n, k, d = x.shape
        raw = self.net(x.reshape(b, n * k, d)).view(b, n, k)
        return raw.log_softmax(-1) + self.net.class_bias

    def _pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, y.expand(x.shape[0], -1, -1)], -1)).squeeze(-1)

    def joint(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """T at the observed pairs, ``[B, n]``."""
        if self.n_classes is not None:
            index = y.expand(x.shape[0], -1)[..., None]
            return self.scores(x).gather(-1, index).squeeze(-1)
        return self._pairs(x, y)

    def log_marginal(
        self, x: torch.Tensor, y: torch.Tensor, prior: torch.Tensor | None, shuffle: bool
    ) -> torch.Tensor:
        """log E_{P_X x P_Y}[exp T] over these pairs, ``[B]``: exact over the classes for a
        discrete label (weights `prior`); x paired with shuffled y (`shuffle`) or with every y."""
        if self.n_classes is not None:
            assert prior is not None
            per_x = torch.logsumexp(self.scores(x) + prior.clamp_min(1e-12).log(), -1)
            return _log_mean_exp(per_x)
        if shuffle:
            return _log_mean_exp(self._pairs(x, y[torch.randperm(y.shape[0])]))
        n, m = x.shape[1], y.shape[0]
        pairs = torch.cat(
            [x.repeat_interleave(m, 1), y.repeat(n, 1).expand(x.shape[0], -1, -1)], -1
        )
        return _log_mean_exp(self.net(pairs).squeeze(-1))


def mine_bits(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    settings: MineSettings = MineSettings(),
    *,
    seed: int = 0,
    n_classes: int | None = None,
    per_option: bool = False,
) -> list[float]:
    """MINE's Donsker-Varadhan estimate on the test pairs, in bits, of a statistics network
    trained on the training pairs; for B representations of the same pairs at once.

    Args:
        x_train, x_test: Features, ``[B, n, d]`` (``[n, d]``: one representation); with
            `per_option`, one per option: ``[B, n, K, d]`` (``[n, K, d]``).
        y_train, y_test: Integer labels ``[n]`` (with `n_classes`) or continuous ``[n, k]``.
        settings: Network and training.
        seed: Initialization, minibatches and shuffles.
        n_classes: The number of classes of a discrete label; None for a continuous one.
        per_option: y is the index of an option and T(x, y) = g(x_y) (see `_Bound`).

    Returns:
        One estimate per representation.
    """
    if x_train.dim() == (3 if per_option else 2):
        x_train, x_test = x_train[None], x_test[None]
    discrete = n_classes is not None
    if discrete:
        y_train, y_test = y_train.long(), y_test.long()
    else:
        y_train, y_test = y_train.float(), y_test.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = torch.randperm(x_train.shape[1])
        n_check = int(settings.validation * len(order))
        held, fit = order[:n_check], order[n_check:]
        x_check, y_check = x_train[:, held], y_train[held]
        x_train, y_train = x_train[:, fit], y_train[fit]
        in_dim = x_train.shape[-1] + (0 if discrete else y_train.shape[-1])
        outputs = n_classes if discrete and not per_option else 1
        classes = n_classes if per_option and n_classes is not None else 0
        net = _Statistics(x_train.shape[0], in_dim, outputs, settings.hidden, classes)
        bound = _Bound(net, n_classes, per_option)
        prior = _frequencies(y_train, n_classes) if discrete else None
        optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr,
                                     weight_decay=settings.weight_decay)  # fmt: skip
        keeper = _BestState(net, bound, x_check, y_check, n_classes) if n_check else None
        n = x_train.shape[1]
        batch = min(settings.batch, n)
        log_average: torch.Tensor | None = None  # per network: log of the moving E[exp T]
        for step in range(settings.steps):
            if keeper is not None and step % settings.check == 0:
                keeper.check()
            rows = torch.randperm(n)[:batch]
            xb, yb = x_train[:, rows], y_train[rows]
            joint = bound.joint(xb, yb).mean(-1)
            log_batch = bound.log_marginal(xb, yb, prior, shuffle=True)
            current = log_batch.detach()
            if log_average is None:
                log_average = current
            else:
                log_average = torch.logaddexp(
                    math.log(1 - settings.ema) + log_average, math.log(settings.ema) + current
                )
            # Its gradient is E_batch[grad T exp T] / (moving average of E[exp T]): the
            # bias-corrected gradient of log E[exp T]; its value is not the bound.
            loss = -(joint - torch.exp(log_batch - log_average)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if keeper is not None:
            keeper.check()
            keeper.restore()
        values = _evaluate(bound, x_test, y_test, n_classes)
    return [float(v) / LN2 for v in values]


def _evaluate(
    bound: _Bound, x: torch.Tensor, y: torch.Tensor, n_classes: int | None
) -> torch.Tensor:
    """The Donsker-Varadhan bound of each network on these pairs (nats), ``[B]``."""
    with torch.no_grad():
        prior = _frequencies(y, n_classes) if n_classes is not None else None
        return bound.joint(x, y).mean(-1) - bound.log_marginal(x, y, prior, shuffle=False)


class _BestState:
    """Each network's parameters at its best validation bound so far (early stopping)."""

    def __init__(
        self, net: _Statistics, bound: _Bound, x: torch.Tensor, y: torch.Tensor,
        n_classes: int | None,
    ) -> None:  # fmt: skip
        self.net, self.bound, self.x, self.y, self.n_classes = net, bound, x, y, n_classes
        self.best = torch.full((x.shape[0],), -math.inf)
        self.saved = [p.detach().clone() for p in net.parameters()]

    def check(self) -> None:
        value = _evaluate(self.bound, self.x, self.y, self.n_classes)
        better = value > self.best
        self.best = torch.where(better, value, self.best)
        with torch.no_grad():
            for saved, param in zip(self.saved, self.net.parameters(), strict=True):
                saved[better] = param[better]

    def restore(self) -> None:
        with torch.no_grad():
            for saved, param in zip(self.saved, self.net.parameters(), strict=True):
                param.copy_(saved)


@dataclass(frozen=True)
class ProbeResult:
    """The linear probe's bound on held-out pairs (bits): ``entropy - cross_entropy``."""

    bound: float
    entropy: float
    cross_entropy: float
    l2: float  # the L2 strength cross-validation chose


def _logits(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[P, n, K]``: a linear score per class, or (``x`` of ``[P, n, K, d]``, one weight
    vector ``w`` of ``[P, d, 1]``) per option, the conditional logit."""
    if x.dim() == 3:
        return torch.baddbmm(b, x, w)
    p, n, k, d = x.shape
    return torch.bmm(x.reshape(p, n * k, d), w).view(p, n, k) + b


def _fit_probes(
    x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, l2: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """P multinomial logistic regressions at once: problem p fits the rows with weight 1 in
    ``weights[p]`` of its features ``x[p]`` (``[P, n, d]``, or ``[P, n, K, d]``: one
    representation per option, scored by one weight vector), with L2 strength ``l2[p]``.

    The problems share no parameter, so minimizing the sum of their losses with one L-BFGS
    minimizes each (one optimizer call instead of P: the Python overhead was the cost).
    """
    n_problems, dim = x.shape[0], x.shape[-1]
    x = x.double()
    outputs = 1 if x.dim() == 4 else n_classes
    w = torch.zeros(n_problems, dim, outputs, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_problems, 1, n_classes, dtype=torch.float64, requires_grad=True)
    counts = weights.sum(1)
    optimizer = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = _logits(w, b, x)  # [P, n, K]
        nll = -logits.log_softmax(-1).gather(-1, y.expand(n_problems, -1)[..., None]).squeeze(-1)
        loss = ((nll * weights).sum(1) + l2 * w.pow(2).sum((1, 2))) / counts
        total = loss.sum()
        total.backward()
        return total

    optimizer.step(closure)
    return w.detach(), b.detach()


def _cross_entropy(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy (nats) of each problem over the rows weighted 1 in its `weights`."""
    logits = _logits(w, b, x.double())
    nll = -logits.log_softmax(-1).gather(-1, y.expand(w.shape[0], -1)[..., None]).squeeze(-1)
    return (nll * weights).sum(1) / weights.sum(1)


def probe_bits(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    n_classes: int,
    l2_grid: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
    folds: int = 5,
    per_option: bool = False,
) -> list[ProbeResult]:
    """The linear-probe bound ``H(Y) - CE`` on the test pairs, in bits, for B representations
    of the same pairs (``[B, n, d]``; ``[n, d]``: one). Each one's L2 strength is the grid
    value with the lowest cross-validated cross-entropy on its training pairs.

    With `per_option` the representations are per option (``[B, n, K, d]``) and y is the
    option that is right: the probe is a conditional logit, softmax over the options of
    ``w . x_j + b_j`` (one weight vector for every option, a bias per position)."""
    if x_train.dim() == (3 if per_option else 2):
        x_train, x_test = x_train[None], x_test[None]
    y_train, y_test = y_train.long(), y_test.long()
    n_reps, n = x_train.shape[0], len(y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[order] = torch.arange(n) % min(folds, n)
    # Per representation, per L2 value: one fit per fold (without it) and one on every pair.
    masks = [fold_of != f for f in range(min(folds, n))] + [torch.ones(n, dtype=torch.bool)]
    grid = torch.tensor(list(l2_grid), dtype=torch.float64)
    n_fits = len(grid) * len(masks)
    weights = torch.stack([m for _ in grid for m in masks]).double()  # [G*M, n]
    l2 = grid.repeat_interleave(len(masks))
    x = x_train.repeat_interleave(n_fits, 0)  # [B*G*M, n, d]
    w, b = _fit_probes(x, y_train, weights.repeat(n_reps, 1), l2.repeat(n_reps), n_classes)
    held = (1 - weights).clamp_min(0)
    held[len(masks) - 1 :: len(masks)] = 1.0  # the all-pairs fits: unused below
    validation = _cross_entropy(w, b, x, y_train, held.repeat(n_reps, 1))
    validation = validation.view(n_reps, len(grid), len(masks))[..., :-1].mean(-1)  # [B, G]
    entropy = entropy_bits(y_test)
    results = []
    for r in range(n_reps):
        g = int(validation[r].argmin())
        k = (r * len(grid) + g) * len(masks) + len(masks) - 1  # the all-pairs fit
        ce = _cross_entropy(w[k : k + 1], b[k : k + 1], x_test[r : r + 1], y_test,
                            torch.ones(1, len(y_test), dtype=torch.float64))  # fmt: skip
        ce_bits = float(ce) / LN2
        results.append(ProbeResult(entropy - ce_bits, entropy, ce_bits, float(grid[g])))
    return results
