"""Node types from a KubeRay RayService or RayCluster manifest.

What a node of each group offers is what Ray's own KubeRay autoscaler derives from
the group spec (ray/autoscaler/_private/kuberay/autoscaling_config.py:
`_get_ray_resources_from_group_spec`): the group's top-level `resources`, else
`rayStartParams` (`num-cpus`, `num-gpus`, `memory`, `resources`), else the Ray
container's `resources.limits` / `requests` (`cpu`, `memory`, any `*gpu` key). We call
that function, so the numbers match the autoscaler's bin packing exactly. (A running
Ray node reports less `memory` than its pod limit, the object store's share; a replica
asking for nearly a whole node's memory may fit here and stay pending in reality.)

Also read: `minReplicas`/`maxReplicas`/`replicas` (x `numOfHosts`), the group's
`idleTimeoutSeconds` (else `spec.autoscalerOptions.idleTimeoutSeconds`, default 60 s,
as `_derive_autoscaling_config_from_ray_cr`), `enableInTreeAutoscaling` (without it
the groups stay at `replicas`), the instance type from the pod's `nodeSelector`
(`node.kubernetes.io/instance-type`, used to look up prices) and an accelerator type
(`ray.io/accelerator-type` group label, an `accelerator_type:X` custom resource, or a
GKE `cloud.google.com/gke-accelerator` node selector) so that a replica's
`accelerator_type` option can be matched.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from simtune.errors import InputError

HEAD_GROUP = "headgroup"  # the autoscaler's name for the head node type
DEFAULT_IDLE_TIMEOUT_S = 60.0
INSTANCE_TYPE_KEYS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
ACCELERATOR_LABEL = "ray.io/accelerator-type"
ACCEL_PREFIX = "accelerator_type:"
# GKE accelerator node-selector values -> Ray accelerator type names (ray/util/accelerators).
GKE_ACCELERATORS = {
    "nvidia-tesla-t4": "T4", "nvidia-l4": "L4", "nvidia-tesla-v100": "V100", "nvidia-tesla-p100": "P100",
    "nvidia-tesla-p4": "P4", "nvidia-tesla-k80": "K80", "nvidia-tesla-a100": "A100", "nvidia-a100-80gb": "A100-80G",
    "nvidia-h100-80gb": "H100", "nvidia-h100-mega-80gb": "H100", "nvidia-h200-141gb": "H200",
}


@dataclass
class NodeType:
    """One head or worker group: what each of its nodes offers and how many there may be."""

    name: str
    resources: dict[str, float]
    min_nodes: int
    max_nodes: int
    initial_nodes: int
    is_head: bool = False
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    instance_type: Optional[str] = None
    accelerator_type: Optional[str] = None

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0) or 0)

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0) or 0)

    def describe(self) -> str:
        return f"{self.name} ({format_resources(self.resources)})"


@dataclass
class ClusterSpec:
    """The node types of one Ray cluster and how its autoscaler behaves."""

    name: str
    node_types: dict[str, NodeType]
    autoscaling: bool = True
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    upscaling_mode: str = "Default"
    source: str = "<memory>"

    @property
    def head(self) -> NodeType:
        return next(nt for nt in self.node_types.values() if nt.is_head)

    @property
    def workers(self) -> list[NodeType]:
        return [nt for nt in self.node_types.values() if not nt.is_head]


def format_resources(res: dict[str, float]) -> str:
    parts = []
    for k in sorted(res, key=lambda k: ({"CPU": 0, "GPU": 1, "memory": 2}.get(k, 3), k)):
        v = res[k]
        if k == "memory":
            parts.append(f"memory {format_bytes(v)}")
        elif k.startswith(ACCEL_PREFIX):
            parts.append(k)
        else:
            parts.append(f"{k} {v:g}")
    return ", ".join(parts) if parts else "no resources"


def format_bytes(v: float) -> str:
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if v >= size:
            return f"{v / size:.4g}{unit}"
    return f"{v:g}B"


def _ray_group_resources(group: dict, is_head: bool, where: str) -> dict[str, float]:
    from ray.autoscaler._private.kuberay import autoscaling_config as kac

    # Ray logs an error for TPU pods without GKE selectors; keep our output clean.
    logger = logging.getLogger(kac.__name__)
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        res = kac._get_ray_resources_from_group_spec(group, is_head)
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{where}: cannot read the Ray container's resources ({type(exc).__name__}: {exc}); "
                         "expected template.spec.containers[0].resources") from None
    except Exception as exc:  # ValueError (no CPU), json errors in rayStartParams.resources
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{where}: {msg}") from None
    finally:
        logger.setLevel(old)
    return {k: float(v) for k, v in res.items() if v is not None}


def _accelerator(group: dict, resources: dict[str, float]) -> Optional[str]:
    for k in resources:
        if k.startswith(ACCEL_PREFIX):
            return k[len(ACCEL_PREFIX):]
    labels = group.get("labels") or {}
    if isinstance(labels, dict) and labels.get(ACCELERATOR_LABEL):
        return str(labels[ACCELERATOR_LABEL])
    selector = ((group.get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
    gke = selector.get("cloud.google.com/gke-accelerator")
    if gke:
        return GKE_ACCELERATORS.get(str(gke), str(gke))
    return None


def _instance_type(group: dict) -> Optional[str]:
    selector = ((group.get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
    for key in INSTANCE_TYPE_KEYS:
        if selector.get(key):
            return str(selector[key])
    return None


def _int_field(group: dict, key: str, where: str, default: Optional[int] = None) -> int:
    value = group.get(key, default)
    if value is None:
        raise InputError(f"{where}: missing {key}")
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {key} must be an integer, got {value!r}") from None
    if out < 0:
        raise InputError(f"{where}: {key} must be >= 0, got {out}")
    return out


def _timeout(value: Any, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: idleTimeoutSeconds must be a number, got {value!r}") from None
    if not math.isfinite(out) or out < 0:
        raise InputError(f"{where}: idleTimeoutSeconds must be >= 0, got {value!r}")
    return out


def cluster_from_raycluster_spec(spec: dict, *, name: str = "raycluster", source: str = "<memory>") -> ClusterSpec:
    """Node types from a RayCluster `spec` (or a RayService's `spec.rayClusterConfig`)."""
    if not isinstance(spec, dict):
        raise InputError(f"{source}: the RayCluster spec must be a mapping")
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        raise InputError(f"{source}: the RayCluster spec has no headGroupSpec")
    options = spec.get("autoscalerOptions") or {}
    idle = _timeout(options["idleTimeoutSeconds"], f"{source}: autoscalerOptions") \
        if "idleTimeoutSeconds" in options else DEFAULT_IDLE_TIMEOUT_S
    autoscaling = bool(spec.get("enableInTreeAutoscaling", False))
    types: dict[str, NodeType] = {}
    head_res = _ray_group_resources(head, True, f"{source}: headGroupSpec")
    types[HEAD_GROUP] = NodeType(HEAD_GROUP, head_res, 1, 1, 1, is_head=True, idle_timeout_s=math.inf,
                                 instance_type=_instance_type(head), accelerator_type=_accelerator(head, head_res))
    groups = spec.get("workerGroupSpecs") or []
    if not isinstance(groups, list):
        raise InputError(f"{source}: workerGroupSpecs must be a list")
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise InputError(f"{source}: workerGroupSpecs[{i}] must be a mapping")
        gname = group.get("groupName")
        where = f"{source}: workerGroupSpecs[{i}]" + (f" ({gname})" if gname else "")
        if not gname:
            raise InputError(f"{where}: missing groupName")
        if gname in types:
            raise InputError(f"{where}: duplicate group name {gname!r}")
        hosts = _int_field(group, "numOfHosts", where, 1) or 1
        if group.get("suspend"):
            lo = hi = init = 0
        else:
            lo = _int_field(group, "minReplicas", where, 0)
            hi = _int_field(group, "maxReplicas", where, 2**31 - 1 if not autoscaling else None)
            if hi < lo:
                raise InputError(f"{where}: maxReplicas {hi} < minReplicas {lo}")
            init = _int_field(group, "replicas", where, lo)
            init = min(max(init, lo), hi)
        if not autoscaling:
            lo = hi = init  # without the autoscaler the operator keeps `replicas` pods
        res = _ray_group_resources(group, False, where)
        g_idle = _timeout(group["idleTimeoutSeconds"], where) if group.get("idleTimeoutSeconds") is not None else idle
        types[gname] = NodeType(gname, res, lo * hosts, hi * hosts, init * hosts, idle_timeout_s=g_idle,
                                instance_type=_instance_type(group), accelerator_type=_accelerator(group, res))
    for nt in types.values():
        if nt.accelerator_type and f"{ACCEL_PREFIX}{nt.accelerator_type}" not in nt.resources:
            nt.resources[f"{ACCEL_PREFIX}{nt.accelerator_type}"] = 1.0
    mode = str(options.get("upscalingMode") or "Default")
    return ClusterSpec(name=name, node_types=types, autoscaling=autoscaling, idle_timeout_s=idle,
                       upscaling_mode=mode, source=source)


def load_cluster(path_or_doc: Union[str, Path, dict], source: Optional[str] = None) -> ClusterSpec:
    """A ClusterSpec from a RayService (`spec.rayClusterConfig`) or RayCluster manifest."""
    if isinstance(path_or_doc, dict):
        doc, src = path_or_doc, source or "<manifest>"
    else:
        from simtune.serve_config import load_yaml_file

        doc, src = load_yaml_file(path_or_doc), source or str(path_or_doc)
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    name = (doc.get("metadata") or {}).get("name") or "raycluster"
    if kind == "RayService" or "rayClusterConfig" in spec:
        rc = spec.get("rayClusterConfig")
        if rc is None:
            raise InputError(f"{src}: RayService manifest has no spec.rayClusterConfig (no node groups to model)")
        return cluster_from_raycluster_spec(rc, name=name, source=src)
    if kind == "RayCluster" or "headGroupSpec" in spec:
        return cluster_from_raycluster_spec(spec, name=name, source=src)
    raise InputError(f"{src}: not a RayService or RayCluster manifest (kind {kind!r}); node groups come from "
                     "spec.rayClusterConfig (RayService) or spec (RayCluster)")


@dataclass
class ReplicaDemand:
    """What one Serve replica asks Ray for (serve/_private/config.py:ReplicaConfig)."""

    resources: dict[str, float]
    max_replicas_per_node: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0) or 0)

    def describe(self) -> str:
        extra = f", at most {self.max_replicas_per_node} per node" if self.max_replicas_per_node else ""
        return format_resources(self.resources) + extra


def replica_demand(spec: Any) -> ReplicaDemand:
    """Resources of one replica of a DeploymentSpec, as Ray computes them.

    Serve sets `num_cpus` to 1 when `ray_actor_options` leaves it out
    (ReplicaConfig._validate_ray_actor_options) and Ray turns the options into a
    resource dict with `resources_from_ray_options` (accelerator_type -> a 0.001
    `accelerator_type:X` resource that only nodes of that type have).
    """
    from ray._common.utils import resources_from_ray_options

    opts = dict(spec.ray_actor_options or {})
    if opts.get("num_cpus") is None:
        opts["num_cpus"] = 1
    where = f"{spec.source}: deployment {spec.app_name}/{spec.name}: ray_actor_options"
    try:
        res = resources_from_ray_options(opts)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    out = {k: float(v) for k, v in res.items() if v}
    notes: list[str] = []
    dopts = spec.deployment_options or {}
    bundles = dopts.get("placement_group_bundles")
    if bundles:
        strategy = str(dopts.get("placement_group_strategy") or "PACK").upper()
        if strategy not in ("PACK", "STRICT_PACK"):
            raise InputError(f"{spec.source}: deployment {spec.app_name}/{spec.name}: placement_group_strategy "
                             f"{strategy} is not modelled (only PACK / STRICT_PACK bundles, placed on one node)")
        total: dict[str, float] = {}
        for b in bundles:
            for k, v in (b or {}).items():
                total[k] = total.get(k, 0.0) + float(v)
        out = total
        notes.append(f"placement group of {len(bundles)} bundle(s) placed on one node")
    mrpn = dopts.get("max_replicas_per_node")
    return ReplicaDemand(out, int(mrpn) if mrpn is not None else None, notes)


def fits(capacity: dict[str, float], used: dict[str, float], need: dict[str, float]) -> bool:
    for k, v in need.items():
        if v > 0 and capacity.get(k, 0.0) - used.get(k, 0.0) < v - 1e-9:
            return False
    return True


def shortfall(capacity: dict[str, float], need: dict[str, float]) -> list[str]:
    out = []
    for k, v in need.items():
        have = capacity.get(k, 0.0)
        if v > 0 and have < v - 1e-9:
            if k.startswith(ACCEL_PREFIX):
                out.append(f"not a {k[len(ACCEL_PREFIX):]} node")
            elif k == "memory":
                out.append(f"memory {format_bytes(have)} < {format_bytes(v)}")
            else:
                out.append(f"{k} {have:g} < {v:g}")
    return out


def check_fits(cluster: ClusterSpec, demand: ReplicaDemand, deployment: str = "the deployment") -> list[NodeType]:
    """Node types that can hold one replica; InputError naming every group's shortfall if none can."""
    ok = [nt for nt in cluster.node_types.values() if nt.max_nodes > 0 and fits(nt.resources, {}, demand.resources)]
    if ok:
        return ok
    why = "; ".join(
        f"{nt.name}: " + (", ".join(shortfall(nt.resources, demand.resources)) or "maxReplicas is 0")
        for nt in cluster.node_types.values())
    raise InputError(f"{cluster.source}: no node group can fit one replica of {deployment} "
                     f"(needs {format_resources(demand.resources)}): {why}")
