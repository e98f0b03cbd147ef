"""Think traces for next-state SFT: the reasoning the LWM writes inside <think>...</think> before the state.

Two sources (`world_model.think.source`):
- `describe`: a per-domain describer that explains a logged transition from what changed (the grid move and
  the cell it lands on, the shell's new output, the tool call and what it returned, the search results or page);
- `teacher`: any OpenAI-compatible endpoint, shown the state, the action and the true next state, writes the
  reasoning that leads there (hindsight rationalization). Replies are cached per transition in a JSONL file, so
  a rerun asks nothing twice; a request that fails or times out, or a reply without a usable rationale, is
  counted and skipped (that transition trains without a rationale), never fatal.
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from agentworld.config import THINK_SOURCES as SOURCES  # noqa: F401
from agentworld.worldmodel.prompt import OBS_CLOSE, OBS_OPEN, THINK_CLOSE, THINK_OPEN

TEACHER_SYSTEM = (
    "You explain how an environment works. You are shown a state, an action and the true next state. Write the "
    "short reasoning (at most {words} words) that predicts the next state from the state and the action alone: "
    "what the action does, what changes and what stays the same. Do not copy the next state, and do not say you "
    "were shown it."
)


def think_block(text: str | None) -> str:
    """The think part of an SFT target: the rationale, or an empty block."""
    return f"{THINK_OPEN}\n{text.strip()}\n{THINK_CLOSE}\n" if text else f"{THINK_OPEN}\n{THINK_CLOSE}\n"


def transition_key(row: dict, model: str = "") -> str:
    """A stable key of a transition (and the teacher that explains it), for the cache."""
    parts = [model, row["env_id"], row["obs"], row["action"], row["next_obs"], repr(float(row["reward"])),
             str(bool(row["terminated"]))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _outcome(row: dict) -> str:
    end = "the episode ends" if row["terminated"] else "the episode goes on"
    return f"Reward {float(row['reward']):g}; {end}."


def _quote(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---- describers: domain -> describe(row) -> rationale ----------------------------------------------------------

DESCRIBERS: dict[str, Callable[[dict], str]] = {}


def describer(*domains: str):
    def register(fn):
        for d in domains:
            DESCRIBERS[d] = fn
        return fn
    return register


_MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def agent_cell(grid: str) -> tuple[int, int, str] | None:
    """(row, column, what is under the mark) of the agent in a text grid: FrozenLake's bracketed cell or
    CliffWalking's `x`."""
    rows = [line for line in grid.splitlines() if line.strip() and not line.startswith("  (")]
    for r, line in enumerate(rows):
        if "[" in line and "]" in line[line.index("["):]:
            return r, line.index("["), line[line.index("[") + 1]
        cells = line.split()
        if "x" in cells:
            return r, cells.index("x"), "x"
    return None


@describer("gridworld")
def describe_grid(row: dict) -> str:
    before, after = agent_cell(row["obs"]), agent_cell(row["next_obs"])
    if before is None or after is None:
        return f"The action is {row['action']}. " + _outcome(row)
    (r, c, _), (r2, c2, under) = before, after
    text = f"The agent is at row {r}, column {c}. "
    dr, dc = _MOVES.get(row["action"].strip().lower(), (0, 0))
    if (r2, c2) == (r, c):
        text += f"Moving {row['action']} does not move it: it stays at row {r}, column {c}. "
    elif (r2, c2) == (r + dr, c + dc):
        text += f"Moving {row['action']} takes it to row {r2}, column {c2}" + (f" ({under})" if under != "x" else "") + ". "
    else:
        text += f"Moving {row['action']} does not take it to row {r + dr}, column {c + dc}: it ends at row {r2}, column {c2}. "
    return text + _outcome(row)


def _new_text(before: str, after: str) -> str:
    """What `after` adds to `before` (the part after their common prefix)."""
    i = 0
    while i < min(len(before), len(after)) and before[i] == after[i]:
        i += 1
    return after[i:] if i >= len(before) * 0.5 else after


@describer("terminal")
def describe_terminal(row: dict) -> str:
    command = row["action"].strip()
    new = [line for line in _new_text(row["obs"], row["next_obs"]).splitlines() if line.strip()]
    output = [line for line in new if command not in line and not line.rstrip().endswith("$")]
    text = f"The shell runs `{_quote(command)}`. "
    if output:
        text += f"It prints {len(output)} line(s), starting with \"{_quote(output[0])}\". "
    else:
        text += "It prints nothing, and the prompt comes back. "
    return text + _outcome(row)


def _call(action: str) -> dict | None:
    try:
        call = json.loads(action)
    except ValueError:
        return None
    return call if isinstance(call, dict) else None


@describer("mcp")
def describe_mcp(row: dict) -> str:
    call, result = _call(row["action"]), row["next_obs"].strip()
    if call is None or "tool" not in call:
        return "The action is not a JSON tool call, so the server answers with an error. " + _outcome(row)
    args = ", ".join(f"{k}={_quote(json.dumps(v), 50)}" for k, v in (call.get("arguments") or {}).items())
    text = f"The call is {call['tool']}({args}). "
    if re.match(r"(?i)(error|unknown|invalid)", result):
        text += f"The tool fails: \"{_quote(result)}\". "
    elif result.startswith("["):
        n = result.count("{") or (0 if result in ("[]", "") else 1)
        text += f"It returns a list of {n} item(s)." + (" " if n else " Nothing matches. ")
    else:
        text += f"It returns \"{_quote(result)}\". "
    return text + _outcome(row)


@describer("search")
def describe_search(row: dict) -> str:
    call, result = _call(row["action"]) or {}, row["next_obs"]
    args = call.get("arguments") or {}
    if "answer" in call:
        verdict = "right" if row["reward"] > 0 else "wrong"
        return f"The agent answers \"{_quote(str(call['answer']))}\", which is {verdict}. " + _outcome(row)
    if call.get("tool") == "web_search":
        hits = len(re.findall(r"(?m)^\[\d+\] ", result))
        queries = "; ".join(_quote(str(q), 40) for q in args.get("queries", []))
        return f"The engine searches for \"{queries}\" and lists {hits} ranked result(s). " + _outcome(row)
    if call.get("tool") == "web_extractor":
        return (f"The extractor opens {_quote(str(args.get('url', '?')))} page {args.get('page', 1)} and shows "
                f"{len(result)} characters of it. " + _outcome(row))
    return "The action is not a known call, so the tools answer with an error. " + _outcome(row)


def describe_any(row: dict) -> str:
    """Any domain without its own describer: what the action changes in the observation."""
    old, new = set(row["obs"].splitlines()), [line for line in row["next_obs"].splitlines() if line.strip()]
    added = [line for line in new if line not in old]
    text = f"The action is `{_quote(row['action'])}`. "
    if added:
        text += f"{len(added)} line(s) of the observation are new, starting with \"{_quote(added[0])}\". "
    else:
        text += "The observation shows nothing new. "
    return text + _outcome(row)


def describe(row: dict) -> str:
    return DESCRIBERS.get(row["domain"], describe_any)(row)


# ---- teacher ----------------------------------------------------------------------------------------------------

def teacher_messages(row: dict, words: int) -> list[dict]:
    user = (f"Environment: {row['env_id']} ({row['domain']})\nState:\n{row['obs']}\nAction: {row['action']}\n"
            f"True next state:\n{row['next_obs']}\n{_outcome(row)}\nReasoning:")
    return [{"role": "system", "content": TEACHER_SYSTEM.format(words=words)}, {"role": "user", "content": user}]


def usable(reply: str, row: dict) -> str | None:
    """The rationale in a teacher reply, or None: empty, fewer than three words, or not reasoning (it writes a state
    block, or copies a long next state whole)."""
    text = re.sub(rf"{re.escape(THINK_OPEN)}|{re.escape(THINK_CLOSE)}", "", reply or "").strip()
    if len(text.split()) < 3 or OBS_OPEN in text or OBS_CLOSE in text:
        return None
    if len(row["next_obs"]) >= 40 and row["next_obs"].strip() in text:
        return None
    return text


class Cache:
    """Rationales by transition key, appended to a JSONL file as they arrive (a torn last line is skipped)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.items: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    item = json.loads(line)
                    self.items[item["key"]] = item["text"]
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, key: str, text: str) -> None:
        self.items[key] = text
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, "text": text}) + "\n")


def teacher_rationales(rows: list[dict], cfg, cache_path: str, on_progress=None) -> tuple[dict[str, str], dict]:
    """Rationales of `rows` by transition key, from the cache or the teacher, and counts: transitions, cached, asked,
    written, failed (an error or a timeout), unusable (a reply without a usable rationale)."""
    from agentworld.worldmodel.judge import EndpointError, chat

    cache = Cache(cache_path)
    todo = {transition_key(r, cfg.model): r for r in rows}
    stats = dict(transitions=len(todo), cached=sum(k in cache.items for k in todo), asked=0, written=0, failed=0,
                 unusable=0, first_error=None)
    missing = [(k, r) for k, r in todo.items() if k not in cache.items]

    def ask(item):
        key, row = item
        try:
            return key, row, chat(cfg.endpoint, cfg.model, teacher_messages(row, cfg.max_tokens * 3 // 4),
                                  max_tokens=cfg.max_tokens, timeout=cfg.timeout_s), None
        except (EndpointError, TimeoutError, OSError) as e:
            return key, row, None, str(e)

    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for key, row, reply, error in pool.map(ask, missing):
            stats["asked"] += 1
            text = usable(reply, row) if error is None else None
            if error is not None:
                stats["failed"] += 1
                stats["first_error"] = stats["first_error"] or error
            elif text is None:
                stats["unusable"] += 1
            else:
                cache.add(key, text)
                stats["written"] += 1
            if on_progress:
                on_progress(stats["asked"], len(missing))
    return {k: cache.items[k] for k in todo if k in cache.items}, stats


def rationale_fn(rows: list[dict], cfg, cache_path: str, on_progress=None) -> tuple[Callable[[dict], str | None] | None, dict]:
    """`rationale(row)` for wm_examples (None: no think block at all) and the source's counts."""
    if cfg.source == "none":
        return None, {}
    if cfg.source == "empty":
        return (lambda row: ""), {}
    if cfg.source == "describe":
        return describe, {"transitions": len(rows), "described": len(rows)}
    found, stats = teacher_rationales(rows, cfg, cache_path, on_progress)
    return (lambda row: found.get(transition_key(row, cfg.model), "")), stats
