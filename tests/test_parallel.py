"""The one process pool: results in input order, in one process or several; a worker's error reaches the caller."""

from __future__ import annotations

import math

import pytest

from cxrseg.parallel import parallel_map


@pytest.mark.parametrize("num_proc", [1, 2])
def test_results_come_in_input_order(num_proc):
    items = [float(n * n) for n in range(40)]
    assert list(parallel_map(math.sqrt, items, num_proc=num_proc, desc="sqrt")) == list(range(40))


@pytest.mark.parametrize("num_proc", [1, 2])
def test_an_error_in_a_worker_is_raised_to_the_caller(num_proc):
    with pytest.raises(ValueError, match="math domain error"):
        list(parallel_map(math.sqrt, [4.0, -1.0, 9.0], num_proc=num_proc, desc="sqrt"))
