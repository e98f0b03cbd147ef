"""From replay rows to next-state prediction examples (prompt, target) in the LWM chat format."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pyarrow as pa

from typing import Callable

from agentworld.worldmodel.prompt import STATEFUL, build_messages, fit_window, render_state, window, wm_system_prompt
from agentworld.worldmodel.think import think_block


@dataclass
class Example:
    prompt: str  # rendered chat up to the assistant turn to predict
    target: str  # the assistant content: the tagged next state
    next_obs: str
    reward: float
    done: bool
    domain: str = ""


def episodes_from_table(table: pa.Table) -> list[list[dict]]:
    """Rows grouped by episode, each episode ordered by step; episodes in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        groups.setdefault(row["episode_id"], []).append(row)
    return [sorted(rows, key=lambda r: r["step"]) for rows in groups.values()]


def split_episodes(episodes: list[list[dict]], heldout_fraction: float, seed: int = 0):
    """Hold out whole episodes, so held-out transitions were never trained on."""
    order = list(range(len(episodes)))
    random.Random(seed).shuffle(order)
    k = int(round(len(episodes) * heldout_fraction))
    if heldout_fraction > 0 and len(episodes) > 1:
        k = max(1, k)
    held = set(order[:k])
    return [e for i, e in enumerate(episodes) if i not in held], [e for i, e in enumerate(episodes) if i in held]


def split_by_env(episodes: list[list[dict]], heldout_fraction: float, seed: int = 0):
    """`split_episodes` within each env, so every env (and domain) of mixed data has held-out episodes."""
    by_env: dict[str, list] = {}
    for e in episodes:
        by_env.setdefault(e[0]["env_id"], []).append(e)
    train, held = [], []
    for group in by_env.values():
        t, h = split_episodes(group, heldout_fraction, seed)
        train, held = train + t, held + h
    return train, held


def wm_examples(episodes: list[list[dict]], render, history_turns: int = 1,
                think: Callable[[dict], str | None] | None = None,
                budget_tokens: int = 0, count_tokens=None, control_fraction: float = 0.0,
                rng: random.Random | None = None, notes: dict | None = None, perturbation_fraction: float = 0.0,
                fictional_fraction: float = 0.0) -> list[Example]:
    """One example per transition; `render(messages)` is the tokenizer's chat template. With a token
    budget, the oldest kept turns are dropped until the prompt fits (the newest turn always stays).
    A `control_fraction` share of examples carries a hindsight control: a label of its own real transition
    (agentworld/controls.py), so the model learns to obey outcome controls; a `perturbation_fraction` share a
    perturbation and a `fictional_fraction` share a fictional world, each with its target built from the real row
    (controls.controlled_transition; a row whose env family has no such text stays uncontrolled). With `think(row)`,
    each target starts with a think block holding the row's rationale (empty when it gives none:
    agentworld/worldmodel/think.py)."""
    from agentworld.controls import controlled_transition

    rng = rng or random.Random(0)
    shares = [("hindsight", control_fraction), ("perturbation", perturbation_fraction), ("fictional", fictional_fraction)]
    out = []
    for rows in episodes:
        observations = [r["obs"] for r in rows]
        actions = [r["action"] for r in rows]
        replies = [render_state(r["next_obs"], r["reward"], r["terminated"]) for r in rows]
        plain = wm_system_prompt(rows[0]["env_id"], rows[0]["domain"], notes=notes)
        keep_task = rows[0]["domain"] in STATEFUL
        for t, r in enumerate(rows):
            system, reply, (next_obs, reward, done) = plain, replies[t], (r["next_obs"], r["reward"], r["terminated"])
            real = True  # the target is the real transition (a rationale of it fits)
            u = rng.random() if any(share > 0 for _, share in shares) else 1.0
            for kind, share in shares:
                if u < share:
                    made = controlled_transition(kind, r, rng)
                    if made is not None:
                        control, next_obs, reward, done = made
                        system = wm_system_prompt(r["env_id"], r["domain"], control.text, notes)
                        reply, real = render_state(next_obs, reward, done), kind == "hindsight"
                    break
                u -= share

            def build(k, t=t, system=system):
                state, turns = window(observations[: t + 1], actions[: t + 1], replies[:t], k, keep_task,
                                      rows[0]["domain"])
                return render(build_messages(system, state, turns)), len(turns)

            prompt = fit_window(build, history_turns, budget_tokens, count_tokens)
            target = (think_block(think(r) if real else None) if think else "") + reply
            out.append(Example(prompt, target, next_obs, reward, done, r["domain"]))
    return out


def sample_by_domain(examples: list[Example], k: int, rng: random.Random) -> list[Example]:
    """`k` examples drawn at random, shared equally among the domains present, so that a rare domain of mixed data
    is measured too (one domain: exactly `rng.sample`)."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.domain, []).append(e)
    if len(groups) <= 1:
        return rng.sample(examples, min(len(examples), k))
    per = max(1, k // len(groups))
    return [e for group in groups.values() for e in rng.sample(group, min(len(group), per))]


def trajectory_text(rows: list[dict]) -> str:
    """An episode as raw text for continued pre-training: states and actions in order."""
    parts = [rows[0]["obs"]]
    for r in rows:
        parts += [f"> {r['action']}", r["next_obs"] + (f"\n[reward={r['reward']:g} done=true]" if r["terminated"] else "")]
    return "\n".join(parts)
