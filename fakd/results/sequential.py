"""Sequential decisions over paired seeds that stay valid however often the table is looked at.

Each comparison (arm − base, one difference per shared seed) gets an anytime-valid confidence sequence for the
mean paired difference: the family {C_n} with P(∃ n: Δ ∉ C_n) ≤ α, so a verdict read after every new seed, or
after any data-dependent number of them, keeps its error rate. The sequence inverts the scale-invariant
Bayes factor of the one-sample t-test with a normal prior N(0, g) on the standardised effect Δ/σ (Gönen et al.
2005; Lai 1976; its anytime validity is the right-Haar-prior argument of Pérez-Ortiz et al. 2024, and the
same closed form as the coefficient t-test of Lindon et al. 2024):

    BF_n(μ) = r^{1/2} · [(1 + t²/ν) / (1 + r·t²/ν)]^{(ν+1)/2},   t = (x̄ − μ)/(s/√n), ν = n − 1, r = 1/(1 + n·g).

Under Δ = μ the sequence BF_n(μ) is a nonnegative martingale with mean 1 (in the filtration of the scale-free
statistic), so by Ville's inequality C_n = {μ : BF_n(μ) < 1/α} misses Δ at some n with probability ≤ α. Solving
BF_n(μ) = 1/α gives C_n = x̄ ± (s/√n)·√(ν(1 − c)/(c − r)) with c = (r·α²)^{1/(ν+1)}, and the whole line when
c ≤ r (too few seeds to exclude anything). The model assumes Gaussian per-seed differences with unknown spread;
no variance has to be guessed.

A verdict is the first one the sequence reaches, in seed order, and it is final:
- `better` / `worse`: C_n lies above / below 0 (a difference is decided);
- `equivalent`: C_n lies inside (−margin, margin) and contains 0 (no difference of `margin` or more);
- `undecided`: neither, by the last seed (`max_n` at most).
Family-wise control over m comparisons: decide each at alpha / m (Bonferroni; valid for any dependence).
Why this design and not a library's: confseq's bounds need a known variance or bounded data with slow starts at a
handful of seeds; savvi carries a regression with a separate intercept (ν = n − 2) and pulls in cvxpy. The Bayes
factor here is checked against scipy's noncentral t density by numerical integration in the test suite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Decision = Literal["better", "worse", "equivalent", "undecided"]
DECISIONS: tuple[Decision, ...] = ("better", "worse", "equivalent", "undecided")
PRIOR_VARIANCE = 1.0
"""g: the variance of the normal prior on the standardised effect Δ/σ (a unit-information prior). Effects of
about one SD per seed are the ones a study of a few dozen seeds can resolve; the test's validity does not depend
on it, only how soon it decides."""
METHOD = ("anytime-valid t confidence sequence (normal-mixture Bayes factor, g = 1), Bonferroni over "
          "the comparisons")


@dataclass(frozen=True)
class Verdict:
    """The sequential verdict of one comparison.

    decision: see the module. decided_at: the number of pairs at the decision (None while undecided).
    n: pairs used (at most max_n). low, high: the confidence sequence after the last pair used (±inf while it
    is the whole line); after a decision they are the bounds at `decided_at`.
    """

    decision: Decision
    decided_at: int | None
    n: int
    low: float
    high: float


def log_bayes_factor(t_squared: np.ndarray | float, n: np.ndarray | int, g: float = PRIOR_VARIANCE) -> np.ndarray:
    """log BF_n of the one-sample t statistic against the mean (module formula); n ≥ 2."""
    nu = np.asarray(n, dtype=float) - 1
    r = 1 / (1 + np.asarray(n, dtype=float) * g)
    t2 = np.asarray(t_squared, dtype=float)
    return 0.5 * np.log(r) + 0.5 * (nu + 1) * (np.log1p(t2 / nu) - np.log1p(r * t2 / nu))


def radius_factor(n: np.ndarray | int, alpha: float, g: float = PRIOR_VARIANCE) -> np.ndarray:
    """The half-width of C_n in standard errors (s/√n): inf while the sequence is the whole line; n ≥ 2."""
    n = np.asarray(n, dtype=float)
    nu = n - 1
    r = 1 / (1 + n * g)
    c = np.exp((np.log(r) + 2 * math.log(alpha)) / (nu + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.sqrt(nu * (1 - c) / (c - r))
    return np.where(c > r, factor, np.inf)


def confidence_sequence(differences: Sequence[float], alpha: float,
                        g: float = PRIOR_VARIANCE) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of C_n after each prefix of `differences` (n = 1, 2, ...); the whole line below two pairs."""
    x = np.asarray(differences, dtype=float)
    n = np.arange(1, x.size + 1, dtype=float)
    mean = np.cumsum(x) / n
    # sum of squared deviations from each prefix mean, from running sums of deviations from the first value
    shifted = x - (x[0] if x.size else 0.0)
    squares = np.cumsum(shifted ** 2) - np.cumsum(shifted) ** 2 / n
    low, high = np.full(x.size, -np.inf), np.full(x.size, np.inf)
    if x.size < 2:
        return low, high
    m = n[1:]
    sd = np.sqrt(np.maximum(squares[1:], 0.0) / (m - 1))
    sd = np.where(sd <= 1e-12 * np.maximum(np.abs(x).max(), 1e-300), 0.0, sd)  # float noise of a constant
    factor = radius_factor(m, alpha, g)
    half = np.full(m.size, np.inf)
    finite = np.isfinite(factor)
    half[finite] = factor[finite] * sd[finite] / np.sqrt(m[finite])
    low[1:], high[1:] = mean[1:] - half, mean[1:] + half
    return low, high


def verdict(differences: Sequence[float], *, margin: float, alpha: float, max_n: int,
            g: float = PRIOR_VARIANCE) -> Verdict:
    """The first decision the confidence sequence reaches over `differences[:max_n]` (see the module)."""
    _check(margin, alpha, max_n)
    values = [float(d) for d in differences][:max_n]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("differences must be finite")
    low, high = confidence_sequence(values, alpha, g)
    for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
        decision: Decision | None = None
        if lo > 0:
            decision = "better"
        elif hi < 0:
            decision = "worse"
        elif -margin < lo and hi < margin:
            decision = "equivalent"
        if decision is not None:
            return Verdict(decision, i + 1, len(values), float(lo), float(hi))
    last_low, last_high = (float(low[-1]), float(high[-1])) if values else (-math.inf, math.inf)
    return Verdict("undecided", None, len(values), last_low, last_high)


def decide(differences: Sequence[float], *, margin: float, alpha: float, max_n: int) -> Decision:
    """`better`, `worse`, `equivalent` or `undecided` for the paired per-seed differences (arm − base, mIoU
    fractions, in seed order) seen so far; valid when called after every new pair up to `max_n`."""
    return verdict(differences, margin=margin, alpha=alpha, max_n=max_n).decision


def _check(margin: float, alpha: float, max_n: int) -> None:
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
