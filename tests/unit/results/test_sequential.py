"""fakd.results.sequential: the anytime-valid verdict, simulated with peeking after every pair, against the naive
repeated t-test, and its Bayes factor against scipy's noncentral t density."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from fakd.export import decide
from fakd.results.sequential import confidence_sequence, log_bayes_factor, radius_factor, verdict

ALPHA, MARGIN, MAX_N, SEQUENCES = 0.05, 0.01, 20, 1000


def simulate(mean: float, sd: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, size=(SEQUENCES, MAX_N))


def rate(sequences: np.ndarray, decisions: set[str]) -> float:
    """How often `decide`, asked after every pair (its first verdict is final), reaches one of `decisions`."""
    return float(np.mean([decide(row, margin=MARGIN, alpha=ALPHA, max_n=MAX_N) in decisions for row in sequences]))


def naive_peeking_rate(sequences: np.ndarray) -> float:
    """How often a paired t-test at ALPHA, run after every pair from the second, is ever significant."""
    n = np.arange(1, MAX_N + 1)
    mean = np.cumsum(sequences, axis=1) / n
    var = (np.cumsum(sequences ** 2, axis=1) - n * mean ** 2)[:, 1:] / (n[1:] - 1)
    t = mean[:, 1:] / np.sqrt(var / n[1:])
    p = 2 * stats.t.sf(np.abs(t), n[1:] - 1)
    return float(np.mean((p < ALPHA).any(axis=1)))


@pytest.mark.parametrize("sd", [0.005, 0.02, 0.05])
def test_no_true_difference_is_rarely_called_a_difference_and_the_naive_test_is_often(sd):
    sequences = simulate(0.0, sd, seed=int(sd * 1e4))
    false_difference = rate(sequences, {"better", "worse"})
    assert false_difference <= ALPHA
    assert naive_peeking_rate(sequences) > 2 * ALPHA  # ~0.2: what the sequential verdict protects against


@pytest.mark.parametrize("sd", [0.005, 0.01])
def test_a_difference_of_one_and_a_half_margins_is_rarely_called_equivalent(sd):
    for sign in (1, -1):
        sequences = simulate(sign * 1.5 * MARGIN, sd, seed=7 + int(sd * 1e4) + sign)
        assert rate(sequences, {"equivalent"}) <= ALPHA


@pytest.mark.parametrize("sd", [0.005, 0.03])
def test_a_difference_of_two_sd_is_found_within_twenty_seeds(sd):
    better = simulate(2 * sd, sd, seed=11)
    assert rate(better, {"better"}) >= 0.8
    assert rate(-better, {"worse"}) >= 0.8


def test_a_tiny_true_difference_with_little_noise_is_called_equivalent():
    sequences = simulate(0.001, 0.003, seed=3)
    assert rate(sequences, {"equivalent"}) >= 0.8


def test_the_first_verdict_is_final_and_prefixes_agree():
    rng = np.random.default_rng(5)
    for _ in range(50):
        row = rng.normal(0.01, 0.01, size=MAX_N)
        full = verdict(row, margin=MARGIN, alpha=ALPHA, max_n=MAX_N)
        for n in range(1, MAX_N + 1):
            prefix = verdict(row[:n], margin=MARGIN, alpha=ALPHA, max_n=MAX_N)
            if full.decided_at is not None and n >= full.decided_at:
                assert (prefix.decision, prefix.decided_at) == (full.decision, full.decided_at)
            else:
                assert prefix.decision == "undecided"


def test_max_n_caps_the_pairs_used():
    row = [0.05, 0.051, 0.049, 0.05, 0.052, 0.048]
    assert verdict(row, margin=MARGIN, alpha=ALPHA, max_n=2).n == 2
    assert decide(row, margin=MARGIN, alpha=ALPHA, max_n=2) == "undecided"  # two pairs exclude nothing at 5%
    found = verdict(row, margin=MARGIN, alpha=ALPHA, max_n=6)
    assert found.decision == "better" and 2 < found.decided_at <= 6 and found.low > 0


def test_fewer_than_two_pairs_decide_nothing():
    for row in ([], [0.3]):
        found = verdict(row, margin=MARGIN, alpha=ALPHA, max_n=5)
        assert (found.decision, found.decided_at, found.n) == ("undecided", None, len(row))
        assert math.isinf(found.low) and math.isinf(found.high)


@pytest.mark.parametrize(("margin", "alpha", "max_n"), [(0, 0.05, 5), (0.01, 0, 5), (0.01, 1, 5), (0.01, 0.05, 0)])
def test_bad_arguments_are_refused(margin, alpha, max_n):
    with pytest.raises(ValueError):
        decide([0.1, 0.2], margin=margin, alpha=alpha, max_n=max_n)


@pytest.mark.parametrize(("t", "n"), [(0.0, 2), (1.3, 3), (-2.5, 8), (4.0, 20)])
def test_bayes_factor_is_the_t_likelihood_ratio_under_a_normal_effect_prior(t, n):
    """BF = ∫ nct(t; n − 1, δ√n) N(δ; 0, 1) dδ / t(t; n − 1), integrated by scipy."""
    nu = n - 1
    mixture, _ = integrate.quad(lambda d: stats.nct.pdf(t, nu, d * math.sqrt(n)) * stats.norm.pdf(d), -12, 12,
                                epsabs=1e-13)
    expected = mixture / stats.t.pdf(t, nu)
    assert math.exp(float(log_bayes_factor(t * t, n))) == pytest.approx(expected, rel=1e-6)


def test_confidence_sequence_is_where_the_bayes_factor_stays_below_one_over_alpha():
    x = np.array([0.02, 0.035, 0.01, 0.04, 0.028, 0.015])
    low, high = confidence_sequence(x, ALPHA)
    assert np.isinf(low[0]) and np.isinf(high[0])
    for n in range(2, x.size + 1):
        mean, se = x[:n].mean(), x[:n].std(ddof=1) / math.sqrt(n)
        for bound in (low[n - 1], high[n - 1]):
            if math.isfinite(bound):
                t2 = ((mean - bound) / se) ** 2
                assert float(log_bayes_factor(t2, n)) == pytest.approx(-math.log(ALPHA), abs=1e-9)
    assert np.isinf(radius_factor(2, ALPHA)) and np.isfinite(radius_factor(5, ALPHA))


@pytest.mark.parametrize("n", [2, 5, 12])
def test_bayes_factor_has_mean_one_under_the_null(n):
    """E₀[BF_n] = 1 (a likelihood ratio: the martingale behind Ville's inequality), integrated over the t density."""
    mean, _ = integrate.quad(lambda t: math.exp(float(log_bayes_factor(t * t, n))) * stats.t.pdf(t, n - 1),
                             -np.inf, np.inf, limit=200)
    assert mean == pytest.approx(1.0, abs=1e-6)
