"""The one bootstrap and the one Wilcoxon test (chains_lite.eval.stats) against hand cases and scipy."""
import pytest

from chains_lite.eval.stats import wilcoxon_greater


def test_wilcoxon_greater_small_sample():
    assert wilcoxon_greater([2, 3, 4, 5, 6], [1, 1, 1, 1, 1]) == pytest.approx(1 / 32)
    assert wilcoxon_greater([1, 1, 1, 1, 1], [2, 3, 4, 5, 6]) == pytest.approx(1.0)
    assert wilcoxon_greater([1, 2], [1, 2]) == 1.0
