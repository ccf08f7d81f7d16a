"""The in-memory trace: columns of numpy arrays, never per-row Python objects.

Why arrays: a day of production traffic is millions of rows and the simulator's
request path is a compiled loop over these arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd


@dataclass
class Trace:
    """Arrival times (seconds from the trace's origin, sorted) plus per-request columns.

    `columns` holds every other per-request column carried from the input, e.g.
    `service_time` (seconds a request occupies a replica slot), `input_tokens`,
    `output_tokens`, `model_id`. All arrays have the same length as `timestamps`.
    `origin` is the absolute time of t=0 when the input had absolute datetimes.
    `meta` records provenance (source format, how counts were expanded, generator and
    seed, `span_s` when the observed period is longer than the last arrival); it is
    written into the canonical Parquet file so a converted trace still says where it
    came from.
    """

    timestamps: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "trace"
    origin: Optional[pd.Timestamp] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timestamps = np.ascontiguousarray(self.timestamps, dtype=np.float64)
        for key, col in self.columns.items():
            if len(col) != len(self.timestamps):
                raise ValueError(f"column {key!r} has {len(col)} rows, expected {len(self.timestamps)}")

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def service_time(self) -> Optional[np.ndarray]:
        col = self.columns.get("service_time")
        return None if col is None else np.ascontiguousarray(col, dtype=np.float64)

    @property
    def duration(self) -> float:
        if len(self) == 0:
            return 0.0
        return float(self.timestamps[-1] - self.timestamps[0])

    @property
    def span(self) -> float:
        """Length of the observed period from t=0: `meta['span_s']` if known, else the
        last arrival. Why: a generated or count-expanded trace covers [0, span) even
        though its last request may come earlier, and rates must divide by the period."""
        if "span_s" in self.meta:
            return float(self.meta["span_s"])
        return float(self.timestamps[-1]) if len(self) else 0.0

    def with_column(self, name: str, values: np.ndarray) -> "Trace":
        cols = dict(self.columns)
        cols[name] = np.asarray(values)
        return Trace(self.timestamps, cols, self.name, self.origin, dict(self.meta))

    def take(self, index: np.ndarray) -> "Trace":
        """Rows selected by an index or boolean mask, keeping every column."""
        return Trace(
            self.timestamps[index],
            {k: v[index] for k, v in self.columns.items()},
            self.name,
            self.origin,
            dict(self.meta),
        )

    def to_pandas(self) -> pd.DataFrame:
        data = {"timestamp": self.timestamps}
        data.update(self.columns)
        return pd.DataFrame(data)
