"""The in-memory trace: columns of numpy arrays, never per-row Python objects.

Why arrays: a day of production traffic is millions of rows and the simulator's
request path is a compiled loop over these arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd


@dataclass
class Trace:
    """Arrival times (seconds from the trace's origin, sorted) plus per-request columns.

    `columns` holds every other per-request column carried from the input, e.g.
    `service_time` (seconds a request occupies a replica slot), `input_tokens`,
    `output_tokens`, `model_id`. All arrays have the same length as `timestamps`.
    `origin` is the absolute time of t=0 when the input had absolute datetimes.
    """

    timestamps: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "trace"
    origin: Optional[pd.Timestamp] = None

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

    def with_column(self, name: str, values: np.ndarray) -> "Trace":
        cols = dict(self.columns)
        cols[name] = np.asarray(values)
        return Trace(self.timestamps, cols, self.name, self.origin)

    def take(self, index: np.ndarray) -> "Trace":
        """Rows selected by an index or boolean mask, keeping every column."""
        return Trace(
            self.timestamps[index],
            {k: v[index] for k, v in self.columns.items()},
            self.name,
            self.origin,
        )

    def to_pandas(self) -> pd.DataFrame:
        data = {"timestamp": self.timestamps}
        data.update(self.columns)
        return pd.DataFrame(data)
