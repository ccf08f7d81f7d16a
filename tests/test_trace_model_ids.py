"""Zipf model ids for multiplexing traces (simtune.trace.model_ids)."""

from __future__ import annotations

import numpy as np
import pytest

from simtune.errors import InputError
from simtune.trace import generators
from simtune.trace.model import Trace
from simtune.trace.model_ids import assign_model_ids, model_id_codes, zipf_probabilities


def _trace(n: int) -> Trace:
    return Trace(np.arange(n, dtype=float) * 0.01, {}, "t")


@pytest.mark.parametrize("n,s", [(1, 1.0), (12, 1.1), (100, 0.0), (7, 2.5)])
def test_probabilities_sum_to_one_and_follow_zipf(n, s):
    p = zipf_probabilities(n, s)
    assert p.shape == (n,)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(p) <= 0)
    # P(k)/P(0) = (k+1)^-s
    np.testing.assert_allclose(p / p[0], np.arange(1, n + 1, dtype=float) ** -s)


def test_uniform_when_s_is_zero():
    np.testing.assert_allclose(zipf_probabilities(5, 0.0), np.full(5, 0.2))


def test_empirical_frequencies_match_zipf():
    n, s, draws = 12, 1.1, 100_000
    out = assign_model_ids(_trace(draws), n, zipf_s=s, seed=3)
    ids = out.columns["model_id"]
    assert ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() <= n - 1
    freq = np.bincount(ids, minlength=n) / draws
    p = zipf_probabilities(n, s)
    # binomial standard error at 100k draws is <= 0.0016; allow ~4 sigma
    np.testing.assert_allclose(freq, p, atol=0.006)
    assert out.meta["model_ids"] == {"column": "model_id", "n_models": n, "zipf_s": s, "seed": 3}


def test_deterministic_by_seed_and_input_untouched():
    tr = generators.poisson(10.0, 60.0, seed=1)
    a = assign_model_ids(tr, 8, 1.0, seed=5)
    b = assign_model_ids(tr, 8, 1.0, seed=5)
    c = assign_model_ids(tr, 8, 1.0, seed=6)
    np.testing.assert_array_equal(a.columns["model_id"], b.columns["model_id"])
    assert not np.array_equal(a.columns["model_id"], c.columns["model_id"])
    np.testing.assert_array_equal(a.timestamps, tr.timestamps)
    assert "model_id" not in tr.columns and "model_ids" not in tr.meta


def test_custom_column_name_and_empty_trace():
    out = assign_model_ids(_trace(10), 3, column="mid")
    assert "mid" in out.columns and "model_id" not in out.columns
    empty = assign_model_ids(_trace(0), 3)
    assert empty.columns["model_id"].shape == (0,)


@pytest.mark.parametrize("bad", [0, -1, 2.5, None, "x"])
def test_bad_n_models_raises_one_line_input_error(bad):
    with pytest.raises(InputError) as exc:
        assign_model_ids(_trace(5), bad)
    assert "n_models" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(InputError):
        zipf_probabilities(bad, 1.0)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_bad_s_raises(bad):
    with pytest.raises(InputError, match="zipf_s"):
        zipf_probabilities(4, bad)


def test_model_id_codes_strings_and_numbers():
    names = np.array(["llama", "mistral", "llama", "phi", "mistral"], dtype=object)
    tr = Trace(np.arange(5, dtype=float), {"model_id": names})
    codes, uniq = model_id_codes(tr)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, [0, 1, 0, 2, 1])
    assert uniq == ["llama", "mistral", "phi"]
    assert [uniq[c] for c in codes] == list(names)

    tr2 = Trace(np.arange(4, dtype=float), {"m": np.array([7, 3, 7, 9])})
    codes2, uniq2 = model_id_codes(tr2, column="m")
    np.testing.assert_array_equal(codes2, [0, 1, 0, 2])
    assert uniq2 == [7, 3, 9]


def test_model_id_codes_errors():
    tr = Trace(np.arange(3, dtype=float), {"model_id": np.array(["a", None, "b"], dtype=object)})
    with pytest.raises(InputError, match="row 2"):
        model_id_codes(tr)
    with pytest.raises(InputError, match="no 'model_id' column"):
        model_id_codes(Trace(np.arange(2, dtype=float), {}))
