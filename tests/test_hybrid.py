"""The hybrid arm's env on real FrozenLake: shadow execution, the fidelity gate's routing and recovery, and
exact real-step accounting. The LWMs here are tabular: one learned from real transitions (exact) and one
that always predicts "nothing changes" (bad); the env is always the real one."""

import json
import random

from agentworld.config import HybridConfig
from agentworld.episodes import play_episodes
from agentworld.envs import make_env
from agentworld.models.engine import Generation
from agentworld.policy import RandomPolicy
from agentworld.schema import rows_to_batch
from agentworld.worldmodel.env import WorldModelEnv, step_all
from agentworld.worldmodel.hybrid import FidelityGate, HybridEnv, hybrid_metric_rows
from agentworld.worldmodel.prompt import render_state

ENV = "gymnasium:FrozenLake-v1"
KW = {"map_name": "4x4", "is_slippery": False}


def real_env():
    return make_env(ENV, max_steps=30, **KW)


class TableLWM:
    """A world model that is a table of real transitions, keyed by the prompt's last user turn
    ("State: ... Action: ..."); unknown keys and `bad=True` predict the state unchanged."""

    def __init__(self, table: dict[str, str], bad: bool = False, version: int = 1):
        self.table, self.bad, self.version = table, bad, version

    def render(self, messages, add_generation_prompt=True):
        return json.dumps(messages)

    def generate(self, prompts, max_new_tokens=64, temperature=0.0, **_):
        out = []
        for p in prompts:
            user = json.loads(p)[-1]["content"]
            state = user.split("State:\n", 1)[1].rsplit("\nAction:", 1)[0]
            out.append(Generation(render_state(state, 0.0, False) if self.bad else
                                  self.table.get(user, render_state(state, 0.0, False))))
        return out


def learn_table() -> dict[str, str]:
    """Every (state, action) -> next state of the real env: breadth-first over the states it shows, each
    reached by replaying its path from reset."""
    env, table = real_env(), {}
    start, info = env.reset(seed=0)
    paths, queue = {start: []}, [start]
    while queue:
        obs = queue.pop(0)
        for a in info["admissible_actions"]:
            env.reset(seed=0)
            for b in paths[obs]:
                env.step(b)
            nobs, r, term, _, _ = env.step(a)
            table[f"State:\n{obs}\nAction: {a}"] = render_state(nobs, r, term)
            if not term and nobs not in paths:
                paths[nobs] = paths[obs] + [a]
                queue.append(nobs)
    return table


TABLE = learn_table()


def hybrid(engine, gate, shadow_fraction, counted=None):
    """A HybridEnv whose real env's steps are also recorded in `counted` (the actions it really took)."""
    real = real_env()
    if counted is not None:
        step = real.step
        real.step = lambda a: (counted.append(a), step(a))[1]
    sim = WorldModelEnv(engine, ENV, real.domain, [("unused", {})], max_steps=30, history_turns=1)
    return HybridEnv(sim, real, gate, shadow_fraction)


def test_shadow_execution_reproduces_the_real_transition():
    actions = ["right", "right", "down", "down", "down", "right"]  # a winning path on the 4x4 map
    ref = real_env()
    start, _ = ref.reset(seed=3)
    real = [ref.step(a) for a in actions]
    assert real[-1][1] == 1.0 and real[-1][2]

    counted = []
    h = hybrid(TableLWM(TABLE), FidelityGate(HybridConfig(window=8)), shadow_fraction=1.0, counted=counted)
    obs, _ = h.reset(seed=3)
    assert obs == start  # the simulation starts from the seeded real env's initial state
    for a, (robs, rr, rterm, _, _) in zip(actions, real):
        obs, r, term, _, info = h.step(a)
        assert (obs, r, term) == (robs, rr, rterm) and info["source"] == "sim"
        assert info["fidelity_match"] is True and info["real_env_steps"] == 1
    assert counted == actions and h.gate.fidelity == 1.0

    # the bad LWM's "nothing changes" is caught by the same shadow: the real env moved
    bad = hybrid(TableLWM(TABLE, bad=True), FidelityGate(HybridConfig(window=8)), shadow_fraction=1.0)
    bad.reset(seed=3)
    assert bad.step("right")[4]["fidelity_match"] is False
    assert bad.step("left")[4]["fidelity_match"] is False  # the real env is at column 1; the sim thinks 0


def test_shadow_replays_the_action_prefix_and_counts_every_real_step():
    counted, infos = [], []
    h = hybrid(TableLWM(TABLE), FidelityGate(HybridConfig(window=8)), shadow_fraction=0.3, counted=counted)
    taken = []
    for seed in range(40):
        h.reset(seed=seed)
        episode, done = [], False
        start = len(counted)
        while not done:
            a = random.Random(seed * 31 + len(episode)).choice(["left", "down", "right", "up"])
            _, _, term, trunc, info = h.step(a)
            episode.append(a)
            infos.append(info)
            done = term or trunc
            # the real env has applied exactly the episode's prefix up to the last shadowed step
            assert counted[start:] == episode[: len(counted) - start]
        taken.append(episode)
    shadowed = [i for i in infos if i.get("fidelity_match") is not None]
    assert 0 < len(shadowed) < len(infos)
    assert sum(i["real_env_steps"] for i in infos) == len(counted) == h.real_steps
    assert all(i["fidelity_match"] for i in shadowed)  # an exact LWM matches reality after any prefix


def _play(envs, policy, rounds, seed0, rows):
    """Rounds of episodes through play_episodes, rows as the rollout actor writes them."""
    for k in range(rounds):
        def record(i, t, obs, act, nobs, reward, term, trunc, info, k=k):
            rows.append(dict(run_id="t", arm="hybrid", episode_id=f"{k}-{i}", step=t, env_id=ENV, domain="gridworld",
                             source=info["source"], obs=obs, action=act.action, next_obs=nobs, reward=float(reward),
                             terminated=bool(term), truncated=bool(trunc), policy_version=0, wm_version=1,
                             actor_id="a0", shadow_steps=info.get("shadow_steps"),
                             fidelity_match=info.get("fidelity_match"), fidelity=info.get("fidelity"),
                             created_at=1000.0 + seed0 // 10 + k, logprobs=act.logprobs, choices=act.choices))
        play_episodes(envs, policy, [seed0 + k * len(envs) + i for i in range(len(envs))], record)


def test_low_fidelity_routes_to_real_and_recovery_routes_back():
    gate = FidelityGate(HybridConfig(window=8, threshold=0.8, recover_threshold=0.9, min_scores=4))
    counted = []
    bad, good = TableLWM(TABLE, bad=True), TableLWM(TABLE, version=2)
    envs = [hybrid(bad, gate, shadow_fraction=0.5, counted=counted) for _ in range(4)]
    policy, rows = RandomPolicy(seed=1), []

    _play(envs, policy, 3, 0, rows)  # the bad LWM: shadow steps mismatch, the gate routes
    assert gate.routed and [s["to"] for s in gate.switches] == ["real"]
    n_bad = len(rows)
    _play(envs, policy, 2, 100, rows)
    routed = [r for r in rows[n_bad:] if r["source"] == "real"]
    assert routed, "episodes that start while routed run in the real env"
    for r in routed:  # routed rows are real transitions (the deterministic real env's, as the table knows them)
        key = f"State:\n{r['obs']}\nAction: {r['action']}"
        assert key not in TABLE or TABLE[key] == render_state(r["next_obs"], r["reward"], r["terminated"])
    assert sum(f"State:\n{r['obs']}\nAction: {r['action']}" in TABLE for r in routed) > len(routed) // 2
    assert gate.routed  # the bad LWM, scored on the routed real steps, stays below the threshold

    for h in envs:  # a new LWM version arrives (as the LWM learner would publish it)
        h.sim.engine = h.engine = good
    _play(envs, policy, 4, 200, rows)
    assert [s["to"] for s in gate.switches] == ["real", "sim"] and not gate.routed
    assert rows[-1]["source"] == "sim"  # back in the simulator

    # real-step accounting: routed rows cost 1 each, simulated rows their shadow steps; nothing else
    batch = rows_to_batch(rows)
    accounted = sum(1 if r["source"] == "real" else (r["shadow_steps"] or 0) for r in rows)
    assert accounted == len(counted) == sum(h.real_steps for h in envs)
    assert batch.column("shadow_steps").to_pylist() == [r["shadow_steps"] for r in rows]
    series = hybrid_metric_rows(rows, "hybrid", t0=1000.0, bin_s=1.0)
    assert series[-1]["real_steps"] == len(counted)
    assert any(s["routed_share"] == 1.0 for s in series) and series[-1]["routed_share"] < 1.0
    assert series[-1]["fidelity"] >= 0.9


def test_step_all_batches_hybrid_envs_with_one_generation():
    calls = []

    class Counting(TableLWM):
        def generate(self, prompts, **kw):
            calls.append(len(prompts))
            return super().generate(prompts, **kw)

    gate, lwm = FidelityGate(HybridConfig()), Counting(TABLE)
    envs = [hybrid(lwm, gate, 0.0) for _ in range(3)]
    for k, h in enumerate(envs):
        h.reset(seed=k)
    envs = [envs[0], real_env(), envs[1], envs[2]]
    envs[1].reset(seed=0)
    out = step_all(envs, ["down"] * 4)
    assert calls == [3] and out[0][0] == out[1][0] == out[2][0]
