"""Real envs stepped side by side (worldmodel/env.py env_threads, arms.<i>.env_threads): the same transitions in the
same order as one by one, never more at once than the limit, failures as the serial loop raises them, LWM-backed envs
still in one batch, and the limit validated in the config."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agentworld.config import ConfigError, load_config
from agentworld.envs import make_env
from agentworld.envs.base import Supervised
from agentworld.episodes import play_episodes
from agentworld.policy import behaviour_policy
from agentworld.worldmodel.env import env_threads, reset_all, step_all

QUICKSTART = str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")


def episodes(envs, seeds, threads: int, policy: str = "random") -> list:
    """Every transition of one seeded episode per env, as a rollout actor plays them with `threads`."""
    rows = []

    def record(i, t, obs, act, nobs, reward, term, trunc, info):
        rows.append((i, t, obs, act.action, nobs, reward, term, trunc, info))

    with env_threads(threads):
        play_episodes(envs, behaviour_policy(policy, 7), seeds, record)
    return rows


def test_frozenlake_threaded_matches_serial():
    """Slippery FrozenLake draws from each env's own RNG: threads must not mix them up or reorder results."""
    envs = [make_env("gymnasium:FrozenLake-v1", max_steps=20) for _ in range(16)]
    try:
        seeds = [100 + i for i in range(16)]
        serial = episodes(envs, seeds, 1)
        assert episodes(envs, seeds, 8) == serial
        assert len({row[0] for row in serial}) == 16 and len(serial) > 16
        acts = ["left", "down", "right", "up"] * 4
        runs = []
        for threads in (1, 8):
            with env_threads(threads):
                runs.append((reset_all(envs, seeds), step_all(envs, acts)))
        assert runs[0] == runs[1]
    finally:
        for env in envs:
            env.close()


def test_terminal_threaded_matches_serial():
    """Sandboxed shells, started from the sandbox's one spawner thread while steps run in worker threads."""
    envs = [make_env(env_id, max_steps=6) for env_id in ["terminal:count-lines", "terminal:train"] * 2]
    try:
        seeds = [0, 1, 2, 3]
        serial = episodes(envs, seeds, 1, "oracle")
        assert episodes(envs, seeds, 4, "oracle") == serial
        assert {row[0] for row in serial if row[8]["won"]} == {0, 1, 2, 3}
        with env_threads(4):
            threaded = reset_all(envs, seeds)  # each shell started while a worker thread ran its reset...
        out = step_all(envs, ["echo alive"] * 4)  # ...lives on once that thread has ended (bwrap --die-with-parent)
        assert [o[0].splitlines()[-2] for o in out] == ["alive"] * 4 and not any("shell" in o[0] for o in out)
        assert threaded == [env.reset(seed=s) for env, s in zip(envs, seeds)]
    finally:
        for env in envs:
            env.close()


class Slow:
    """A real env whose step waits `wait` seconds, counting how many steps and resets run at once."""

    live = peak = 0
    lock = threading.Lock()

    def __init__(self, k: int, wait: float = 0.05, fail: Exception | None = None):
        self.k, self.wait, self.fail = k, wait, fail
        self.env_id, self.domain, self.steps = f"slow:{k}", "test", 0

    def _enter(self):
        with Slow.lock:
            Slow.live += 1
            Slow.peak = max(Slow.peak, Slow.live)

    def _leave(self):
        with Slow.lock:
            Slow.live -= 1

    def reset(self, seed=None):
        self._enter()
        try:
            time.sleep(self.wait)
            return f"start {self.k} {seed}", {}
        finally:
            self._leave()

    def step(self, action):
        self._enter()
        try:
            time.sleep(self.wait)
            if self.fail is not None:
                raise self.fail
            self.steps += 1
            return f"{self.k}:{action}", float(self.k), False, False, {"thread": threading.current_thread().name}
        finally:
            self._leave()

    def close(self):
        pass


@pytest.fixture
def peak():
    Slow.live = Slow.peak = 0
    yield lambda: Slow.peak
    assert Slow.live == 0  # nothing still running once step_all or reset_all has returned or raised


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_the_limit_is_honoured_and_results_keep_their_order(threads, peak):
    envs = [Slow(k, wait=0.1 + 0.02 * (k % 3)) for k in range(12)]  # uneven waits: they finish out of order
    with env_threads(threads):
        out = step_all(envs, [f"a{k}" for k in range(12)])
        assert peak() == threads
        assert [o[0] for o in out] == [f"{k}:a{k}" for k in range(12)]
        assert [obs for obs, _ in reset_all(envs, list(range(12)))] == [f"start {k} {k}" for k in range(12)]
        assert peak() == threads
    assert all(o[4]["thread"] == "MainThread" for o in out) == (threads == 1)


def test_default_outside_an_actor_is_one_by_one(peak):
    out = step_all([Slow(k) for k in range(4)], ["x"] * 4)
    assert peak() == 1 and {o[4]["thread"] for o in out} == {"MainThread"}


@pytest.mark.parametrize("threads", [1, 4])
def test_a_failing_env_raises_as_it_does_serially(threads, peak):
    """The first failure in env order comes out of step_all, itself, after every other step has ended."""
    first, later = RuntimeError("env 2 died"), ValueError("env 5 died")
    envs = [Slow(k, fail={2: first, 5: later}.get(k), wait=0.2 if k == 2 else 0.02) for k in range(8)]
    with env_threads(threads), pytest.raises(RuntimeError) as e:
        step_all(envs, ["x"] * 8)
    assert e.value is first
    assert [env.steps for env in envs[:2]] == [1, 1]


class Dies(Slow):
    def step(self, action):
        raise OSError(f"the process of env {self.k} is gone")


@pytest.mark.parametrize("threads", [1, 4])
def test_a_supervised_crash_in_a_thread_truncates_and_recreates_as_serially(threads):
    built = []

    def factory(k):
        env = Dies(k) if k == 1 and not any(b.k == 1 for b in built) else Slow(k, wait=0.01)
        built.append(env)
        return env

    envs = [Supervised(lambda k=k: factory(k)) for k in range(4)]
    with env_threads(threads):
        out = step_all(envs, ["x"] * 4)
    obs, reward, term, trunc, info = out[1]
    assert obs == "[environment error: OSError: the process of env 1 is gone. The episode was ended.]"
    assert (reward, term, trunc, info["crashed"]) == (0.0, False, True, True)
    assert [e.crashes for e in envs] == [0, 1, 0, 0] and isinstance(envs[1].env, Slow)
    assert [o[0] for i, o in enumerate(out) if i != 1] == ["0:x", "2:x", "3:x"]


class Engine:
    version = 0

    def __init__(self):
        self.calls = []


class Sim:
    """An LWM-backed env: step_all must step all of these in one batch, in the calling thread."""

    batched = True
    env_id, domain = "sim:test", "test"

    def __init__(self, engine, k):
        self.engine, self.k = engine, k

    def reset(self, seed=None):
        return f"sim start {self.k}", {"thread": threading.current_thread().name}

    @staticmethod
    def step_batch(envs, actions):
        envs[0].engine.calls.append((len(envs), threading.current_thread().name))
        return [(f"sim {e.k}:{a}", 0.0, False, False, {}) for e, a in zip(envs, actions)]


def test_lwm_envs_keep_their_batched_step(peak):
    engine = Engine()
    envs = [Sim(engine, 0), Slow(1), Sim(engine, 2), Slow(3), Slow(4)]
    with env_threads(8):
        out = step_all(envs, ["a", "b", "c", "d", "e"])
        starts = reset_all(envs, [0] * 5)
    assert [o[0] for o in out] == ["sim 0:a", "1:b", "sim 2:c", "3:d", "4:e"]
    assert engine.calls == [(2, "MainThread")] and peak() == 3
    assert [s[0] for s in starts] == ["sim start 0", "start 1 0", "sim start 2", "start 3 0", "start 4 0"]
    assert starts[0][1]["thread"] == starts[2][1]["thread"] == "MainThread"


def test_env_threads_default_and_override():
    assert load_config(QUICKSTART).arms[0].env_threads == 8
    assert load_config(QUICKSTART, ["arms.0.env_threads=1"]).arms[0].env_threads == 1


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5"])
def test_a_bad_env_threads_names_the_key(value):
    with pytest.raises(ConfigError) as e:
        load_config(QUICKSTART, [f"arms.1.env_threads={value}"])
    assert "arms.1.env_threads" in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_env_threads_exits_2_with_one_line():
    r = subprocess.run([sys.executable, "-m", "agentworld", "validate", QUICKSTART, "arms.0.env_threads=0"],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "arms.0.env_threads" in lines[0] and ">= 1" in lines[0]


def test_mcp_servers_start_concurrently_under_uvloop_as_in_a_ray_worker(monkeypatch):
    """Ray's workers make uvloop the asyncio policy, and uvloop refuses to spawn from two loops at once; sqlite envs
    made and reset from concurrent env threads once failed with "Racing with another loop to spawn a process"."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import uvloop

    from agentworld.envs.mcp_tools import MCPToolEnv

    monkeypatch.setattr(asyncio, "new_event_loop", uvloop.new_event_loop)

    def start(seed):
        env = MCPToolEnv("sqlite-train")  # not Supervised: a failed start must fail the test, not be retried
        try:
            obs, _ = env.reset(seed=seed)
            return env.step('{"tool": "list_tables", "arguments": {}}')[0]
        finally:
            env.close()

    ballast = bytearray(1 << 30)  # a Ray worker's size: forking it is slow, which widens the race
    with ThreadPoolExecutor(8) as pool:
        observations = list(pool.map(start, range(16)))
    del ballast
    assert all("customers" in obs for obs in observations), observations
