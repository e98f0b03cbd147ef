"""The LWM prompt: chat messages in the AgentWorldBench style, and the parser of the model's reply.

system: the domain's world-model instruction; user turns: the agent's action (the first kept turn also
carries the current state); assistant turns: `<predicted_observation>` blocks. The state block ends with
an outcome line `[reward=R done=true|false]`, so a simulated episode needs no real env."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentworld.envs import STATEFUL  # noqa: F401  (domains whose prompts keep the task: data.py, env.py, controls.py)

OBS_OPEN, OBS_CLOSE = "<predicted_observation>", "</predicted_observation>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

WM_SYSTEM = (
    "You are a world model of the {env_id} environment ({domain}). Given the state and the agent's "
    "action, predict the next observation inside {open}...{close}, ending with the line "
    "[reward=R done=true|false]."
)

_OUTCOME = re.compile(r"\[reward=(-?[0-9.eE+-]+) done=(true|false)\]\s*$")
_THINK_BLOCK = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE), re.S)
_OBS_BLOCK = re.compile(re.escape(OBS_OPEN) + r"(.*?)" + re.escape(OBS_CLOSE), re.S)


# What each domain's environment is and what its observations look like, after the instruction above (the paper
# prompts its LWM per domain). Grid worlds need none: the grid is the whole state. `world_model.prompts` overrides.
DOMAIN_NOTES = {
    "terminal": "The environment is a bash shell in a terminal. The action is keystrokes; the observation is the "
                "whole screen after them, prompt lines and command output included. Files and directories persist "
                "across steps.",
    "swe": "The environment is a software repository in a sandbox. Actions are shell commands, file edits and "
           "submit; observations are command output, file contents or test results.",
    "mcp": "The environment is a set of tools behind the Model Context Protocol. The action is one JSON tool call; "
           "the observation is the tool's result (often JSON) or its error message. Databases, repositories and "
           "files keep every change made earlier in the episode.",
    "search": "The environment is a search engine over documentation with a page extractor. Actions are search, "
              "extract and answer calls; observations are ranked results (title, url, snippet) or a page's text.",
    "web": "The environment is a web page in a browser. Actions click, type or select elements; the observation "
           "is the page's visible text and elements.",
    "textgame": "The environment is a text adventure. The action is a command; the observation is the game's "
                "narration of what happens, and what is visible.",
    "science": "The environment is a text-based science simulator. The action is a command; the observation "
               "describes its effect and the objects around.",
    "embodied": "The environment is a household (or grid room) seen through text. The action is a command; the "
                "observation describes what the agent sees and what happened.",
}


TASK_CHARS = 600  # the kept task: the first observation's first paragraph, at most this long
# Domains whose first observation is all standing instructions: the task, the tools (functions) with their arguments
# and how to call them (MCP servers, BFCL). An agent that lost them could not call a tool, so they are kept whole.
STANDING_FIRST_OBS = frozenset({"mcp"})


def task_text(first_obs: str, domain: str | None = None) -> str:
    """An episode's standing instructions, which a prompt that dropped turns keeps: in STANDING_FIRST_OBS domains the
    whole first observation (MCP's `Task:`, `Tools:` with their input schemas and the call format; BFCL's task,
    instructions and `Functions:`, with its first request); elsewhere its first paragraph (search's `Question:`, the
    terminal's goal, a text game's objective), cut to TASK_CHARS. A function of the first observation, so the policy
    in play, the learner rebuilding its prompts from the replay and the LWM's data and simulator all keep the same."""
    if domain in STANDING_FIRST_OBS:
        return first_obs.strip()
    return first_obs.strip().split("\n\n", 1)[0][:TASK_CHARS]


def wm_system_prompt(env_id: str, domain: str, control: str | None = None, notes: dict | None = None) -> str:
    """The domain's instruction (with `notes[domain]`, else DOMAIN_NOTES', after it); an optional `control` (free
    text that steers the simulation) follows."""
    system = WM_SYSTEM.format(env_id=env_id, domain=domain, open=OBS_OPEN, close=OBS_CLOSE)
    note = (notes or {}).get(domain, DOMAIN_NOTES.get(domain))
    system = f"{system}\n{note}" if note else system
    return f"{system}\nControl: {control}" if control else system


def render_state(obs: str, reward: float, done: bool) -> str:
    """The assistant turn for one transition: the observation and its outcome line, tagged."""
    return f"{OBS_OPEN}\n{obs}\n[reward={reward:g} done={'true' if done else 'false'}]\n{OBS_CLOSE}"


def build_messages(system: str, state: str, turns: list[tuple[str, str | None]]) -> list[dict]:
    """Messages for `turns` = [(action, assistant_content_or_None), ...]: the first user turn carries
    `state` (the observation before the first action). A trailing None is the turn to predict."""
    messages = [{"role": "system", "content": system}]
    for i, (action, reply) in enumerate(turns):
        user = f"State:\n{state}\nAction: {action}" if i == 0 else f"Action: {action}"
        messages.append({"role": "user", "content": user})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
    return messages


def window(observations: list[str], actions: list[str], replies: list[str], history_turns: int,
           keep_task: bool = False, domain: str | None = None):
    """Keep the last `history_turns` turns of an episode for predicting the next state.
    observations[i] is the state before actions[i]; replies[i] the assistant content after actions[i]
    (len(replies) == len(actions) - 1). Returns (state, turns) for build_messages. With `keep_task`, a state after
    dropped turns starts with the episode's task (`task_text` of the first observation in `domain`)."""
    start = max(0, len(actions) - max(1, history_turns))
    turns = [(actions[i], replies[i] if i < len(replies) else None) for i in range(start, len(actions))]
    state = observations[start]
    if keep_task and start > 0:
        state = f"{task_text(observations[0], domain)}\n[{start} earlier step(s) not shown]\n{state}"
    return state, turns


def fit_window(build, history_turns: int, budget_tokens: int = 0, count_tokens=None) -> str:
    """The prompt `build(k) -> (prompt, turns kept)` makes with the most turns k <= `history_turns` whose prompt has at
    most `budget_tokens` tokens (0: no budget): the oldest turns go first, the newest always stays. The LWM's examples
    and the policy's prompts are both fitted so."""
    k = history_turns
    while True:
        prompt, kept = build(k)
        if kept <= 1 or budget_tokens <= 0 or count_tokens(prompt) <= budget_tokens:
            return prompt
        k = kept - 1


def strip_think(text: str) -> str:
    """Drop think content, including an unclosed think block (everything after it)."""
    text = _THINK_BLOCK.sub("", text)
    if THINK_OPEN in text:
        text = text[: text.index(THINK_OPEN)]
    return text


@dataclass
class Prediction:
    obs: str
    reward: float | None  # None when the outcome line is missing or malformed
    done: bool | None
    well_formed: bool  # exactly one observation block, with nothing after it


def parse_prediction(text: str) -> Prediction:
    """Take the last observation block (falling back to the whole text) and split off the outcome line."""
    body = strip_think(text)
    blocks = _OBS_BLOCK.findall(body)
    if blocks:
        # well-formed: one block, and nothing after it (trailing text is how RL learns to pad replies)
        tail = body[list(_OBS_BLOCK.finditer(body))[-1].end():]
        inner = blocks[-1]
        ok = len(blocks) == 1 and not tail.strip() and OBS_OPEN not in inner and THINK_CLOSE not in body
    else:
        inner, ok = body.replace(OBS_OPEN, "").replace(OBS_CLOSE, ""), False
    inner = inner.strip("\n")
    m = _OUTCOME.search(inner)
    if not m:
        return Prediction(inner.strip("\n"), None, None, ok)
    try:
        reward = float(m.group(1))
    except ValueError:
        reward = None
    return Prediction(inner[: m.start()].strip("\n"), reward, m.group(2) == "true", ok)
