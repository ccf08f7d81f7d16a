"""Load driver for `simtune profile`, run in its own process (like validate's loadgen).

Two modes, both over HTTP through the Serve proxy:
  closed loop  (--levels 1,2,4 --duration-s 5): for each level c, c clients each send a
               request, wait for the answer and send the next, for warm-up + duration;
  open loop    (--trace FILE.npz): send at the trace's timestamps regardless of answers.
Per request it records: level, scheduled, sent, done (wall seconds since t0), HTTP status,
and from a JSON body when present: replica, t_start/t_end (handler), batch_size,
batch_start/batch_end. Output: Parquet.

Why a separate process: the measuring client must not share a GIL/event loop with the
Ray driver (see simtune.validate.loadgen).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

FIELDS = ("t_start", "t_end", "batch_size", "batch_start", "batch_end")


class _Rec:
    def __init__(self) -> None:
        self.rows: dict[str, list] = {k: [] for k in ("level", "scheduled", "sent", "done", "status", "replica",
                                                      "work", *FIELDS)}

    def add(self, level, scheduled, sent, done, status, work, info) -> None:
        r = self.rows
        r["level"].append(level)
        r["scheduled"].append(scheduled)
        r["sent"].append(sent)
        r["done"].append(done)
        r["status"].append(status)
        r["work"].append(work)
        r["replica"].append(str(info.get("replica")) if info else None)
        for k in FIELDS:
            v = info.get(k) if info else None
            r[k].append(float(v) if isinstance(v, (int, float)) else np.nan)


async def _one(session, url, template, work, t0, rec, level, scheduled):
    from simtune.validate.loadgen import _request_args

    method, target, kwargs = _request_args(url, template, work)
    sent = time.time() - t0
    info: dict = {}
    status = 0
    try:
        async with session.request(method, target, **kwargs) as resp:
            body = await resp.read()
            status = resp.status
            if status == 200:
                try:
                    info = json.loads(body)
                    if not isinstance(info, dict):
                        info = {}
                except ValueError:
                    info = {}
    except Exception:
        status = 0
    done = time.time() - t0
    for k in FIELDS:
        if k in info and isinstance(info[k], (int, float)) and k != "batch_size":
            info[k] = info[k] - t0
    rec.add(level, scheduled, sent, done, status, work, info)


async def closed_loop(url: str, levels: list[int], duration_s: float, warmup_s: float, work: float,
                      template: Optional[dict]) -> _Rec:
    import aiohttp

    rec = _Rec()
    t0 = time.time()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for c in levels:
            start = time.time()
            stop_at = start + warmup_s + duration_s

            async def client():
                while time.time() < stop_at:
                    await _one(session, url, template, work, t0, rec, c, np.nan)

            await asyncio.gather(*(client() for _ in range(c)))
            # Mark warm-up rows: everything sent before start + warmup_s.
            for j in range(len(rec.rows["level"])):
                if rec.rows["level"][j] == c and rec.rows["sent"][j] < start - t0 + warmup_s:
                    rec.rows["level"][j] = -c
    return rec


async def open_loop(url: str, timestamps: np.ndarray, work: np.ndarray, template: Optional[dict],
                    t0: float) -> _Rec:
    import aiohttp

    rec = _Rec()
    connector = aiohttp.TCPConnector(limit=0)
    tasks = []
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        i, n = 0, len(timestamps)
        while i < n:
            now = time.time() - t0
            wait = timestamps[i] - now
            if wait > 0.0015:
                await asyncio.sleep(wait - 0.001)
                continue
            if wait > 0:
                await asyncio.sleep(0)
                continue
            while i < n and timestamps[i] <= now:
                tasks.append(asyncio.create_task(_one(session, url, template, float(work[i]), t0, rec, 0,
                                                      float(timestamps[i]))))
                i += 1
            await asyncio.sleep(0)
        if tasks:
            await asyncio.wait(tasks, timeout=120)
    return rec


def main(argv: Optional[list[str]] = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--levels", default=None, help="closed loop: comma-separated concurrencies")
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--work", type=float, default=0.05, help="closed loop: {service_time} of every request")
    ap.add_argument("--trace", default=None, help="open loop: .npz with timestamps and service_time")
    ap.add_argument("--template", default=None)
    args = ap.parse_args(argv)
    template = json.loads(Path(args.template).read_text()) if args.template else None
    if args.trace:
        data = np.load(args.trace)
        t0 = time.time() + 0.5
        rec = asyncio.run(open_loop(args.url, np.asarray(data["timestamps"], float),
                                    np.asarray(data["service_time"], float), template, t0))
    else:
        levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
        rec = asyncio.run(closed_loop(args.url, levels, args.duration_s, args.warmup_s, args.work, template))
    df = pd.DataFrame(rec.rows)
    df["replica"] = df["replica"].astype("string")
    df.to_parquet(args.out)
    print(f"DONE {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
