"""The accuracy's 95 % interval (Wilson), as evaluation and the training logs print it."""

import math

import pytest

from cloudalliance.stats import format_accuracy, wilson_interval


def test_wilson_matches_the_closed_form_reference_values():
    # Brown, Cai & DasGupta (2001), and R's prop.test(correct=FALSE): 81/263 -> 0.2553-0.3662
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=5e-4) and high == pytest.approx(0.3662, abs=5e-4)


def test_wilson_at_the_edges_stays_in_range_and_is_not_empty():
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and 0.69 < low < 0.73  # 0.7225 for n=10
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and 0.27 < high < 0.31


def test_interval_narrows_with_more_images_around_the_same_accuracy():
    small = wilson_interval(93, 100)
    large = wilson_interval(1219, 1311)
    assert small[1] - small[0] > large[1] - large[0]
    # about +-1.4 points at 93 % on 1,311 images, as the issue says
    assert (large[1] - large[0]) / 2 == pytest.approx(0.0138, abs=1e-3)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_format_names_the_counts():
    text = format_accuracy(1229, 1311)
    assert text.startswith("0.9375 (95 % CI 0.92") and "1229/1311" in text
    assert not math.isnan(float(text.split()[0]))


# Every n up to 10,000 at both ends, and every k in between for samples of n: the ends are exact (a notebook's
# `low <= accuracy <= high` must hold at 100 % and 0 %), and k/n always lies inside its own interval.
from hypothesis import given, settings, strategies as st  # noqa: E402


def test_ends_are_exact_for_every_n_up_to_10000():
    for n in range(1, 10_001):
        low0, high0 = wilson_interval(0, n)
        lown, highn = wilson_interval(n, n)
        assert low0 == 0.0 and highn == 1.0, (n, low0, highn)
        assert 0.0 < high0 < 1.0 and 0.0 < lown < 1.0, (n, high0, lown)


@settings(max_examples=3000, deadline=None)
@given(st.integers(min_value=1, max_value=10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_the_observed_accuracy_lies_inside_its_interval(kn):
    k, n = kn
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0, (k, n, low, high)
    assert low < high
