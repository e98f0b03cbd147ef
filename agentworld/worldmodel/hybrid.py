"""The hybrid arm's env: the LWM simulates, a seeded real env shadows it, and a fidelity gate routes to reality.

A HybridEnv plays one episode at a time, in the mode its FidelityGate holds at reset:
- sim: the LWM predicts every step, as WorldModelEnv does. The episode starts from the real initial state:
  the real env is reset with the episode's seed and its observation is the simulation's first one. A
  `shadow_fraction` of steps is shadow-executed: the real env is brought to the episode's action prefix
  (reset with the seed, then the prefix) and takes the action; the LWM's predicted observation, reward and
  done are compared with the real ones. The real env replays the prefix lazily, only the actions it has not
  applied yet, which for a seeded env is the same transition as a fresh reset + full replay, at the cost of
  each real step once. If the real episode already ended inside the prefix, the step is a mismatch (the
  simulation ran past the real end).
- routed: the real env plays the episode (its rows are `source: real`). The LWM still predicts every step
  from the real history and is scored on it: that is how fidelity is measured while routed, and how the
  gate sees it recover.

The gate keeps the last `window` scores (1: observation, reward and done all match; else 0); fidelity is
their mean. It routes to the real env when fidelity < `threshold` (after `min_scores` scores) and back to
the simulator when fidelity >= `recover_threshold`. Every real step (shadow or routed) is counted in the
info of the step that took it (`real_env_steps`), so an arm's real env steps are exact; reset is no step."""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any, Sequence

from agentworld.schema import epoch_seconds
from agentworld.worldmodel.env import WorldModelEnv
from agentworld.worldmodel.prompt import parse_prediction, render_state


class FidelityGate:
    """Live fidelity of one env over a sliding window of shadow scores, and whether it routes to real."""

    def __init__(self, cfg):
        """`cfg`: the arm's HybridConfig."""
        self.scores: deque[int] = deque(maxlen=cfg.window)
        self.threshold, self.recover_threshold, self.min_scores = cfg.threshold, cfg.recover_threshold, cfg.min_scores
        self.routed = False
        self.switches: list[dict] = []  # when and why the gate changed its mind

    @property
    def fidelity(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    def score(self, match: bool) -> None:
        self.scores.append(int(match))
        f = self.fidelity
        if not self.routed and len(self.scores) >= self.min_scores and f < self.threshold:
            self.routed = True
            self.switches.append({"time": time.time(), "to": "real", "fidelity": f})
        elif self.routed and f >= self.recover_threshold:
            self.routed = False
            self.switches.append({"time": time.time(), "to": "sim", "fidelity": f})


def same_transition(pred: tuple, real: tuple) -> bool:
    """Exact match of observation, reward and termination (truncation is the step budget, not the model)."""
    return pred[0] == real[0] and abs(pred[1] - real[1]) < 1e-6 and bool(pred[2]) == bool(real[2])


class HybridEnv:
    """A simulated env (`sim`, a WorldModelEnv) and a seeded real env (`real`) under a shared FidelityGate."""

    batched = True  # step_all steps these with the sim envs' batched generation

    def __init__(self, sim: WorldModelEnv, real, gate: FidelityGate, shadow_fraction: float):
        self.sim, self.real, self.gate = sim, real, gate
        self.engine = sim.engine  # step_all batches hybrid envs by engine, like sim envs
        self.env_id, self.domain = real.env_id, real.domain
        self.shadow_fraction = shadow_fraction
        self.routed = False
        self.real_steps = 0  # real env steps taken by this env, all episodes

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.routed = self.gate.routed
        self.rng = random.Random(f"shadow-{seed}")
        obs, info = self.real.reset(seed=seed)
        self.real_t, self.real_done = 0, False  # actions the real env has applied; whether its episode ended
        self.sim.start(obs, info)  # the simulation starts from the real initial state
        return obs, dict(info)

    def _real_step(self, action: str) -> tuple:
        out = self.real.step(action)
        self.real_t += 1
        self.real_steps += 1
        self.real_done = bool(out[2] or out[3])
        return out

    def _advance(self, action: str, text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.routed:
            pred = parse_prediction(text)
            obs, reward, term, trunc, info = self._real_step(action)
            match = same_transition((pred.obs, pred.reward or 0.0, bool(pred.done)), (obs, reward, term))
            self.gate.score(match)
            # the LWM's history follows the real episode, so its next prediction is one step from reality
            self.sim.t += 1
            self.sim.actions.append(action)
            self.sim.observations.append(obs)
            self.sim.replies.append(render_state(obs, reward, term))
            return obs, reward, term, trunc, dict(info, source="real", real_env_steps=1, shadow_steps=0, fidelity_match=match,
                                                  fidelity=self.gate.fidelity, routed=True)
        obs, reward, term, trunc, info = self.sim.observe(action, text)
        info = dict(info, source="sim", real_env_steps=0, shadow_steps=0, routed=False, fidelity=self.gate.fidelity)
        if self.rng.random() < self.shadow_fraction:  # shadow-execute: the real env replays the prefix, then acts
            steps, real = 0, None
            for a in self.sim.actions[self.real_t:]:  # the actions it has not applied yet, this one last
                if self.real_done:
                    break  # the real episode ended inside the prefix: the sim ran on past it, a mismatch
                real = self._real_step(a)
                steps += 1
            match = self.real_t == len(self.sim.actions) and same_transition((obs, reward, term), real)
            self.gate.score(match)
            info.update(real_env_steps=steps, shadow_steps=steps, fidelity_match=match, fidelity=self.gate.fidelity)
        return obs, reward, term, trunc, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        return self.step_batch([self], [action])[0]

    @staticmethod
    def step_batch(envs: Sequence["HybridEnv"], actions: Sequence[str]):
        """One batched LWM generation for all of them, routed ones included (their predictions are scored)."""
        if not envs:
            return []
        s0 = envs[0].sim
        gens = s0.engine.generate([h.sim.prompt(a) for h, a in zip(envs, actions)], max_new_tokens=s0.max_new_tokens,
                                  temperature=s0.temperature)
        return [h._advance(a, g.text) for h, a, g in zip(envs, actions, gens)]

    def close(self) -> None:
        self.real.close()


def hybrid_metric_rows(rows: list[dict], arm: str, t0: float, bin_s: float = 15.0) -> list[dict]:
    """`hybrid` metrics rows from an arm's replay rows, one per `bin_s` of wall-clock: the live fidelity (the
    gate's value at the bin's last scored step), the share of steps routed to the real env, and cumulative
    real env steps (routed + shadow) and simulated steps."""
    from agentworld.metrics import metric_row

    rows = sorted(rows, key=lambda r: epoch_seconds(r["created_at"]))
    out, cum = [], {"routed": 0, "shadow": 0, "sim": 0, "scored": 0, "matched": 0}
    i = 0
    while i < len(rows):
        end = epoch_seconds(rows[i]["created_at"]) - t0
        end = (int(end // bin_s) + 1) * bin_s
        b = []
        while i < len(rows) and epoch_seconds(rows[i]["created_at"]) - t0 < end:
            b.append(rows[i])
            i += 1
        routed = sum(r["source"] == "real" for r in b)
        scored = [r for r in b if r.get("fidelity_match") is not None]
        cum["routed"] += routed
        cum["shadow"] += sum(r.get("shadow_steps") or 0 for r in b)
        cum["sim"] += len(b) - routed
        cum["scored"] += len(scored)
        cum["matched"] += sum(bool(r["fidelity_match"]) for r in scored)
        fid = [r["fidelity"] for r in b if r.get("fidelity") is not None]
        out.append(metric_row("hybrid", arm=arm, source="hybrid", wall_time=end, steps=len(b), routed_steps=routed,
                              routed_share=routed / len(b), fidelity=fid[-1] if fid else None,
                              bin_match_rate=(sum(bool(r["fidelity_match"]) for r in scored) / len(scored)) if scored else None,
                              real_steps=cum["routed"] + cum["shadow"], routed_steps_total=cum["routed"],
                              shadow_steps_total=cum["shadow"], sim_steps=cum["sim"], scored_total=cum["scored"],
                              matched_total=cum["matched"]))
    return out
