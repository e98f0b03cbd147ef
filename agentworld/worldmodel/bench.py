"""AgentWorldBench-style JSONL: read (bad lines reported and skipped), import into replay rows, export
replay rows, and turn either into next-state prediction examples.

A row: `id`, `task` (the domain is the part after the last `/`), `system_str`, `prompt` (user turns),
`response` (observations, each starting with `**Environment Observation:**`), `turn_idx` (1-based turn
to predict)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from agentworld.worldmodel.prompt import render_state, wm_system_prompt

OBS_PREFIX = "**Environment Observation:**"
REQUIRED = ("id", "task", "system_str", "prompt", "response", "turn_idx")


@dataclass
class BenchExample:
    id: str
    domain: str
    messages: list[dict]  # chat up to the user turn to predict
    reference: str  # the real observation, prefix stripped


def strip_prefix(obs: str) -> str:
    """The observation without the bench's prefix line (its own leading spaces are kept)."""
    if obs.lstrip().startswith(OBS_PREFIX):
        obs = obs.lstrip()[len(OBS_PREFIX):]
        return obs[1:] if obs.startswith("\n") else obs.lstrip(" ")
    return obs


def read_jsonl(path: str | Path, log=sys.stderr) -> tuple[list[dict], list[str]]:
    """Valid rows, and one message per bad line (with its number); bad lines are skipped, not fatal."""
    rows, errors = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [k for k in REQUIRED if k not in row]
                if missing:
                    raise ValueError(f"missing {', '.join(missing)}")
                if not isinstance(row["prompt"], list) or not isinstance(row["response"], list):
                    raise ValueError("prompt and response must be lists")
                t = int(row["turn_idx"])
                if not 1 <= t <= min(len(row["prompt"]), len(row["response"])):
                    raise ValueError(f"turn_idx {t} outside the {len(row['prompt'])} turns")
            except (ValueError, TypeError) as e:
                errors.append(f"{path}:{n}: skipped: {e}")
                print(errors[-1], file=log)
                continue
            rows.append(row)
    return rows, errors


def domain_of(row: dict) -> str:
    return str(row["task"]).rsplit("/", 1)[-1]


def bench_examples(rows: list[dict], history_turns: int | None = None) -> list[BenchExample]:
    """Chat contexts; with `history_turns` only the last turns are kept and the first kept user turn
    carries the observation before it as `State:`, as our LWM prompts do."""
    out = []
    for row in rows:
        t = int(row["turn_idx"])
        messages = [{"role": "system", "content": row["system_str"]}]
        start = 0 if history_turns is None else max(0, t - history_turns)
        for i in range(start, t - 1):
            messages += [{"role": "user", "content": row["prompt"][i]},
                         {"role": "assistant", "content": row["response"][i]}]
        messages.append({"role": "user", "content": row["prompt"][t - 1]})
        if start > 0:
            first = messages[1]["content"]
            messages[1] = {"role": "user", "content": f"State:\n{strip_prefix(row['response'][start - 1])}\n{first}"}
        out.append(BenchExample(str(row["id"]), domain_of(row), messages, strip_prefix(row["response"][t - 1])))
    return out


def bench_to_replay_rows(rows: list[dict], run_id: str = "import", arm: str = "import") -> list[dict]:
    """One episode per bench row: action = the user turn, next_obs = the observation that followed."""
    out = []
    for row in rows:
        domain = domain_of(row)
        prev = ""
        for k in range(int(row["turn_idx"])):
            nxt = strip_prefix(row["response"][k])
            out.append(dict(run_id=run_id, arm=arm, episode_id=str(row["id"]), step=k,
                            env_id=f"agentworldbench:{domain}", domain=domain, source="real", obs=prev,
                            action=row["prompt"][k], next_obs=nxt, reward=0.0, terminated=False, truncated=False,
                            policy_version=0, actor_id="import"))
            prev = nxt
    return out


def replay_rows_to_bench(episodes: list[list[dict]]) -> list[dict]:
    """One bench row per transition, with the whole episode prefix as context."""
    out = []
    for rows in episodes:
        system = wm_system_prompt(rows[0]["env_id"], rows[0]["domain"])
        prompts, responses = [], []
        for t, r in enumerate(rows):
            prompts.append(f"State:\n{r['obs']}\nAction: {r['action']}" if t == 0 else f"Action: {r['action']}")
            responses.append(f"{OBS_PREFIX}\n{r['next_obs']}")
            out.append({"id": f"{r['episode_id']}-{t + 1}", "task": f"{r['env_id']}/{r['domain']}",
                        "system_str": system, "prompt": list(prompts), "response": list(responses),
                        "turn_idx": t + 1, "reward": r["reward"], "terminated": r["terminated"],
                        "reference_state": render_state(r["next_obs"], r["reward"], r["terminated"])})
    return out
