"""`agentworld submit` and `agentworld jobs`: an experiment as a Ray Job on a real Ray head (started with
`ray start --head` on 127.0.0.1), its run dir written to storage and fetched back; and the storage copy."""

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from agentworld.storage import download, upload
from tests.local_head import LOOPBACK_ENV, free_port, ray_head
from tests.test_e2e import QUICK

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = "experiments/quickstart.yaml"


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "agentworld", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **LOOPBACK_ENV})


@pytest.mark.parametrize("storage", ["local", "uri"])
def test_run_dir_goes_to_storage_and_back(tmp_path, storage):
    run = tmp_path / "runs" / "r1"
    (run / "checkpoints" / "wm").mkdir(parents=True)
    (run / "report.html").write_text("<html>report</html>")
    (run / "checkpoints" / "wm" / "model.safetensors").write_bytes(b"\x00weights")
    place = str(tmp_path / "store") if storage == "local" else (tmp_path / "store").as_uri()
    upload(run, place)
    upload(run, place)  # a rerun overwrites in place
    back = download(place, "r1", tmp_path / "fetched")
    assert (back / "report.html").read_text() == "<html>report</html>"
    assert (back / "checkpoints" / "wm" / "model.safetensors").read_bytes() == b"\x00weights"
    with pytest.raises(FileNotFoundError, match="no run dir 'r2'"):
        download(place, "r2", tmp_path / "fetched")


def test_submit_checks_everything_before_contacting_the_cluster(tmp_path):
    outside = tmp_path / "q.yaml"
    outside.write_text((ROOT / QUICKSTART).read_text())
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args, words in (([QUICKSTART, "agent.lrr=1"], ["agent.lrr"]),
                        ([QUICKSTART, "--storage", "relative/dir"], ["run.storage"]),
                        ([str(outside)], ["inside the working dir"]),
                        ([QUICKSTART], ["cannot reach the Ray dashboard", dead])):
        r = cli("submit", *args, "--address", dead)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and all(w in lines[0] for w in words), r.stderr


def _dashboard_up(url: str, timeout: float = 60) -> None:
    import time

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=5)
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


@pytest.mark.slow
def test_submit_a_short_quickstart_to_a_local_head_and_fetch_its_report(tmp_path):
    dash = free_port()
    url = f"http://127.0.0.1:{dash}"
    storage = (tmp_path / "storage").as_uri()
    # a weak LWM (this tests the submission, not the learning) and one arm, which autoscales
    overrides = ["run.name=submitted", *QUICK, "world_model.data.steps=120", "world_model.sft.steps=10",
                 "world_model.sft.eval_every=10", "agent.updates=2", "pool.interval_s=3",
                 "arms=[{name: real, source: real, env: frozenlake, envs_per_actor: 8, actors_max: 2}]"]
    with ray_head(["--num-cpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"]):
        _dashboard_up(url)
        r = cli("submit", QUICKSTART, *overrides, "--address", url, "--storage", storage, "--wait",
                "--fetch", str(tmp_path / "fetched"), timeout=900)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
        job_id = re.search(r"submitted job (\S+)", r.stdout).group(1)
        assert "python -m agentworld run experiments/quickstart.yaml run.name=submitted" in r.stdout  # the job's log
        status = cli("jobs", "status", job_id, "--address", url)
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout and "run submitted" in status.stdout
        logs = cli("jobs", "logs", job_id, "--address", url)
        assert "run dir copied to" in logs.stdout
        assert "not running" in cli("jobs", "stop", job_id, "--address", url).stdout
        again = cli("jobs", "fetch", job_id, "--address", url, "--out", str(tmp_path / "again"))
        assert again.returncode == 0 and (tmp_path / "again" / "submitted" / "report.html").exists()
        missing = cli("jobs", "status", "no-such-job", "--address", url)
        assert missing.returncode == 2 and "no-such-job" in missing.stderr

    run = tmp_path / "fetched" / "submitted"
    for name in ("report.html", "curves.png", "summary.json", "metrics.parquet", "config.yaml"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["arms"]) == {"real"} and summary["arms"]["real"]["updates"] == 2
    pool = pd.read_parquet(run / "metrics.parquet").query("kind == 'pool'").sort_values("wall_time")
    assert set(pool.arm) == {"real"} and (pool.decision.iloc[0], pool.decision.iloc[-1]) == ("start", "stop")
    assert pool.actors.between(0, 2).all()

    out = cli("compare", str(run), "--out", str(tmp_path / "cmp"))  # a real run, fetched from the cluster
    assert out.returncode == 0 and (tmp_path / "cmp" / "compare.png").stat().st_size > 20_000


def test_job_runs_this_checkout_or_the_installed_package(tmp_path):
    from agentworld.submit import job_request

    src = job_request(QUICKSTART, ["agent.updates=3"], working_dir=str(ROOT), storage="s3://bucket/runs")
    assert src["entrypoint"] == ("python -m agentworld run experiments/quickstart.yaml agent.updates=3 "
                                 "run.storage=s3://bucket/runs")
    assert src["runtime_env"]["working_dir"] == str(ROOT) and ".venv" in src["runtime_env"]["excludes"]
    assert src["metadata"] == {"agentworld_run": "quickstart", "agentworld_storage": "s3://bucket/runs"}
    inst = job_request(str(ROOT / QUICKSTART), ["run.name=x y"], installed=True)
    assert inst["entrypoint"] == "agentworld run quickstart.yaml 'run.name=x y'"  # quoted for the job's shell
    staged = Path(inst["runtime_env"]["working_dir"])
    assert [p.name for p in staged.iterdir()] == ["quickstart.yaml"]  # only the config is uploaded
    assert inst["submission_id"].startswith("agentworld-x-y-")
    shutil.rmtree(staged)
