"""The node model: manifests, replica demands, the Cluster protocol calls, costs, and
replicas that wait for nodes inside a real simulation."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from simtune.cluster import NodeCluster, load_cluster, replica_demand, simulate_on_cluster
from simtune.cluster.manifest import ClusterSpec, NodeType, ReplicaDemand, check_fits
from simtune.cost import PriceList, result_cost
from simtune.errors import InputError
from simtune.params import SimParams
from simtune.serve_config import deployment_from_mapping, load_deployment
from simtune.trace import Trace

REPO = Path(__file__).resolve().parents[1]
GPU_MANIFEST = REPO / "traces" / "rayservice_gpu.yaml"
PRICES = REPO / "traces" / "prices.yaml"
GiB = 2**30


def manifest_doc() -> dict:
    return yaml.safe_load(GPU_MANIFEST.read_text())


def worker(name="w", cpu="4", gpu=None, mem="16Gi", lo=0, hi=4, replicas=None, **extra) -> dict:
    limits = {"cpu": cpu, "memory": mem}
    if gpu is not None:
        limits["nvidia.com/gpu"] = gpu
    g = {"groupName": name, "minReplicas": lo, "maxReplicas": hi, "rayStartParams": {},
         "template": {"spec": {"containers": [{"name": "ray-worker", "resources": {"limits": limits}}]}}}
    if replicas is not None:
        g["replicas"] = replicas
    g.update(extra)
    return g


def raycluster(*workers, head_cpus="0", idle=None, autoscaling=True) -> dict:
    spec = {"enableInTreeAutoscaling": autoscaling,
            "headGroupSpec": {"rayStartParams": {"num-cpus": head_cpus},
                              "template": {"spec": {"containers": [{"name": "head", "resources": {
                                  "limits": {"cpu": "2", "memory": "8Gi"}}}]}}},
            "workerGroupSpecs": list(workers)}
    if idle is not None:
        spec["autoscalerOptions"] = {"idleTimeoutSeconds": idle}
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "rc"}, "spec": spec}


def gpu_spec(**opts):
    base = {"name": "m", "ray_actor_options": {"num_gpus": 1}, "max_ongoing_requests": 4,
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
                                   "upscale_delay_s": 1, "downscale_delay_s": 10, "metrics_interval_s": 1,
                                   "look_back_period_s": 2}}
    base.update(opts)
    return deployment_from_mapping(base)


# -- manifests ------------------------------------------------------------------------------


def test_rayservice_manifest_node_groups():
    cs = load_cluster(GPU_MANIFEST)
    head, gpu = cs.node_types["headgroup"], cs.node_types["gpu-workers"]
    assert head.is_head and head.resources["CPU"] == 0  # num-cpus "0" in rayStartParams wins over limits
    assert gpu.resources == {"CPU": 4.0, "GPU": 1.0, "memory": 16.0 * GiB}
    assert (gpu.min_nodes, gpu.max_nodes, gpu.initial_nodes) == (1, 8, 1)
    assert gpu.idle_timeout_s == 60 and gpu.instance_type == "g5.xlarge" and cs.autoscaling


def test_raycluster_defaults_and_overrides():
    doc = raycluster(worker("cpu", cpu="8", lo=1, hi=3), worker("gpu", gpu=2, hi=2, idleTimeoutSeconds=300,
                                                                 rayStartParams={"num-cpus": "6"}, numOfHosts=2))
    cs = load_cluster(doc)
    assert cs.idle_timeout_s == 60  # autoscalerOptions.idleTimeoutSeconds absent: Ray's default 1 minute
    assert cs.node_types["cpu"].idle_timeout_s == 60
    g = cs.node_types["gpu"]
    assert g.idle_timeout_s == 300 and g.resources["CPU"] == 6 and g.resources["GPU"] == 2
    assert g.max_nodes == 4  # maxReplicas x numOfHosts
    cs2 = load_cluster(raycluster(worker("cpu", lo=1, hi=5, replicas=2), idle=30, autoscaling=False))
    w = cs2.node_types["cpu"]
    assert (w.min_nodes, w.max_nodes, w.initial_nodes) == (2, 2, 2)  # no autoscaler: stays at `replicas`
    assert cs2.idle_timeout_s == 30


def test_manifest_errors_are_one_line_and_named():
    bad = raycluster(worker("w", cpu=None, mem="1Gi"))
    del bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
    with pytest.raises(InputError, match=r"workerGroupSpecs\[0\] \(w\).*CPU"):
        load_cluster(bad)
    with pytest.raises(InputError, match="maxReplicas 1 < minReplicas 2"):
        load_cluster(raycluster(worker("w", lo=2, hi=1)))
    with pytest.raises(InputError, match="not a RayService or RayCluster"):
        load_cluster({"kind": "Deployment", "spec": {}})
    svc = manifest_doc()
    del svc["spec"]["rayClusterConfig"]
    with pytest.raises(InputError, match="no spec.rayClusterConfig"):
        load_cluster(svc)


def test_replica_demand_follows_ray():
    # Serve's default num_cpus is 1 (ReplicaConfig._validate_ray_actor_options).
    assert replica_demand(deployment_from_mapping({"name": "a"})).resources == {"CPU": 1.0}
    d = replica_demand(deployment_from_mapping({"name": "a", "max_replicas_per_node": 2, "ray_actor_options": {
        "num_cpus": 0.5, "num_gpus": 1, "memory": 4 * GiB, "accelerator_type": "A10G", "resources": {"disk": 1}}}))
    assert d.resources == {"CPU": 0.5, "GPU": 1.0, "memory": 4.0 * GiB, "accelerator_type:A10G": 0.001, "disk": 1.0}
    assert d.max_replicas_per_node == 2
    assert replica_demand(load_deployment(GPU_MANIFEST)).resources == {"CPU": 2.0, "GPU": 1.0}


def test_no_group_fits_names_every_shortfall():
    cs = load_cluster(raycluster(worker("cpu-small", cpu="4", mem="8Gi", hi=10)))
    demand = replica_demand(gpu_spec())
    with pytest.raises(InputError) as e:
        check_fits(cs, demand, "app/m")
    msg = str(e.value)
    assert "no node group can fit one replica of app/m" in msg and "GPU 1" in msg
    assert "headgroup: CPU 0 < 1, GPU 0 < 1" in msg and "cpu-small: GPU 0 < 1" in msg
    # accelerator type: only nodes labelled with it
    spec = gpu_spec(ray_actor_options={"num_gpus": 1, "accelerator_type": "A100"})
    gpu_l4 = load_cluster(raycluster(worker("l4", gpu=1, labels={"ray.io/accelerator-type": "L4"})))
    with pytest.raises(InputError, match="not a A100 node"):
        check_fits(gpu_l4, replica_demand(spec))
    a100 = load_cluster(raycluster(worker("a100", gpu=1, template={"spec": {
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
        "containers": [{"name": "w", "resources": {"limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1}}}]}})))
    assert [nt.name for nt in check_fits(a100, replica_demand(spec))] == ["a100"]


def test_simulation_refuses_before_running(monkeypatch):
    import simtune.simulate as sim_mod

    called = []
    monkeypatch.setattr(sim_mod, "simulate", lambda *a, **k: called.append(1))
    cs = load_cluster(raycluster(worker("cpu", cpu="4")))
    tr = Trace(np.arange(10.0), {"service_time": np.full(10, 0.1)})
    with pytest.raises(InputError, match="no node group can fit"):
        simulate_on_cluster(tr, gpu_spec(), cs)
    assert not called


# -- the protocol, call by call -----------------------------------------------------------------


def two_gpu_cluster(hi=2, lo=0, idle=60.0, per_node_gpus=1) -> ClusterSpec:
    head = NodeType("headgroup", {"CPU": 0.0}, 1, 1, 1, is_head=True, idle_timeout_s=math.inf)
    w = NodeType("gpu", {"CPU": 8.0, "GPU": float(per_node_gpus)}, lo, hi, lo, idle_timeout_s=idle)
    return ClusterSpec("c", {"headgroup": head, "gpu": w})


GPU1 = ReplicaDemand({"CPU": 1.0, "GPU": 1.0})


def test_launch_wait_max_and_release():
    c = NodeCluster(two_gpu_cluster(hi=2), GPU1, provisioning=90, autoscaler_interval_s=0, start_t=-10)
    assert c.request(0.0, 0) == 90.0  # no node: one is launched, ready after provisioning
    assert c.request(5.0, 1) == 95.0  # the second group slot
    assert c.request(6.0, 2) is None  # group at maxReplicas: waits for a release
    assert c.release(200.0, 0) == [(2, 200.0)]  # the freed GPU goes to the waiting replica
    st = c.stats(0, 300)
    assert st["nodes"]["launched"] == 2 and st["gpus"]["peak"] == 2
    assert st["replica_node_wait_s"]["waited"] == 3


def test_autoscaler_update_grid_and_seeded_provisioning():
    a = NodeCluster(two_gpu_cluster(hi=4), GPU1, provisioning="lognormal:mean=90,p99=200", autoscaler_interval_s=5,
                    start_t=-10, seed=3)
    b = NodeCluster(two_gpu_cluster(hi=4), GPU1, provisioning="lognormal:mean=90,p99=200", autoscaler_interval_s=5,
                    start_t=-10, seed=3)
    ga = [a.request(t, i) for i, t in enumerate((1.0, 2.0, 40.0))]
    gb = [b.request(t, i) for i, t in enumerate((1.0, 2.0, 40.0))]
    assert ga == gb and len(set(ga)) == 3  # seeded, one draw per launch
    rec = a.node_records()
    rec = rec[~rec.initial]
    phase = a._phase
    for lt in rec.launch_t:  # launches happen on the autoscaler's 5 s update grid
        assert abs(((lt - phase) / 5.0) - round((lt - phase) / 5.0)) < 1e-9
    assert (rec.launch_t.to_numpy() >= np.array([1.0, 2.0, 40.0])).all()


def test_bigger_nodes_take_several_replicas_and_pending_nodes_are_shared():
    c = NodeCluster(two_gpu_cluster(hi=2, per_node_gpus=4), GPU1, provisioning=60, autoscaler_interval_s=0,
                    start_t=-1)
    grants = [c.request(float(i), i) for i in range(5)]
    assert grants[:4] == [60.0] * 4  # replicas 1-3 join the node already being provisioned
    assert grants[4] == 64.0  # a second node, launched at t=4
    assert c.stats(0, 100)["nodes"]["launched"] == 2


def test_max_replicas_per_node():
    d = ReplicaDemand({"CPU": 1.0, "GPU": 1.0}, max_replicas_per_node=1)
    c = NodeCluster(two_gpu_cluster(hi=3, per_node_gpus=4), d, provisioning=10, autoscaler_interval_s=0, start_t=-1)
    assert [c.request(0.0, i) for i in range(3)] == [10.0] * 3
    assert c.stats(0, 20)["nodes"]["launched"] == 3


def test_idle_nodes_removed_after_timeout_not_below_min():
    def scenario(reuse: bool) -> list[float]:
        c = NodeCluster(two_gpu_cluster(hi=3, lo=1, idle=60), GPU1, provisioning=30, autoscaler_interval_s=0,
                        start_t=0)
        assert c.request(0.0, 0) == 0.0  # warm start: on the minReplicas node (node 1; node 0 is the head)
        assert c.request(10.0, 1) == 40.0  # node 2
        assert c.request(10.0, 2) == 40.0  # node 3
        c.release(100.0, 1)
        c.release(130.0, 2)
        c.release(150.0, 0)
        if reuse:
            assert c.request(170.0, 3) == 170.0  # an idle node not yet removed: no wait
        c.finish(400.0)
        return c.node_records().sort_values("node").removed_t.tolist()

    # node 2 idle from 100 -> removed at 160; node 3 idle from 130 -> 190; node 1 idle from 150
    # would go at 210 but it is the group's last node (minReplicas 1): it stays.
    assert scenario(False) == [math.inf, math.inf, 160.0, 190.0]
    assert scenario(True) == [math.inf, math.inf, 160.0, 190.0]


def test_idle_removal_waits_for_autoscaler_update_and_cancelled_launch_is_free():
    c = NodeCluster(two_gpu_cluster(hi=2), GPU1, provisioning=50, autoscaler_interval_s=5, start_t=0)
    c._phase = 0.0
    g = c.request(1.0, 0)  # launch at the t=5 update
    assert g == 55.0
    c.release(3.0, 0)  # cancelled before the autoscaler acted: no node at all
    c.finish(100.0)
    assert c.node_seconds(0, 100)["gpu"] == 0.0
    assert c.stats(0, 100)["nodes"]["cancelled"] == 1
    c2 = NodeCluster(two_gpu_cluster(hi=2, idle=20), GPU1, provisioning=50, autoscaler_interval_s=5, start_t=0)
    c2._phase = 0.0
    c2.request(1.0, 0)
    c2.release(10.0, 0)  # cancelled after launch: the node comes up anyway, idles, then goes
    c2.finish(500.0)
    rec = c2.node_records()
    n = rec[rec.group == "gpu"].iloc[0]
    assert n.ready_t == 55.0 and n.removed_t == 75.0  # 55 + 20 s idle, on the 5 s update grid
    assert c2.node_seconds(0, 500)["gpu"] == pytest.approx(70.0)  # billed from launch (5) to removal (75)


def test_replica_waiting_for_provisioning_moves_to_freed_node():
    c = NodeCluster(two_gpu_cluster(hi=2), GPU1, provisioning=90, autoscaler_interval_s=0, start_t=-10)
    assert c.request(0.0, 0) == 90.0  # node A
    assert c.request(95.0, 1) == 185.0  # A is taken: node B
    # A's GPU frees up before B is ready: Ray schedules the pending actor there.
    assert c.release(100.0, 0) == [(1, 100.0)]
    w = c.replica_waits().set_index("replica")
    assert w.loc[1, "granted_t"] == 100.0 and w.loc[1, "how"] == "released"
    c.finish(1000.0)
    b = c.node_records().iloc[-1]
    assert b.ready_t == 185.0 and b.removed_t == 245.0  # B came up unused and idled out


def test_spread_and_pack_placement():
    cs = two_gpu_cluster(hi=2, lo=2, per_node_gpus=2)
    spread = NodeCluster(cs, GPU1, scheduling="spread", start_t=0)
    pack = NodeCluster(copy.deepcopy(cs), GPU1, scheduling="pack", start_t=0)
    for c in (spread, pack):
        c.request(0.0, 0)
        c.request(0.0, 1)
    nodes_spread = {g.node for g in spread.grants.values()}
    nodes_pack = {g.node for g in pack.grants.values()}
    assert len(nodes_spread) == 2 and len(nodes_pack) == 1


def test_bad_delay_and_scheduling_options():
    with pytest.raises(InputError, match="--node-provisioning-s"):
        NodeCluster(two_gpu_cluster(), GPU1, provisioning="nonsense:3")
    with pytest.raises(InputError, match="must be >= 0"):
        NodeCluster(two_gpu_cluster(), GPU1, provisioning=-1)
    with pytest.raises(InputError, match="spread or pack"):
        NodeCluster(two_gpu_cluster(), GPU1, scheduling="random")


# -- prices ------------------------------------------------------------------------------------


def test_price_list_lookup_and_missing_node_type(tmp_path):
    cs = load_cluster(GPU_MANIFEST)
    prices = PriceList.load(PRICES)
    assert prices.check(cs) == {"headgroup": 0.192, "gpu-workers": 1.006}  # by instance type
    by_name = PriceList.from_dict({"node_types": {"gpu-workers": 2.0}, "instance_types": {"m5.xlarge": 0.1}})
    assert by_name.check(cs) == {"headgroup": 0.1, "gpu-workers": 2.0}  # group name wins
    p = tmp_path / "p.yaml"
    p.write_text("currency: USD\ninstance_types:\n  m5.xlarge: 0.192\n")
    with pytest.raises(InputError) as e:
        PriceList.load(p).check(cs)
    assert "no price for node type 'gpu-workers' (instance type g5.xlarge)" in str(e.value)
    assert str(p) in str(e.value)
    p.write_text("node_types:\n  a: cheap\n")
    with pytest.raises(InputError, match="node_types.a: price per hour must be a number"):
        PriceList.load(p)
    p.write_text("node_type:\n  a: 1\n")
    with pytest.raises(InputError, match="unknown key"):
        PriceList.load(p)


# -- inside a simulation ----------------------------------------------------------------------


def burst_trace(seed=0) -> Trace:
    """Quiet, a 3-minute burst far above one replica's capacity, quiet again."""
    rng = np.random.default_rng(seed)
    parts, t0 = [], 0.0
    for dur, rate in ((60, 1.0), (180, 12.0), (300, 1.0)):
        n = rng.poisson(rate * dur)
        parts.append(np.sort(t0 + rng.uniform(0, dur, n)))
        t0 += dur
    ts = np.concatenate(parts)
    return Trace(ts, {"service_time": np.full(len(ts), 0.5)}, name="burst")


def test_replicas_wait_for_nodes_in_a_simulation():
    tr = burst_trace()
    spec = gpu_spec()
    cs = load_cluster(raycluster(worker("gpu", gpu=1, lo=1, hi=4, replicas=1), idle=60))
    prices = PriceList.from_dict({"node_types": {"headgroup": 0.2, "gpu": 1.0}})
    slow = simulate_on_cluster(tr, spec, cs, SimParams(), seed=1, provisioning=90)
    fast = simulate_on_cluster(tr, spec, cs, SimParams(), seed=1, provisioning=0, autoscaler_interval_s=0)
    # Replicas created after the start wait >= 90 s for their node, then start up.
    later = [r for r in slow.replica_records if r.created_t > 0 and r.running_t is not None]
    assert later, "the burst should have scaled up"
    for r in later:
        assert r.alloc_t - r.created_t >= 90.0 - 1e-9
        assert r.running_t >= r.alloc_t + r.startup_s - 1e-9
    assert all(r.alloc_t == r.created_t for r in fast.replica_records if r.alloc_t is not None and r.created_t > 0)
    assert np.nanpercentile(slow.latency, 99) > 2 * np.nanpercentile(fast.latency, 99)
    # Never more GPU nodes than the group's maxReplicas; the replica never exceeds its node count.
    tl = slow.cluster.timeline(0, slow.horizon)
    assert tl["nodes[gpu]"].max() <= 4 and tl["gpus_ready"].max() >= slow.replicas.running.max()
    # Cost = node-seconds x hourly price, computed independently from the node records.
    rec = slow.cluster.node_records()
    manual = 0.0
    for n in rec.itertuples():
        a, b = max(n.launch_t, 0.0), min(n.removed_t, slow.horizon)
        manual += max(b - a, 0) / 3600 * (0.2 if n.group == "headgroup" else 1.0)
    cost = result_cost(slow, prices)
    assert cost["total"] == pytest.approx(manual)
    assert cost["per_day"] == pytest.approx(manual / slow.horizon * 86400)
    assert cost["per_1000_requests"] == pytest.approx(manual / len(tr) * 1000)
    gpu_s = sum(max(min(n.removed_t, slow.horizon) - max(n.launch_t, 0), 0) for n in rec.itertuples() if n.group == "gpu")
    assert cost["gpu_hours"] == pytest.approx(gpu_s / 3600)
    # Idle nodes were removed after the burst (down to minReplicas).
    assert tl["nodes[gpu]"].iloc[-1] == 1


def test_node_simulation_is_deterministic():
    tr = burst_trace(2)
    cs = load_cluster(raycluster(worker("gpu", gpu=1, lo=0, hi=3), idle=30))
    spec = gpu_spec(autoscaling_config={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2,
                                        "upscale_delay_s": 1, "metrics_interval_s": 1, "look_back_period_s": 2})
    a = simulate_on_cluster(tr, spec, cs, SimParams(), seed=5, provisioning="lognormal:mean=60,p99=150")
    b = simulate_on_cluster(tr, spec, cs, SimParams(), seed=5, provisioning="lognormal:mean=60,p99=150")
    np.testing.assert_array_equal(a.latency, b.latency)
    assert a.cluster.node_records().equals(b.cluster.node_records())
    # The initial replica runs from the start on a node that existed (warm start), even with minReplicas 0.
    assert a.cluster.replica_waits().iloc[0].how == "warm"


def test_scale_from_zero_waits_for_a_node():
    tr = Trace(np.array([100.0, 100.5, 101.0]), {"service_time": np.full(3, 0.1)})
    spec = gpu_spec(autoscaling_config={"min_replicas": 0, "max_replicas": 2, "initial_replicas": 0,
                                        "metrics_interval_s": 1, "look_back_period_s": 2})
    cs = load_cluster(raycluster(worker("gpu", gpu=1, lo=0, hi=2), idle=30))
    res = simulate_on_cluster(tr, spec, cs, SimParams(), seed=0, provisioning=120, autoscaler_interval_s=0)
    w = res.cluster.replica_waits()
    assert len(w) >= 1 and not w.initial.any() and w.node_wait_s.iloc[0] == pytest.approx(120.0)
    assert np.nanmin(res.latency) > 120.0  # the first requests waited for the node


def test_without_the_autoscaler_nodes_stay_fixed_and_extra_replicas_wait():
    tr = burst_trace(1)
    cs = load_cluster(raycluster(worker("gpu", gpu=1, lo=1, hi=6, replicas=2), autoscaling=False))
    res = simulate_on_cluster(tr, gpu_spec(), cs, SimParams(), seed=0, provisioning=90)
    assert res.cluster.stats(0, res.horizon)["nodes"]["launched"] == 0
    assert res.replicas.running.max() == 2  # two GPU nodes, whatever the target
    assert res.replicas.target.max() > 2
    w = res.cluster.replica_waits()
    assert (w.how == "cancelled").any() or w.granted_t.isna().any()  # some replicas never got a GPU
