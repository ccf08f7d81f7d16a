"""What a simulated run costs: a price per node type per hour, summed over node-seconds.

The price list is a YAML file (no network calls, no cloud APIs):

    currency: USD
    node_types:            # by the manifest's group name (the head group is `headgroup`)
      headgroup: 0.384
      gpu-workers: 1.006
    instance_types:        # or by the pod's node.kubernetes.io/instance-type node selector
      g5.xlarge: 1.006

A group is priced by its name first, then by its instance type. A node type the
simulation may use that has no price is an error naming it (and its instance type).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


from simtune.errors import InputError


@dataclass
class PriceList:
    node_types: dict[str, float] = field(default_factory=dict)
    instance_types: dict[str, float] = field(default_factory=dict)
    currency: str = "USD"
    source: str = "<prices>"

    @classmethod
    def from_dict(cls, data: Any, source: str = "<prices>") -> "PriceList":
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a mapping with node_types: and/or instance_types:")
        unknown = set(data) - {"currency", "node_types", "instance_types"}
        if unknown:
            raise InputError(f"{source}: unknown key(s) {sorted(unknown)} (expected currency, node_types, instance_types)")
        out = cls(currency=str(data.get("currency") or "USD"), source=source)
        for key in ("node_types", "instance_types"):
            table = data.get(key) or {}
            if not isinstance(table, dict):
                raise InputError(f"{source}: {key} must be a mapping of name -> price per hour")
            for name, value in table.items():
                if isinstance(value, dict):
                    value = value.get("price_per_hour", value.get("hourly"))
                try:
                    price = float(value)
                except (TypeError, ValueError):
                    raise InputError(f"{source}: {key}.{name}: price per hour must be a number, got {value!r}") from None
                if not math.isfinite(price) or price < 0:
                    raise InputError(f"{source}: {key}.{name}: price per hour must be >= 0, got {value!r}")
                getattr(out, key)[str(name)] = price
        if not out.node_types and not out.instance_types:
            raise InputError(f"{source}: no prices (add node_types: or instance_types:)")
        return out

    @classmethod
    def load(cls, path: Union[str, Path]) -> "PriceList":
        from simtune.serve_config import load_yaml_file

        path = Path(path)
        return cls.from_dict(load_yaml_file(path), str(path))

    def price(self, group: str, instance_type: Optional[str] = None) -> Optional[float]:
        if group in self.node_types:
            return self.node_types[group]
        if instance_type and instance_type in self.instance_types:
            return self.instance_types[instance_type]
        return None

    def check(self, cluster_spec: Any, deployment: Optional[str] = None) -> dict[str, float]:
        """Price per hour of every node type that can exist; InputError naming the missing ones."""
        out, missing = {}, []
        for nt in cluster_spec.node_types.values():
            if nt.max_nodes <= 0 and not nt.is_head:
                continue
            p = self.price(nt.name, nt.instance_type)
            if p is None:
                missing.append(f"{nt.name!r}" + (f" (instance type {nt.instance_type})" if nt.instance_type else ""))
            else:
                out[nt.name] = p
        if missing:
            raise InputError(f"{self.source}: no price for node type {', '.join(missing)}; add it under node_types: "
                             "(group name) or instance_types:")
        return out


def node_cost(cluster: Any, prices: PriceList, start: float = 0.0, end: Optional[float] = None,
              requests: Optional[int] = None) -> dict[str, Any]:
    """Cost of a finished NodeCluster over [start, end]: total, per group, per day, per 1,000 requests."""
    hourly = prices.check(cluster.spec)
    end = cluster.end_t if end is None else end
    seconds = cluster.node_seconds(start, end)
    by_group = {name: seconds[name] / 3600.0 * hourly.get(name, 0.0) for name in seconds}
    total = sum(by_group.values())
    span = max(end - start, 1e-12)
    gpu_s = sum(seconds[name] * cluster.spec.node_types[name].gpus for name in seconds)
    return {
        "currency": prices.currency,
        "total": total,
        "per_group": by_group,
        "per_hour": total / span * 3600.0,
        "per_day": total / span * 86400.0,
        "per_1000_requests": total / requests * 1000.0 if requests else None,
        "gpu_hours": gpu_s / 3600.0,
        "node_hours": sum(seconds.values()) / 3600.0,
        "hourly_prices": hourly,
    }


def result_cost(result: Any, prices: PriceList) -> dict[str, Any]:
    """node_cost for a SimResult simulated on a NodeCluster, over [0, horizon]."""
    if result.cluster is None or not hasattr(result.cluster, "node_seconds"):
        raise InputError("this result was not simulated on a node model (give a RayService/RayCluster manifest)")
    return node_cost(result.cluster, prices, 0.0, result.horizon, int(result.status.shape[0]))
