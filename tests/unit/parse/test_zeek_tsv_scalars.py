"""The TSV fast path's Arrow values built from buffers (so that a clean log never makes pyarrow
import pandas) equal what ``pa.scalar`` / ``pa.array`` / ``to_numpy`` give."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from zeekml.parse import zeek_tsv as z


@pytest.mark.parametrize("value", [None, b"", b"T", b"(empty)", b"-", b"\x00\xff multi byte \xc3\xa9"])
def test_binary_scalar_equals_pa_scalar(value):
    got = z._binary_scalar(value)
    want = pa.scalar(value, pa.binary())
    assert got.type == pa.binary() and got.is_valid == want.is_valid
    assert got.equals(want) and got.as_py() == value


@pytest.mark.parametrize("value", [True, False])
def test_bool_scalar_equals_pa_scalar(value):
    got = z._bool_scalar(value)
    assert got.type == pa.bool_() and got.equals(pa.scalar(value)) and got.as_py() is value


@pytest.mark.parametrize("value", [0, 1, 3, -7, 2**31 - 1])
def test_int32_scalar_equals_pa_scalar(value):
    got = z._int32_scalar(value)
    assert got.type == pa.int32() and got.equals(pa.scalar(value, pa.int32()))


def test_int32_array_and_numpy_round_trip_with_offsets():
    values = np.array([5, 0, -2, 9, 2**31 - 1, 4], dtype=np.int32)
    arr = z._int32_array(values)
    assert arr.equals(pa.array(values)) and arr.null_count == 0
    for start, stop in [(0, 6), (1, 4), (5, 6), (3, 3)]:
        part = arr.slice(start, stop - start)
        np.testing.assert_array_equal(z._int32_numpy(part), part.to_numpy())
        assert z._int32_numpy(part).dtype == np.int32


@pytest.mark.parametrize("arr", [pa.array([1, None], pa.int32()), pa.array([1, 2], pa.int64())])
def test_int32_numpy_refuses_nulls_and_other_types(arr):
    with pytest.raises(ValueError, match="null-free int32"):
        z._int32_numpy(arr)
