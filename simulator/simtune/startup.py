"""Replica startup time: from the controller creating a replica to it being RUNNING.

Ray cannot tell how long this takes (reference 5.1: resource wait, worker start, the
user constructor, reconfigure, the initial health check, controller polling); it
must be measured. Three models:
  * constant / a distribution (`--replica-startup-s 2.0`, `lognormal:mean=2,p99=6`);
  * `linear:base=1.6,per=0.8`: a replica that starts while k others are starting takes
    base + per * k seconds. On a 2-core machine real Serve 2.60 took ~1.6 s for one
    replica, ~3-4 s each for four started together and 8-16 s for nine
    (shared/reference/real-ray-on-this-machine.md): startup grows with the number of
    replicas starting at once, so a constant is not enough;
  * `empirical:FILE` or a list: resample measured startups (`simtune validate --calibrate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from simtune.errors import InputError
from simtune.service_time import ServiceTimeDist, parse_service_time


@dataclass
class StartupModel:
    kind: str = "linear"
    base_s: float = 1.6
    per_extra_s: float = 0.8
    dist: Optional[ServiceTimeDist] = None
    values: Sequence[float] = field(default_factory=tuple)
    extra_s: float = 0.0  # e.g. the user's constructor time, added to every startup

    @classmethod
    def constant(cls, seconds: float) -> "StartupModel":
        return cls(kind="constant", base_s=float(seconds), per_extra_s=0.0)

    @classmethod
    def linear(cls, base_s: float = 1.6, per_extra_s: float = 0.8) -> "StartupModel":
        return cls(kind="linear", base_s=float(base_s), per_extra_s=float(per_extra_s))

    @classmethod
    def empirical(cls, values: Sequence[float]) -> "StartupModel":
        vals = tuple(float(v) for v in values)
        if not vals or min(vals) < 0:
            raise InputError("empirical startup model needs at least one non-negative value")
        return cls(kind="empirical", values=vals)

    @classmethod
    def parse(cls, spec: str | float | None) -> "StartupModel":
        """`2.0`, `linear:base=1.6,per=0.8`, `lognormal:mean=2,p99=6`, `empirical:FILE[:COL]`."""
        if spec is None:
            return cls()
        if isinstance(spec, (int, float)):
            return cls.constant(float(spec))
        text = str(spec).strip()
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is not None:
            if value < 0:
                raise InputError(f"--replica-startup-s {text!r}: must be >= 0")
            return cls.constant(value)
        kind, _, body = text.partition(":")
        if kind == "linear":
            kv = {}
            for part in filter(None, body.split(",")):
                k, _, v = part.partition("=")
                try:
                    kv[k.strip()] = float(v)
                except ValueError:
                    raise InputError(f"--replica-startup-s {text!r}: {k.strip()} must be a number") from None
            unknown = set(kv) - {"base", "per"}
            if unknown:
                raise InputError(f"--replica-startup-s {text!r}: unknown field(s) {sorted(unknown)} (use base, per)")
            return cls.linear(kv.get("base", 1.6), kv.get("per", 0.8))
        dist = parse_service_time(text.replace("--service-time", ""))
        return cls(kind="dist", dist=dist)

    def draw(self, rng: np.random.Generator, n_new: int, n_already_starting: int) -> np.ndarray:
        """Startup durations for `n_new` replicas created in the same controller tick."""
        if self.kind == "constant":
            out = np.full(n_new, self.base_s)
        elif self.kind == "linear":
            concurrent = n_already_starting + n_new - 1
            out = np.full(n_new, self.base_s + self.per_extra_s * max(concurrent, 0))
        elif self.kind == "empirical":
            out = rng.choice(np.asarray(self.values), n_new, replace=True)
        else:
            assert self.dist is not None
            out = self.dist.sample(rng, n_new)
        return np.maximum(out, 0.0) + self.extra_s

    def describe(self) -> str:
        if self.kind == "constant":
            return f"constant {self.base_s + self.extra_s:g}s"
        if self.kind == "linear":
            return f"linear base={self.base_s:g}s per-concurrent={self.per_extra_s:g}s" + (
                f" +{self.extra_s:g}s" if self.extra_s else "")
        if self.kind == "empirical":
            return f"empirical ({len(self.values)} samples, mean {np.mean(self.values):.2f}s)"
        return f"distribution {self.dist.spec if self.dist else '?'}"
