"""Paired statistics the gate judges with: one-sided bounds on a change, item by item.

Base model and candidate answer the same items, so every comparison is paired: what varies is how
many items *changed*, not how many were right. Two kinds of per-item measure:

- 0/1 results (accuracy): the bounds invert Tango's score test for the difference of two paired
  proportions (Tango 1998, the standard for non-inferiority on matched pairs; well sized for a few
  dozen items, where a normal interval is too narrow);
- continuous results (bits-per-byte, log-likelihoods, F1): the mean paired difference with a
  Student t bound.

``detectable_*`` answer the planning question: with this many items and this much churn, which is
the smallest limit a candidate that changed nothing on average could show it stays within, 80% of
the time?
"""

from __future__ import annotations

from math import sqrt
from statistics import NormalDist, fmean, stdev

POWER = 0.8  # the chance a candidate with no true drop shows non-inferiority, in the power figures


def z(alpha: float) -> float:
    """The one-sided standard normal quantile ``z_{1-alpha}``.

    >>> round(z(0.05), 3)
    1.645
    """
    return NormalDist().inv_cdf(1 - alpha)


def _tango_score(lost: int, gained: int, n: int, drop: float) -> float:
    """Tango's score statistic for H0: (P(lost) - P(gained)) = ``drop``; negative when the
    observed drop is below ``drop``."""
    if drop < 0:  # the test is symmetric: a gain of -drop with the roles of lost and gained swapped
        return -_tango_score(gained, lost, n, -drop)
    observed = (lost - gained) / n
    # Constrained maximum-likelihood P(gained) = q with P(lost) = q + drop: the positive root of
    # 2n q^2 - B q - gained * drop * (1 - drop) = 0.
    b = lost * (1 + drop) + gained * (1 - drop) - 2 * n * drop
    q = (b + sqrt(b * b + 8 * n * gained * drop * (1 - drop))) / (4 * n)
    variance = (2 * q + drop - drop * drop) / n
    if variance <= 0:
        return 0.0 if observed == drop else (float("inf") if observed > drop else float("-inf"))
    return (observed - drop) / sqrt(variance)


def _solve(f, target: float, low: float, high: float) -> float:
    """The x in [low, high] where the decreasing function ``f`` crosses ``target`` (bisection)."""
    for _ in range(60):
        mid = (low + high) / 2
        if f(mid) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def drop_bounds(lost: int, gained: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided ``(lower, upper)`` bounds, each at level ``alpha``, on the true drop
    P(lost) - P(gained) of paired 0/1 results, as proportions.

    The upper bound is the largest drop the data cannot rule out; the lower bound the smallest drop
    the data shows.

    >>> [round(x, 3) for x in drop_bounds(0, 0, 300, 0.05)]
    [-0.009, 0.009]
    >>> lo, hi = drop_bounds(10, 0, 100, 0.05)
    >>> round(lo, 3), round(hi, 3)
    (0.061, 0.16)
    """
    if n <= 0:
        raise ValueError("no items to compare")
    edge = 1 - 1e-9
    score = lambda drop: _tango_score(lost, gained, n, drop)  # noqa: E731 - decreasing in drop
    return _solve(score, z(alpha), -edge, edge), _solve(score, -z(alpha), -edge, edge)


def mean_bounds(differences: list[float], alpha: float) -> tuple[float, float, float]:
    """``(mean, lower, upper)`` of paired differences: one-sided Student t bounds at level ``alpha``.

    >>> [round(x, 3) for x in mean_bounds([0.1, 0.2, 0.3, 0.2], 0.05)]
    [0.2, 0.104, 0.296]
    """
    from scipy.stats import t

    n = len(differences)
    if n == 0:
        raise ValueError("no items to compare")
    mean = fmean(differences)
    if n == 1:
        return mean, float("-inf"), float("inf")
    half = float(t.ppf(1 - alpha, n - 1)) * stdev(differences) / sqrt(n)
    return mean, mean - half, mean + half


def detectable_drop(items: int, flip_rate: float, alpha: float, power: float = POWER) -> float:
    """The smallest drop limit (as a proportion) that ``items`` 0/1 results can show a candidate
    stays within, with probability ``power``, when it changes a share ``flip_rate`` of its answers
    and loses nothing on average.

    >>> round(100 * detectable_drop(80, 0.1, 0.05), 1)
    8.8
    >>> round(100 * detectable_drop(1500, 0.1, 0.05), 1)
    2.0
    """
    return (z(alpha) + NormalDist().inv_cdf(power)) * sqrt(flip_rate / items)


def detectable_mean(items: int, spread: float, alpha: float, power: float = POWER) -> float:
    """The same for a continuous paired measure whose per-item differences have standard deviation ``spread``.

    >>> round(detectable_mean(100, 0.02, 0.05), 4)
    0.005
    """
    return (z(alpha) + NormalDist().inv_cdf(power)) * spread / sqrt(items)
