"""`simtune validate` end to end: real run(s) -> simulation -> comparison -> report.

Why the real side may run more than once (`repeat`): the real system is itself noisy
(metrics push phase, startup jitter, CPU contention), so the simulator's error is only
meaningful next to the real run-to-run spread, which the second run measures with the
very same metrics (real #2 judged against real #1).

Output (`out_dir`, written to a hidden temp sibling and renamed at the end, so a failed
or interrupted run leaves nothing half-written): fidelity.json (metrics, verdicts, the
parameters given to the simulator, the real runs' raw records), overlay.png, and the
calibrated parameter file when asked for.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from simtune.errors import InputError
from simtune.validate import calibrate as cal
from simtune.validate import compare as cmp
from simtune.validate.harness import RealRun, RealRunOptions, run_real
from simtune.jsonutil import jsonable
from simtune.results import staged_dir


@dataclass
class ValidationResult:
    out_dir: Path
    report: dict
    valid: bool
    passed: bool
    reasons: list[str] = field(default_factory=list)


def slice_window(trace: Any, window: Optional[tuple[float, float]]) -> Any:
    """Rows with start ≤ t < end, shifted so the window starts at 0."""
    if window is None:
        return trace
    start, end = window
    if not (end > start >= 0):
        raise InputError(f"--time-window {start}:{end}: need 0 <= START < END")
    ts = trace.timestamps
    sel = np.flatnonzero((ts >= start) & (ts < end))
    if sel.size == 0:
        raise InputError(f"--time-window {start:g}:{end:g}: no requests in that window")
    out = trace.take(sel)
    from simtune.trace import Trace

    return Trace(out.timestamps - start, out.columns, out.name, out.origin)


def parse_window(text: Optional[str]) -> Optional[tuple[float, float]]:
    if not text:
        return None
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(a or 0.0), float(b)
    except ValueError:
        raise InputError(f"--time-window {text!r}: expected START:END in seconds, e.g. 60:240") from None


def default_out_dir(label: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("reports") / f"validate-{label}-{stamp}"


def _simulate(simulate: Any, trace: Any, spec: Any, params: Any, seed: int, horizon: float) -> Any:
    """Run the simulator, asking it to keep the control plane going until `horizon`
    (the real run's observed end, e.g. to see the scale-to-zero after the load) when
    it supports that (`simulate(..., until=)` or `SimParams.tail_s`); otherwise the
    comparison window ends at the simulation's own horizon (last completion)."""
    import dataclasses
    import inspect

    kwargs: dict[str, Any] = {"seed": seed}
    fields = {f.name for f in dataclasses.fields(params)}
    if "until" in inspect.signature(simulate).parameters:
        kwargs["until"] = horizon
    elif "tail_s" in fields:
        # SimParams.tail_s: keep simulating this long after the last completion, so the
        # simulated horizon reaches at least the real run's observed end.
        # +61 s: simulate.py's drain loop may already have run up to 60 s past the last
        # completion, and env.run(until=horizon) fails for a horizon in the past. The
        # extra simulated time is outside the comparison window (min of both ends).
        last = float(trace.timestamps[-1]) if len(trace) else 0.0
        params = dataclasses.replace(params, tail_s=max(0.0, horizon - last) + 61.0)
    return simulate(trace, spec, params, **kwargs)


def _warnings(runs: list[RealRun], diag: dict) -> list[str]:
    """Conditions under which the real run measured the machine rather than Serve."""
    out = []
    for i, r in enumerate(runs):
        mx = r.env.get("loadavg_1min_max")
        cpus = r.env.get("cpu_count") or 1
        if mx is not None and mx > 1.5 * cpus:
            out.append(f"run {i + 1}: 1-min load average reached {mx:.1f} on {cpus} CPUs: CPU contention "
                       "(the simulator does not model it)")
    over = diag.get("overheads", {}).get("proxy_overhead_s")
    if over is not None and over > 0.05:
        out.append(f"median per-request overhead outside the replica is {over * 1e3:.0f} ms (expected ~10 ms): "
                   "the proxy or the client was CPU-starved")
    return out


def finish(out_dir: Path, calibrate_to: Optional[str | Path], valid: bool, verdict: dict, gate: Any,
           reasons: list[str]) -> bool:
    """After the report folder is written: copy the calibrated parameters where asked,
    add the failed gate checks to `reasons`; whether the validation passed."""
    if calibrate_to is not None:
        Path(calibrate_to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_dir / "calibrated_params.yaml", calibrate_to)
    if gate.any() and not verdict["pass"]:
        reasons += [f"{c['metric']} = {c['value']} exceeds {c['limit']}" for c in verdict["checks"] if not c["pass"]]
    return valid and verdict["pass"]


def run_validation(
    spec: Any,
    trace: Any,
    opts: RealRunOptions,
    *,
    out_dir: Path,
    seed: int = 0,
    repeat: int = 1,
    gate: Optional[cmp.Gate] = None,
    base_params: Optional[Any] = None,
    calibrate_to: Optional[Path] = None,
    match_window_s: float = cmp.DEFAULT_MATCH_WINDOW_S,
    label: str = "",
    progress: Any = None,
) -> ValidationResult:
    """Real run(s), simulation with the measured parameters, metrics, files."""
    from simtune.simulate import simulate

    say = progress or (lambda msg: None)
    gate = gate or cmp.Gate()
    if len(trace) == 0:
        raise InputError("the trace (after --time-window) has no requests")
    runs: list[RealRun] = []
    for k in range(max(1, repeat)):
        say(f"real run {k + 1}/{max(1, repeat)}: {len(trace)} requests over {trace.duration:.0f} s ...")
        runs.append(run_real(spec, trace, opts))
        say(f"  done: {runs[-1].lag.reason}; decisions: {len(runs[-1].decisions)}")
    first = runs[0]
    params, diag = cal.measured_params(first, spec.max_ongoing_requests, seed=seed, base=base_params)
    horizon = min(r.end_s for r in runs)
    sim = _simulate(simulate, trace, spec, params, seed, horizon)
    real_side = cmp.side_from_real(first)
    sim_side = cmp.side_from_sim(sim)
    metrics = cmp.compare_sides(real_side, sim_side, match_window_s)
    # Secondary: the measured startup times resampled as they are (no concurrency model).
    emp_params, _ = cal.measured_params(first, spec.max_ongoing_requests, seed=seed, base=base_params,
                                        startup="empirical")
    emp_metrics = None
    if emp_params.startup.kind == "empirical" and params.startup.kind != "empirical":
        emp_metrics = cmp.compare_sides(real_side, cmp.side_from_sim(_simulate(simulate, trace, spec, emp_params, seed, horizon)),
                                        match_window_s)
    verdict = cmp.apply_gate(metrics, gate)
    spread = None
    sides = [real_side, sim_side]
    if len(runs) > 1:
        second = cmp.side_from_real(runs[1])
        second.label = "real #2"
        spread = cmp.compare_sides(real_side, second, match_window_s)
        sides.append(second)
        sim2 = cmp.compare_sides(second, sim_side, match_window_s)
    else:
        sim2 = None
    valid = all(r.lag.valid for r in runs)
    reasons = [f"run {i + 1}: load generator fell behind: {r.lag.reason}" for i, r in enumerate(runs) if not r.lag.valid]
    report = {
        "label": label,
        "valid": valid,
        "validity_rule": {"max_p99_send_lag_s": opts.max_p99_lag_s, "max_send_lag_s": opts.max_lag_s},
        "gate": {"thresholds": {k: v for k, v in gate.__dict__.items()}, **verdict},
        "metrics": metrics,
        "sim_startup_empirical": emp_metrics,
        "real_run_to_run": spread,
        "sim_vs_real_run_2": sim2,
        "deployment": {"name": spec.name, "app_name": spec.app_name, "options": spec.deployment_options,
                       "request_timeout_s": spec.request_timeout_s},
        "trace": {"name": trace.name, "requests": len(trace), "duration_s": trace.duration},
        "real_options": {k: v for k, v in opts.__dict__.items() if k != "request_template"},
        "warnings": _warnings(runs, diag),
        "sim": {"params": params.to_dict(), "summary": sim.summary(), "calibration_from_run_1": diag},
        "seed": seed,
        "real_runs": [{"load_generator": r.lag.to_dict(), "env": r.env, "raw": r.raw_records()} for r in runs],
    }
    out_dir = Path(out_dir)
    with staged_dir(out_dir, replace=False) as tmp:
        (tmp / "fidelity.json").write_text(json.dumps(jsonable(report), indent=1))
        cmp.plot_overlay(sides, tmp / "overlay.png", title=f"simtune validate {label}".strip())
        if calibrate_to is not None:
            cparams, cdiag = cal.calibrate(first, spec.max_ongoing_requests, seed=seed)
            cparams.save(tmp / "calibrated_params.yaml")
            (tmp / "calibration.json").write_text(json.dumps(jsonable(cdiag), indent=1))
    passed = finish(out_dir, calibrate_to, valid, verdict, gate, reasons)
    return ValidationResult(out_dir, report, valid, passed, reasons)
