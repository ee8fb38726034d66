"""Uncertainty of a metric value: n, standard error and a 95% interval.

Per-example means (accuracy, win rate) get the standard error of the mean, as
lm-evaluation-harness reports it (sample standard deviation / sqrt(n)); 0/1 outcomes
get a Wilson score interval (sensible at 0% and 100%, where the normal one is empty). Per-token
means (nll) are a ratio of sums over examples (total loss / total tokens); their
standard error is the delta-method one of a ratio estimator with examples as the
sampling unit (tokens of one chat are not independent). Intervals are normal
(value +- 1.96 stderr) unless a bootstrap is asked for.
"""

from __future__ import annotations

import math

from datamix.eval import Value

Z95 = 1.959963984540054


def mean_value(metric: str, xs: list[float], higher_is_better: bool = True) -> Value:
    """The mean of per-example scores with its standard error (None below 2 examples)."""
    n = len(xs)
    if n == 0:
        return Value(metric, None, 0, higher_is_better=higher_is_better)
    mean = math.fsum(xs) / n
    if n < 2:
        return Value(metric, mean, n, higher_is_better=higher_is_better)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    se = math.sqrt(var / n)
    return Value(metric, mean, n, se, mean - Z95 * se, mean + Z95 * se, higher_is_better)


def proportion_value(metric: str, hits: list[float]) -> Value:
    """The fraction of 0/1 outcomes (accuracy): lm-eval's standard error, and a Wilson score interval,
    which stays inside [0, 1] and is not empty at 0 or 1 correct (the normal one collapses there)."""
    v = mean_value(metric, hits)
    n = len(hits)
    if n == 0 or v.value is None:
        return v
    p, z2 = v.value, Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    v.ci_low, v.ci_high = max(0.0, centre - half), min(1.0, centre + half)
    return v


def ratio_value(metric: str, num: list[float], den: list[float], higher_is_better: bool = False,
                scale: float = 1.0) -> Value:
    """scale * sum(num) / sum(den) over examples, with the ratio estimator's standard error."""
    n = len(num)
    total = math.fsum(den)
    if n == 0 or total <= 0:
        return Value(metric, None, n, higher_is_better=higher_is_better)
    r = math.fsum(num) / total
    if n < 2:
        return Value(metric, scale * r, n, higher_is_better=higher_is_better)
    mean_den = total / n
    resid = math.fsum((a - r * b) ** 2 for a, b in zip(num, den)) / (n - 1)
    se = scale * math.sqrt(resid / n) / mean_den
    v = scale * r
    return Value(metric, v, n, se, v - Z95 * se, v + Z95 * se, higher_is_better)


def bootstrap_interval(xs: list[float], iterations: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile 95% interval of the mean by resampling examples (seeded, so reruns agree)."""
    import random

    if len(xs) < 2:
        return None
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(math.fsum(rng.choices(xs, k=n)) / n for _ in range(iterations))
    return means[int(0.025 * iterations)], means[min(iterations - 1, int(0.975 * iterations))]
