"""LLM model: reproduce the Splitwise measurements and the published load shape.

Source: Patel et al., "Splitwise: Efficient Generative LLM Inference Using Phase Splitting",
ISCA 2024 (the paper behind the Azure LLM code trace), with the authors' measured
performance data from their simulator, Mutinifni/splitwise-sim data/perf_model.csv
(commit 378088013a54df6f2052c27ff5ae6ea7619c3ecc), Llama2-70B on DGX-H100. The model file
traces/model_llm.yaml is set from those rows (see its header).

1. Characterization (Splitwise section III): prompt-phase time grows with prompt size, while
   token time barely grows with batch size. The simulated engine must reproduce the
   measured prompt_time per prompt size and token_time per batch size.
2. Load (Splitwise's motivation for phase splitting; Sarathi-Serve, OSDI 2024, for chunked
   prefill): with prefill-first continuous batching, TTFT stays near the prefill time until
   the prefill capacity, then rises steeply; TBT's median stays near the decode step while
   its tail inflates with load, because prompts preempt decodes; chunked prefill bounds it.
   The load is made as SplitwiseSim's generate_trace.py makes it: Poisson arrivals with the
   production trace's (input, output) token pairs.
3. Replay of the Azure code trace itself (shared/traces/azure_llm_2023_code.csv) through an
   autoscaling deployment of that model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from simtune.params import SimParams
from simtune.serve_config import load_deployment
from simtune.service_models import load_service_model
from simtune.simulate import simulate
from simtune.trace import Trace

REPO = Path(__file__).resolve().parents[1]
MODEL = load_service_model(REPO / "traces" / "model_llm.yaml")

# Means of the 5 repetitions in perf_model.csv (llama2-70b, h100-80gb), ms.
PROMPT_TIME_MS = {128: 49.20, 256: 51.82, 512: 83.86, 1024: 157.80, 2048: 308.22, 4096: 642.01, 8192: 1339.16}
TOKEN_TIME_MS = {1: 37.00, 2: 37.38, 4: 39.96, 8: 40.38, 16: 41.97, 32: 52.27}  # prompt 512, 128 tokens


def _one(mor=1000):
    return load_deployment({"name": "llm", "num_replicas": 1, "max_ongoing_requests": mor})


def test_ttft_of_a_single_request_is_the_measured_prompt_time():
    sizes = list(PROMPT_TIME_MS)
    arr = np.arange(len(sizes)) * 100.0
    tr = Trace(arr, {"input_tokens": np.array(sizes, float), "output_tokens": np.full(len(sizes), 1.0)})
    res = simulate(tr, _one(), SimParams(seed=0), service_model=MODEL)
    np.testing.assert_allclose(res.ttft * 1e3, [PROMPT_TIME_MS[s] for s in sizes], rtol=1e-3)


@pytest.mark.parametrize("batch", sorted(TOKEN_TIME_MS))
def test_tbt_at_batch_size_is_the_measured_token_time(batch):
    """`batch` requests with 512-token prompts and 129 output tokens arrive together; once all
    are prefilled they decode in lockstep: their time per output token (after the prefill
    steps) is the measured token_time at that batch size."""
    tr = Trace(np.zeros(batch), {"input_tokens": np.full(batch, 512.0), "output_tokens": np.full(batch, 129.0)})
    res = simulate(tr, _one(), SimParams(seed=0), service_model=MODEL)
    last_first = np.nanmax(res.ttft)  # all prefilled by then
    tbt = (res.end.max() - last_first) / 128
    assert tbt * 1e3 == pytest.approx(TOKEN_TIME_MS[batch], rel=0.02)


def _load(lam, seed=0, hours=1.0):
    from simtune.trace import load_trace
    from conftest import TRACES

    src = load_trace(TRACES / "azure_llm_2023_code.csv")
    rng = np.random.default_rng([seed, int(lam * 100)])
    n = int(lam * 3600 * hours)
    idx = rng.integers(0, len(src), n)
    return Trace(np.cumsum(rng.exponential(1 / lam, n)), {k: src.columns[k][idx] for k in ("input_tokens",
                                                                                           "output_tokens")})


def _sweep(model, rates):
    out = []
    for lam in rates:
        s = simulate(_load(lam), _one(), SimParams(seed=0), service_model=model).summary()
        out.append((lam, s["ttft_s"], s["tpot_s"]))
    return out


def test_load_shape_prefill_first_and_chunked():
    rates = [0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    pf = _sweep(MODEL, rates)
    ttft50 = np.array([t["p50"] for _, t, _ in pf])
    ttft99 = np.array([t["p99"] for _, t, _ in pf])
    tpot50 = np.array([p["p50"] for _, _, p in pf])
    tpot99 = np.array([p["p99"] for _, _, p in pf])
    # Light load: TTFT is the prefill of a typical prompt (median 1469 tokens -> ~0.23 s), TBT
    # the batch-1 token time.
    assert 0.2 < ttft50[0] < 0.3
    assert tpot50[0] * 1e3 == pytest.approx(TOKEN_TIME_MS[1], rel=0.05)
    # TTFT: flat, then a knee near the prefill capacity (~3 req/s for ~2k-token prompts).
    assert np.all(np.diff(ttft99) > 0)
    assert ttft50[2] < 2 * ttft50[0] and ttft50[-1] > 10 * ttft50[2]
    # TBT: the tail inflates with load much more than the median (prompt preemption).
    assert np.all(np.diff(tpot50[:-1]) > 0)
    assert tpot99[3] / tpot50[3] > 5
    # Chunked prefill (2048-token budget) bounds the TBT tail at that load.
    ch = _sweep(dataclasses.replace(MODEL, scheduler="chunked", max_num_batched_tokens=2048), [1.5, 2.0])
    assert ch[0][2]["p99"] < 0.5 * tpot99[3] and ch[1][2]["p99"] < 0.5 * tpot99[4]


def test_replay_azure_llm_code_trace_with_autoscaling(shared_dir):
    from simtune.trace import load_trace

    tr = load_trace(shared_dir / "traces" / "azure_llm_2023_code.csv")
    spec = load_deployment({"name": "llm", "max_ongoing_requests": 64, "autoscaling_config": {
        "min_replicas": 1, "max_replicas": 16, "target_ongoing_requests": 8, "upscale_delay_s": 5,
        "downscale_delay_s": 120}})
    res = simulate(tr, spec, SimParams(seed=0, proxy_overhead_s=0.008), service_model=MODEL)
    s = res.summary(slo_ttft_s=2.0, slo_tpot_s=0.2)
    assert s["requests"]["ok"] == len(tr)
    assert s["ttft_s"]["p50"] > PROMPT_TIME_MS[1024] / 1e3
    assert s["tpot_s"]["p50"] * 1e3 > TOKEN_TIME_MS[1]
    assert s["replicas"]["max"] > 1
    assert 0 < s["slo"]["attainment"] <= 1
    df = res.requests
    assert {"ttft", "tpot"} <= set(df.columns)
