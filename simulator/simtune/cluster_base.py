"""Where replicas get their resources: the interface the controller calls.

The controller (simtune.controller) asks the cluster for resources when it creates a
replica and gives them back when the replica is gone. The default `UnlimitedCluster`
grants everything at once (a cluster with room to spare); a node-level model (nodes
from a RayService's worker groups, Ray's autoscaler adding nodes after a provisioning
delay, idle-node removal, prices) implements the same three calls. Replica startup
then = resource wait (PENDING_ALLOCATION, reference 5.1) + the startup model's time.
"""

from __future__ import annotations

from typing import Optional, Protocol


class Cluster(Protocol):
    def request(self, t: float, rid: int) -> Optional[float]:
        """A replica needs its resources at t: the time they are granted, or None if it
        must wait for resources that another replica's release may free later."""

    def release(self, t: float, rid: int) -> list[tuple[int, float]]:
        """Replica rid stopped (or was cancelled while waiting) at t. Returns the waiting
        replicas that now get resources, with the time they do."""

    def finish(self, t: float) -> None:
        """The simulation ended at t (close node accounting)."""


class UnlimitedCluster:
    """Every replica gets its resources the moment it asks."""

    def request(self, t: float, rid: int) -> Optional[float]:
        return t

    def release(self, t: float, rid: int) -> list[tuple[int, float]]:
        return []

    def finish(self, t: float) -> None:
        return None
