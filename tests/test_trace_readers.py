"""Readers: every shared trace loads with the right reader and matches its README;
hand-written files cover each format, container and time unit; bad input is one line."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TRACES
from simtune.errors import InputError
from simtune.trace import load_trace, save_trace
from simtune.trace.counts import CountTrace, expand_counts
from simtune.trace.inspect import trace_stats
from simtune.trace.readers import detect_format, read_trace

AZ_LLM = TRACES / "azure_llm_2023_code.csv"
MOONCAKE = TRACES / "mooncake_fast25_conversation.csv"
EPA = TRACES / "epa_http_1995.csv"
AF_TOTAL = TRACES / "azure_functions_2019_sample500_minute_total.csv"
AF_BY_FN = TRACES / "azure_functions_2019_sample500_minute_by_function.csv"
SERVEGEN = TRACES / "servegen_language_m_large_10min.csv"


# ----------------------------------------------------------------- real traces (README figures)

# file, rows, span s, mean req/s, peak in 1 s, peak in 1 min, longest gap s
PER_REQUEST = [
    (AZ_LLM, 8_819, 3_436, 2.57, 67, 632, 217),
    (MOONCAKE, 12_031, 3_537, 3.40, 28, 247, 3.0),
    (EPA, 47_748, 86_382, 0.55, 13, 144, 465),
]


@pytest.mark.parametrize("path,rows,span,mean,peak1s,peak1m,gap", PER_REQUEST, ids=lambda v: getattr(v, "stem", None))
def test_per_request_traces_match_readme(path, rows, span, mean, peak1s, peak1m, gap):
    trace = load_trace(path)
    assert trace.meta["source_format"] == "requests"
    assert len(trace) == rows
    assert trace.timestamps[0] == 0 and np.all(np.diff(trace.timestamps) >= 0)
    assert trace.timestamps.dtype == np.float64
    st = trace_stats(trace)
    assert round(st.span_s) == span
    assert st.mean_rate == pytest.approx(mean, abs=0.005)
    w = {x.window_s: x for x in st.windows}
    assert w[1.0].peak_count == peak1s and w[60.0].peak_count == peak1m
    assert st.longest_gap_s == pytest.approx(gap, abs=0.5)


def test_azure_llm_code_burstiness_and_tokens_match_readme():
    st = trace_stats(load_trace(AZ_LLM))
    w = {x.window_s: x for x in st.windows}
    assert st.interarrival_cv == pytest.approx(13.2, abs=0.05)
    assert w[1.0].index_of_dispersion == pytest.approx(13, abs=0.5)
    assert w[60.0].index_of_dispersion == pytest.approx(164, abs=1)
    assert w[1.0].empty_fraction == pytest.approx(0.73, abs=0.005)
    inp, out = st.columns["input_tokens"], st.columns["output_tokens"]
    assert (round(inp.mean), inp.p50, inp.max) == (2_048, 1_469, 7_437)
    assert (round(out.mean), out.p50, out.max) == (28, 13, 1_899)


def test_mooncake_clumps_and_tokens_match_readme():
    trace = load_trace(MOONCAKE)
    gaps = np.diff(trace.timestamps)
    assert int(np.sum(gaps == 0)) == 10_851
    assert trace.columns["input_tokens"].dtype.kind == "i"
    assert int(np.median(trace.columns["input_tokens"])) == 6_909
    assert int(trace.columns["input_tokens"].max()) == 126_195
    assert trace.columns["hash_ids"][0].split()[:3] == ["0", "1", "2"]
    st = trace_stats(trace)
    assert {x.window_s: x for x in st.windows}[60.0].index_of_dispersion == pytest.approx(2.9, abs=0.05)


def test_epa_columns_match_readme():
    trace = load_trace(EPA)
    methods, counts = np.unique(trace.columns["method"].astype(str), return_counts=True)
    assert dict(zip(methods, counts.tolist())) == {"GET": 46_020, "POST": 1_622, "HEAD": 106}
    assert int(np.isnan(trace.columns["response_bytes"]).sum()) == 5_331
    assert int(np.sum(trace.columns["status"] == 200)) == 36_712


def test_azure_functions_total_counts_and_uniform_expansion_is_exact():
    ct = read_trace(AF_TOTAL)
    assert isinstance(ct, CountTrace) and ct.meta["source_format"] == "azure-functions"
    assert len(ct) == 480 and ct.total == 3_037_902 and ct.span == 28_800
    assert ct.counts.max() == 7_603 and ct.counts.min() == 3_013
    trace = load_trace(AF_TOTAL, seed=1)  # uniform: every minute keeps its exact count
    assert len(trace) == 3_037_902
    per_minute = np.bincount((trace.timestamps // 60).astype(int), minlength=480)
    np.testing.assert_array_equal(per_minute, ct.counts)
    assert trace.meta["expand_method"] == "uniform" and trace.meta["seed"] == 1
    # Uniform positions inside a minute: the seconds-within-minute are flat.
    secs = np.bincount((trace.timestamps % 60).astype(int), minlength=60)
    expected = len(trace) / 60
    assert np.all(np.abs(secs - expected) < 5 * np.sqrt(expected))


def test_azure_functions_poisson_expansion_has_poisson_totals():
    ct = read_trace(AF_TOTAL)
    trace = expand_counts(ct, method="poisson", seed=3)
    # Total ~ Poisson(3,037,902): sd 1,743.
    assert abs(len(trace) - ct.total) < 5 * np.sqrt(ct.total)
    per_minute = np.bincount((trace.timestamps // 60).astype(int), minlength=480)
    z = (per_minute - ct.counts) / np.sqrt(ct.counts)
    assert abs(z.mean()) < 0.3 and 0.8 < z.std() < 1.2


def test_azure_functions_by_function_sums_to_total_and_carries_attributes():
    ct = read_trace(AF_BY_FN)
    assert len(ct) == 58_121 and ct.total == 3_037_902
    starts, _, counts = ct.binned()
    np.testing.assert_array_equal(counts, read_trace(AF_TOTAL).counts)
    fns = pd.DataFrame({"function": ct.columns["function"], "trigger": ct.columns["trigger"]}).drop_duplicates()
    assert fns["trigger"].value_counts().to_dict() == {
        "timer": 247, "http": 139, "queue": 69, "orchestration": 25, "event": 14, "storage": 5, "others": 1
    }
    dur = ct.columns["fn_avg_duration_ms"]
    assert np.average(dur, weights=ct.counts) == pytest.approx(504, abs=1)
    share = pd.Series(ct.counts).groupby(ct.columns["trigger"]).sum() / ct.total
    assert share["event"] == pytest.approx(0.71, abs=0.005)


def test_azure_functions_by_function_expansion_keeps_function_per_request():
    trace = load_trace(AF_BY_FN, start=0, end=600)  # 10 minutes
    ct = read_trace(AF_BY_FN)
    first10 = ct.bin_start < 600
    assert len(trace) == int(ct.counts[first10].sum())
    fn = pd.Series(trace.columns["function"]).value_counts()
    src = pd.Series(ct.counts[first10]).groupby(ct.columns["function"][first10]).sum()
    assert fn.sort_index().to_dict() == src.sort_index().to_dict()


def test_servegen_counts_match_readme():
    ct = read_trace(SERVEGEN)
    assert ct.meta["source_format"] == "servegen"
    assert len(ct) == 2_016 and ct.total == 236_892_826 and ct.span == 14 * 86_400
    assert ct.total / ct.span == pytest.approx(195.8, abs=0.05)
    i = int(np.argmax(ct.counts))
    assert ct.counts[i] == 349_795 and ct.bin_start[i] == 22 * 3600 + 20 * 60
    assert ct.counts.min() == 29_011


def test_servegen_full_expansion_is_refused_with_advice():
    with pytest.raises(InputError) as err:
        load_trace(SERVEGEN)
    msg = str(err.value)
    assert "\n" not in msg and "236,892,826" in msg and "rate scale <= 0.0844" in msg and "--start/--end" in msg


def test_servegen_window_and_rate_scale_keep_shape():
    ct = read_trace(SERVEGEN)
    hour = load_trace(SERVEGEN, start=20 * 3600, end=21 * 3600)
    src = ct.counts[(ct.bin_start >= 20 * 3600) & (ct.bin_start < 21 * 3600)]
    assert len(hour) == src.sum() and hour.timestamps[-1] < 3600 and hour.span == 3600
    assert hour.origin is None and hour.meta["window_s"] == [72000.0, 75600.0]
    small = load_trace(SERVEGEN, rate_scale=0.01, seed=0)
    # Stochastic rounding: total within a few tens of the expected 2,368,928.
    assert abs(len(small) - ct.total * 0.01) < 100
    daily = np.bincount((small.timestamps // 86_400).astype(int), minlength=14) / 86_400
    src_daily = ct.counts.reshape(14, -1).sum(axis=1) / 86_400 * 0.01
    np.testing.assert_allclose(daily, src_daily, rtol=0.01)
    assert daily.max() / 0.01 == pytest.approx(279, abs=1) and daily.min() / 0.01 == pytest.approx(105, abs=1)


# ----------------------------------------------------------------- hand-written files


def _write(path, text: str):
    path.write_text(text)
    return path


def test_azure_llm_2023_original_format_with_100ns_datetimes(tmp_path):
    f = _write(tmp_path / "AzureLLMInferenceTrace_code.csv",
               "TIMESTAMP,ContextTokens,GeneratedTokens\n"
               "2023-11-16 18:15:46.6805900,374,44\n"
               "2023-11-16 18:15:46.6806901,396,109\n"
               "2023-11-16 18:15:50.9951690,879,33\n")
    trace = load_trace(f)
    assert trace.meta["source_format"] == "azure-llm-2023"
    np.testing.assert_allclose(trace.timestamps, [0.0, 0.0001001, 4.314579], atol=1e-9)
    assert trace.origin == pd.Timestamp("2023-11-16 18:15:46.68059")
    assert trace.columns["input_tokens"].tolist() == [374, 396, 879]
    assert trace.columns["output_tokens"].tolist() == [44, 109, 33]


def test_mooncake_jsonl_in_ms_with_hash_ids(tmp_path):
    rows = [
        {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]},
        {"timestamp": 30535, "input_length": 6472, "output_length": 26, "hash_ids": [46, 47]},
        {"timestamp": 30535, "input_length": 100, "output_length": 5, "hash_ids": []},
    ]
    f = _write(tmp_path / "conversation_trace.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    trace = load_trace(f)
    assert trace.meta["source_format"] == "mooncake"
    np.testing.assert_allclose(trace.timestamps, [0.0, 3.053, 3.053])
    assert trace.columns["input_tokens"].tolist() == [6955, 6472, 100]
    assert trace.columns["hash_ids"].tolist() == ["46 47 48", "46 47", ""]


def test_jsonl_and_csv_copies_load_identically(tmp_path):
    rows = [{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1, 2]},
            {"timestamp": 1500, "input_length": 20, "output_length": 3, "hash_ids": [1]}]
    j = _write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in rows))
    c = _write(tmp_path / "t.csv", "timestamp,input_tokens,output_tokens,hash_ids\n0.0,10,2,1 2\n1.5,20,3,1\n")
    a, b = load_trace(j), load_trace(c)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    for col in ("input_tokens", "output_tokens", "hash_ids"):
        assert a.columns[col].tolist() == b.columns[col].tolist()


@pytest.mark.parametrize("unit,values", [
    ("s", ["10", "10.5", "12"]),
    ("ms", ["10000", "10500", "12000"]),
    ("us", ["10000000", "10500000", "12000000"]),
    ("ns", ["1700000010000000001", "1700000010500000001", "1700000012000000001"]),
    ("iso", ["2024-01-01T00:00:10Z", "2024-01-01T00:00:10.5Z", "2024-01-01T00:00:12Z"]),
    ("auto", ["2024-01-01 00:00:10", "2024-01-01 00:00:10.500", "2024-01-01 00:00:12"]),
])
def test_time_units_with_column_mapping(tmp_path, unit, values):
    lines = ["when,latency_ms"] + [f"{v},{ms}" for v, ms in zip(values, (5, 7.5, 12))]
    f = _write(tmp_path / "log.csv", "\n".join(lines) + "\n")
    trace = load_trace(f, columns={"timestamp": "when", "service_time": "latency_ms"}, time_unit=unit,
                       service_time_unit="ms")
    np.testing.assert_allclose(trace.timestamps, [0.0, 0.5, 2.0], atol=1e-9)  # ns epoch kept exact
    np.testing.assert_allclose(trace.service_time, [0.005, 0.0075, 0.012])
    if unit in ("iso", "auto"):
        assert trace.origin.second == 10


def test_generic_jsonl_with_mapping_and_iso_times(tmp_path):
    rows = [{"ts": "2024-03-01T12:00:00.250+01:00", "model": "a", "lat": {"ms": 20}},
            {"ts": "2024-03-01T12:00:01.000+01:00", "model": "b", "lat": {"ms": 35}}]
    f = _write(tmp_path / "gateway.ndjson", "\n".join(json.dumps(r) for r in rows))
    trace = load_trace(f, columns={"timestamp": "ts", "service_time": "lat.ms"}, service_time_unit="ms")
    np.testing.assert_allclose(trace.timestamps, [0.0, 0.75])
    np.testing.assert_allclose(trace.service_time, [0.020, 0.035])
    assert trace.columns["model"].tolist() == ["a", "b"]
    assert trace.origin == pd.Timestamp("2024-03-01T11:00:00.250Z")


def test_parquet_gzip_and_unknown_extension_containers(tmp_path):
    df = pd.DataFrame({"timestamp": [3.0, 1.0, 2.0], "service_time": [0.1, 0.2, 0.3]})
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "a.parquet")
    with gzip.open(tmp_path / "b.csv.gz", "wt") as fh:
        df.to_csv(fh, index=False)
    df.to_csv(tmp_path / "c.log", index=False)
    for name in ("a.parquet", "b.csv.gz", "c.log"):
        trace = load_trace(tmp_path / name)
        np.testing.assert_allclose(trace.timestamps, [0.0, 1.0, 2.0])
        np.testing.assert_allclose(trace.service_time, [0.2, 0.3, 0.1])  # sorted with their rows


def test_out_of_order_rows_are_sorted_with_a_warning(tmp_path, caplog):
    f = _write(tmp_path / "t.csv", "timestamp,x\n5,a\n1,b\n3,c\n")
    with caplog.at_level(logging.WARNING):
        trace = load_trace(f)
    assert trace.columns["x"].tolist() == ["b", "c", "a"]
    assert "2 rows were out of order" in caplog.text


def test_azure_functions_wide_layout(tmp_path):
    f = _write(tmp_path / "invocations_per_function_md.anon.d01.csv",
               "HashOwner,HashApp,HashFunction,Trigger,1,2,3\n"
               "o1,a1,f1,http,2,0,1\n"
               "o2,a2,f2,timer,0,3,0\n")
    ct = read_trace(f)
    assert ct.meta["source_format"] == "azure-functions" and ct.span == 180
    np.testing.assert_array_equal(ct.bin_start, [0, 60, 120])
    np.testing.assert_array_equal(ct.counts, [2, 3, 1])
    assert ct.columns["function"].tolist() == ["f1", "f2", "f1"]
    trace = expand_counts(ct, seed=0)
    assert trace.columns["trigger"].tolist() == ["http", "http", "timer", "timer", "timer", "http"]
    np.testing.assert_array_equal(trace.timestamps // 60, [0, 0, 1, 1, 1, 2])


def test_generic_counts_with_datetimes_and_inferred_width(tmp_path):
    f = _write(tmp_path / "per5min.csv",
               "ts,n\n2024-05-01 10:00:00,3\n2024-05-01 10:05:00,0\n2024-05-01 10:10:00,4\n")
    ct = read_trace(f, format="counts", columns={"bin_start": "ts", "count": "n"})
    np.testing.assert_array_equal(ct.bin_width, [300, 300, 300])
    assert ct.origin == pd.Timestamp("2024-05-01 10:00:00")
    even = expand_counts(ct, method="even")
    np.testing.assert_allclose(even.timestamps, [50, 150, 250, 637.5, 712.5, 787.5, 862.5])


def test_canonical_parquet_roundtrip_keeps_clock_meta_and_origin(tmp_path):
    ct = read_trace(_write(tmp_path / "c.csv", "window_start_s,window_s,count\n0,600,5\n600,600,7\n"))
    trace = expand_counts(ct, seed=4)
    trace.origin = pd.Timestamp("2024-01-01 00:00:00")
    out = tmp_path / "canon.parquet"
    save_trace(trace, out)
    back = load_trace(out)
    np.testing.assert_array_equal(back.timestamps, trace.timestamps)  # not re-zeroed to the first arrival
    assert back.meta["expand_method"] == "uniform" and back.meta["source_format"] == "servegen"
    assert back.span == 1200 and back.origin == trace.origin and back.name == "c"


def test_detect_format_signatures():
    assert detect_format(["TIMESTAMP", "ContextTokens", "GeneratedTokens"]) == "azure-llm-2023"
    assert detect_format(["timestamp", "input_length", "output_length", "hash_ids"]) == "mooncake"
    assert detect_format(["timestamp", "input_tokens"]) == "requests"
    assert detect_format(["window_start_s", "window_s", "count"]) == "servegen"
    assert detect_format(["minute", "count"]) == "azure-functions"
    assert detect_format(["HashFunction", "Trigger", "1", "2"]) == "azure-functions"
    assert detect_format(["when", "n"]) is None
    assert detect_format(["when"], {"timestamp": "when"}) == "requests"


# ----------------------------------------------------------------- bad input: one line each


def _one_line_error(fn) -> str:
    with pytest.raises(InputError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg and err.value.exit_code == 2
    return msg


def test_unknown_format(tmp_path):
    f = _write(tmp_path / "t.csv", "timestamp\n1\n")
    msg = _one_line_error(lambda: load_trace(f, format="splunk"))
    assert "unknown trace format 'splunk'" in msg and "azure-llm-2023" in msg


def test_undetectable_format_lists_columns(tmp_path):
    f = _write(tmp_path / "t.csv", "when,what\n1,2\n")
    msg = _one_line_error(lambda: load_trace(f))
    assert "columns found: when, what" in msg and str(f) in msg


def test_missing_columns_lists_columns_found(tmp_path):
    f = _write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,1\n")
    msg = _one_line_error(lambda: load_trace(f, format="azure-llm-2023"))
    assert "'GeneratedTokens'" in msg and "columns found: TIMESTAMP, ContextTokens" in msg
    msg = _one_line_error(lambda: load_trace(f, columns={"timestamp": "time"}))
    assert "missing column 'time'" in msg and "columns found: TIMESTAMP, ContextTokens" in msg


def test_unparseable_dates_name_row(tmp_path):
    f = _write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
               "2023-11-16 18:15:46,1,1\n2023-11-16 18:15:47,1,1\nyesterday at noon,1,1\n")
    msg = _one_line_error(lambda: load_trace(f))
    assert "row 3" in msg and "'yesterday at noon'" in msg


def test_negative_counts_name_row(tmp_path):
    f = _write(tmp_path / "t.csv", "minute,count\n0,5\n1,-2\n")
    msg = _one_line_error(lambda: load_trace(f))
    assert "row 2" in msg and "negative count" in msg
    g = _write(tmp_path / "g.csv", "window_start_s,window_s,count\n0,600,2.5\n")
    assert "not a whole number" in _one_line_error(lambda: load_trace(g))


def test_zero_byte_file(tmp_path):
    f = tmp_path / "empty.csv"
    f.write_bytes(b"")
    assert "empty (0 bytes)" in _one_line_error(lambda: load_trace(f))


def test_binary_file(tmp_path):
    f = tmp_path / "trace.csv"
    f.write_bytes(bytes(range(256)) * 40)
    assert "binary" in _one_line_error(lambda: load_trace(f))
    g = tmp_path / "fake.parquet"
    g.write_text("timestamp\n1\n")
    assert "not a Parquet file" in _one_line_error(lambda: load_trace(g))


def test_other_bad_values(tmp_path):
    f = _write(tmp_path / "t.csv", "timestamp,service_time\n0,0.1\n1,-0.5\n")
    assert "row 2" in _one_line_error(lambda: load_trace(f))
    g = _write(tmp_path / "g.csv", "timestamp\n0\n\n1\nabc\n")
    assert "row 3" in _one_line_error(lambda: load_trace(g, time_unit="s"))
    h = _write(tmp_path / "h.csv", "timestamp,input_tokens\n0,5\n1,-1\n")
    assert "negative input tokens" in _one_line_error(lambda: load_trace(h))
    assert "no such file" in _one_line_error(lambda: load_trace(tmp_path / "nope.csv"))
    assert "unknown time unit" in _one_line_error(lambda: load_trace(h, time_unit="fortnights"))
