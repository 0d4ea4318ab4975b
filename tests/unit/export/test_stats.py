"""Statistics of the ablation table, checked against values computed independently here: closed forms of the
t distribution with 2 degrees of freedom, Holm examples worked by hand, power by numerical integration and by
Monte-Carlo simulation of the paired t-test, and published G*Power results."""

import dataclasses
import math
import statistics

import numpy as np
import pytest
from scipy import integrate, stats

from fakd.export.stats import SEEDS_CAP, PairedComparison, _nct_sf, _t_quantile, _t_sf, compare_paired, holm, mean_ci


def t_quantile_df2(level: float) -> float:
    """Two-sided `level` quantile of Student's t with 2 df: P(|T| > t) = 1 − t/√(2 + t²) solved for t."""
    return level * math.sqrt(2 / (1 - level**2))


def two_sided_p_df2(t: float) -> float:
    return 1 - abs(t) / math.sqrt(2 + t * t)


def power_by_quadrature(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample t-test: T = (Z + effect·√n) / √(V/df), V ~ χ²(df); integrate the
    normal tail probabilities over V (no noncentral t involved)."""
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = effect * math.sqrt(n)

    def integrand(v: float) -> float:
        scale = critical * math.sqrt(v / df)
        return stats.chi2.pdf(v, df) * (stats.norm.sf(scale - shift) + stats.norm.cdf(-scale - shift))

    return integrate.quad(integrand, 0, np.inf, epsabs=1e-12, epsrel=1e-10, limit=200)[0]


def simulated_power(mean: float, sd: float, n: int, alpha: float = 0.05, reps: int = 40_000, seed: int = 0) -> float:
    """Rejection rate of the two-sided paired t-test on `reps` simulated sets of n normal differences."""
    diffs = np.random.default_rng(seed).normal(mean, sd, size=(reps, n))
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(t) > stats.t.ppf(1 - alpha / 2, n - 1)))


def scores_with(diffs: list[float] | np.ndarray, first_seed: int = 0) -> tuple[dict[int, float], dict[int, float]]:
    """(arm, base) keyed by seed whose paired differences are `diffs`."""
    base = {first_seed + i: 0.5 + 0.01 * (i % 7) for i in range(len(diffs))}
    arm = {seed: value + float(d) for (seed, value), d in zip(base.items(), diffs, strict=True)}
    return arm, base


def standardised(n: int, seed: int = 1) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal(n)
    return (z - z.mean()) / z.std(ddof=1)


# the distributions, from scipy.special (export does not import scipy.stats)


@pytest.mark.parametrize("df", [1, 2, 5, 11, 99])
def test_t_and_noncentral_t_equal_scipy_stats(df):
    for q in (0.5, 0.8, 0.975, 0.9995):
        assert _t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-13)
    for x in (0.0, 0.7, 2.2, 9.5, 40.0):
        assert _t_sf(x, df) == pytest.approx(stats.t.sf(x, df), rel=1e-12)
        for noncentrality in (0.0, 0.5, 2.0, 6.0, -3.0, -12.0):
            expected, got = stats.nct.sf(x, df, noncentrality), _nct_sf(x, df, noncentrality)
            if math.isfinite(got):
                assert got == pytest.approx(expected, rel=1e-10, abs=1e-300), (x, noncentrality)
            else:  # NaN far in the lower tail, where power counts it as 0 (see `_power`)
                assert expected < 1e-15, (x, noncentrality)


# mean_ci


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_mean_ci_matches_closed_form_t_with_two_df(level):
    values = [1.0, 2.0, 4.0]
    half = t_quantile_df2(level) * statistics.stdev(values) / math.sqrt(3)
    mean, low, high = mean_ci(values, level)
    assert mean == pytest.approx(7 / 3)
    assert low == pytest.approx(7 / 3 - half, rel=1e-9)
    assert high == pytest.approx(7 / 3 + half, rel=1e-9)


def test_mean_ci_closed_form_quantile_is_the_textbook_value():
    assert t_quantile_df2(0.95) == pytest.approx(4.302653, abs=1e-6)


def test_mean_ci_edge_cases():
    assert all(math.isnan(x) for x in mean_ci([]))
    mean, low, high = mean_ci([0.42])
    assert mean == 0.42 and math.isnan(low) and math.isnan(high)
    assert mean_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))


# compare_paired: the t-test and its interval


def test_three_pairs_match_closed_form_df2():
    arm = {0: 0.62, 1: 0.65, 2: 0.61}
    base = {0: 0.60, 1: 0.60, 2: 0.60}
    diffs = [0.02, 0.05, 0.01]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    t = mean / (sd / math.sqrt(3))
    half = t_quantile_df2(0.95) * sd / math.sqrt(3)
    result = compare_paired(arm, base)
    assert result.n_pairs == 3
    assert result.delta == pytest.approx(mean, rel=1e-9)
    assert result.sd == pytest.approx(sd, rel=1e-9)
    assert result.p_value == pytest.approx(two_sided_p_df2(t), rel=1e-9)
    assert (result.ci_low, result.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-9)


def test_alpha_sets_the_interval_level():
    arm, base = {0: 0.62, 1: 0.65, 2: 0.61}, {0: 0.60, 1: 0.60, 2: 0.60}
    sd = statistics.stdev([0.02, 0.05, 0.01])
    result = compare_paired(arm, base, alpha=0.1)
    assert result.ci_high - result.ci_low == pytest.approx(2 * t_quantile_df2(0.9) * sd / math.sqrt(3), rel=1e-9)


def test_delta_is_arm_minus_base():
    result = compare_paired({0: 0.5, 1: 0.52, 2: 0.49}, {0: 0.6, 1: 0.61, 2: 0.62})
    assert result.delta == pytest.approx(-0.32 / 3)
    assert result.ci_high < 0


def test_agrees_with_scipy_paired_t_test_on_random_data():
    rng = np.random.default_rng(7)
    for n in (2, 4, 9, 25):
        base = rng.uniform(0.4, 0.7, n)
        arm = base + rng.normal(0.004, 0.01, n)
        result = compare_paired(dict(enumerate(arm)), dict(enumerate(base)))
        reference = stats.ttest_rel(arm, base)
        interval = reference.confidence_interval(0.95)
        assert result.p_value == pytest.approx(reference.pvalue, rel=1e-8)
        assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-8)
        assert (result.p_value < 0.05) == (result.ci_low > 0 or result.ci_high < 0)


def test_only_shared_seeds_with_finite_scores_are_paired():
    arm = {1: 0.61, 2: 0.64, 3: 0.60, 4: math.nan, 5: 0.9}
    base = {0: 0.1, 1: 0.60, 2: 0.60, 3: 0.60, 4: 0.60, 6: math.nan}
    reference = compare_paired({1: 0.61, 2: 0.64, 3: 0.60}, {1: 0.60, 2: 0.60, 3: 0.60})
    assert compare_paired(arm, base) == reference
    assert reference.n_pairs == 3 and reference.delta == pytest.approx(0.05 / 3)
    assert compare_paired({1: 0.6, 2: 0.7}, {1: math.nan, 2: 0.65}).n_pairs == 1


def test_no_pairs_and_one_pair():
    empty = compare_paired({1: 0.5}, {2: 0.5})
    assert empty.n_pairs == 0 and empty.seeds_needed is None
    assert all(math.isnan(x) for x in (empty.delta, empty.ci_low, empty.ci_high, empty.p_value, empty.sd, empty.mde))
    one = compare_paired({1: 0.55, 2: 0.9}, {1: 0.5})
    assert one.n_pairs == 1 and one.delta == pytest.approx(0.05) and one.seeds_needed is None
    assert all(math.isnan(x) for x in (one.ci_low, one.ci_high, one.p_value, one.sd, one.mde))


def test_constant_differences_give_zero_sd():
    # 0.1 added to different bases: the float differences are not bit-identical, yet the SD is zero
    base = {0: 0.6, 1: 0.7, 2: 0.35, 3: 0.123}
    arm = {seed: value + 0.1 for seed, value in base.items()}
    result = compare_paired(arm, base)
    assert result.sd == 0 and result.p_value == 0 and result.mde == 0 and result.seeds_needed == 2
    assert result.ci_low == result.ci_high == result.delta == pytest.approx(0.1)
    tie = compare_paired(base, base)
    assert tie.delta == 0 and tie.sd == 0 and math.isnan(tie.p_value) and tie.mde == 0 and tie.seeds_needed == 2
    assert tie.ci_low == tie.ci_high == 0


def test_result_is_frozen():
    result = compare_paired({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.65})
    assert isinstance(result, PairedComparison)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.delta = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.0}, {"power": 0.04}, {"power": 1.0},
                                    {"target_delta": 0.0}, {"target_delta": -0.01}])
def test_rejects_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        compare_paired({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.65}, **kwargs)


# compare_paired: minimum detectable effect


def test_quadrature_power_reproduces_gpower():
    # G*Power, one-sample t-test, two tails, d = 1/3, α = 0.05, n = 25: power 0.360
    assert power_by_quadrature(1 / 3, 25) == pytest.approx(0.360, abs=5e-4)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_mde_has_exactly_the_requested_power(n):
    sd = 0.013
    result = compare_paired(*scores_with(0.002 + sd * standardised(n)))
    assert result.sd == pytest.approx(sd, rel=1e-9)
    assert power_by_quadrature(result.mde / sd, n) == pytest.approx(0.8, abs=1e-6)


def test_mde_of_ten_pairs():
    # the standardised effect a two-sided paired t-test with 10 pairs detects with power 0.8 at α = 0.05 is
    # d = 0.9960 (G*Power's matched-pairs a-priori result "dz = 1 → 10 pairs" is the same fact, seen from n)
    sd = 0.02
    result = compare_paired(*scores_with(sd * standardised(10)))
    assert result.mde / sd == pytest.approx(0.9960, abs=2e-4)


def test_mde_by_monte_carlo():
    n, sd = 6, 0.01
    result = compare_paired(*scores_with(0.003 + sd * standardised(n)))
    # 40,000 replicates: Monte-Carlo standard error of a power near 0.8 is 0.002
    assert simulated_power(result.mde, sd, n) == pytest.approx(0.8, abs=0.01)
    assert simulated_power(0.8 * result.mde, sd, n, seed=1) < 0.7
    # the normal-approximation MDE, (z_{α/2} + z_β)·sd/√n, would be far too optimistic with 6 pairs
    assert result.mde > 1.15 * (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / math.sqrt(n)


def test_mde_follows_alpha_and_power():
    arm, base = scores_with(0.01 * standardised(8))
    default = compare_paired(arm, base)
    assert compare_paired(arm, base, alpha=0.01).mde > default.mde
    assert compare_paired(arm, base, power=0.9).mde > default.mde
    stricter = compare_paired(arm, base, alpha=0.01, power=0.9)
    assert power_by_quadrature(stricter.mde / stricter.sd, 8, alpha=0.01) == pytest.approx(0.9, abs=1e-6)


# compare_paired: seeds needed


@pytest.mark.parametrize(("target", "sd", "published"), [
    (5.0, 5.0, 10),     # G*Power matched pairs, dz = 1: 10 pairs
    (0.5, 0.55, 12),    # G*Power one-sample, mean difference 0.5, SD 0.55: n = 12
    (0.295, 0.55, 30),  # same with mean difference 0.295: n = 30
    (0.5, 1.0, 34),     # G*Power one-sample, d = 0.5: n = 34
])
def test_seeds_needed_matches_gpower(target, sd, published):
    scale = 0.01 / target  # the same standardised effect at the table's scale (mIoU fractions)
    result = compare_paired(*scores_with(sd * scale * standardised(5)), target_delta=target * scale)
    assert result.seeds_needed == published


@pytest.mark.parametrize(("sd", "alpha", "power"), [(0.004, 0.05, 0.8), (0.011, 0.05, 0.8), (0.02, 0.05, 0.8),
                                                   (0.015, 0.01, 0.9), (0.006, 0.1, 0.8)])
def test_seeds_needed_is_minimal(sd, alpha, power):
    result = compare_paired(*scores_with(0.001 + sd * standardised(4)), alpha=alpha, power=power)
    needed = result.seeds_needed
    assert needed is not None and needed >= 2
    effect = 0.01 / sd
    assert power_by_quadrature(effect, needed, alpha) >= power - 1e-9
    if needed > 2:
        assert power_by_quadrature(effect, needed - 1, alpha) < power


def test_seeds_needed_by_monte_carlo():
    sd = 0.012
    needed = compare_paired(*scores_with(sd * standardised(3))).seeds_needed
    assert needed is not None
    assert simulated_power(0.01, sd, needed) >= 0.79
    assert simulated_power(0.01, sd, needed - 1, seed=1) < 0.81


def test_seeds_needed_bounds():
    huge_effect = compare_paired(*scores_with(0.001 * standardised(3)), target_delta=0.5)
    assert huge_effect.seeds_needed == 2
    # d = 0.01 needs about 78,500 pairs, beyond the cap
    assert compare_paired(*scores_with(standardised(3))).seeds_needed is None
    # d = 0.03 needs 8,723 pairs (normal approximation: (1.96 + 0.8416)² / 0.03² ≈ 8,721), within the cap
    below_cap = compare_paired(*scores_with(standardised(3)), target_delta=0.03)
    assert below_cap.seeds_needed is not None and below_cap.seeds_needed <= SEEDS_CAP
    assert below_cap.seeds_needed == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) ** 2 / 0.03**2,
                                                   abs=5)


# holm


def test_holm_worked_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_nan_passes_through_and_is_not_counted():
    adjusted = holm([0.01, math.nan, 0.04, 0.03, 0.005])
    assert math.isnan(adjusted[1])
    assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert all(math.isnan(p) for p in holm([math.nan, math.nan]))


def test_holm_caps_at_one_and_small_cases():
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # 0.4·2 = 0.8, then max(0.5·1, 0.8)
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([0.2]) == pytest.approx([0.2])
    assert holm([]) == []
    assert holm([0.01, 0.01, 0.3]) == pytest.approx([0.03, 0.03, 0.3])


def test_holm_matches_definition_on_random_p_values():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = list(rng.uniform(0, 0.3, rng.integers(1, 12)))
        m = len(p)
        order = sorted(range(m), key=lambda i: p[i])
        rank = {index: r for r, index in enumerate(order)}
        expected = [min(1.0, max((m - rank[j]) * p[j] for j in range(m) if rank[j] <= rank[i])) for i in range(m)]
        assert holm(p) == pytest.approx(expected)


def test_holm_rejects_p_values_outside_unit_interval():
    with pytest.raises(ValueError):
        holm([0.2, 1.5])
