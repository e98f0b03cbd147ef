"""Controls: text in the world model's prompt that steers one simulated step, of three kinds.

- perturbation: a tool call times out, a file is missing, results are paginated or empty, an action is
  rejected (templates worded per domain);
- fictional: a target query and reference facts that simulated results must contain;
- hindsight: an outcome label (success, failure, error, noop, terminal, moved) that the labeler mines from
  real transitions. The LWM's SFT puts the label of each real transition in its prompt for a share of the
  examples (world_model.sft.control_fraction), so it learns to obey outcome controls with no hand-written
  ones.

A sampler per arm draws the control of each simulated step. Obedience: a controlled sim step whose outcome
the labeler (or the perturbation's or fictional world's check) confirms. Every control text starts with its
tag, e.g. "[success] ...", so the replay's `control` column alone says which control a step carried and
obedience can be measured from the replay.

YAML (an arm with source sim and a control kind other than none is the `sim-controlled` arm):

    world_model:
      sft:
        control_fraction: 0.5        # share of SFT examples carrying their hindsight label; 0: none
    arms:
      - name: sim-controlled
        source: sim
        env: frozenlake
        control:
          kind: hindsight            # none | hindsight | perturbation | fictional
          fraction: 0.5              # share of sim steps that carry a control; the rest are uncontrolled
          mix: {success: 0.4, failure: 0.3, noop: 0.1, moved: 0.2}   # weights; {}: uniform over the kind
          # perturbation names: timeout, missing, paginated, empty, rejected
          # fictional: {query: "capital of Freedonia", facts: ["Fredville", "founded 1802"]}
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from agentworld.schema import epoch_seconds

KINDS = ("none", "hindsight", "perturbation", "fictional")

# ------------------------------------------------------------------------------------------------
# Hindsight: the labeler

LABELS = ("success", "failure", "error", "noop", "terminal", "moved")
HINDSIGHT = {
    "success": "The action succeeds: reward > 0, the goal is reached.",
    "failure": "The action fails: the episode ends without success.",
    "error": "The action is invalid: the environment answers with an error.",
    "noop": "The action has no effect: the state stays the same.",
    "terminal": "The episode ends after this action.",
    "moved": "The action changes the state and the episode goes on.",
}
# How envs say an action was invalid when the row keeps no info (GymTextEnv: "Invalid action ...")
_ERROR_TEXT = re.compile(r"^\s*(invalid action|error\b|traceback)", re.I)
# Renders that echo the last action on a line of their own, e.g. FrozenLake's "  (Left)"
_ECHO = re.compile(r"^\s*\([A-Za-z ]+\)\s*$\n?", re.M)


def same_state(obs: str, next_obs: str) -> bool:
    """Whether two observations show the same state, ignoring an echo of the last action."""
    return _ECHO.sub("", obs).strip() == _ECHO.sub("", next_obs).strip()


def labels(obs: str, next_obs: str, reward: float, terminated: bool, truncated: bool = False,
           info: Mapping[str, Any] | None = None) -> set[str]:
    """Every outcome label that holds for a transition; a control is obeyed when its label is among them."""
    info = info or {}
    out = set()
    error = bool(info.get("error")) or bool(_ERROR_TEXT.match(next_obs or ""))
    won = bool(info.get("won")) or (terminated and reward > 0)
    if error:
        out.add("error")
    if reward > 0 or won:
        out.add("success")
    if terminated and not won:
        out.add("failure")
    if terminated or truncated:
        out.add("terminal")
    if same_state(obs, next_obs):
        out.add("noop")
    elif not error and not terminated:
        out.add("moved")
    return out


def label(obs: str, next_obs: str, reward: float, terminated: bool, truncated: bool = False,
          info: Mapping[str, Any] | None = None) -> str:
    """The transition's main label: the first that holds of error, success, failure, noop, moved, terminal."""
    held = labels(obs, next_obs, reward, terminated, truncated, info)
    return next(k for k in ("error", "success", "failure", "noop", "moved", "terminal") if k in held)


def row_labels(row: Mapping[str, Any]) -> set[str]:
    """Labels of a replay row (the trajectory schema)."""
    return labels(row["obs"], row["next_obs"], row["reward"], row["terminated"], row.get("truncated", False))


# ------------------------------------------------------------------------------------------------
# Perturbations, worded per domain

PERTURBATIONS = ("timeout", "missing", "paginated", "empty", "rejected")
# domain -> (what an action is called, what it acts on)
_WORDS = {
    "mcp": ("tool call", "file"), "search": ("search request", "document"), "terminal": ("command", "file"),
    "swe": ("command", "file"), "web": ("page request", "page element"), "gridworld": ("move", "cell"),
    "textgame": ("action", "object"), "embodied": ("action", "object"), "science": ("action", "object"),
}
_PERTURB = {
    "timeout": "The {call} times out: the observation reports a timeout error and no result.",
    "missing": "The {thing} the {call} needs is missing: the observation says it was not found.",
    "paginated": "Results are paginated: show only the first page and say that more pages follow.",
    "empty": "The {call} returns empty results: the observation says no results were found.",
    "rejected": "The {call} is rejected: the state does not change and the observation says it was rejected.",
}
_PERTURB_CHECK = {
    "timeout": lambda obs, nxt: bool(re.search(r"time[sd]? ?out", nxt, re.I)),
    "missing": lambda obs, nxt: bool(re.search(r"not found|no such|missing|does not exist", nxt, re.I)),
    "paginated": lambda obs, nxt: bool(re.search(r"\bpage\b|more results|next page", nxt, re.I)),
    "empty": lambda obs, nxt: nxt.strip() in ("", "[]", "{}")
    or bool(re.search(r"no results|0 results|nothing (was )?found|empty", nxt, re.I)),
    "rejected": lambda obs, nxt: same_state(obs, nxt)
    or bool(re.search(r"reject|denied|not allowed|\bonly\b.{0,60}\ballowed\b", nxt, re.I)),
}


def perturbation_text(name: str, domain: str) -> str:
    call, thing = _WORDS.get(domain, ("action", "resource"))
    return f"[{name}] " + _PERTURB[name].format(call=call, thing=thing)


# ------------------------------------------------------------------------------------------------
# Fictional worlds

def fictional_text(query: str, facts: list[str]) -> str:
    return f"[fictional] Query: {query} | Facts: " + " | ".join(facts) + " | Every result for the query states these facts."


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def contains_facts(obs: str, facts: list[str]) -> bool:
    """Does a (simulated) observation state every reference fact? Case and whitespace are ignored."""
    o = _norm(obs)
    return all(_norm(f) in o for f in facts)


# ------------------------------------------------------------------------------------------------
# One control, its text, and whether a transition obeyed it

@dataclass(frozen=True)
class Control:
    kind: str  # hindsight | perturbation | fictional
    name: str  # the label, the perturbation, or "fictional"
    text: str  # what goes on the prompt's Control line
    facts: tuple[str, ...] = field(default=())
    question: str = ""  # a generated fictional world's question and answer: its episodes ask and score them
    answer: str = ""

    def obeyed(self, obs: str, next_obs: str, reward: float, terminated: bool, truncated: bool = False,
               info: Mapping[str, Any] | None = None) -> bool:
        if self.kind == "hindsight":
            return self.name in labels(obs, next_obs, reward, terminated, truncated, info)
        if self.kind == "perturbation":
            return _PERTURB_CHECK[self.name](obs, next_obs)
        return contains_facts(next_obs, list(self.facts))


def make_control(kind: str, name: str, domain: str = "", query: str = "", facts: list[str] | None = None) -> Control:
    if kind == "hindsight":
        if name not in HINDSIGHT:
            raise ValueError(f"unknown hindsight label {name!r} (one of {', '.join(LABELS)})")
        return Control(kind, name, f"[{name}] {HINDSIGHT[name]}")
    if kind == "perturbation":
        if name not in _PERTURB:
            raise ValueError(f"unknown perturbation {name!r} (one of {', '.join(PERTURBATIONS)})")
        return Control(kind, name, perturbation_text(name, domain))
    if kind == "fictional":
        return Control(kind, "fictional", fictional_text(query, list(facts or [])), tuple(facts or ()))
    raise ValueError(f"unknown control kind {kind!r} (one of {', '.join(KINDS[1:])})")


_TAG = re.compile(r"^\[(\w+)\]\s*")


def parse_control(text: str | None) -> Control | None:
    """The control a replay row's `control` text names (by its tag); None for no or unknown control."""
    m = _TAG.match(text or "")
    if not m:
        return None
    name = m.group(1)
    if name in HINDSIGHT:
        return Control("hindsight", name, text)
    if name in _PERTURB:
        return Control("perturbation", name, text)
    if name == "fictional":
        parts = [p.strip() for p in text.split("|")]
        facts = tuple(p.removeprefix("Facts:").strip() for p in parts[1:-1])
        return Control("fictional", name, text, facts)
    return None


def row_obeyed(row: Mapping[str, Any]) -> bool | None:
    """Whether a replay row obeyed its control; None when it carried none."""
    c = parse_control(row.get("control"))
    if c is None:
        return None
    return c.obeyed(row["obs"], row["next_obs"], row["reward"], row["terminated"], row.get("truncated", False))


# ------------------------------------------------------------------------------------------------
# The sampler of an arm, and hindsight controls for SFT

def _names(kind: str) -> tuple[str, ...]:
    return {"hindsight": LABELS, "perturbation": PERTURBATIONS, "fictional": ("fictional",)}.get(kind, ())


def validate_control(c, simulated: bool, fail: Callable[[str, str], None]) -> None:
    """Config checks of an arm's `control` section (`simulated`: the arm steps the LWM); `fail(key, message)` raises."""
    if c.kind not in KINDS:
        fail("kind", f"must be one of {', '.join(KINDS)} (got {c.kind!r})")
    if c.kind == "none":
        return
    if not simulated:
        fail("kind", "controls steer the simulator: a real arm cannot have them")
    if not 0 <= c.fraction <= 1:
        fail("fraction", f"must be in [0, 1] (got {c.fraction})")
    names = _names(c.kind)
    for name, w in c.mix.items():
        if name not in names:
            fail(f"mix.{name}", f"not a {c.kind} control: one of {', '.join(names)}")
        if w < 0:
            fail(f"mix.{name}", f"weights must be >= 0 (got {w})")
    if c.mix and sum(c.mix.values()) <= 0:
        fail("mix", "at least one weight must be > 0")
    if c.kind == "fictional" and bool(c.fictional.query) != bool(c.fictional.facts):
        fail("fictional", "a fixed fictional world needs a query and at least one fact (neither: generated worlds)")
    if c.per not in ("step", "episode"):
        fail("per", f"must be step or episode (got {c.per!r})")


class ControlSampler:
    """Draws the control of each simulated step: None (uncontrolled) with probability 1 - fraction, else a
    control of `kind` named by the weighted `mix` (uniform over the kind's names when mix is empty)."""

    def __init__(self, kind: str, fraction: float, mix: Mapping[str, float] | None = None, domain: str = "",
                 query: str = "", facts: list[str] | None = None, seed: int = 0, per: str = "step"):
        self.kind, self.fraction, self.per = kind, fraction, per
        self.rng = random.Random(seed)
        self.generated = kind == "fictional" and not facts  # a new fictional world per draw
        if kind == "none":
            self.names, self.weights = [], []
            return
        mix = dict(mix or {}) or {n: 1.0 for n in _names(kind)}
        self.names, self.weights = list(mix), [float(w) for w in mix.values()]
        self.controls = {n: make_control(kind, n, domain, query, facts) for n in self.names}

    @classmethod
    def from_config(cls, c, domain: str, seed: int = 0) -> "ControlSampler":
        """From an arm's `control` section (a ControlConfig)."""
        return cls(c.kind, c.fraction, dict(c.mix), domain, c.fictional.query, list(c.fictional.facts), seed, c.per)

    def __call__(self) -> Control | None:
        if not self.names or self.rng.random() >= self.fraction:
            return None
        if self.generated:
            w = fictional_world(self.rng)
            return replace(make_control("fictional", "fictional", query=w["query"], facts=w["facts"]),
                           question=w["question"], answer=w["answer"])
        return self.controls[self.rng.choices(self.names, self.weights)[0]]


# ------------------------------------------------------------------------------------------------
# Controlled SFT examples, built from real rows: the env family's own texts (agentworld/envs/<family>.py perturbed,
# fictional) give what a real failure or a fictional world looks like in that domain

_SYLLABLES = ("vel", "tra", "mon", "quor", "zen", "lib", "dar", "ka", "sto", "rin", "pex", "ol", "thu", "mir")
_PEOPLE = ("Ada Quell", "Bo Tarrow", "Cyd Ostrander", "Dana Vey", "Ezra Mott", "Fen Aldous", "Gil Marrow")


def _family(row: Mapping[str, Any], function: str):
    """The row's env family module if it has `function` (MCP and search have `perturbed`; search `fictional`)."""
    from agentworld.envs import family_module

    module = family_module(row["env_id"])
    return module if hasattr(module, function) else None


def fictional_world(rng: random.Random) -> dict:
    """A fictional world: a made-up subject (the query), two facts about it, and a question one fact answers."""
    name = "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()
    year, person = str(rng.randrange(1985, 2030)), rng.choice(_PEOPLE)
    facts = [f'{name} was first released in "{year}".', f'{name} is maintained by "{person}".']  # quoted: menus offer them
    question, answer = rng.choice([(f"In which year was {name} first released?", year), (f"Who maintains {name}?", person)])
    return {"query": name, "facts": facts, "question": question, "answer": answer}


def controlled_transition(kind: str, row: Mapping[str, Any], rng: random.Random, name: str | None = None):
    """(control, next_obs, reward, terminated) of a real row under a control of `kind`, or None where the row's env
    family has no such text for its step. hindsight: one of the row's own labels, drawn at random (so every label,
    terminal too, is seen next to transitions it describes), its real outcome. perturbation:
    `name` (else one drawn among those that apply) in the family's own words (a real timeout, not-found, empty or
    refusal text, the real result cut into pages); the call had no effect: reward 0, episode goes on. fictional: the
    real results rewritten to state a fictional world's facts (fictional_world), outcome kept."""
    if kind == "hindsight":
        c = make_control("hindsight", name or rng.choice(sorted(row_labels(row))))
        return c, row["next_obs"], row["reward"], row["terminated"]
    family = _family(row, "perturbed" if kind == "perturbation" else "fictional")
    if family is None:
        return None
    if kind == "perturbation":
        options = [(n, o) for n in ([name] if name else PERTURBATIONS)
                   if (o := family.perturbed(n, row["action"], row["next_obs"])) is not None]
        if not options:
            return None
        n, obs = rng.choice(options)
        return make_control("perturbation", n, row["domain"]), obs, 0.0, False
    if kind == "fictional":
        world = fictional_world(rng)
        obs = family.fictional(row["action"], row["next_obs"], world["facts"])
        if obs is None:
            return None
        return make_control("fictional", "fictional", query=world["query"], facts=world["facts"]), obs, row["reward"], row["terminated"]
    return None


def obedience(rows) -> dict:
    """Obedience of replay rows: {name: (controlled steps, obeyed)} plus "all"."""
    out: dict[str, list[int]] = {}
    for r in rows:
        ok = row_obeyed(r)
        if ok is None:
            continue
        name = parse_control(r["control"]).name
        for key in (name, "all"):
            n = out.setdefault(key, [0, 0])
            n[0] += 1
            n[1] += int(ok)
    return {k: tuple(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------
# Measuring obedience: of an LWM on held-out real transitions, and of an arm from its replay rows

COUNTERFACTUAL = ("success", "failure", "noop", "moved")  # outcomes a control can ask for against the real one


def _probe(episodes: list[list[dict]], render, history_turns: int, controls) -> list[tuple]:
    """(controlled prompt, uncontrolled prompt, control, row) for each control `controls(row)` gives a real row."""
    from agentworld.worldmodel.prompt import STATEFUL, build_messages, render_state, window, wm_system_prompt

    out = []
    for rows in episodes:
        observations = [r["obs"] for r in rows]
        actions = [r["action"] for r in rows]
        replies = [render_state(r["next_obs"], r["reward"], r["terminated"]) for r in rows]
        for t, r in enumerate(rows):
            for c in controls(r):
                state, turns = window(observations[: t + 1], actions[: t + 1], replies[:t], history_turns,
                                      r["domain"] in STATEFUL, r["domain"])
                prompts = [render(build_messages(wm_system_prompt(r["env_id"], r["domain"], text), state, turns))
                           for text in (c.text, None)]
                out.append((prompts[0], prompts[1], c, r))
    return out


def obedience_probe(episodes: list[list[dict]], render, rng: random.Random, history_turns: int = 1,
                    counterfactual: bool = False) -> list[tuple]:
    """(controlled prompt, uncontrolled prompt, control, row) per held-out real transition. The control is a
    hindsight label the real transition has (factual: always a possible outcome of that state and action), or with
    `counterfactual` one of COUNTERFACTUAL it does not have: then a faithful LWM without the control line obeys it
    never, and obedience with the line measures how far the control steers the simulation away from reality."""
    def hindsight(r):
        held = row_labels(r)
        names = [n for n in COUNTERFACTUAL if n not in held] if counterfactual else sorted(held)
        return [make_control("hindsight", rng.choice(names or sorted(held)))]

    return _probe(episodes, render, history_turns, hindsight)


def control_probe(episodes: list[list[dict]], render, rng: random.Random, history_turns: int = 1,
                  kinds: tuple[str, ...] = ("perturbation", "fictional")) -> list[tuple]:
    """obedience_probe's items for perturbation and fictional controls: per held-out real transition and kind, a control
    of that kind whose family has a text for the step (controlled_transition). Without the control line a faithful
    LWM predicts the real observation, which obeys none of them (the chance rate)."""
    def steer(r):
        made = (controlled_transition(kind, r, rng) for kind in kinds)
        return [m[0] for m in made if m is not None]

    return _probe(episodes, render, history_turns, steer)


def balanced_sample(probe: list[tuple], n: int, rng: random.Random) -> list[tuple]:
    """`n` items of a control probe, taken in turn from each control kind (perturbation, fictional) and within a kind
    from each control name: a small `n` measures obedience on as many controls as it can, not on the commonest."""
    def interleave(items: list[tuple], key) -> list[tuple]:
        groups: dict = {}
        for item in items:
            groups.setdefault(key(item), []).append(item)
        lists = list(groups.values())
        return [g[i] for i in range(max(map(len, lists), default=0)) for g in lists if i < len(g)]

    items = list(probe)
    rng.shuffle(items)  # which items, and which group comes first
    by_kind: dict = {}
    for item in items:
        by_kind.setdefault(item[2].kind, []).append(item)
    spread = [x for kind in by_kind.values() for x in interleave(kind, lambda item: item[2].name)]
    return interleave(spread, lambda item: item[2].kind)[:n]


def measure_obedience(engine, probe: list[tuple], max_new_tokens: int, controlled: bool = True,
                      batch_size: int = 32) -> dict:
    """Share of probe items whose greedy prediction the labeler confirms for the item's control, with the
    control in the prompt (controlled) or without it (the baseline: how often the model obeys by chance)."""
    from agentworld.worldmodel.prompt import parse_prediction

    ok, by = 0, {}
    for i in range(0, len(probe), batch_size):
        chunk = probe[i : i + batch_size]
        gens = engine.generate([p[0] if controlled else p[1] for p in chunk], max_new_tokens=max_new_tokens,
                               temperature=0.0)
        for (_, _, c, r), g in zip(chunk, gens):
            pred = parse_prediction(g.text)
            hit = c.obeyed(r["obs"], pred.obs, pred.reward or 0.0, bool(pred.done))
            ok += hit
            n = by.setdefault(c.name, [0, 0])
            n[0], n[1] = n[0] + 1, n[1] + hit
    return {"obedience": ok / max(1, len(probe)), "n": len(probe), "by_label": {k: v[1] / v[0] for k, v in by.items()},
            "n_by_label": {k: v[0] for k, v in by.items()}}


def obedience_metric_rows(rows: list[dict], arm: str, t0: float, bin_s: float = 15.0) -> list[dict]:
    """`control` metrics rows from an arm's replay rows: per `bin_s` of wall-clock the controlled steps and the
    cumulative obedience rate, of every control ("all") and of each control name (over time, per kind), then one final
    row per control name and "all"."""
    from agentworld.metrics import metric_row

    rows = sorted((r for r in rows if parse_control(r.get("control")) is not None), key=lambda r: epoch_seconds(r["created_at"]))
    out, ends = [], []
    names = ["all"] + sorted({parse_control(r["control"]).name for r in rows})
    for name in names:
        mine = [r for r in rows if name == "all" or parse_control(r["control"]).name == name]
        n, ok, b, b_ok = 0, 0, 0, 0
        for i, r in enumerate(mine):
            hit = bool(row_obeyed(r))
            n, ok, b, b_ok = n + 1, ok + hit, b + 1, b_ok + hit
            end = (int((epoch_seconds(r["created_at"]) - t0) // bin_s) + 1) * bin_s
            if i + 1 == len(mine) or epoch_seconds(mine[i + 1]["created_at"]) - t0 >= end:
                out.append(metric_row("control", arm=arm, control=name, wall_time=end, steps=b, obeyed=b_ok,
                                      obedience=ok / n, bin_obedience=b_ok / b))
                ends.append(end)
                b = b_ok = 0
    end = max(ends, default=0.0)
    for name, (steps, obeyed) in sorted(obedience(rows).items()):
        out.append(metric_row("control", arm=arm, control=name, wall_time=end, steps=steps, obeyed=obeyed,
                              obedience=obeyed / steps, final=True))
    return out
