"""Reproducibility of `simtune recommend`: SIGKILL + --resume, --n-jobs, and several
worker processes sharing one study (SQLite, and PostgreSQL when it can be started)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from simtune.cli import app

TRIALS = 32
CLI = [sys.executable, "-c", "from simtune.cli import main; main()", "recommend"]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    from simtune.trace import save_trace
    from simtune.trace.generators import diurnal

    path = tmp_path_factory.mktemp("trace") / "diurnal.parquet"
    save_trace(diurnal(8.0, 600.0, peak_to_trough=4.0, period=600.0, seed=7), path)
    return path


def _args(trace, storage, *extra):
    return ["--trace", str(trace), "--slo", "p99=0.8", "--service-time", "lognormal:mean=0.1,p99=0.5",
            "--trials", str(TRIALS), "--sim-seeds", "2", "--study-name", "s", "--storage", storage, *map(str, extra)]


@pytest.fixture(scope="module")
def reference(trace, tmp_path_factory):
    """One uninterrupted, single-process run: the answer every other way must reproduce."""
    db = tmp_path_factory.mktemp("ref") / "ref.db"
    res = CliRunner().invoke(app, ["recommend", *_args(trace, f"sqlite:///{db}")])
    assert res.exit_code == 0, res.stderr
    return res.stdout, _table(f"sqlite:///{db}")


def _table(storage):
    """slot -> (state, params, values) of a finished study."""
    trials = optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
    return {t.user_attrs["simtune:slot"]: (t.state.name, t.params, t.values) for t in trials}


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from trials").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_then_resume_loses_nothing_and_gives_the_same_answer(trace, reference, tmp_path):
    ref_text, ref_table = reference
    db = tmp_path / "killed.db"
    proc = subprocess.Popen([*CLI, *_args(trace, f"sqlite:///{db}")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _count(db) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    assert out == b"", "a killed run printed YAML"
    before = _table(f"sqlite:///{db}")
    assert 10 <= len(before) < TRIALS, f"kill landed outside the search ({len(before)} trials)"

    res = CliRunner().invoke(app, ["recommend", *_args(trace, f"sqlite:///{db}"), "--resume"])
    assert res.exit_code == 0, res.stderr
    after = _table(f"sqlite:///{db}")
    for slot, row in before.items():  # no finished trial lost or changed
        assert after[slot] == row
    assert sorted(after) == list(range(TRIALS))
    assert after == ref_table  # every trial identical to the uninterrupted run's
    assert res.stdout == ref_text


def test_n_jobs_does_not_change_the_answer(trace, reference, tmp_path):
    ref_text, ref_table = reference
    res = CliRunner().invoke(app, ["recommend", *_args(trace, f"sqlite:///{tmp_path / 'p.db'}"), "--n-jobs", "2"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ref_text
    assert _table(f"sqlite:///{tmp_path / 'p.db'}") == ref_table


def _two_workers(trace, storage):
    procs = [subprocess.Popen([*CLI, *_args(trace, storage), "--resume"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    return [o.decode() for o, _ in outs]


def test_two_worker_processes_share_one_sqlite_study(trace, reference, tmp_path):
    ref_text, ref_table = reference
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    outs = _two_workers(trace, storage)
    assert outs[0] == outs[1] == ref_text
    study = optuna.load_study(study_name="s", storage=storage)
    trials = study.get_trials(deepcopy=False)
    slots = [t.user_attrs["simtune:slot"] for t in trials]
    assert sorted(set(slots)) == list(range(TRIALS))  # every slot, none lost
    # Claims are written then read back (optuna storages have no compare-and-set), so two
    # workers can both compute a slot when their claims interleave (1-3 of 32 slots on a
    # loaded 2-core host): wasted work, never a different answer, since a slot's trial
    # depends only on its inputs and the first finished one is used.
    by_slot: dict = {}
    for t in trials:
        by_slot.setdefault(t.user_attrs["simtune:slot"], []).append(t)
    for k, ts in by_slot.items():
        assert all(t.params == ts[0].params and t.values == ts[0].values for t in ts), k
    # Both joined the study (each keeps a heartbeat there). How many trials each computed
    # depends on timing: a worker that starts a second late may find most batches done.
    workers = {k for k in study.user_attrs if k.startswith("simtune:worker:")}
    assert len(workers) == 2
    assert _table(storage) == ref_table


def _postgres():
    """(initdb, pg_ctl, run-as prefix) or None when PostgreSQL cannot be started here."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            initdb, pg_ctl = str(d / "initdb"), str(d / "pg_ctl")
            break
    if not (initdb and pg_ctl and os.path.exists(initdb)):
        return None
    prefix = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return None
        if not runuser:
            return None
        prefix = [runuser, "-u", "postgres", "--"]
    return initdb, pg_ctl, prefix


@pytest.fixture
def postgres_url():
    found = _postgres()
    if found is None:
        pytest.skip("PostgreSQL (initdb/pg_ctl + psycopg) not available; install Debian's postgresql and "
                    "psycopg[binary]")
    initdb, pg_ctl, prefix = found
    # Not under tmp_path: pytest's base folder is private to this user, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="simtune-pg-"))
    os.chmod(base, 0o755)
    if prefix:
        shutil.chown(base, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                    f"-k {base} -p {port} -c listen_addresses=''", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@/postgres?host={base}&port={port}"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_two_worker_processes_share_one_postgresql_study(trace, reference, postgres_url):
    ref_text, ref_table = reference
    outs = _two_workers(trace, postgres_url)
    assert outs[0] == outs[1] == ref_text
    assert _table(postgres_url) == ref_table
