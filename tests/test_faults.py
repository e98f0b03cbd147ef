"""Faults in a real run (issue 18): kill -9 of a rollout actor's and a learner's process mid-run, then a full replay
disk (a real tmpfs); an arm whose actors all die with replacements off (the watchdog); SIGTERM to the driver (a
partial report, exit 143), kill -9 of the driver and a rerun (its cluster's leftover processes ended, the real arm
resumed from its checkpoint). A shortened quickstart on real Ray, FrozenLake and the tiny model; the LWM is trained once
for the module (its learner killed mid-SFT on the way, and restarted from its checkpoint) and copied into each test's
run."""

import atexit
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.test_e2e import QUICK

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
ARMS = [*QUICK, "agent.episodes_per_update=4", "arms.0.envs_per_actor=4", "arms.1.envs_per_actor=4",
        "eval.episodes=4", "eval.every_updates=4", "checkpoint.every_updates=2"]


def agentworld(*args) -> list[str]:
    return [sys.executable, "-m", "agentworld", *args]


@pytest.fixture(scope="module")
def lwm_dir(tmp_path_factory):
    """A run dir with the LWM data, base model and LWM: each test copies it, so its run trains only the arms. On the
    way, its WorldModelLearner is killed (kill -9) mid-SFT after its first checkpoint; what that left is checked by
    test_a_killed_lwm_learner_goes_on_from_its_checkpoint."""
    from learners.world_model import read_progress

    out = tmp_path_factory.mktemp("faults")
    run = out / "base"
    with open(out / "base.log", "w") as log:
        proc = subprocess.Popen(agentworld("wm", "train", QUICKSTART, f"run.output_dir={out}", "run.name=base", *QUICK,
                                           "checkpoint.wm_every_steps=5"),
                                stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    proc.log, proc.log_from = out / "base.log", 0
    wait_for(lambda: (read_progress(str(run)) or {}).get("stage") == "sft", proc=proc)  # SFT's first checkpoint
    killed = ray_processes(proc.pid, "ray::WorldModelLearner")
    for p in killed:
        p.kill()
    (out / "lwm_kill.json").write_text(json.dumps({"killed": len(killed), "at": time.time()}))
    text = finish(proc)
    assert proc.returncode == 0, text[-3000:]
    return run


def mount_tmpfs(d: Path, size: str) -> Path | None:
    """A real small disk at `d`, where the machine lets us mount one (root with CAP_SYS_ADMIN, as here and in CI);
    unmounted (lazily) at exit."""
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True).returncode:
        return None
    atexit.register(subprocess.run, ["umount", "-l", str(d)])
    return d


def fresh_run(lwm_dir: Path, tmp_path: Path, name: str) -> Path:
    run = tmp_path / name
    shutil.copytree(lwm_dir, run, ignore=shutil.ignore_patterns(".cluster.json"))
    return run


def start(run: Path, *overrides) -> subprocess.Popen:
    """The run, its output to <run>.log (a pipe nobody reads while the test waits would fill and block the driver)."""
    log = open(run.parent / f"{run.name}.log", "a")
    proc = subprocess.Popen(agentworld("run", QUICKSTART, f"run.output_dir={run.parent}", f"run.name={run.name}",
                                       *ARMS, *overrides), stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    proc.log = run.parent / f"{run.name}.log"
    proc.log_from = log.tell()
    log.close()
    return proc


def wait_for(what, timeout: float = 600, proc: subprocess.Popen | None = None):
    t = time.time()
    while time.time() - t < timeout:
        if (got := what()):
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended first (exit {proc.returncode}):\n{proc.log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s")


def ray_processes(driver: int, title: str) -> list[psutil.Process]:
    """The driver's cluster processes whose title (Ray's proctitle for a worker) starts with `title`."""
    out = []
    for p in psutil.Process(driver).children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith(title):
                out.append(p)
        except psutil.Error:
            pass
    return out


def listening(driver: int) -> set[str]:
    """The addresses the driver's cluster listens on (the embedded cluster: loopback only)."""
    out = set()
    for p in [psutil.Process(driver), *psutil.Process(driver).children(recursive=True)]:
        try:
            out |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return out


def checkpointed(run: Path, arm: str) -> int:
    pointer = run / "checkpoints" / f"agent-{arm}-last.json"
    try:
        return json.loads(pointer.read_text())["version"]
    except (OSError, ValueError):
        return 0


def replay_keys(replay: Path) -> set:
    from agentworld.replay import ReplayStore

    t = ReplayStore(str(replay)).table()
    return set(zip(t.column("episode_id").to_pylist(), t.column("step").to_pylist()))


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    """The run's output, once it has ended."""
    proc.wait(timeout=timeout)
    return proc.log.read_bytes()[proc.log_from:].decode(errors="replace")


@pytest.mark.slow
def test_a_killed_actor_a_killed_learner_and_a_full_disk_are_survived(lwm_dir, tmp_path):
    run = fresh_run(lwm_dir, tmp_path, "chaos")
    disk = mount_tmpfs(tmp_path / "disk", "64m")  # the replay on a real small disk, where the machine allows
    replay = run / "replay" if disk is None else disk / "replay"
    if disk is not None:
        shutil.copytree(run / "replay", replay)
    proc = start(run, "agent.updates=6", f"replay.dir={replay}")
    wait_for(lambda: checkpointed(run, "sim") >= 2, proc=proc)  # the slower arm: it is mid-run
    addresses = listening(proc.pid)
    assert addresses and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in addresses), addresses
    acked = replay_keys(replay)
    actor = wait_for(lambda: ray_processes(proc.pid, "ray::RolloutActor"), proc=proc)[0]
    actor.kill()
    time.sleep(3)
    acked |= replay_keys(replay)
    psutil.Process(json.loads((run / "checkpoints" / "agent-sim-last.json").read_text())["pid"]).kill()
    if disk is not None:  # the disk fills: rounds fail, nothing is acknowledged, the driver says so; then space is back
        filler = disk / "filler"
        with open(filler, "wb") as f:
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
        wait_for(lambda: "No space left on device" in proc.log.read_text(errors="replace"), timeout=300, proc=proc)
        acked |= replay_keys(replay)
        filler.unlink()
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["failures"] == {}
    faults = summary["faults"]
    replaced = [f for f in faults if f["what"] == "rollout actor"]
    restarted = [f for f in faults if f["what"] == "learner"]
    assert replaced and replaced[0]["action"].startswith("replaced by"), faults
    assert [f["arm"] for f in restarted] == ["sim"] and restarted[0]["action"].startswith("restarted from update ")
    assert restarted[0]["updates_lost"] >= 0 and restarted[0]["recovery_s"] > 0
    if disk is not None:
        assert any(f["what"] == "rollout round" and "No space left on device" in f["cause"] for f in faults), faults
    assert "Faults" in (run / "report.html").read_text()
    # the arms finished, and the restarted one's updates go on from its checkpoint: each update trained once
    df = pd.read_parquet(run / "metrics.parquet")
    for arm in ("real", "sim"):
        assert summary["arms"][arm]["updates"] == 6
        assert sorted(df[(df.kind == "train") & (df.arm == arm)]["update"]) == list(range(1, 7))
    assert acked <= replay_keys(replay)  # no acknowledged row lost


@pytest.mark.slow
def test_the_watchdog_fails_an_arm_whose_actors_all_died(lwm_dir, tmp_path):
    run = fresh_run(lwm_dir, tmp_path, "stall")
    # the real arm alone (the watchdog is the same for every arm kind)
    proc = start(run, "agent.updates=100000", "pool.max_replacements=0", "run.stall_timeout_s=30",
                 "run.max_minutes=30", "checkpoint.every_updates=1",
                 "arms=[{name: real, source: real, env: frozenlake, envs_per_actor: 4}]")
    wait_for(lambda: checkpointed(run, "real") >= 1, proc=proc)  # its actor is up
    t0 = time.time()
    while time.time() - t0 < 10:  # every rollout actor, including one Ray was still placing
        for p in ray_processes(proc.pid, "ray::RolloutActor"):
            p.kill()
        time.sleep(0.5)
    out = finish(proc)
    assert proc.returncode == 1, out[-3000:]
    assert time.time() - t0 < 600  # the watchdog, not max_minutes, ended it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and set(summary["failures"]) == {"real"}
    for why in summary["failures"].values():
        assert "no progress for 30 s" in why and "0 live rollout actor(s)" in why, why
    assert "failed" in out and "report.html" in (run / "report.html").name


def figures(run: Path) -> tuple[dict, list]:
    """What a run trained and scored: each arm's summary, the step counters and clocks left out (a resumed run also
    counts the steps its lost timeline spent), and its train and eval rows' figures in order."""
    arms = {arm: {k: v for k, v in a.items() if "steps" not in k and "wall" not in k and not k.endswith("_s")}
            for arm, a in json.loads((run / "summary.json").read_text())["arms"].items()}
    df = pd.read_parquet(run / "metrics.parquet")
    df = df[df.kind.isin(["train", "eval"])].sort_values(["arm", "kind", "update"])
    cols = ["arm", "kind", "update", "loss", "mean_reward", "batch_steps", "success", "return"]
    return arms, [tuple(None if pd.isna(x) else round(float(x), 4) if isinstance(x, float) else x for x in row)
                  for row in df[cols].itertuples(index=False)]


@pytest.mark.slow
def test_sigterm_writes_a_partial_report_and_a_rerun_after_kill_9_resumes(lwm_dir, tmp_path):
    """...and with max_staleness 0, the interrupted-and-resumed run trains and scores exactly what an uninterrupted
    one does, and its replay holds the same episodes (each round after a checkpoint twice: the lost timeline's, and
    the same one played again)."""
    from agentworld.replay import ReplayStore

    # the real arm alone (an arm resumes from its checkpoint the same way whatever its kind), on CliffWalking: its
    # returns differ between episodes from the start, so every update trains
    sync = ("agent.updates=4", "checkpoint.every_updates=1", "agent.max_staleness=0", "envs.cliffwalking.max_steps=15",
            "arms=[{name: real, source: real, env: cliffwalking, envs_per_actor: 4}]")
    ref = fresh_run(lwm_dir, tmp_path, "uninterrupted")
    proc = start(ref, *sync)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]

    run = fresh_run(lwm_dir, tmp_path, "resume")
    wm_rows = ReplayStore(str(run / "replay")).count(arm="wm_data")
    proc = start(run, *sync)
    wait_for(lambda: checkpointed(run, "real") >= 1, proc=proc)  # 1 update of 4 in
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=300)
    assert proc.returncode == 143, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == signal.SIGTERM
    assert "Run status: interrupted" in (run / "report.html").read_text()

    # kill -9 of the driver: its cluster's processes are left; the rerun ends them and resumes the arm
    proc = start(run, *sync)
    at = checkpointed(run, "real")
    wait_for(lambda: checkpointed(run, "real") > at, proc=proc)
    left = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    time.sleep(2)
    survivors = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    second = proc.log.read_bytes()[proc.log_from:].decode(errors="replace")
    resumed = re.search(r"arm real: resuming from update (\d+)", second)  # mid-run: the test below means something
    assert resumed and 1 <= int(resumed.group(1)) == at < 4, second[-3000:]
    proc = start(run, *sync)
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    # from its last checkpoint (the killed driver's learner may write one more before its cluster ends it)
    resumed = re.search(r"arm real: resuming from update (\d+)", out)
    assert resumed and int(resumed.group(1)) > at, out[-3000:]
    for p in survivors:  # what the killed driver left running, the rerun ended, naming it
        assert not (p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    if survivors:
        assert "left behind by a killed earlier run" in out
    # every rerun reused the run dir's base model, LWM and LWM data
    assert "reusing base model" in out and "reusing trained LWM" in out, out[-3000:]
    assert ReplayStore(str(run / "replay")).count(arm="wm_data") == wm_rows
    df = pd.read_parquet(run / "metrics.parquet")
    assert sorted(df[(df.kind == "train") & (df.arm == "real")]["update"]) == list(range(1, 5))
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    # the same figures as the uninterrupted run (where the real arm trained: some of its updates have a loss, where
    # returns differed within the batch), and the same episodes
    arms, rows = figures(run)
    assert sum(r[3] is not None for r in rows if r[:2] == ("real", "train")) >= 2, rows
    assert (arms, rows) == figures(ref)
    episodes = [{(e, t, a, r) for e, t, a, r in zip(*(tab.column(c).to_pylist()
                                                    for c in ("episode_id", "step", "action", "reward")))}
                for tab in (ReplayStore(str(d / "replay")).table() for d in (run, ref))]
    assert episodes[0] == episodes[1]


def test_a_killed_lwm_learner_goes_on_from_its_checkpoint(lwm_dir):
    kill = json.loads((lwm_dir.parent / "lwm_kill.json").read_text())
    assert kill["killed"] == 1
    out = (lwm_dir.parent / "base.log").read_text()
    said = re.search(r"the LWM learner died \(.*\); restarting it from sft step (\d+)", out)
    assert said and 5 <= int(said.group(1)) < 30 and int(said.group(1)) % 5 == 0, out[-3000:]
    metrics = json.loads((lwm_dir / "wm_stages.json").read_text())["metrics"]
    faults = [r for r in metrics if r["kind"] == "fault"]
    # the new learner itself says it went on from the checkpoint, not from the start
    assert [f["action"] for f in faults] == [f"restarted from sft step {said.group(1)}"], faults
    assert faults[0]["what"] == "LWM learner" and 0 < faults[0]["recovery_s"] < 300
    wm = [r for r in metrics if r["kind"] == "wm"]
    assert [r["stage"] for r in wm] == ["untrained", "sft"]  # the dead learner's rows came along, once
    assert wm[-1]["train_step"] == 30  # QUICK's 30 SFT steps in all, not 30 more after the restart
    assert not (lwm_dir / "checkpoints" / "wm-progress.json").exists()  # finished: a retrain starts from scratch
    assert (lwm_dir / "checkpoints" / "wm" / "config.json").exists()


# -- the parts, without a whole run -------------------------------------------------------------------------------

def test_a_pool_replaces_a_dead_actor_ends_its_round_and_stops_at_max_replacements(ray_local, tmp_path):
    import ray

    from actors.pool import ActorPool
    from actors.rollout import RolloutSpec
    from agentworld.arms.real import Real
    from agentworld.config import AgentConfig, ArmConfig, EnvConfig, Runtime
    from agentworld.replay import ReplayService
    from learners.weight_sync import WeightRegistry

    env = EnvConfig(id="gymnasium:FrozenLake-v1", kwargs={"map_name": "4x4", "is_slippery": False}, max_steps=30)
    spec = RolloutSpec(run_id="t", arm=ArmConfig(name="real", envs_per_actor=2), kind=Real(), env=env, domain="grid",
                       agent=AgentConfig(episodes_per_update=4, max_staleness=10**6), runtime=Runtime(), seed=0)
    replay = ReplayService.options(num_cpus=0).remote(str(tmp_path / "replay"))
    registry = WeightRegistry.options(num_cpus=0).remote()
    pool = ActorPool(spec, replay, registry, lo=1, hi=2, start=2, num_cpus=0.1, interval_s=60, t0=time.time(),
                     episodes_per_update=4, max_replacements=1)
    wait_for(lambda: ray.get(replay.count.remote()) > 0, timeout=120)
    assert pool.replace_dead() == []  # all alive
    victim = pool.members[0]
    ray.get(registry.begin_round.remote("policy/real", victim["id"], 0, 10**6))  # as if it died mid-round
    ray.kill(victim["actor"])
    rows = wait_for(pool.replace_dead, timeout=60)
    assert len(rows) == 1 and rows[0]["kind"] == "fault" and rows[0]["who"] == victim["id"]
    assert rows[0]["action"] == "replaced by real2" and pool.size == 2
    rounds = ray.get(registry.__ray_call__.remote(lambda self: dict(self.admission.rounds.get("policy/real", {}))))
    assert victim["id"] not in rounds
    before = ray.get(replay.count.remote())
    wait_for(lambda: ray.get(replay.count.remote()) > before, timeout=120)  # the pool plays on
    ray.kill(pool.members[0]["actor"])
    rows = wait_for(pool.replace_dead, timeout=60)
    assert rows[0]["action"].startswith("not replaced: pool.max_replacements (1) used") and pool.size == 1
    pool.interval_s = 0  # a scaling decision now, with the learner starved: it must not replace the lost actor
    row = pool.step("waiting for rollouts", 0, 0)
    assert row["decision"] == "hold" and pool.size == 1
    pool.stop()


def test_a_rerun_ends_what_a_killed_driver_left_and_refuses_a_live_driver(tmp_path):
    from agentworld.cluster import CLUSTER_FILE, claim_run_dir
    from agentworld.config import ConfigError

    def rec(p: subprocess.Popen) -> dict:
        return {"pid": p.pid, "created": psutil.Process(p.pid).create_time()}

    gone = subprocess.Popen(["true"])
    gone_rec = rec(gone)
    gone.wait()
    left = subprocess.Popen(["sleep", "60"])
    (tmp_path / CLUSTER_FILE).write_text(json.dumps({"driver": gone_rec,
                                                     "processes": [dict(rec(left), name="ray::DashboardAgent")]}))
    assert claim_run_dir(tmp_path) == [f"ray::DashboardAgent ({left.pid})"]
    assert left.wait(timeout=10) == -signal.SIGKILL
    assert not (tmp_path / CLUSTER_FILE).exists() and claim_run_dir(tmp_path) == []

    driver = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / CLUSTER_FILE).write_text(json.dumps({"driver": rec(driver), "processes": []}))
        with pytest.raises(ConfigError, match=f"in use by a running agentworld \\(pid {driver.pid}\\)"):
            claim_run_dir(tmp_path)
    finally:
        driver.kill()


def test_the_summary_and_report_say_how_the_run_ended(tmp_path):
    from agentworld.metrics import metric_row
    from agentworld.report import write_report

    base = [metric_row("eval", arm="a", source="real", update=0, success=0.5, wall_time=1.0, real_steps=0, sim_steps=0,
                       wm_real_steps=0, episodes=4, length=3.0, **{"return": 0.5}),
            metric_row("fault", arm="a", source="real", what="rollout actor", who="a0", cause="died",
                       action="replaced by a2", wall_time=2.0)]
    s = write_report(tmp_path, base)
    assert s["status"] == "completed" and s["failures"] == {} and [f["who"] for f in s["faults"]] == ["a0"]
    assert "Faults" in (tmp_path / "report.html").read_text()
    failed = base + [metric_row("fault", arm="a", what="stall", cause="no progress for 20 s", action="arm failed",
                                wall_time=3.0)]
    s = write_report(tmp_path, failed)
    assert s["status"] == "failed" and s["failures"] == {"a": "no progress for 20 s"}
    assert s["arms"]["a"]["failed"] == "no progress for 20 s"
    s = write_report(tmp_path, failed + [metric_row("fault", what="run", cause="SIGTERM", action="interrupted",
                                                     signal=15, wall_time=4.0)])
    assert s["status"] == "interrupted" and s["signal"] == 15
    assert "Run status: interrupted" in (tmp_path / "report.html").read_text()


def test_a_restarted_arm_starts_a_new_timeline_in_the_registry(ray_local):
    """A learner restarted from an earlier checkpoint (or from update 0, without one) publishes versions the dead one
    had already published: the registry forgets the dead one's, so actors take the new ones."""
    import ray

    from learners.weight_sync import WeightRegistry

    registry = WeightRegistry.options(num_cpus=0).remote()
    ray.get(registry.publish.remote("policy/a", 5, ["dead learner's v5"]))
    assert ray.get(registry.begin_round.remote("policy/a", "a0", 5, 0))
    ray.get(registry.forget.remote("policy/a"))
    ray.get(registry.publish.remote("policy/a", 1, ["new v1"]))
    assert ray.get(registry.latest.remote("policy/a", 0)) == (1, ["new v1"])
    assert ray.get(registry.close_batch.remote("policy/a", 2, 0))  # the dead timeline's round holds nothing up


@pytest.fixture
def small_disk(tmp_path):
    d = mount_tmpfs(tmp_path / "disk", "1m")
    if d is None:
        pytest.skip("cannot mount a tmpfs here")
    return d


def test_a_really_full_disk_acknowledges_nothing_and_every_acknowledged_row_is_recovered(small_disk):
    from agentworld.replay import ReplayStore
    from agentworld.schema import rows_to_batch

    def batch(ep: str, n: int = 20):
        return rows_to_batch([dict(run_id="r", arm="a", episode_id=ep, step=i, env_id="e", domain="d", source="real",
                                   obs="o" * 500, action="x", next_obs="n" * 500, reward=0.0, terminated=False,
                                   truncated=False, policy_version=0, actor_id="a") for i in range(n)])

    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 300_000)
    store, acked, failed = ReplayStore(str(small_disk / "replay")), [], 0
    for k in range(200):  # ~20 KB a batch: the disk fills well before
        try:
            store.add(batch(f"a{k}"))
            acked.append(f"a{k}")
        except OSError as e:
            assert e.errno == 28  # ENOSPC, raised to the caller
            failed += 1
            if failed == 3:
                break
    assert failed == 3 and store.rows == 20 * len(acked)
    filler.unlink()  # space comes back: adds go on
    for k in range(5):
        store.add(batch(f"b{k}"))
        acked.append(f"b{k}")
    again = ReplayStore(str(small_disk / "replay"))
    assert sorted(set(again.table()["episode_id"].to_pylist())) == sorted(acked) and again.rows == 20 * len(acked)


def test_a_run_that_failed_before_its_arms_still_gets_its_report(tmp_path):
    from agentworld.metrics import metric_row
    from agentworld.report import write_report

    df = pd.DataFrame([metric_row("fault", what="before the arms", cause="RuntimeError: no LWM data",
                                  action="run failed", wall_time=1.0)])
    df.to_parquet(tmp_path / "metrics.parquet")
    summary = write_report(tmp_path, df, {}, success_target=0.5)
    assert summary["status"] == "failed" and summary["arms"] == {}
    assert "no LWM data" in (tmp_path / "report.html").read_text()


def test_a_task_error_is_told_by_its_own_first_line(ray_local):
    import ray

    from agentworld.metrics import first_line

    @ray.remote(num_cpus=0)
    def fails():
        raise RuntimeError("MCP server x did not start\nits log: ...")

    with pytest.raises(ray.exceptions.RayTaskError) as e:
        ray.get(fails.remote())
    assert first_line(e.value) == "RuntimeError: MCP server x did not start"
