"""`agentworld wm eval`: next-state fidelity of a model (by path) or an endpoint on AgentWorldBench-style
JSONL or on a replay dir, with rule metrics per domain and an optional rubric judge, beside two baselines
scored on the same transitions: `copy` (the state does not change) and `retrieve` (the next state of the
most similar training prompt of the same domain, with `train`)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from agentworld.worldmodel import judge as judge_mod
from agentworld.worldmodel.baselines import Transition, baselines, domain_rows, main_metric, score
from agentworld.worldmodel.bench import BenchExample, bench_examples, read_jsonl, replay_rows_to_bench, strip_prefix
from agentworld.worldmodel.prompt import OBS_OPEN, Prediction, parse_prediction
from agentworld.worldmodel.rewards import rule_scores

RULES = ("format", "exact", "edit", "line_f1", "field_f1")
# RULES' names for the metrics of baselines.score (a baseline writes no reply, so it has no `format`)
SCORE_NAMES = {"exact": "exact_match", "edit": "edit_similarity", "line_f1": "line_f1", "field_f1": "field_f1"}
PREDICTORS = ("model", "copy", "retrieve")
NO_TRAIN_NOTE = "retrieve: omitted (no --train given: it retrieves the next state of the nearest training prompt)"


def load_rows(data: str) -> tuple[list[dict], list[str]]:
    """Bench rows from a JSONL file, or from a replay dir (exported on the fly)."""
    p = Path(data)
    if p.is_dir():
        from agentworld.replay import ReplayStore
        from agentworld.worldmodel.data import episodes_from_table

        return replay_rows_to_bench(episodes_from_table(ReplayStore(str(p)).sample(source="real"))), []
    if not p.is_file():
        raise FileNotFoundError(f"{data}: no such file or replay dir")
    return read_jsonl(p)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def aggregate(records: list[dict], keys) -> dict:
    """Per-domain means, the macro mean over domains and the sample-weighted mean."""
    by_domain = defaultdict(list)
    for r in records:
        by_domain[r["domain"]].append(r)
    out = {"domains": {}, "macro": {}, "weighted": {}, "n": len(records)}
    for d, rs in sorted(by_domain.items()):
        out["domains"][d] = {k: _mean([r["metrics"].get(k) for r in rs]) for k in keys} | {"n": len(rs)}
    for k in keys:
        out["macro"][k] = _mean([v[k] for v in out["domains"].values()])
        out["weighted"][k] = _mean([r["metrics"].get(k) for r in records])
    return out


def previous_observation(messages: list[dict]) -> str:
    """The state the action to predict was taken in: the last assistant turn before the final user turn (its
    `<predicted_observation>` block without the outcome line, else the observation without the bench prefix),
    else the `State:` of the first user turn (`State:\\n{state}\\nAction: {action}`), else ""."""
    for m in reversed(messages[:-1]):
        if m["role"] == "assistant":
            text = m["content"]
            return parse_prediction(text).obs if OBS_OPEN in text else strip_prefix(text)
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    if not first.startswith("State:\n"):
        return ""
    body = first[len("State:\n"):]
    cut = body.rfind("\nAction: ")  # the last: a screen may hold that text, a single action rarely does
    return body if cut < 0 else body[:cut]


def prompt_text(messages: list[dict]) -> str:
    """A chat context as one text, for retrieval."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def bench_transitions(rows: list[dict], examples: list[BenchExample],
                      history_turns: int | None = None) -> list[Transition]:
    """One Transition per bench row: the context the model sees as the prompt, the reference as the next state,
    the row's outcome if it has one. The previous state comes from the whole context (`history_turns` puts it in
    a `State:` block whose end is not marked when the bench's user turns are free text)."""
    full = examples if history_turns is None else bench_examples(rows)
    return [Transition(prompt_text(e.messages), previous_observation(f.messages), e.reference,
                       float(row.get("reward") or 0.0), bool(row.get("terminated", False)), e.domain)
            for row, e, f in zip(rows, examples, full, strict=True)]


def load_train(train: str | None, history_turns: int | None) -> tuple[list[dict], list[Transition]] | None:
    """The --train rows and their transitions (prompts shaped as the evaluated ones); None without --train."""
    if train is None:
        return None
    rows, _ = load_rows(train)  # a missing path: FileNotFoundError naming it
    if not rows:
        raise ValueError(f"{train}: no valid training rows")
    return rows, bench_transitions(rows, bench_examples(rows, history_turns), history_turns)


def leaked(rows: list[dict], held: list[Transition], train: tuple[list[dict], list[Transition]]) -> int:
    """Evaluated rows also in the training set: the same id, or the same prompt and reference."""
    ids = {str(r["id"]) for r in train[0]}
    pairs = {(t.prompt, t.next_obs) for t in train[1]}
    return sum(str(r["id"]) in ids or (t.prompt, t.next_obs) in pairs for r, t in zip(rows, held))


def baseline_predictions(held: list[Transition], train: list[Transition] | None) -> dict[str, list]:
    """Copy's and (with `train`) retrieve's prediction of each held transition, per domain: retrieve draws on the
    domain's training transitions (None where there are none), copy's outcome is their commonest one."""
    preds: dict[str, list] = {"copy": [None] * len(held)} | ({"retrieve": [None] * len(held)} if train else {})
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(held):
        by_domain[t.domain].append(i)
    for d, idx in by_domain.items():
        got = baselines([held[i] for i in idx], [t for t in train or () if t.domain == d])
        for name, ps in got.items():
            for i, p in zip(idx, ps):
                preds[name][i] = p
    return preds


def baseline_aggregate(preds: list[Prediction | None], held: list[Transition]) -> dict | None:
    """A baseline's scores in the shape of the model's (`aggregate` over RULES), on the transitions it predicted."""
    records = [{"domain": t.domain, "metrics": {"format": None} | {k: s[v] for k, v in SCORE_NAMES.items()}}
               for p, t in zip(preds, held) if p is not None for s in [score([p], [t])]]
    return aggregate(records, RULES) if records else None


def main_table(held: list[Transition], predictions: dict[str, list]) -> dict:
    """Per domain: its main metric, each predictor's value of it (None: the predictor made no prediction there)
    and whether the model beats every baseline that did."""
    values: dict[str, dict[str, float]] = {}
    for name, preds in predictions.items():
        kept = [(p, t) for p, t in zip(preds, held) if p is not None]
        for r in domain_rows([t for _, t in kept], {name: [p for p, _ in kept]}):
            values.setdefault(r["domain"], {})[name] = r["scores"][name]["main"]
    out = {}
    for d in sorted({t.domain for t in held}):
        v = {name: values.get(d, {}).get(name) for name in PREDICTORS}
        base = [v[name] for name in PREDICTORS[1:] if v[name] is not None]
        out[d] = {"metric": main_metric(d), "n": sum(t.domain == d for t in held), **v,
                  "beats_baselines": v["model"] is not None and all(v["model"] > b for b in base)}
    return out


def compare_baselines(rows: list[dict], held: list[Transition], replies: list[str],
                      train: tuple[list[dict], list[Transition]] | None) -> dict:
    """scores.json's `baselines` (each baseline's aggregate), `main` (main_table) and `baseline_notes`."""
    preds = baseline_predictions(held, train[1] if train else None)
    notes = [] if train else [NO_TRAIN_NOTE]
    if train:
        if n := leaked(rows, held, train):
            notes.append(f"warning: {n} of {len(held)} evaluated rows are also in --train (same id, or same prompt "
                         "and reference): retrieve's scores are inflated by leakage")
        missing = sorted({t.domain for t in held} - {t.domain for t in train[1]})
        if missing:
            notes.append(f"retrieve: no --train rows of domain(s) {', '.join(missing)}: shown as -")
    table = main_table(held, {"model": [parse_prediction(r) for r in replies]} | preds)
    return {"baselines": {name: baseline_aggregate(preds[name], held) if name in preds else None
                          for name in PREDICTORS[1:]}, "main": table, "baseline_notes": notes}


def _predict(examples: list[BenchExample], model: str | None, endpoint: str | None, endpoint_model: str,
             max_new_tokens: int, batch_size: int, console: Console) -> list[str]:
    replies: list[str] = []
    if model:
        from agentworld.models.hf_engine import HFEngine

        engine = HFEngine(model)
        batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        for batch in track(batches, description="predicting", console=console):
            gens = engine.generate([engine.render(e.messages) for e in batch], max_new_tokens=max_new_tokens)
            replies += [g.text for g in gens]
    else:
        judge_mod.chat(endpoint, endpoint_model, [{"role": "user", "content": "ping"}], max_tokens=1)  # fail fast
        for e in track(examples, description="predicting", console=console):
            replies.append(judge_mod.chat(endpoint, endpoint_model, e.messages, max_tokens=max_new_tokens))
    return replies


def _judge(records: list[dict], examples: list[BenchExample], endpoint: str, model: str | None, retries: int,
           out: Path, console: Console) -> dict:
    judge_mod.chat(endpoint, model, [{"role": "user", "content": "ping"}], max_tokens=1)
    failures = attempts = 0
    with open(out / "judged.jsonl", "w") as f:
        for rec, e in zip(track(records, description="judging", console=console), examples):
            scores, used, raw = judge_mod.judge(endpoint, model, e.messages, rec["predicted_observation"],
                                                e.reference, retries)
            attempts += used
            failures += scores is None
            rec["judge"] = {"scores": scores, "total": judge_mod.normalized_total(scores) if scores else None,
                            "attempts": used, "raw": raw[:2000]}
            rec["metrics"]["judge_total"] = rec["judge"]["total"]
            f.write(json.dumps(rec) + "\n")
    return {"failures": failures, "judged": len(records) - failures, "attempts": attempts}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _print(summary: dict, keys: list[str], console: Console) -> None:
    table = Table(title=f"next-state fidelity ({summary['n']} samples)")
    for c in ["domain", *keys]:
        table.add_column(c)
    for d, v in list(summary["domains"].items()) + [("macro", summary["macro"]), ("weighted", summary["weighted"])]:
        table.add_row(d, *(_fmt(v[k]) for k in keys))
    console.print(table)
    main = Table(title="main metric per domain: model / copy / retrieve")
    for c in ("domain", "metric", "n", *PREDICTORS, "beats baselines"):
        main.add_column(c)
    for d, v in summary["main"].items():
        main.add_row(d, v["metric"], str(v["n"]), *(_fmt(v[p]) for p in PREDICTORS),
                     "yes" if v["beats_baselines"] else "no")
    console.print(main)
    for note in summary["baseline_notes"]:
        console.print(note, soft_wrap=True, markup=False, highlight=False)
    if summary["judge"]:
        console.print(f"judge: {summary['judge']['failures']} of {summary['n']} replies unparseable after retries")


def run_eval(data: str, out_dir: str, model: str | None = None, endpoint: str | None = None,
             endpoint_model: str = "agentworld", judge_endpoint: str | None = None, judge_model: str | None = None,
             judge_retries: int = 2, max_new_tokens: int = 256, batch_size: int = 16, limit: int | None = None,
             history_turns: int | None = None, train: str | None = None,
             console: Console | None = None) -> dict:
    """Predict, score, judge (with `judge_endpoint`) and compare with copy and retrieve (retrieve with `train`:
    a JSONL file or replay dir of training rows); writes predictions.jsonl, judged.jsonl and scores.json."""
    console = console or Console(soft_wrap=True)
    rows, errors = load_rows(data)
    rows = rows[:limit] if limit else rows
    examples = bench_examples(rows, history_turns)
    if not examples:
        raise ValueError(f"{data}: no valid rows")
    train_set = load_train(train, history_turns)  # before predicting: a bad --train fails fast
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    replies = _predict(examples, model, endpoint, endpoint_model, max_new_tokens, batch_size, console)
    records = []
    with open(out / "predictions.jsonl", "w") as f:
        for row, e, reply in zip(rows, examples, replies):
            s = rule_scores(reply, e.reference)
            rec = {**row, "domain": e.domain, "prediction": reply, "predicted_observation": parse_prediction(reply).obs,
                   "metrics": {k: s[k] for k in RULES}}
            records.append(rec)
            f.write(json.dumps(rec) + "\n")
    keys = list(RULES)
    judge_stats = None
    if judge_endpoint:
        judge_stats = _judge(records, examples, judge_endpoint, judge_model, judge_retries, out, console)
        keys.append("judge_total")
    held = bench_transitions(rows, examples, history_turns)
    summary = (aggregate(records, keys) | compare_baselines(rows, held, replies, train_set)
               | {"skipped_lines": errors, "judge": judge_stats,
                  "source": {"data": data, "model": model, "endpoint": endpoint, "train": train}})
    (out / "scores.json").write_text(json.dumps(summary, indent=2))
    _print(summary, keys, console)
    return summary
