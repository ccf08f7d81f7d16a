"""Request traces: the in-memory model, readers, generators and transforms."""

from simtune.trace.model import Trace
from simtune.trace.io import load_trace, save_trace

__all__ = ["Trace", "load_trace", "save_trace"]
