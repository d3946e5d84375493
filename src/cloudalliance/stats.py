"""Small statistics shared by training, evaluation and the benchmarks."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the normal distribution's two-sided 95 % quantile


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of ``correct`` out of ``total`` (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0 or 1
    (E. B. Wilson, 1927; the interval recommended by Brown, Cai and DasGupta, 2001).
    """
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= total:
        raise ValueError(f"correct must be between 0 and total ({total}), not {correct}")
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1 in exact arithmetic; in floating point centre -/+ half
    # lands a few ulps off (0.9999999999999998), so the ends are written as what they are.
    low = 0.0 if correct == 0 else max(0.0, min(p, centre - half))
    high = 1.0 if correct == total else min(1.0, max(p, centre + half))
    return low, high


def format_accuracy(correct: int, total: int) -> str:
    """``0.9371 (95 % CI 0.9230-0.9488, 1229/1311)``."""
    if total <= 0:
        return "n/a (no images)"
    low, high = wilson_interval(correct, total)
    return f"{correct / total:.4f} (95 % CI {low:.4f}-{high:.4f}, {correct}/{total})"
