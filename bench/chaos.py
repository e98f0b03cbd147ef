"""Faults in a real run, timed from outside: a shortened quickstart (real Ray, FrozenLake, the tiny model) in which the
LWM's learner is killed mid-SFT, then one rollout actor and then the sim arm's learner are killed with SIGKILL mid-run.

    .venv/bin/python bench/chaos.py [--updates 10] [--out /tmp/chaos]

Prints, per kill: the time until a new process of that role runs, and for the learner until its arm trains a new
update; the updates lost (the run's `fault` rows); and the replay rows acknowledged before the kills against those
found after the run. The LWM is trained once into --out/base (its learner killed once) and reused."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
SHORT = ["world_model.data.steps=300", "world_model.sft.steps=30", "world_model.sft.eval_every=30",
         "world_model.sft.eval_samples=8", "agent.episodes_per_update=4", "arms.0.envs_per_actor=4",
         "arms.1.envs_per_actor=4", "eval.episodes=4", "eval.every_updates=4", "checkpoint.every_updates=2",
         "run.max_minutes=20"]


def agentworld(*args) -> list[str]:
    return [sys.executable, "-m", "agentworld", *args]


def procs(driver: int, title: str) -> dict[int, psutil.Process]:
    out = {}
    for p in psutil.Process(driver).children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith(title):
                out[p.pid] = p
        except psutil.Error:
            pass
    return out


def pointer(run: Path, arm: str) -> dict:
    try:
        return json.loads((run / "checkpoints" / f"agent-{arm}-last.json").read_text())
    except (OSError, ValueError):
        return {"version": 0}


def replay_keys(run: Path) -> set:
    from agentworld.replay import ReplayStore

    t = ReplayStore(str(run / "replay")).table()
    return set(zip(t.column("episode_id").to_pylist(), t.column("step").to_pylist()))


def until(what, timeout: float = 600.0, every: float = 0.1):
    t = time.time()
    while time.time() - t < timeout:
        if (got := what()):
            return got
        time.sleep(every)
    raise TimeoutError


def lwm_with_a_kill(out: Path) -> None:
    """`wm train` into out/base, its WorldModelLearner killed after SFT's first checkpoint (every 5 steps)."""
    from learners.world_model import read_progress

    run = out / "base"
    shutil.rmtree(run, ignore_errors=True)
    proc = subprocess.Popen(agentworld("wm", "train", QUICKSTART, f"run.output_dir={out}", "run.name=base", *SHORT,
                                       "checkpoint.wm_every_steps=5"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    until(lambda: (read_progress(str(run)) or {}).get("stage") == "sft", every=0.2)
    at = read_progress(str(run))["step"]
    old = procs(proc.pid, "ray::WorldModelLearner")
    t_kill = time.time()
    for victim in old.values():
        victim.kill()
    until(lambda: set(procs(proc.pid, "ray::WorldModelLearner")) - set(old) or proc.poll() is not None)
    back = time.time() - t_kill
    until(lambda: (read_progress(str(run)) or {"step": None}).get("step") != at or proc.poll() is not None, every=0.2)
    trains = time.time() - t_kill
    if proc.wait():
        raise SystemExit(f"wm train failed (exit {proc.returncode})")
    metrics = json.loads((run / "wm_stages.json").read_text())["metrics"]
    print(f"LWM learner SIGKILL (SFT checkpointed at step {at}): a new WorldModelLearner process after {back:.1f} s, "
          f"its next checkpoint (or the end of SFT) after {trains:.1f} s")
    for f in (m for m in metrics if m["kind"] == "fault"):
        print(f"  fault row: {f['what']}: {f['action']}; driver-side recovery {f['recovery_s']:.1f} s")
    print(f"  SFT steps in all: {[m['train_step'] for m in metrics if m['kind'] == 'wm'][-1]} (configured: 30)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--out", default="/tmp/chaos")
    a = ap.parse_args()
    out = Path(a.out)
    if not (out / "base" / "checkpoints" / "wm_done.json").exists():
        lwm_with_a_kill(out)
    run = out / "chaos"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(out / "base", run, ignore=shutil.ignore_patterns(".cluster.json"))
    proc = subprocess.Popen(agentworld("run", QUICKSTART, f"run.output_dir={out}", "run.name=chaos", *SHORT,
                                       f"agent.updates={a.updates}"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    until(lambda: pointer(run, "sim")["version"] >= 2, every=0.5)
    acked = replay_keys(run)

    actors = procs(proc.pid, "ray::RolloutActor")
    victim = next(iter(actors.values()))
    t_kill = time.time()
    victim.kill()
    until(lambda: set(procs(proc.pid, "ray::RolloutActor")) - set(actors))
    actor_back = time.time() - t_kill

    time.sleep(3)
    acked |= replay_keys(run)
    state = pointer(run, "sim")
    learners = procs(proc.pid, "ray::AgentLearner")
    t_kill = time.time()
    psutil.Process(state["pid"]).kill()
    until(lambda: set(procs(proc.pid, "ray::AgentLearner")) - set(learners))
    learner_back = time.time() - t_kill
    until(lambda: pointer(run, "sim")["version"] > state["version"] or proc.poll() is not None, every=0.2)
    learner_trains = time.time() - t_kill
    proc.wait()

    summary = json.loads((run / "summary.json").read_text())
    after = replay_keys(run)
    print(f"exit code {proc.returncode}, status {summary['status']}")
    print(f"rollout actor SIGKILL: a new RolloutActor process after {actor_back:.1f} s")
    print(f"sim learner SIGKILL (at checkpointed update {state['version']}): a new AgentLearner process after "
          f"{learner_back:.1f} s, a new checkpoint (update {state['version'] + 2}) after {learner_trains:.1f} s")
    for f in summary["faults"]:
        print(f"  fault row: {f['what']} {f.get('who')}: {f['action']}; updates lost {f.get('updates_lost')}, "
              f"driver-side recovery {f.get('recovery_s') and round(f['recovery_s'], 1)} s")
    print(f"replay rows acknowledged before the kills: {len(acked)}; of them after the run: {len(acked & after)} "
          f"(rows after the run: {len(after)})")
    print("updates per arm:", {arm: s["updates"] for arm, s in summary["arms"].items()})


if __name__ == "__main__":
    main()
