"""Statistics of the ablation table: Student-t intervals, paired seed comparisons with power analysis, and the
Holm–Bonferroni correction across the table's comparisons.

Every paired statistic is the one-sample Student-t analysis of the per-seed differences arm − base. Power is
exact (noncentral t, both rejection tails), never a normal approximation, so it stays right for the handful of
seeds a study retrains.

The distributions come from `scipy.special` (the functions `scipy.stats` itself evaluates), not `scipy.stats`,
whose import alone takes longer than the rest of `export`; the suite checks every value against `scipy.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

SEEDS_CAP = 10_000
"""`compare_paired` reports `seeds_needed=None` when more paired seeds than this would be needed."""

_ZERO_SD = 1e-12
"""Differences whose sample SD is at most this fraction of their largest magnitude count as constant: float
rounding (0.7 − 0.6 vs 0.8 − 0.7) must not turn a constant difference into a spurious finite t statistic."""


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval at `level`: NaN bounds for fewer than two values, all
    NaN for none. NaN values are not dropped (they propagate)."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan, math.nan
    half = float(_t_quantile(0.5 + level / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedComparison:
    """An arm against its base arm over the seeds both were retrained with (differences are arm − base).

    n_pairs: seeds with a finite score in both arms. delta: mean difference (NaN without pairs). ci_low,
    ci_high: two-sided 1 − alpha Student-t interval of the mean difference. p_value: two-sided paired t-test.
    sd: sample SD of the differences (ddof=1). mde: smallest |true mean difference| the test detects with the
    requested power at these n_pairs, assuming sd. seeds_needed: smallest number of pairs (≥ 2) that detects
    target_delta with the requested power, assuming sd; None when unknown (fewer than two pairs) or above
    `SEEDS_CAP`. Statistics that need two pairs are NaN below two.
    """

    n_pairs: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    sd: float
    mde: float
    seeds_needed: int | None


def _t_quantile(q: float, df: int) -> float:
    """Quantile of Student's t with `df` degrees of freedom (`scipy.stats.t.ppf`)."""
    return float(special.stdtrit(df, q))


def _t_sf(x: float, df: int) -> float:
    """Upper tail P(T > x) of Student's t (`scipy.stats.t.sf`)."""
    return float(special.stdtr(df, -x))


def _nct_sf(x: float, df: int, noncentrality: float) -> float:
    """Upper tail P(T > x) of the noncentral t (`scipy.stats.nct.sf`), as the lower tail of −T, which is noncentral
    t with −noncentrality: no 1 − cdf cancellation in the tail."""
    return float(special.nctdtr(df, -noncentrality, -x))


def _power(effect: float, n: int, alpha: float) -> float:
    """Exact power of the two-sided one-sample (paired) t-test at level alpha with n pairs, for the
    standardised true mean difference `effect` (mean / SD)."""
    df = n - 1
    critical = _t_quantile(1 - alpha / 2, df)
    noncentrality = abs(effect) * math.sqrt(n)
    upper = _nct_sf(critical, df, noncentrality)
    # P(T < −critical) as the mirrored upper tail: far in the lower tail the noncentral t can return NaN, and
    # this tail is negligible (< 1e-15) exactly where that happens.
    lower = _nct_sf(critical, df, -noncentrality)
    return upper + (lower if math.isfinite(lower) else 0.0)


def _detectable_effect(n: int, alpha: float, power: float) -> float:
    """The standardised effect that the two-sided paired t-test with n pairs detects with exactly `power`: power
    grows with the effect, so bisection finds it, to 1e-12 (as `scipy.optimize.brentq` with that tolerance)."""
    low, high = 0.0, 1.0
    while _power(high, n, alpha) < power:  # power → 1 as the effect grows, so this ends
        low, high = high, high * 2
    while high - low > 1e-12 * max(1.0, high):
        middle = (low + high) / 2
        if _power(middle, n, alpha) < power:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _seeds_needed(effect: float, alpha: float, power: float) -> int | None:
    """The smallest n ≥ 2 whose power for the standardised `effect` reaches `power` (None above SEEDS_CAP).
    Power grows with n, so a doubling search followed by bisection finds it."""
    if _power(effect, 2, alpha) >= power:
        return 2
    low, high = 2, 4  # invariant: power(low) < target
    while _power(effect, high, alpha) < power:
        if high > SEEDS_CAP:
            return None
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if _power(effect, middle, alpha) >= power:
            high = middle
        else:
            low = middle
    return high if high <= SEEDS_CAP else None


def compare_paired(arm: Mapping[int, float], base: Mapping[int, float], *, alpha: float = 0.05,
                   power: float = 0.8, target_delta: float = 0.01) -> PairedComparison:
    """Paired comparison of `arm` against `base`, both keyed by training seed; seeds present in only one, or
    with a non-finite score in either, are left out.

    With constant differences (sd 0) the t statistic is infinite: p_value is 0 when delta ≠ 0 and NaN when
    delta = 0 (0/0), the interval collapses to delta, mde is 0 and seeds_needed is 2.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if not alpha < power < 1:
        raise ValueError(f"power must lie in (alpha, 1) = ({alpha}, 1), got {power}")
    if not target_delta > 0:
        raise ValueError(f"target_delta must be positive, got {target_delta}")
    seeds = sorted(s for s in set(arm) & set(base) if math.isfinite(arm[s]) and math.isfinite(base[s]))
    diffs = np.array([arm[s] - base[s] for s in seeds], dtype=float)
    n = int(diffs.size)
    nan = math.nan
    if n == 0:
        return PairedComparison(0, nan, nan, nan, nan, nan, nan, None)
    delta = float(diffs.mean())
    if n < 2:
        return PairedComparison(1, delta, nan, nan, nan, nan, nan, None)
    sd = float(diffs.std(ddof=1))
    if sd <= _ZERO_SD * float(np.abs(diffs).max()):
        sd = 0.0
    if sd == 0.0:
        return PairedComparison(n, delta, delta, delta, 0.0 if delta != 0 else nan, 0.0, 0.0, 2)
    df = n - 1
    stderr = sd / math.sqrt(n)
    half = _t_quantile(1 - alpha / 2, df) * stderr
    p_value = min(1.0, 2 * _t_sf(abs(delta) / stderr, df))
    mde = _detectable_effect(n, alpha, power) * sd
    needed = _seeds_needed(target_delta / sd, alpha, power)
    return PairedComparison(n, delta, delta - half, delta + half, p_value, sd, mde, needed)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values, in the input order: the k-th smallest of m p-values becomes
    max over j ≤ k of (m − j + 1)·p_(j), capped at 1. NaN entries stay NaN and do not count towards m."""
    adjusted = [math.nan] * len(p_values)
    present = [(float(p), i) for i, p in enumerate(p_values) if not math.isnan(p)]
    for p, _ in present:
        if not 0 <= p <= 1:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(present)
    running = 0.0
    for rank, (p, index) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted
