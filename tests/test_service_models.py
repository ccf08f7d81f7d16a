"""Service models against closed forms and hand-computed schedules.

Processor sharing (concurrency curve) vs M/M/1-PS and M/M/2 (Erlang C); @serve.batch
firing on timeout vs on size, semaphore queueing and slot accounting exactly as
serve/batching.py; a single LLM request's TTFT = prefill time; timeouts cancel requests
inside a model (408); equivalences with the fixed model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from simtune.dataplane import FAILED, OK, TIMED_OUT, DataPlane
from simtune.params import SimParams
from simtune.serve_config import load_deployment
from simtune.service_models import (
    BatchModel, ConcurrencyCurveModel, FixedModel, LLMModel, StreamingModel, parse_service_model,
)
from simtune.simulate import simulate
from simtune.trace import Trace


def _spec(**opts):
    return load_deployment({"name": "d", **opts})


def _one(mor=1000, **opts):
    return _spec(num_replicas=1, max_ongoing_requests=mor, **opts)


def _trace(arrivals, service=None, **cols):
    arrivals = np.asarray(arrivals, dtype=float)
    columns = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    if service is not None:
        columns["service_time"] = np.broadcast_to(np.asarray(service, dtype=float), arrivals.shape).copy()
    return Trace(arrivals, columns)


def _poisson(rate, n, mean_s, seed):
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1 / rate, n))
    return _trace(arr - arr[0], rng.exponential(mean_s, n))


PS = ConcurrencyCurveModel(concurrency=[1, 2], latency_s=[0.1, 0.2])  # linear: plain processor sharing


# ----------------------------------------------------------------------------- processor sharing


def test_ps_hand_computed():
    """A (1 s of work) at 0, B (1 s) at 0.5: A alone until 0.5, then both at half speed:
    A ends at 1.5, B (0.5 left) alone ends at 2.0."""
    res = simulate(_trace([0.0, 0.5], [1.0, 1.0]), _one(), SimParams(seed=0), service_model=PS)
    assert res.end[0] == pytest.approx(1.5, abs=1e-12)
    assert res.end[1] == pytest.approx(2.0, abs=1e-12)
    assert np.all(res.status == OK)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mm1_ps_mean_latency(rho):
    """M/M/1-PS: E[T] = E[S] / (1 - rho), and E[T | S] = S / (1 - rho) (insensitivity)."""
    mean_s = 0.1
    n = 200_000
    errs = []
    for seed in range(3):
        res = simulate(_poisson(rho / mean_s, n, mean_s, seed), _one(), SimParams(seed=seed), service_model=PS)
        lat = res.latency[res.status == OK]
        assert lat.size == n
        errs.append(lat.mean() / (mean_s / (1 - rho)) - 1)
        slope = np.sum(lat * res.service_time) / np.sum(res.service_time ** 2)
        assert slope == pytest.approx(1 / (1 - rho), rel=0.05)
    assert abs(np.mean(errs)) < 0.03, errs


def test_two_core_curve_is_mm2():
    """L(n) = S for n <= 2, n S / 2 beyond (two cores shared): with exponential work the
    number in system is that of M/M/2, so E[T] is Erlang C's."""
    model = ConcurrencyCurveModel(concurrency=[1, 2, 4], latency_s=[0.1, 0.1, 0.2])
    lam, mu, c = 16.0, 10.0, 2
    a = lam / mu
    top = a ** c / math.factorial(c) * c / (c - a)
    erlang_c = top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)
    expected = 1 / mu + erlang_c / (c * mu - lam)  # 0.2778 s
    means = []
    for seed in range(3):
        res = simulate(_poisson(lam, 200_000, 1 / mu, seed), _one(), SimParams(seed=seed), service_model=model)
        means.append(res.latency[res.status == OK].mean())
    assert np.mean(means) == pytest.approx(expected, rel=0.03)


def test_parallelism_one_is_fcfs_hand_computed():
    """parallelism 1 with a linear curve (total rate 1): A (1 s) runs alone 0-1, B waits FIFO
    inside the replica (holding its slot) and runs 1-2."""
    fcfs = ConcurrencyCurveModel(concurrency=[1, 2], latency_s=[0.1, 0.2], parallelism=1)
    res = simulate(_trace([0.0, 0.5], [1.0, 1.0]), _one(), SimParams(seed=0), service_model=fcfs)
    assert np.allclose(res.end, [1.0, 2.0])
    assert np.allclose(res.start, [0.0, 0.5])  # accepted (slot taken) at arrival


def test_md1_fcfs_vs_ps():
    """Deterministic work S = 0.1 at rho = 0.6: FCFS (parallelism 1) gives Pollaczek-Khinchine
    E[T] = S + rho S / (2 (1 - rho)) = 0.175; PS gives S / (1 - rho) = 0.25."""
    rng = np.random.default_rng(0)
    arr = np.cumsum(rng.exponential(1 / 6.0, 200_000))
    tr = _trace(arr - arr[0], 0.1)
    fcfs = ConcurrencyCurveModel(concurrency=[1, 2], latency_s=[0.1, 0.2], parallelism=1)
    a = simulate(tr, _one(), SimParams(seed=0), service_model=fcfs).latency.mean()
    b = simulate(tr, _one(), SimParams(seed=0), service_model=PS).latency.mean()
    assert a == pytest.approx(0.175, rel=0.02)
    assert b == pytest.approx(0.25, rel=0.03)


def test_limited_ps_timeout_of_a_waiting_request():
    spec = load_deployment({"http_options": {"request_timeout_s": 1.5}, "applications": [
        {"name": "a", "import_path": "m:app", "deployments": [{"name": "d", "num_replicas": 1,
                                                                "max_ongoing_requests": 10}]}]})
    m = ConcurrencyCurveModel(concurrency=[1, 2], latency_s=[0.1, 0.2], parallelism=1)
    res = simulate(_trace([0.0, 0.1, 0.2], [1.0, 1.0, 0.5]), spec, SimParams(seed=0), service_model=m)
    # A runs 0-1; B runs from 1 and is cut at 1.6 (408); C waits until then, runs 0.1 s, cut at 1.7.
    assert res.status[0] == OK and res.end[0] == pytest.approx(1.0)
    assert list(res.status[1:]) == [TIMED_OUT, TIMED_OUT]
    assert np.allclose(res.end[1:], [1.6, 1.7])


def test_flat_curve_equals_fixed_model_with_autoscaling():
    """A flat curve (no slowdown) is the fixed model: same ends, same decisions."""
    rng = np.random.default_rng(5)
    arr = np.sort(rng.uniform(0, 300, 6000))
    tr = _trace(arr, rng.exponential(0.2, arr.size))
    spec = _spec(max_ongoing_requests=4, autoscaling_config=dict(
        min_replicas=1, max_replicas=10, target_ongoing_requests=2, metrics_interval_s=1, look_back_period_s=5,
        upscale_delay_s=2, downscale_delay_s=10))
    a = simulate(tr, spec, SimParams(seed=3))
    b = simulate(tr, spec, SimParams(seed=3), service_model=ConcurrencyCurveModel(concurrency=[1, 4],
                                                                                   latency_s=[0.2, 0.2]))
    c = simulate(tr, spec, SimParams(seed=3), service_model=FixedModel())
    assert np.allclose(a.end, b.end, atol=1e-9, equal_nan=True)
    assert a.decisions_list == b.decisions_list
    assert np.array_equal(a.end, c.end, equal_nan=True)


def test_concurrency_without_service_times_uses_the_table():
    model = ConcurrencyCurveModel(concurrency=[1, 2], latency_s=[0.3, 0.6])
    res = simulate(_trace([0.0, 10.0]), _one(), SimParams(seed=0), service_model=model)
    assert np.allclose(res.end - res.arrival, 0.3)


def test_ps_timeout_cancels_and_frees_capacity():
    """A (10 s) at 0 and B (1.9 s) at 2.0, timeout 2.5: A is cut at 2.5 (408); B ran at half
    speed for 0.5 s (1.65 left) and then alone: ends at 4.15."""
    spec = load_deployment({"http_options": {"request_timeout_s": 2.5}, "applications": [
        {"name": "a", "import_path": "m:app", "deployments": [{"name": "d", "num_replicas": 1,
                                                                "max_ongoing_requests": 10}]}]})
    res = simulate(_trace([0.0, 2.0], [10.0, 1.9]), spec, SimParams(seed=0), service_model=PS)
    assert res.status[0] == TIMED_OUT and res.end[0] == pytest.approx(2.5)
    assert res.status[1] == OK and res.end[1] == pytest.approx(4.15, abs=1e-12)


def test_ps_slot_overhead_holds_the_slot():
    res = simulate(_trace([0.0, 0.5], [1.0, 1.0]), _one(), SimParams(seed=0, slot_overhead_s=0.1),
                   service_model=PS)
    # A leaves the model at 1.5 (as before) and the replica at 1.6.
    assert res.end[0] == pytest.approx(1.6, abs=1e-12)
    assert res.end[1] == pytest.approx(2.1, abs=1e-12)


def test_kill_fails_requests_inside_a_model():
    dp = DataPlane(np.array([0.0, 0.1, 0.2]), np.array([5.0, 5.0, 5.0]), max_ongoing_requests=10,
                   max_queued_requests=-1, request_timeout_s=None, backoff=(0.025, 2, 0.5), service_model=PS)
    dp.add_replica(0.0, 0)
    dp.advance(1.0)
    assert dp.inflight == 3 and dp.ongoing[0] == 3
    assert dp.kill_replica(1.0, 0) == 3
    dp.advance(2.0)
    assert dp.inflight == 0 and dp.ongoing[0] == 0
    assert np.all(dp.status == FAILED) and np.all(dp.end == 1.0)


# ----------------------------------------------------------------------------- @serve.batch


BATCH = dict(max_batch_size=4, batch_wait_timeout_s=0.1, max_concurrent_batches=1, base_s=0.2, per_item_s=0.05)


def test_batch_fires_on_timeout():
    """3 items by 0.02 < max 4: the batch closes at t0 + timeout = 0.1 and runs 0.2 + 3 x 0.05."""
    res = simulate(_trace([0.0, 0.01, 0.02]), _one(), SimParams(seed=0), service_model=BatchModel(**BATCH))
    assert np.allclose(res.end, 0.1 + 0.35)
    assert list(res.batch_size) == [3, 3, 3]


def test_batch_fires_on_size():
    """The 4th item (at 0.03) fills the batch: it fires at once and runs 0.4 s."""
    res = simulate(_trace([0.0, 0.01, 0.02, 0.03]), _one(), SimParams(seed=0), service_model=BatchModel(**BATCH))
    assert np.allclose(res.end, 0.03 + 0.4)
    assert list(res.batch_size) == [4] * 4


def test_batches_close_while_the_executor_is_busy():
    """Reference section 7: the forming loop does not wait for the semaphore. Batch 2 (items at
    0.05, 0.06) closes on its timer at 0.15, queues with membership fixed, runs 0.43-0.73;
    the item at 0.2 starts batch 3 (closes 0.3), which runs 0.73-0.98."""
    arr = [0.0, 0.01, 0.02, 0.03, 0.05, 0.06, 0.2]
    res = simulate(_trace(arr), _one(), SimParams(seed=0), service_model=BatchModel(**BATCH))
    assert np.allclose(res.end, [0.43] * 4 + [0.73, 0.73, 0.98])
    assert list(res.batch_size) == [4, 4, 4, 4, 2, 2, 1]


def test_batch_concurrent_batches_run_together():
    res = simulate(_trace([0.0, 0.01, 0.02, 0.03, 0.05]), _one(), SimParams(seed=0),
                   service_model=BatchModel(**{**BATCH, "max_concurrent_batches": 2}))
    assert np.allclose(res.end, [0.43] * 4 + [0.15 + 0.25])


def test_batch_items_hold_replica_slots():
    """max_ongoing_requests=2 < max_batch_size=4: 4 requests at 0, only 2 accepted; their batch
    fires on the timer (0.1) with 2 items and ends at 0.4. The other two retry with backoff
    (0, 0.025, 0.075, 0.175, 0.375, 0.775): both start at 0.775, batch ends 0.875 + 0.3."""
    res = simulate(_trace([0.0] * 4), _one(mor=2), SimParams(seed=0), service_model=BatchModel(**BATCH))
    assert np.allclose(res.end, [0.4, 0.4, 1.175, 1.175])
    assert np.allclose(res.start, [0, 0, 0.775, 0.775])
    assert list(res.batch_size) == [2, 2, 2, 2]


def test_batch_zero_timeout_and_table_latency():
    """batch_wait_timeout_s=0: a batch closes as soon as its first item is dequeued, so with
    an async handler every item that arrives while a batch runs forms its own batch."""
    table = dict(batch_size=[1, 2, 8], latency_s=[0.1, 0.12, 0.3])
    res = simulate(_trace([0.0, 0.0, 0.0, 0.05]), _one(), SimParams(seed=0), service_model=BatchModel(
        max_batch_size=8, batch_wait_timeout_s=0.0, max_concurrent_batches=1, **table))
    assert np.allclose(res.end, [0.1, 0.2, 0.3, 0.4])
    assert list(res.batch_size) == [1, 1, 1, 1]
    res = simulate(_trace([0.0, 0.0, 0.0]), _one(), SimParams(seed=0), service_model=BatchModel(
        max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=1, **table))
    assert np.allclose(res.end, 0.01 + 0.12 + (0.3 - 0.12) / 6)  # interpolated at 3


def test_batch_cancelled_items_dropped_before_execution():
    """Timeout 0.27, batch latency 0.1 + 0.05 n: items 0-3 run in batch 1 (0.03-0.33) and are
    cut at their deadlines (408, slots freed). Items at 0.05/0.055 wait in batch 2 until 0.33,
    past their deadlines: dropped, batch 2 is skipped; the item at 0.4 (batch 3, closes at
    0.5) runs at once with 1 item and ends at 0.65."""
    spec = load_deployment({"http_options": {"request_timeout_s": 0.27}, "applications": [
        {"name": "a", "import_path": "m:app", "deployments": [{"name": "d", "num_replicas": 1,
                                                                "max_ongoing_requests": 100}]}]})
    arr = [0.0, 0.01, 0.02, 0.03, 0.05, 0.055, 0.4]
    res = simulate(_trace(arr), spec, SimParams(seed=0),
                   service_model=BatchModel(**{**BATCH, "base_s": 0.1, "per_item_s": 0.05}))
    assert list(res.status[:6]) == [TIMED_OUT] * 6
    assert np.allclose(res.end[:6], np.array(arr[:6]) + 0.27)
    assert res.status[6] == OK and res.end[6] == pytest.approx(0.65)
    assert list(res.batch_size) == [4, 4, 4, 4, 0, 0, 1]


def test_batch_equivalent_to_fixed_when_unbatched():
    """max_batch_size 1, timeout 0, max_concurrent_batches = max_ongoing_requests: the fixed model."""
    rng = np.random.default_rng(1)
    arr = np.sort(rng.uniform(0, 100, 2000))
    spec = _spec(num_replicas=2, max_ongoing_requests=3)
    a = simulate(_trace(arr, 0.1), spec, SimParams(seed=2))
    b = simulate(_trace(arr), spec, SimParams(seed=2), service_model=BatchModel(
        max_batch_size=1, batch_wait_timeout_s=0.0, max_concurrent_batches=3, base_s=0.1, per_item_s=0.0))
    assert np.allclose(a.end, b.end, atol=1e-9)


# ----------------------------------------------------------------------------- LLM


LLM = LLMModel(max_num_seqs=8, prefill_base_s=0.02, prefill_per_token_s=1e-4, prefill_per_token2_s=1e-8,
               decode_base_s=0.01, decode_per_seq_s=0.002, decode_per_context_token_s=1e-6)


def _llm_e2e(model, x, out):
    return model.prefill_time(x) + sum(model.decode_step_time(1, x + k) for k in range(1, out))


def test_llm_single_request_ttft_is_prefill():
    res = simulate(_trace([0.0, 100.0], input_tokens=[1500, 300], output_tokens=[20, 1]), _one(),
                   SimParams(seed=0, proxy_overhead_s=0.008), service_model=LLM)
    assert res.ttft[0] == pytest.approx(LLM.prefill_time(1500) + 0.008, abs=1e-12)
    assert res.latency[0] == pytest.approx(_llm_e2e(LLM, 1500, 20) + 0.008, abs=1e-12)
    assert res.tpot[0] == pytest.approx((_llm_e2e(LLM, 1500, 20) - LLM.prefill_time(1500)) / 19, abs=1e-12)
    # One output token: the first token is the last.
    assert res.latency[1] == pytest.approx(LLM.prefill_time(300) + 0.008, abs=1e-12)
    assert np.isnan(res.tpot[1])
    assert res.summary(slo_latency_s=10, slo_ttft_s=0.25)["slo"]["attainment"] == 1.0
    # TTFT of the first is 0.2005 s: a 0.2 s TTFT SLO fails it (and only it).
    assert res.summary(slo_ttft_s=0.2)["slo"]["attainment"] == 0.5


def test_llm_prefill_first_continuous_batching():
    """B arrives during A's prefill: it is prefilled next (prefill first), then both decode
    together, one token per step each, with the step time of 2 sequences."""
    m = LLMModel(max_num_seqs=8, prefill_base_s=0.0, prefill_per_token_s=1e-4, decode_base_s=0.01,
                 decode_per_seq_s=0.005)
    res = simulate(_trace([0.0, 0.05], input_tokens=[1000, 500], output_tokens=[3, 2]), _one(), SimParams(seed=0),
                   service_model=m)
    t_a1 = 0.1          # A's prefill
    t_b1 = t_a1 + 0.05  # B's prefill (A waits: prefill first)
    step2 = 0.01 + 2 * 0.005
    assert res.ttft[0] == pytest.approx(t_a1)
    assert res.ttft[1] == pytest.approx(t_b1 - 0.05)
    # One joint decode step: A has 2 tokens, B has 2 (done). Then A decodes alone.
    assert res.end[1] == pytest.approx(t_b1 + step2)
    assert res.end[0] == pytest.approx(t_b1 + step2 + 0.015)


def test_llm_max_num_seqs_queues_in_the_engine():
    m = LLMModel(max_num_seqs=1, prefill_per_token_s=1e-3, decode_base_s=0.01)
    res = simulate(_trace([0.0, 0.0], input_tokens=[100, 100], output_tokens=[5, 5]), _one(), SimParams(seed=0),
                   service_model=m)
    first_done = 0.1 + 4 * 0.01
    assert np.allclose(np.sort(res.end), [first_done, 2 * first_done])


def test_llm_chunked_prefill_single_request():
    """Chunked (vLLM v1): a 1000-token prompt with a 400-token budget takes 3 steps."""
    m = LLMModel(scheduler="chunked", max_num_seqs=8, max_num_batched_tokens=400, prefill_per_token_s=1e-4,
                 decode_base_s=0.01)
    res = simulate(_trace([0.0], input_tokens=[1000], output_tokens=[3]), _one(), SimParams(seed=0),
                   service_model=m)
    assert res.ttft[0] == pytest.approx(0.1)  # 400 + 400 + 200 tokens at 1e-4 s
    assert res.end[0] == pytest.approx(0.1 + 2 * 0.01)


def test_llm_timeout_aborts_in_engine():
    spec = load_deployment({"http_options": {"request_timeout_s": 1.0}, "applications": [
        {"name": "a", "import_path": "m:app", "deployments": [{"name": "d", "num_replicas": 1,
                                                                "max_ongoing_requests": 10}]}]})
    m = LLMModel(max_num_seqs=4, prefill_per_token_s=1e-4, decode_base_s=0.01)
    res = simulate(_trace([0.0, 0.0], input_tokens=[100, 100], output_tokens=[500, 10]), spec, SimParams(seed=0),
                   service_model=m)
    assert res.status[0] == TIMED_OUT and res.end[0] == pytest.approx(1.0)
    assert res.status[1] == OK


def test_llm_needs_token_columns():
    from simtune.errors import InputError

    with pytest.raises(InputError, match="output_tokens"):
        simulate(_trace([0.0], input_tokens=[10]), _one(), SimParams(seed=0), service_model=LLM)


# ----------------------------------------------------------------------------- streaming


def test_streaming_first_chunk():
    model = parse_service_model({"kind": "streaming", "first_chunk_fraction": 0.25})
    res = simulate(_trace([0.0, 1.0], [1.0, 2.0]), _one(), SimParams(seed=0, proxy_overhead_s=0.01),
                   service_model=model)
    assert np.allclose(res.ttft, [0.26, 0.51])
    assert np.allclose(res.latency, [1.01, 2.01])
    res = simulate(_trace([0.0], [1.0]), _one(), SimParams(seed=0), service_model=StreamingModel(first_chunk_s=3.0))
    assert res.ttft[0] == pytest.approx(1.0)  # never after the end
