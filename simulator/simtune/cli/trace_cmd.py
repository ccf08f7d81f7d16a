"""`simtune trace ...`: look at, generate and convert traces.

    simtune trace inspect T [--plot rate.png] [--json]
    simtune trace synth KIND --duration 1h ... -o T.parquet
    simtune trace convert IN -o OUT.parquet

Every bad input ends with one line `error: ...` on stderr and exit code 2.
"""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Callable, List, Optional, TypeVar, Union

import numpy as np
import typer

from simtune.errors import InputError, SimtuneError
from simtune.trace import generators as gen
from simtune.trace.attach import attach_service_time, attach_tokens, resample_columns
from simtune.trace.counts import DEFAULT_MAX_ROWS, EXPAND_METHODS, CountTrace, expand_counts
from simtune.trace.inspect import format_stats, stats
from simtune.trace.io import load_trace, save_trace
from simtune.trace.model import Trace
from simtune.trace.readers import FORMATS, read_trace
from simtune.trace.specs import parse_duration, parse_floats, parse_mapping, parse_spike, parse_step, read_rate_curve
from simtune.trace.timeparse import ALL_TIME_UNITS
from simtune.trace.transforms import compress, scale_rate, slice_window

trace_app = typer.Typer(
    help="Inspect, synthesize and convert request traces.",
    no_args_is_help=True,
    add_completion=False,
)

T = TypeVar("T")


def _run(fn: Callable[[], T]) -> T:
    """Turn a SimtuneError into `error: ...` on stderr and its exit code."""
    try:
        return fn()
    except SimtuneError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise InputError(f"{option} {value!r}: expected one of {', '.join(allowed)}")
    return value


# ------------------------------------------------------------------ shared options

FORMAT_HELP = "Trace format: " + ", ".join(f"{k} ({v[1]})" for k, v in FORMATS.items()) + "; auto detects from columns."
FormatOpt = typer.Option("auto", "--trace-format", "-f", help=FORMAT_HELP)
ColumnOpt = typer.Option(None, "--column", "-c", help="Map a simtune column to the file's: NAME=SOURCE (repeatable), e.g. timestamp=TIMESTAMP.")
TimeUnitOpt = typer.Option("auto", "--time-unit", help=f"Unit of the time column: {', '.join(ALL_TIME_UNITS)}.")
StUnitOpt = typer.Option("s", "--service-time-unit", help="Unit of the service_time column: s, ms, us, ns.")
BinWidthOpt = typer.Option(None, "--bin-width", help="Bin width of a count trace without a width column (e.g. 60s).")
SeedOpt = typer.Option(0, "--seed", help="Seed for every random choice (expansion, scaling, sampling).")
StartOpt = typer.Option(None, "--start", help="Keep requests from this time (s or 15m/2h/3d on the trace's clock).")
EndOpt = typer.Option(None, "--end", help="Keep requests before this time.")
RateScaleOpt = typer.Option(1.0, "--rate-scale", help="Scale the request rate: thinning below 1, superposed copies above 1; count traces scale bin counts before expansion.")
MaxRowsOpt = typer.Option(DEFAULT_MAX_ROWS, "--max-rows", help="Refuse to materialise more requests than this.")


def _read(
    path: Path,
    trace_format: str,
    column: Optional[List[str]],
    time_unit: str,
    service_time_unit: str,
    bin_width: Optional[str],
) -> Union[Trace, CountTrace]:
    return read_trace(
        path,
        format=trace_format,
        columns=parse_mapping(column),
        time_unit=time_unit,
        service_time_unit=service_time_unit,
        bin_width=parse_duration(bin_width, "--bin-width") if bin_width else None,
    )


def _select(
    trace: Union[Trace, CountTrace],
    *,
    expand: Optional[str],
    seed: int,
    rate_scale: float,
    start: Optional[str],
    end: Optional[str],
    max_rows: int,
    force_expand: bool,
) -> Union[Trace, CountTrace]:
    """Window, rescale and (for count traces, when asked or needed) expand."""
    if expand is not None:
        _choice(expand, EXPAND_METHODS, "--expand")
    lo = parse_duration(start, "--start") if start else None
    hi = parse_duration(end, "--end") if end else None
    if isinstance(trace, CountTrace):
        if not (force_expand or expand or lo is not None or hi is not None or rate_scale != 1.0):
            return trace
        method = _choice(expand or "uniform", EXPAND_METHODS, "--expand")
        return expand_counts(trace, method=method, seed=seed, rate_scale=rate_scale, start=lo, end=hi, max_rows=max_rows)
    if lo is not None or hi is not None:
        trace = slice_window(trace, lo or 0.0, hi)
    if rate_scale != 1.0:
        trace = scale_rate(trace, rate_scale, seed=seed)
    if len(trace) > max_rows:
        raise InputError(f"{trace.name}: {len(trace):,} requests, over --max-rows {max_rows:,}")
    return trace


# ------------------------------------------------------------------ inspect


@trace_app.command("inspect")
def inspect_cmd(
    trace_path: Path = typer.Argument(..., metavar="TRACE", help="Trace file (CSV, Parquet or JSON lines)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of the rate over time here."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    expand: Optional[str] = typer.Option(None, "--expand", help=f"Expand a count trace into arrivals first ({', '.join(EXPAND_METHODS)}); without it, count traces are summarised at their own resolution."),
    trace_format: str = FormatOpt,
    column: Optional[List[str]] = ColumnOpt,
    time_unit: str = TimeUnitOpt,
    service_time_unit: str = StUnitOpt,
    bin_width: Optional[str] = BinWidthOpt,
    seed: int = SeedOpt,
    start: Optional[str] = StartOpt,
    end: Optional[str] = EndOpt,
    rate_scale: float = RateScaleOpt,
    max_rows: int = MaxRowsOpt,
) -> None:
    """Summarise a trace: rates, peaks, burstiness, idle gaps, token and service-time stats.

    Mean and peak rates and the index of dispersion over 1 s, 10 s and 1 min windows
    (bins aligned at t=0), inter-arrival CV, longest idle gap, column summaries; with
    --plot, a PNG of the rate over time. Count traces are summarised at their own bin
    unless --expand (or a window or rate scale) is given.
    """

    def body() -> None:
        trace = _read(trace_path, trace_format, column, time_unit, service_time_unit, bin_width)
        trace = _select(trace, expand=expand, seed=seed, rate_scale=rate_scale, start=start, end=end,
                        max_rows=max_rows, force_expand=False)
        st = stats(trace)
        if as_json:
            typer.echo(json.dumps(st.to_dict(), indent=2, default=_json_default))
        else:
            typer.echo(format_stats(st))
        if plot is not None:
            from simtune.trace.plot import plot_trace

            plot_trace(trace, plot, st)
            typer.echo(f"wrote {plot}", err=as_json)

    _run(body)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


# ------------------------------------------------------------------ synth


class Kind(str, Enum):
    poisson = "poisson"
    steps = "steps"
    diurnal = "diurnal"
    hourly = "hourly"
    spikes = "spikes"
    mmpp = "mmpp"
    replay = "replay"


@trace_app.command("synth")
def synth_cmd(
    kind: Kind = typer.Argument(..., help="Which arrival process; each uses the options marked with its name."),
    output: Path = typer.Option(..., "--output", "-o", help="Output trace (canonical Parquet)."),
    duration: Optional[str] = typer.Option(None, "--duration", "-d", help="Length, e.g. 3600, 90m, 1d (not for replay)."),
    rate: Optional[float] = typer.Option(None, "--rate", "-r", help="req/s: poisson rate; diurnal/hourly mean; spikes base rate."),
    step: Optional[List[str]] = typer.Option(None, "--step", help="steps: START:RATE (repeatable), first START 0, e.g. --step 0:10 --step 10m:50."),
    peak_to_trough: float = typer.Option(4.0, "--peak-to-trough", help="diurnal: max/min rate."),
    period: str = typer.Option("1d", "--period", help="diurnal: period of the cycle."),
    peak_at: str = typer.Option("14h", "--peak-at", help="diurnal: time of the peak within the period."),
    profile: Optional[str] = typer.Option(None, "--profile", help="hourly: 24 comma-separated values or a file (req/s, or weights with --rate)."),
    interpolation: str = typer.Option("linear", "--interpolation", help="hourly/replay: linear or step."),
    spike: Optional[List[str]] = typer.Option(None, "--spike", help="spikes: AT:FACTOR:DURATION[:RAMP] (repeatable), e.g. 30m:10:2m:15s."),
    random_spikes: int = typer.Option(0, "--random-spikes", help="spikes: add this many spikes at random times."),
    spike_factor: float = typer.Option(5.0, "--spike-factor", help="spikes: height of random spikes (x base)."),
    spike_duration: str = typer.Option("60s", "--spike-duration", help="spikes: length of random spikes."),
    state_rates: Optional[str] = typer.Option(None, "--state-rates", help="mmpp: req/s per state, e.g. 20,0.5 (on/off)."),
    mean_durations: Optional[str] = typer.Option(None, "--mean-durations", help="mmpp: mean time in each state, s, e.g. 30,120."),
    rate_curve: Optional[Path] = typer.Option(None, "--rate-curve", help="replay: file with time and rate (req/s) columns."),
    column: Optional[List[str]] = typer.Option(None, "--column", "-c", help="replay: map time=SOURCE, rate=SOURCE."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="replay: multiply the curve's rates."),
    service_time: Optional[str] = typer.Option(None, "--service-time", help="Attach service times: const:0.05, exp:0.05, lognormal:mean=0.05,p99=0.4, empirical:FILE[:COL]."),
    input_tokens: Optional[str] = typer.Option(None, "--input-tokens", help="Attach input token counts from a distribution spec."),
    output_tokens: Optional[str] = typer.Option(None, "--output-tokens", help="Attach output token counts from a distribution spec."),
    resample_from: Optional[Path] = typer.Option(None, "--resample-from", help="Attach service_time/token columns resampled jointly from this real trace."),
    resample_column: Optional[List[str]] = typer.Option(None, "--resample-column", help="Columns to resample (default: service_time, input_tokens, output_tokens present)."),
    model_ids: Optional[int] = typer.Option(None, "--model-ids", help="Attach a model_id column (multiplexing): this many models, Zipf-distributed."),
    zipf_s: float = typer.Option(1.0, "--zipf-s", help="--model-ids: Zipf exponent (0: uniform)."),
    seed: int = SeedOpt,
    max_rows: int = MaxRowsOpt,
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write a PNG of the rate over time."),
) -> None:
    """Generate a seeded synthetic trace and write it as canonical Parquet."""

    def body() -> None:
        arrivals_seed, attach_seed, resample_seed = np.random.SeedSequence(seed).spawn(3)
        rng = np.random.default_rng(arrivals_seed)

        def need_duration() -> float:
            if duration is None:
                raise InputError(f"synth {kind.value}: --duration is required")
            d = parse_duration(duration, "--duration")
            if d <= 0:
                raise InputError("--duration must be > 0")
            return d

        def need_rate() -> float:
            if rate is None:
                raise InputError(f"synth {kind.value}: --rate is required")
            return rate

        if kind is Kind.poisson:
            trace = gen.poisson(need_rate(), need_duration(), seed=rng, max_rows=max_rows)
        elif kind is Kind.steps:
            if not step:
                raise InputError("synth steps: give at least one --step START:RATE")
            trace = gen.steps([parse_step(s) for s in step], need_duration(), seed=rng, max_rows=max_rows)
        elif kind is Kind.diurnal:
            trace = gen.diurnal(need_rate(), need_duration(), peak_to_trough=peak_to_trough,
                                period=parse_duration(period, "--period"), peak_at=parse_duration(peak_at, "--peak-at"),
                                seed=rng, max_rows=max_rows)
        elif kind is Kind.hourly:
            if profile is None:
                raise InputError("synth hourly: --profile needs 24 values")
            trace = gen.hourly_profile(parse_floats(profile, "--profile", 24), need_duration(), mean_rate=rate,
                                       interpolation=_choice(interpolation, ("linear", "step"), "--interpolation"),
                                       seed=rng, max_rows=max_rows)
        elif kind is Kind.spikes:
            d = need_duration()
            spikes = [parse_spike(s) for s in spike or []]
            spikes += gen.random_spikes(random_spikes, d, factor=spike_factor,
                                        spike_duration=parse_duration(spike_duration, "--spike-duration"), seed=rng)
            trace = gen.spikes(need_rate(), d, spikes, seed=rng, max_rows=max_rows)
        elif kind is Kind.mmpp:
            if not state_rates or not mean_durations:
                raise InputError("synth mmpp: give --state-rates and --mean-durations, e.g. 20,0.5 and 30,120")
            trace = gen.mmpp(parse_floats(state_rates, "--state-rates"), parse_floats(mean_durations, "--mean-durations"),
                             need_duration(), seed=rng, max_rows=max_rows)
        else:
            if rate_curve is None:
                raise InputError("synth replay: --rate-curve FILE is required")
            times, rates = read_rate_curve(rate_curve, parse_mapping(column))
            trace = gen.replay(times, rates, interpolation=_choice(interpolation, ("linear", "step"), "--interpolation"),
                               rate_scale=rate_scale, seed=rng, max_rows=max_rows)
        trace.meta["seed"] = seed
        if service_time:
            trace = attach_service_time(trace, service_time, seed=np.random.default_rng(attach_seed))
        if input_tokens or output_tokens:
            trace = attach_tokens(trace, input_tokens=input_tokens, output_tokens=output_tokens,
                                  seed=np.random.default_rng(attach_seed.spawn(1)[0]))
        if resample_from is not None:
            source = load_trace(resample_from, seed=seed)
            trace = resample_columns(trace, source, resample_column or None, seed=np.random.default_rng(resample_seed))
            trace.meta["resampled_from"] = str(resample_from)
        if model_ids is not None:
            from simtune.trace.model_ids import assign_model_ids

            try:
                trace = assign_model_ids(trace, model_ids, zipf_s, seed=seed)
            except InputError as exc:
                raise InputError(f"--model-ids/--zipf-s: {exc}") from None
        _check_parquet_name(output)
        save_trace(trace, output)
        _report_written(output, trace)
        if plot is not None:
            from simtune.trace.plot import plot_trace

            plot_trace(trace, plot)
            typer.echo(f"wrote {plot}")

    _run(body)


def _check_parquet_name(output: Path) -> None:
    if output.suffix.lower() not in (".parquet", ".pq"):
        raise InputError(f"{output}: the output is canonical Parquet; name it *.parquet")


def _report_written(output: Path, trace: Trace) -> None:
    span = trace.span
    rate = len(trace) / span if span > 0 else float("nan")
    cols = ", ".join(trace.columns) or "no other columns"
    typer.echo(f"wrote {output}: {len(trace):,} requests over {span:,.1f} s (mean {rate:.4g} req/s; {cols})")


# ------------------------------------------------------------------ convert


@trace_app.command("convert")
def convert_cmd(
    trace_path: Path = typer.Argument(..., metavar="TRACE", help="Any supported trace file."),
    output: Path = typer.Option(..., "--output", "-o", help="Output: simtune canonical Parquet."),
    expand: str = typer.Option("uniform", "--expand", help=f"How to spread a count trace's bins: {', '.join(EXPAND_METHODS)}."),
    speedup: float = typer.Option(1.0, "--compress", help="Replay this many times faster (time compression)."),
    trace_format: str = FormatOpt,
    column: Optional[List[str]] = ColumnOpt,
    time_unit: str = TimeUnitOpt,
    service_time_unit: str = StUnitOpt,
    bin_width: Optional[str] = BinWidthOpt,
    seed: int = SeedOpt,
    start: Optional[str] = StartOpt,
    end: Optional[str] = EndOpt,
    rate_scale: float = RateScaleOpt,
    max_rows: int = MaxRowsOpt,
) -> None:
    """Rewrite any supported trace as simtune's canonical Parquet.

    Count traces are expanded into arrivals (--expand, --seed); --start/--end,
    --rate-scale and --compress window, rescale or speed it up on the way.
    """

    def body() -> None:
        _check_parquet_name(output)
        trace = _read(trace_path, trace_format, column, time_unit, service_time_unit, bin_width)
        trace = _select(trace, expand=expand, seed=seed, rate_scale=rate_scale, start=start, end=end,
                        max_rows=max_rows, force_expand=True)
        assert isinstance(trace, Trace)
        if speedup != 1.0:
            trace = compress(trace, speedup)
        save_trace(trace, output)
        _report_written(output, trace)

    _run(body)


def main() -> None:  # pragma: no cover - convenience for `python -m simtune.cli.trace_cmd`
    trace_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
