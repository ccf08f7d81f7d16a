"""Replica service models: fixed, streaming, concurrency curve, @serve.batch, LLM.

    from simtune.service_models import load_service_model
    model = load_service_model("traces/model_concurrency.yaml")
    result = simulate(trace, spec, params, service_model=model)

The compiled side lives in `kernels` (imported by simtune.dataplane); this package's
top level must not import simtune.dataplane or simtune.simulate (import cycle).
"""

from simtune.service_models.models import (
    BatchModel, ConcurrencyCurveModel, FixedModel, KernelModel, LLMModel, ServiceModel, StreamingModel,
)
from simtune.service_models.spec import load_service_model, parse_service_model, save_service_model

__all__ = [
    "BatchModel", "ConcurrencyCurveModel", "FixedModel", "KernelModel", "LLMModel", "ServiceModel",
    "StreamingModel", "load_service_model", "parse_service_model", "save_service_model",
]
