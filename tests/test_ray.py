"""The Ray executor on a local 2-CPU cluster gives the local loop's rows, even when a worker is killed
mid-run (Ray retries its task; the driver writes each row once)."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from benchbench.cli import main

ray = pytest.importorskip("ray", reason="the test extra installs ray; without it the executor says so")


def rows(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    return {f["file"]: pd.read_csv(run_dir / f["file"], sep="\t").drop(columns="time").sort_values("idx")
            .reset_index(drop=True) for f in config["files"]}


def ray_task_pids():
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "ray::_certify_remote" in line]


def test_ray_executor_equals_the_local_loop_after_a_worker_is_killed(tmp_path, tiny_ddpm):
    args = ["run", "--purifiers", f"identity,sde:steps=3:model={tiny_ddpm}", "--num-images", "6", "--skip", "30",
            "--sigmas", "0.5", "--n0", "8", "--n", "300", "--batch-size", "100", "--no-report"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "benchbench.cli", *args, "--executor", "ray", "--threads", "1",
                             "--out", str(tmp_path / "ray")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 240
    while killed is None and proc.poll() is None and time.time() < deadline:
        pids = ray_task_pids()
        if pids:
            time.sleep(0.3)  # let it get into the task
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert killed is not None, "no Ray worker was seen running a task"
    assert proc.returncode == 0, err
    local, remote = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert local.keys() == remote.keys()
    for name in local:
        assert len(remote[name]) == 6
        pd.testing.assert_frame_equal(local[name], remote[name])
