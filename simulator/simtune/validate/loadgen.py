"""Open-loop replay of a trace over HTTP through the Serve proxy, in its own process.

Why a separate process: the generator must send at the trace's timestamps regardless of
how the system under test responds (open loop). Sharing a process (and a GIL, and an
event loop) with the Ray driver and the state poller would make the send times depend on
them. Why aiohttp with an unbounded connector: each in-flight request gets its own
keep-alive connection, as many independent clients would, so the proxy (uvicorn) never
serialises requests on a client-side pool.

Protocol with the harness (stdin/stdout, one line each):
  child -> "READY"            after the session is built;
  parent -> "<t0 wall time>"  the absolute time at which trace time 0 falls;
  child -> "DONE <path>"      after the records file is written.

Per request it records: scheduled send time (trace time), actual send time, completion
time (all seconds relative to t0, on this process's wall clock), HTTP status (0 = no
response: client-side timeout or connection error), and the replica id and handler
start/end times from the stand-in's response body when present.

Lag = actual − scheduled send time. The run is *valid* only if the generator kept up:
p99 lag ≤ `max_p99_lag_s` and max lag ≤ `max_lag_s` (defaults 50 ms and 500 ms). Why
these: send jitter of that size is under a quarter of the scenarios' 200 ms service
times, a twentieth of a 1 s metrics push period and below the 0.25 s state-poll
resolution that times scaling events, so it cannot move the compared metrics. On an idle
2-core machine the generator keeps ~1 ms typical, 2–10 ms p99; the excursions that break
these limits come from CPU starvation (several replica workers starting at once on 2
cores, or other jobs), which is exactly when the run stops measuring Serve alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

#: Default validity thresholds for the generator's send lag (seconds).
DEFAULT_MAX_P99_LAG_S = 0.050
DEFAULT_MAX_LAG_S = 0.500

#: Header Serve 2.60 reads as a per-request end-to-end timeout
#: (serve/_private/http_util.py:parse_request_timeout_header; non-positive = none).
TIMEOUT_HEADER = "x-request-timeout-seconds"


@dataclass
class LagVerdict:
    """Whether the generator kept to the schedule, with the thresholds it was held to."""

    valid: bool
    p50_s: float
    p99_s: float
    max_s: float
    max_p99_lag_s: float
    max_lag_s: float
    reason: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def judge_lag(lag_s: np.ndarray, max_p99_lag_s: float = DEFAULT_MAX_P99_LAG_S,
              max_lag_s: float = DEFAULT_MAX_LAG_S) -> LagVerdict:
    """Apply the validity rule to the measured send lags (unsent requests count as ∞)."""
    lag = np.asarray(lag_s, dtype=np.float64)
    if lag.size == 0:
        return LagVerdict(True, 0.0, 0.0, 0.0, max_p99_lag_s, max_lag_s, "no requests")
    lag = np.where(np.isfinite(lag), lag, np.inf)
    p50, p99, mx = (float(np.quantile(lag, 0.5)), float(np.quantile(lag, 0.99)), float(lag.max()))
    problems = []
    if p99 > max_p99_lag_s:
        problems.append(f"p99 send lag {p99 * 1e3:.1f} ms > {max_p99_lag_s * 1e3:.0f} ms")
    if mx > max_lag_s:
        problems.append(f"max send lag {mx * 1e3:.1f} ms > {max_lag_s * 1e3:.0f} ms")
    return LagVerdict(not problems, p50, p99, mx, max_p99_lag_s, max_lag_s,
                      "; ".join(problems) or "kept to schedule")


def _request_args(url: str, template: Optional[dict], service_time: float) -> tuple[str, str, dict]:
    """Method, URL and aiohttp kwargs for one request.

    Default (the stand-in): `GET url?st=<service_time>`. With a template (a user's own
    app), `{service_time}` is substituted in the template's `path` and `body`.
    """
    st = f"{service_time:.6f}"
    if template is None:
        return "GET", url, {"params": {"st": st}}
    method = str(template.get("method", "POST")).upper()
    path = str(template.get("path", "")).replace("{service_time}", st)
    kwargs: dict = {"headers": dict(template.get("headers") or {})}
    body = template.get("body")
    if body is not None:
        text = body if isinstance(body, str) else json.dumps(body)
        kwargs["data"] = text.replace("{service_time}", st).encode()
        kwargs["headers"].setdefault("content-type", "application/json")
    return method, url.rstrip("/") + path, kwargs


async def _replay(url: str, timestamps: np.ndarray, service_times: np.ndarray, t0: float,
                  timeout_header: str, client_timeout_s: float, drain_timeout_s: float,
                  template: Optional[dict] = None) -> dict:
    import aiohttp

    n = len(timestamps)
    sent = np.full(n, np.nan)
    done = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)
    replica = np.empty(n, dtype=object)
    h_start = np.full(n, np.nan)
    h_end = np.full(n, np.nan)
    errors: dict[str, int] = {}

    connector = aiohttp.TCPConnector(limit=0, force_close=False, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=client_timeout_s)
    headers = {TIMEOUT_HEADER: timeout_header}

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        print("READY", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip():
            t0 = float(line.strip())

        async def one(i: int) -> None:
            method, target, kwargs = _request_args(url, template, float(service_times[i]))
            kwargs["headers"] = {**headers, **kwargs.get("headers", {})}
            sent[i] = time.time() - t0
            try:
                async with session.request(method, target, **kwargs) as resp:
                    body = await resp.read()
                    done[i] = time.time() - t0
                    status[i] = resp.status
                    if resp.status == 200:
                        try:
                            info = json.loads(body)
                            replica[i] = info.get("replica")
                            h_start[i] = float(info["t_start"]) - t0
                            h_end[i] = float(info["t_end"]) - t0
                        except (ValueError, KeyError, TypeError):
                            pass
            except asyncio.CancelledError:
                done[i] = time.time() - t0
                errors["unfinished"] = errors.get("unfinished", 0) + 1
                raise
            except Exception as exc:  # connection reset, client timeout, ...
                done[i] = time.time() - t0
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1

        tasks: list[asyncio.Task] = []
        i = 0
        while i < n:
            now = time.time() - t0
            wait = timestamps[i] - now
            if wait > 0.0015:
                # Sleep a little short and spin the rest: asyncio timers are ~1 ms coarse.
                await asyncio.sleep(wait - 0.001)
                continue
            if wait > 0:
                await asyncio.sleep(0)
                continue
            # Everything due now goes out in this pass.
            while i < n and timestamps[i] <= now:
                tasks.append(asyncio.create_task(one(i)))
                i += 1
            await asyncio.sleep(0)
        pending = [t for t in tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=drain_timeout_s)
            for t in still:
                t.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
    return {
        "scheduled": timestamps,
        "sent": sent,
        "done": done,
        "status": status,
        "replica": replica,
        "handler_start": h_start,
        "handler_end": h_end,
        "errors": errors,
    }


def write_records(path: Path, rec: dict, extra: dict) -> None:
    """Write the per-request records as Parquet and the run facts as a JSON sidecar."""
    import pandas as pd

    df = pd.DataFrame({k: rec[k] for k in ("scheduled", "sent", "done", "status", "replica",
                                           "handler_start", "handler_end")})
    df["replica"] = df["replica"].astype("string")
    df.to_parquet(path)
    Path(str(path) + ".json").write_text(json.dumps({"errors": rec["errors"], **extra}, indent=2))


def _raise_priority(niceness: int = -10) -> None:
    """Ask for a higher CPU priority (needs privileges; silently skipped otherwise).

    Why: the generator is the measuring instrument. On a shared machine (the cluster's
    own processes, other jobs) it must not be the process that falls behind; a real
    client would run on another host.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except (OSError, AttributeError):
        pass


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--trace", required=True, help=".npz with 'timestamps' and 'service_time'")
    ap.add_argument("--out", required=True)
    ap.add_argument("--request-timeout-s", type=float, default=0.0,
                    help="sent as x-request-timeout-seconds; <= 0 means no proxy timeout")
    ap.add_argument("--client-timeout-s", type=float, default=600.0)
    ap.add_argument("--drain-timeout-s", type=float, default=60.0)
    ap.add_argument("--template", default=None, help="JSON request template file (user apps)")
    args = ap.parse_args(argv)

    _raise_priority()
    data = np.load(args.trace)
    ts = np.asarray(data["timestamps"], dtype=np.float64)
    st = np.asarray(data["service_time"], dtype=np.float64)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    load0 = os.getloadavg()
    rec = asyncio.run(_replay(args.url, ts, st, t0=time.time() + 1.0,
                              timeout_header=f"{args.request_timeout_s:g}",
                              client_timeout_s=args.client_timeout_s,
                              drain_timeout_s=args.drain_timeout_s,
                              template=json.loads(Path(args.template).read_text()) if args.template else None))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    extra = {
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }
    write_records(Path(args.out), rec, extra)
    print(f"DONE {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
