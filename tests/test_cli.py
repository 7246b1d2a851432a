"""`tao-dagster demo`, the README's main command, as a user runs it: two flywheel rounds, then a rerun; one Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import write_demo_log


@pytest.mark.slow
def test_demo_runs_two_rounds_and_a_rerun_has_nothing_to_do(tmp_path, tiny_model_dir, learnable_domain_file):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_demo_log(incoming / "day1.csv", 0, 30)
    write_demo_log(incoming / "day2.csv", 30, 30)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {
        "TAO_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "home" / "dagster"),
        "TAO_DOMAIN": str(learnable_domain_file),
        "TAO_BASE_MODEL": str(tiny_model_dir),
        "TAO_ENGINE": "transformers",
    }
    demo = [str(Path(sys.executable).with_name("tao-dagster")), "demo", "--rounds", "2", "--logs-from", str(incoming)]

    first = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "home" / "logs").iterdir()) == ["day1.csv", "day2.csv"]
    assert "round 1 of 2" in first.stdout and "round 2 of 2" in first.stdout
    assert "over 1 log-file partitions (day1.csv .. day1.csv)" in first.stdout
    assert "over 1 log-file partitions (day2.csv .. day2.csv)" in first.stdout
    assert first.stdout.count("promotion gate: ") == 2

    again = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "log-file partitions" not in again.stdout and "promotion gate" not in again.stdout
    assert again.stdout.count("since the last checkpoint: no round to run") == 2


@pytest.mark.e2e
def test_one_ctrl_c_stops_the_demo_at_once_without_retries(tmp_path, embedded_model_dir):
    """A terminal's Ctrl-C (SIGINT to the demo's whole process group) during vLLM generation: the demo exits
    with 130, no step is retried, and no process of its session (an engine, a log tailer) is left behind."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_demo_log(incoming / "day1.csv", 0, 100)
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(embedded_model_dir.parent)  # the embedded model, converted once per machine
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TAO_DOMAIN", "TAO_BASE_MODEL", "TAO_ENGINE")}
    env |= {"TAO_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    output = tmp_path / "demo.log"
    demo = [str(Path(sys.executable).with_name("tao-dagster")), "demo", "--logs-from", str(incoming)]
    with output.open("w") as out:
        proc = subprocess.Popen(demo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while "Processed prompts" not in output.read_text():  # vLLM is generating
            assert proc.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(1)
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = output.read_text()
    assert code == 130, log[-3000:]
    assert "interrupted: stopped" in log and "STEP_UP_FOR_RETRY" not in log
    assert "Failure: interrupted" in log and "reward_scores - STEP_START" not in log  # nothing ran after it
    assert not session_processes(proc.pid)


def session_processes(session: int) -> list[psutil.Process]:
    """Live processes of a session (exited ones not yet reaped do not count)."""
    alive = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == session and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive
