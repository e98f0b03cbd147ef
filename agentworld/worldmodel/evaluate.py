"""`agentworld wm eval`: next-state fidelity of a model (by path) or an endpoint on AgentWorldBench-style
JSONL or on a replay dir, with rule metrics per domain and an optional rubric judge."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from agentworld.worldmodel import judge as judge_mod
from agentworld.worldmodel.bench import bench_examples, read_jsonl, replay_rows_to_bench
from agentworld.worldmodel.prompt import parse_prediction
from agentworld.worldmodel.rewards import rule_scores

RULES = ("format", "exact", "edit", "line_f1", "field_f1")


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


def run_eval(data: str, out_dir: str, model: str | None = None, endpoint: str | None = None,
             endpoint_model: str = "agentworld", judge_endpoint: str | None = None, judge_model: str | None = None,
             judge_retries: int = 2, max_new_tokens: int = 256, batch_size: int = 16, limit: int | None = None,
             history_turns: int | None = None,
             console: Console | None = None) -> dict:
    console = console or Console()
    rows, errors = load_rows(data)
    rows = rows[:limit] if limit else rows
    examples = bench_examples(rows, history_turns)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not examples:
        raise ValueError(f"{data}: no valid rows")
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
        judge_mod.chat(judge_endpoint, judge_model, [{"role": "user", "content": "ping"}], max_tokens=1)
        failures = attempts = 0
        with open(out / "judged.jsonl", "w") as f:
            for rec, e in zip(track(records, description="judging", console=console), examples):
                scores, used, raw = judge_mod.judge(judge_endpoint, judge_model, e.messages,
                                                    rec["predicted_observation"], e.reference, judge_retries)
                attempts += used
                failures += scores is None
                rec["judge"] = {"scores": scores, "total": judge_mod.normalized_total(scores) if scores else None,
                                "attempts": used, "raw": raw[:2000]}
                rec["metrics"]["judge_total"] = rec["judge"]["total"]
                f.write(json.dumps(rec) + "\n")
        keys.append("judge_total")
        judge_stats = {"failures": failures, "judged": len(records) - failures, "attempts": attempts}
    summary = aggregate(records, keys) | {"skipped_lines": errors, "judge": judge_stats,
                                           "source": {"data": data, "model": model, "endpoint": endpoint}}
    (out / "scores.json").write_text(json.dumps(summary, indent=2))
    table = Table(title=f"next-state fidelity ({len(records)} samples)")
    table.add_column("domain")
    for k in keys:
        table.add_column(k)
    for d, v in list(summary["domains"].items()) + [("macro", summary["macro"]), ("weighted", summary["weighted"])]:
        table.add_row(d, *("-" if v[k] is None else f"{v[k]:.3f}" for k in keys))
    console.print(table)
    if judge_stats:
        console.print(f"judge: {judge_stats['failures']} of {len(records)} replies unparseable after retries")
    return summary
