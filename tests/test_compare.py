"""`agentworld compare`: arms of several runs overlaid, seeds of one experiment as a band.

The run dirs are written by the real report writer from rows shaped like the learners' and pools' rows,
so the test is fast; tests/test_submit.py compares a real run fetched from a cluster."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from agentworld.compare import band, compare, series
from agentworld.config import load_config
from agentworld.report import write_report

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")


def fake_run(tmp_path, name, seed, overrides=(), sim_rate=1.0, pool=False):
    """A finished run dir: config.yaml and the report of eval rows on a learning curve that depends on the seed."""
    cfg = load_config(QUICKSTART, [f"run.name={name}", f"run.seed={seed}", f"run.output_dir={tmp_path}", *overrides])
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    rng = np.random.default_rng(seed)
    rows = []
    for arm, source in (("real", "real"), ("sim", "sim")):
        for u in range(0, 41, 5):
            steps = 220 * u
            success = min(1.0, u / 40 * (sim_rate if source == "sim" else 1.0) + rng.uniform(0, 0.1))
            rows.append(dict(kind="eval", arm=arm, source=source, init="scratch" if source == "real" else "lwm",
                             update=u, wall_time=12.0 * u + seed,
                             real_steps=steps if source == "real" else 0, sim_steps=steps if source == "sim" else 0,
                             wm_real_steps=3000, success=success, **{"return": success}, episodes=32,
                             policy_version=u))
        if pool:
            for t, n in ((0, 1), (60, 2), (120, 3), (300, 2)):
                rows.append(dict(kind="pool", arm=arm, source=source, wall_time=float(t), actors=n,
                                 decision="grow", reason="learner waited for rollouts"))
    write_report(run_dir, rows, OmegaConf.to_container(cfg))
    return run_dir


def test_seeds_of_one_experiment_share_a_series_and_other_configs_do_not(tmp_path):
    seeds = [fake_run(tmp_path, f"quick_s{s}", s) for s in range(3)]
    other = fake_run(tmp_path, "autoscaled", 0, ["arms.0.actors_max=4"], sim_rate=0.5, pool=True)
    got = {s["label"]: s for s in series(seeds + [other])}
    assert set(got) == {"real · quick", "sim · quick", "real · autoscaled", "sim · autoscaled"}
    assert len(got["sim · quick"]["evals"]) == 3 and got["sim · quick"]["seeds"] == [0, 1, 2]
    assert len(got["sim · autoscaled"]["evals"]) == 1
    assert list(got["real · autoscaled"]["pools"][0]["actors"]) == [1, 2, 3, 2]


def test_band_spans_the_seeds(tmp_path):
    s = series([fake_run(tmp_path, f"q{k}", k) for k in range(3)])[0]
    grid, mean, lo, hi = band(s["evals"], "x_total", "success")
    assert (lo <= mean).all() and (mean <= hi).all() and (hi - lo).max() > 0  # seeds differ
    assert grid[0] == min(e["x_total"].min() for e in s["evals"]) and grid[-1] == max(e["x_total"].max() for e in s["evals"])


def test_band_covers_seeds_whose_ranges_barely_overlap():
    """Seeds that ran at different speeds: on the wall-clock axis each x takes the seeds that reach it."""
    a = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [0.0, 0.5, 1.0]})
    b = pd.DataFrame({"x": [3.0, 4.0, 5.0], "y": [1.0, 1.0, 1.0]})
    grid, mean, lo, hi = band([a, b], "x", "y", points=6)
    assert list(grid) == [0, 1, 2, 3, 4, 5] and list(mean) == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_compare_writes_png_and_html_with_one_row_per_series(tmp_path):
    runs = [fake_run(tmp_path, f"quick_s{s}", s) for s in range(2)]
    runs.append(fake_run(tmp_path, "autoscaled", 0, ["arms.0.actors_max=4"], pool=True))
    page = compare(runs, tmp_path / "cmp")
    png = tmp_path / "cmp" / "compare.png"
    assert png.stat().st_size > 20_000 and png.read_bytes()[:4] == b"\x89PNG"
    text = page.read_text()
    assert text.count("<tr>") == 1 + 4 and "±" in text and "data:image/png;base64," in text
    assert "0, 1" in text  # the seeds of the experiment that has two
    assert "<th>starts from</th>" in text and text.count("<td class='txt'>scratch</td>") == 2  # each arm's init


def test_cli_compare_and_its_errors(tmp_path):
    run = fake_run(tmp_path, "one", 0)
    r = subprocess.run([sys.executable, "-m", "agentworld", "compare", str(run), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "o" / "compare.html").exists(), r.stderr
    r = subprocess.run([sys.executable, "-m", "agentworld", "compare", str(tmp_path / "nothing"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "metrics.parquet" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_report_summary_ignores_pool_rows(tmp_path):
    """The last row of an arm may be a pool decision: the summary still reads the learner's rows."""
    run = fake_run(tmp_path, "p", 0, pool=True)
    df = pd.read_parquet(run / "metrics.parquet")
    df.loc[df.kind == "pool", "wall_time"] = 10_000.0  # pool rows last
    summary = write_report(run, df, None)
    assert summary["arms"]["real"]["real_steps"] == 8800 and summary["arms"]["real"]["updates"] == 40


def _tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of TensorBoard event files (TFRecord frames of Event protos), read with tensorboardX's protos."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list] = {}
    for f in logdir.glob("events.out.tfevents.*"):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _rows():
    return [dict(kind="wm", stage="sft", train_step=100, wm_version=1, exact_match=0.5, wall_time=3.0),
            dict(kind="eval", arm="real", source="real", update=5, success=0.75, wall_time=60.0, real_steps=900),
            dict(kind="pool", arm="real", source="real", actors=2, decision="grow", reason="x", wall_time=61.0,
                 learner_starved=None)]


def test_tracker_writes_tensorboard_scalars_as_rows_arrive(tmp_path):
    from agentworld.tracking import FLUSH_S, Tracker

    cfg = load_config(QUICKSTART, [f"run.output_dir={tmp_path}"])
    tracker = Tracker(tmp_path / "run", cfg.tracking, OmegaConf.to_container(cfg), t0=1000.0)
    tracker.log(_rows())
    deadline = time.time() + 4 * FLUSH_S
    while "eval/real/success" not in (scalars := _tb_scalars(tmp_path / "run" / "tensorboard")):
        assert time.time() < deadline, "nothing written while the run goes on"
        time.sleep(0.5)
    assert scalars["eval/real/success"] == [(5, 0.75)] and scalars["eval/real/real_steps"] == [(5, 900.0)]
    assert scalars["wm/sft/exact_match"] == [(100, 0.5)] and scalars["pool/real/actors"] == [(0, 2.0)]
    assert not any(k.endswith(("decision", "learner_starved")) for k in scalars)  # text and missing values skipped
    tracker.close()


def test_tracker_logs_to_a_local_mlflow_file_store_when_enabled(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from agentworld.tracking import Tracker

    cfg = load_config(QUICKSTART, [f"run.output_dir={tmp_path}", "run.name=tracked", "tracking.mlflow=true",
                                   "tracking.tensorboard=false"])
    tracker = Tracker(tmp_path / "run", cfg.tracking, OmegaConf.to_container(cfg), t0=1000.0)
    tracker.log(_rows())
    tracker.close()
    client = mlflow.MlflowClient((tmp_path / "mlruns").as_uri())
    run = client.search_runs([client.get_experiment_by_name("agentworld").experiment_id])[0]
    assert run.info.run_name == "tracked" and run.data.params["agent.updates"] == "40"
    assert run.data.metrics["eval/real/success"] == 0.75 and run.data.metrics["pool/real/actors"] == 2.0


def test_compare_draws_every_declared_kind_with_data(tmp_path):
    """Runs with every kind of row: their declared measures get banded panels, the LWM's as a series of its own."""
    from agentworld.compare import _arm_series, _groups, _lwm_series, detail_panels
    from tests.test_report import every_kind_rows

    runs = []
    for seed in (0, 1):
        cfg = load_config(QUICKSTART, [f"run.name=every_s{seed}", f"run.seed={seed}", f"run.output_dir={tmp_path}"])
        (tmp_path / cfg.run.name).mkdir()
        (tmp_path / cfg.run.name / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        rows = [dict(r, wall_time=r["wall_time"] * (1 + 0.1 * seed)) for r in every_kind_rows()]
        write_report(tmp_path / cfg.run.name, rows, OmegaConf.to_container(cfg))
        runs.append(tmp_path / cfg.run.name)
    groups = _groups(runs)
    lwm = _lwm_series(groups)
    assert [s["label"] for s in lwm] == ["LWM"] and lwm[0]["seeds"] == [0, 1]
    titles = {(kind.name, title) for kind, title, _, _ in detail_panels(_arm_series(groups), lwm)}
    assert {("wm", "held-out next-state fidelity"), ("train", "time per update (s)"), ("pool", "rollout actors"),
            ("hybrid", "live fidelity and routing"), ("control", "obedience")} <= titles
    page = compare(runs, tmp_path / "cmp").read_text()
    assert page.count("<tr>") == 1 + 3 and "3,038 ± 0" in page  # counts with thousands separators
