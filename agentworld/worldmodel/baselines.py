"""Held-out LWM fidelity against honest baselines, per domain and against the open-loop horizon.

A fidelity score alone says little: on a gridworld most actions leave the state as it was, and random-policy
data repeats transitions. So the model's scores stand next to two predictors that learn nothing: `copy` (the
state does not change) and `retrieve` (the next state of the nearest training prompt). Each domain is judged
on its main metric (MAIN_METRIC)."""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from agentworld.worldmodel.data import wm_examples
from agentworld.worldmodel.fidelity import edit_similarity, outcome_correct
from agentworld.worldmodel.prompt import Prediction, parse_prediction
from agentworld.worldmodel.rewards import field_f1, line_f1

log = logging.getLogger(__name__)

METRICS = ("exact_match", "edit_similarity", "line_f1", "field_f1", "outcome_accuracy")

# The metric each domain (agentworld/envs/__init__.py BUILTIN) is judged on, by the shape of its states.
MAIN_METRIC = {
    "gridworld": "exact_match",  # small grids: one wrong cell is a wrong state
    "embodied": "exact_match",  # short deterministic descriptions of a discrete state (BabyAI, ALFWorld)
    "terminal": "edit_similarity",  # screens: mostly-right output earns partial credit
    "swe": "edit_similarity",
    "web": "edit_similarity",
    "search": "edit_similarity",
    "textgame": "edit_similarity",
    "science": "edit_similarity",
    "mcp": "field_f1",  # JSON tool results: the fields count, not their spacing or order
}
DEFAULT_MAIN_METRIC = "edit_similarity"  # a domain registered from user code


def main_metric(domain: str) -> str:
    return MAIN_METRIC.get(domain, DEFAULT_MAIN_METRIC)


@dataclass
class Transition:
    """One real transition as the LWM sees it. Has the fields the learner's `predict` reads from an Example
    (prompt, next_obs, reward, done), plus the state before the action and the domain."""
    prompt: str
    obs: str
    next_obs: str
    reward: float
    done: bool
    domain: str


def transitions(episodes: list[list[dict]], render, history_turns: int = 1, budget_tokens: int = 0,
                count_tokens=None, **prompt_options) -> list[Transition]:
    """One Transition per row of `episodes`, its prompt built by `wm_examples` (without controls);
    `prompt_options` are wm_examples' other keywords that shape the prompt (its domain notes)."""
    examples = wm_examples(episodes, render, history_turns, budget_tokens=budget_tokens, count_tokens=count_tokens,
                           **prompt_options)
    rows = [r for ep in episodes for r in ep]  # wm_examples makes one example per row, in this order
    return [Transition(e.prompt, r["obs"], e.next_obs, e.reward, e.done, r["domain"])
            for e, r in zip(examples, rows, strict=True)]


def commonest_outcome(examples: Sequence) -> tuple[float, bool]:
    """The commonest (reward, done) of training examples; (0, not done) when there are none."""
    counts = Counter((float(e.reward), bool(e.done)) for e in examples)
    return counts.most_common(1)[0][0] if counts else (0.0, False)


def copy_predictions(held: Sequence[Transition], outcome: tuple[float, bool] = (0.0, False)) -> list[Prediction]:
    """Nothing changes: the state before the action, with a fixed outcome."""
    return [Prediction(t.obs, outcome[0], outcome[1], True) for t in held]


_TOKEN = re.compile(r"\S+")  # a line of a grid, a word of a screen, a piece of JSON


class Retriever:
    """The next state and outcome of the most similar training prompt.

    Why TF-IDF first and edit similarity second, not rapidfuzz's `process.extractOne` alone: prompts are whole
    screens, and extractOne over 3,000 prompts of 2,400 characters took 0.2 s per query (a minute for 300
    held-out ones). A TF-IDF cosine over whitespace tokens ranks every training prompt with one sparse product;
    its top `k` are re-ranked by Levenshtein similarity, which sees what a bag of tokens cannot (where on a
    line the agent stands). An exact twin is looked up first. On those 3,000 x 300 screens: 1.3 s, the same
    neighbour as the exhaustive search in 40 of 40 queries checked."""

    def __init__(self, train: Sequence, k: int = 8):
        if not train:
            raise ValueError("retrieve needs training transitions")
        # one entry per distinct prompt, answering its commonest (next_obs, reward, done): the best single
        # guess where the env is stochastic (ties: the first seen)
        outcomes: dict[str, Counter] = defaultdict(Counter)
        for e in train:
            outcomes[e.prompt][(e.next_obs, float(e.reward), bool(e.done))] += 1
        self.prompts = list(outcomes)
        self.answers = [c.most_common(1)[0][0] for c in outcomes.values()]
        self.twin = {p: i for i, p in enumerate(self.prompts)}
        self.k = k
        self.vocab: dict[str, int] = {}
        counts = [Counter(_TOKEN.findall(p)) for p in self.prompts]
        for c in counts:
            for tok in c:
                self.vocab.setdefault(tok, len(self.vocab))
        tf = self._tf(counts)
        df = np.bincount(tf.indices, minlength=len(self.vocab))
        self.idf = np.log((1 + len(counts)) / (1 + df)) + 1  # smoothed, as scikit-learn's
        self.matrix = self._normalised(tf)

    def _tf(self, counts: list[Counter]):
        """Sublinear term frequencies, one row per text; tokens outside the training vocabulary are dropped."""
        from scipy.sparse import csr_matrix  # scipy comes with ray[rllib]

        indptr, cols, vals = [0], [], []
        for c in counts:
            known = [t for t in c if t in self.vocab]
            cols += [self.vocab[t] for t in known]
            vals += [c[t] for t in known]
            indptr.append(len(cols))
        return csr_matrix((1 + np.log(np.array(vals, dtype=np.float64)), np.array(cols, dtype=np.int64), indptr),
                          shape=(len(counts), len(self.vocab)))

    def _normalised(self, tf):
        """tf * idf, each row L2-normalised."""
        m = tf.copy()
        m.data *= self.idf[m.indices]
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        m.data /= np.sqrt(np.bincount(rows, weights=m.data ** 2, minlength=m.shape[0]))[rows]
        return m

    def nearest(self, prompts: Sequence[str], chunk: int = 256) -> list[int]:
        """Index (into `self.prompts`) of each prompt's nearest training prompt."""
        out: list[int | None] = [self.twin.get(p) for p in prompts]
        todo = [i for i, j in enumerate(out) if j is None]
        for s in range(0, len(todo), chunk):  # chunks bound the dense score block
            part = todo[s : s + chunk]
            query = self._normalised(self._tf([Counter(_TOKEN.findall(prompts[i])) for i in part]))
            scores = (query @ self.matrix.T).toarray()
            k = min(self.k, len(self.prompts))
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for i, row, cand in zip(part, scores, top):
                cand = cand[np.argsort(-row[cand], kind="stable")]  # equal edit scores go to the higher cosine
                _, _, pos = process.extractOne(prompts[i], [self.prompts[j] for j in cand],
                                               scorer=Levenshtein.normalized_similarity)
                out[i] = int(cand[pos])
        return out

    def predict(self, prompts: Sequence[str]) -> list[Prediction]:
        return [Prediction(*self.answers[j], True) for j in self.nearest(prompts)]


def baselines(held: Sequence[Transition], train: Sequence) -> dict[str, list[Prediction]]:
    """Copy's and retrieve's predictions for `held` (retrieve only when there is training data). `train`:
    objects with prompt, next_obs, reward and done (Examples or Transitions). They do not change while the
    model trains: compute them once per held-out set."""
    out = {"copy": copy_predictions(held, commonest_outcome(train))}
    if train:
        out["retrieve"] = Retriever(train).predict([t.prompt for t in held])
    return out


def score(preds: Sequence[Prediction], held: Sequence[Transition], main: str = DEFAULT_MAIN_METRIC) -> dict:
    """Each metric's mean over the transitions, and `main`: the mean of metric `main`. field_f1 is the mean
    over JSON references (None if there are none); as the main metric, a non-JSON reference (an error
    message of a JSON tool) counts by its edit similarity."""
    if len(preds) != len(held):
        raise ValueError(f"{len(preds)} predictions for {len(held)} transitions")
    if not held:
        raise ValueError("nothing to score")
    items = []
    for p, t in zip(preds, held):
        m = {"exact_match": float(p.obs == t.next_obs), "edit_similarity": edit_similarity(p.obs, t.next_obs),
             "line_f1": line_f1(p.obs, t.next_obs), "field_f1": field_f1(p.obs, t.next_obs),
             "outcome_accuracy": float(outcome_correct(p, t.reward, t.done))}
        m["main"] = m["edit_similarity"] if m[main] is None else m[main]
        items.append(m)
    out = {}
    for k in METRICS + ("main",):
        xs = [m[k] for m in items if m[k] is not None]
        out[k] = sum(xs) / len(xs) if xs else None
    return out


def _row(domain: str, refs: Sequence[Transition], predictions: Mapping[str, Sequence[Prediction]],
         empty_note: str) -> dict:
    row = {"domain": domain, "n": len(refs), "main_metric": main_metric(domain), "note": None, "scores": {}}
    if refs:
        row["scores"] = {name: score(preds, refs, row["main_metric"]) for name, preds in predictions.items()}
    else:
        row["note"] = empty_note
    return row


def domain_rows(held: Sequence[Transition], predictions: Mapping[str, Sequence[Prediction]],
                domains: Iterable[str] = ()) -> list[dict]:
    """Per domain (sorted), every predictor's scores on the same held-out transitions:
    {"domain", "n", "main_metric", "note", "scores": {predictor: score(...)}}. `predictions` maps a name
    ("model", "copy", "retrieve") to predictions aligned with `held`. A domain of `domains` with no held-out
    transition gets n=0, empty scores and a note, also logged."""
    for name, preds in predictions.items():
        if len(preds) != len(held):
            raise ValueError(f"{name}: {len(preds)} predictions for {len(held)} held-out transitions")
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(held):
        by_domain[t.domain].append(i)
    rows = []
    for d in sorted(set(by_domain) | set(domains)):
        idx = by_domain.get(d, [])
        sub = {name: [preds[i] for i in idx] for name, preds in predictions.items()}
        rows.append(_row(d, [held[i] for i in idx], sub,
                         f"no held-out transitions of domain {d!r}: its fidelity was not measured"))
        if not idx:
            log.warning(rows[-1]["note"])
    return rows


def rollout_fidelity(episodes: list[list[dict]], predict: Callable[[list[str]], Sequence[str]], render,
                     history_turns: int = 1, horizons: Sequence[int] = (1, 2, 4, 8), budget_tokens: int = 0,
                     count_tokens=None, every_start: bool = False, domains: Iterable[str] = (),
                     copy_outcome: tuple[float, bool] = (0.0, False), **prompt_options) -> list[dict]:
    """Open-loop fidelity: from a real state, the model feeds on its own predictions while the episode's real
    actions are replayed, and its state h steps on is scored against the real one.

    Rollouts start at each episode's first state (as a simulated episode does), or with `every_start` at every
    step (more long-horizon samples from short episodes, at up to max(horizons) times the generations), the
    real history before the start in the prompt. A rollout ends with its real episode, not when the model
    predicts done. Prompts are built by `wm_examples` (with `prompt_options`, as `transitions`), the model's
    replies as the history, as `WorldModelEnv` keeps it (a missing outcome line: reward 0, not done).
    `predict(prompts) -> texts` is called once per step with every live rollout's prompt (it batches them as
    it likes). Copy predicts the rollout's start state at every step.
    Returns one row per (domain, horizon), domains sorted: {"domain", "n", "main_metric", "note", "scores":
    {"model": score(...), "copy": score(...)}, "horizon"}; no rollout reaching a horizon: n=0 and a note."""
    horizons = sorted(set(horizons))
    if not horizons or horizons[0] < 1:
        raise ValueError(f"horizons must be positive step counts, got {horizons}")
    def prompt_of(rows):
        return wm_examples([rows], render, history_turns, budget_tokens=budget_tokens, count_tokens=count_tokens,
                           **prompt_options)[-1].prompt

    scored = _open_loop(episodes, predict, prompt_of, history_turns, horizons, every_start, copy_outcome)
    seen = {rows[0]["domain"] for rows in episodes if rows}
    out = []
    for d in sorted(seen | set(domains)):
        if d not in seen:
            log.warning(f"no held-out episodes of domain {d!r}: its open-loop fidelity was not measured")
        for h in horizons:
            model, copy, refs = scored.get((d, h), ([], [], []))
            note = (f"no held-out episode of domain {d!r} lasts {h} steps" if d in seen
                    else f"no held-out episodes of domain {d!r}")
            out.append(dict(_row(d, refs, {"model": model, "copy": copy}, note), horizon=h))
    return out


def _open_loop(episodes, predict, prompt_of, history_turns, horizons, every_start,
               copy_outcome) -> dict[tuple[str, int], tuple[list, list, list]]:
    """(domain, horizon) -> the model's predictions, copy's, and the real transitions they are scored on.
    `prompt_of(rows)`: the LWM's prompt for the last of `rows`."""
    turns = max(1, history_turns)
    rollouts = []
    for rows in episodes:
        for s in range(len(rows) if every_start else min(1, len(rows))):
            rollouts.append({"rows": rows, "start": s, "sim": [dict(r) for r in rows[:s]], "state": rows[s]["obs"]})
    scored: dict[tuple[str, int], tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
    for k in range(horizons[-1]):
        live = [ro for ro in rollouts if ro["start"] + k < len(ro["rows"])]
        if not live:
            break
        prompts = []
        for ro in live:
            # the real action from the model's own state; this row's outcome is not in its prompt
            ro["sim"].append(dict(ro["rows"][ro["start"] + k], obs=ro["state"]))
            # the last `turns` rows give the prompt the whole episode would, for a fraction of the renders
            prompts.append(prompt_of(ro["sim"][-turns:]))
        texts = list(predict(prompts))
        if len(texts) != len(prompts):
            raise ValueError(f"predict returned {len(texts)} texts for {len(prompts)} prompts")
        for ro, prompt, text in zip(live, prompts, texts):
            p = parse_prediction(text)
            ro["sim"][-1].update(next_obs=p.obs, reward=p.reward if p.reward is not None else 0.0,
                                 terminated=bool(p.done))
            ro["state"] = p.obs
            if k + 1 in horizons:
                real = ro["rows"][ro["start"] + k]
                model, copy, refs = scored[(real["domain"], k + 1)]
                model.append(p)
                copy.append(Prediction(ro["rows"][ro["start"]]["obs"], copy_outcome[0], copy_outcome[1], True))
                refs.append(Transition(prompt, real["obs"], real["next_obs"], real["reward"], real["terminated"],
                                       real["domain"]))
    return scored
