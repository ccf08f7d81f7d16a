"""The service-model YAML file: examples load, bad input gives one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtune.errors import InputError
from simtune.service_models import (
    BatchModel, ConcurrencyCurveModel, FixedModel, LLMModel, StreamingModel, load_service_model,
    parse_service_model, save_service_model,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,cls", [("fixed", FixedModel), ("streaming", StreamingModel),
                                      ("concurrency", ConcurrencyCurveModel), ("batch", BatchModel), ("llm", LLMModel)])
def test_examples_load_and_round_trip(name, cls, tmp_path):
    model = load_service_model(REPO / "traces" / f"model_{name}.yaml")
    assert isinstance(model, cls)
    again = load_service_model(save_service_model(model, tmp_path / "m.yaml", header="round trip"))
    assert again.to_dict() == model.to_dict()


def test_throughput_table_converts_to_latency():
    m = parse_service_model({"kind": "concurrency", "concurrency": [1, 2, 4], "throughput_rps": [20, 20, 20]})
    assert m.latency_s == pytest.approx([0.05, 0.1, 0.2])


def test_wrapped_in_service_model_key():
    m = parse_service_model({"service_model": {"kind": "batch", "batch_latency": {"base_s": 0.1}}})
    assert isinstance(m, BatchModel) and m.max_batch_size == 10  # Ray's defaults


BAD = [
    ({"kind": "gpu"}, "kind 'gpu' is unknown"),
    ({}, "kind is missing"),
    ({"kind": "concurrency", "latency_s": [0.1]}, "concurrency is missing"),
    ({"kind": "concurrency", "concurrency": [1, 2]}, "latency_s is missing"),
    ({"kind": "concurrency", "concurrency": [1, 4, 2], "latency_s": [0.1, 0.2, 0.3]},
     "concurrency must be strictly increasing"),
    ({"kind": "concurrency", "concurrency": [1, 2, 4], "latency_s": [0.1, 0.3, 0.2]},
     "latency_s must not decrease with concurrency"),
    ({"kind": "concurrency", "concurrency": [1, 2], "latency_s": [0.1]}, "latency_s has 1 values"),
    ({"kind": "concurrency", "concurrency": [1, 2], "latency_s": [-0.1, 0.2]}, "latency_s must be > 0"),
    ({"kind": "concurrency", "concurrency": [0, 2], "latency_s": [0.1, 0.2]}, "concurrency must be >= 1"),
    ({"kind": "concurrency", "concurrency": [1, 2], "throughput_rps": [10, 30]}, "throughput_rps grows faster"),
    ({"kind": "concurrency", "concurrency": [1], "latency_s": [0.1], "latencies": [1]}, "unknown field 'latencies'"),
    ({"kind": "batch", "batch_wait_timeout_s": -0.01, "batch_latency": {"base_s": 0.1}},
     "batch_wait_timeout_s must be >= 0"),
    ({"kind": "batch", "max_batch_size": 0, "batch_latency": {"base_s": 0.1}}, "max_batch_size must be >= 1"),
    ({"kind": "batch", "max_batch_size": 2.5, "batch_latency": {"base_s": 0.1}}, "max_batch_size must be an integer"),
    ({"kind": "batch"}, "batch_latency is missing"),
    ({"kind": "batch", "batch_latency": {"per_item_s": 0.1}}, "batch_latency.base_s is missing"),
    ({"kind": "batch", "batch_latency": {"base_s": -1}}, "batch_latency.base_s must be >= 0"),
    ({"kind": "batch", "batch_latency": {"batch_size": [1, 8, 4], "latency_s": [0.1, 0.2, 0.3]}},
     "batch_latency.batch_size must be strictly increasing"),
    ({"kind": "batch", "batch_latency": {"batch_size": [1, 4, 8], "latency_s": [0.1, 0.3, 0.2]}},
     "batch_latency.latency_s must not decrease"),
    ({"kind": "batch", "batch_latency": {"batch_size": [1, 4]}}, "batch_latency.latency_s is missing"),
    ({"kind": "llm", "decode": {"base_s": 0.01}}, "prefill is missing"),
    ({"kind": "llm", "prefill": {"per_token_s": 1e-4}}, "decode is missing"),
    ({"kind": "llm", "prefill": {"per_token_s": -1e-4}, "decode": {"base_s": 0.01}}, "prefill.per_token_s must be >= 0"),
    ({"kind": "llm", "prefill": {"tokens": [100, 50], "latency_s": [0.01, 0.02]}, "decode": {"base_s": 0.01}},
     "prefill.tokens must be strictly increasing"),
    ({"kind": "llm", "prefill": {"per_token_s": 1e-4}, "decode": {"seqs": [1, 8], "step_s": [0.02, 0.01]}},
     "decode.step_s must not decrease"),
    ({"kind": "llm", "scheduler": "fcfs", "prefill": {"per_token_s": 1e-4}, "decode": {"base_s": 0.01}},
     "scheduler must be one of prefill_first, chunked"),
    ({"kind": "llm", "prefill": {"per_token_s": 1e-4}, "decode": {"base_s": 0.01}, "max_num_seqs": 0},
     "max_num_seqs must be >= 1"),
    ({"kind": "streaming"}, "first_chunk_s is missing"),
    ({"kind": "streaming", "first_chunk_s": -1}, "first_chunk_s must be >= 0"),
    ({"kind": "concurrency", "concurrency": [1], "latency_s": ["fast"]}, "latency_s must hold finite numbers"),
]


@pytest.mark.parametrize("data,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input_one_line_naming_the_field(data, msg, tmp_path):
    import yaml

    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as err:
        load_service_model(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(str(path) + ": ")
    assert msg in text, text


def test_file_problems(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_service_model(tmp_path / "nope.yaml")
    p = tmp_path / "m.yaml"
    p.write_text("kind: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_service_model(p)
    p.write_text("")
    with pytest.raises(InputError, match="empty file"):
        load_service_model(p)
    p.write_text("- kind: fixed\n")
    with pytest.raises(InputError, match="expected a mapping"):
        load_service_model(p)
