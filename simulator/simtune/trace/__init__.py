"""Request traces: the in-memory model, readers, generators and transforms.

- `load_trace(path, ...)`: any supported file as per-request arrivals (count traces
  expanded, seeded); `read_trace` gives a `CountTrace` unexpanded; `save_trace` writes
  the canonical Parquet. Formats: `simtune.trace.readers`.
- Generators (`simtune.trace.generators`), transforms (`simtune.trace.transforms`),
  per-request attributes (`simtune.trace.attach`), statistics (`simtune.trace.inspect`)
  and the PNG (`simtune.trace.plot`).
"""

from simtune.trace.model import Trace
from simtune.trace.counts import CountTrace, expand_counts
from simtune.trace.io import load_trace, save_trace
from simtune.trace.readers import FORMATS, read_trace

__all__ = ["Trace", "CountTrace", "FORMATS", "expand_counts", "load_trace", "read_trace", "save_trace"]
