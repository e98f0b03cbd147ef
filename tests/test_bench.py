"""AgentWorldBench-style JSONL: export from real env transitions, import, and `agentworld wm eval`."""

import json
import subprocess
import sys

import pytest

from agentworld.envs import make_env
from agentworld.replay import ReplayStore
from agentworld.schema import rows_to_batch
from agentworld.worldmodel.bench import bench_examples, bench_to_replay_rows, read_jsonl, replay_rows_to_bench
from agentworld.worldmodel.data import episodes_from_table


def real_episode_rows(actions=("right", "right", "down", "down", "down", "right")):
    env = make_env("gymnasium:FrozenLake-v1", is_slippery=False)
    obs, _ = env.reset(seed=0)
    rows = []
    for t, a in enumerate(actions):
        nobs, r, term, trunc, _ = env.step(a)
        rows.append(dict(run_id="r", arm="real", episode_id="ep0", step=t, env_id=env.env_id, domain=env.domain,
                         source="real", obs=obs, action=a, next_obs=nobs, reward=r, terminated=term, truncated=trunc,
                         policy_version=0, actor_id="a"))
        obs = nobs
    return rows


@pytest.fixture
def bench_file(tmp_path):
    rows = replay_rows_to_bench([real_episode_rows()])
    p = tmp_path / "bench.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n" + json.dumps({"id": 1}) + "\n")
    return p


def test_export_has_the_bench_fields_and_reads_back(bench_file):
    rows, errors = read_jsonl(bench_file)
    assert len(rows) == 6 and len(errors) == 2
    assert ":7:" in errors[0] and ":8:" in errors[1] and "missing" in errors[1]  # line numbers, then skipped
    last = rows[-1]
    assert last["turn_idx"] == 6 and len(last["prompt"]) == 6 and last["task"].endswith("/gridworld")
    assert last["response"][-1].startswith("**Environment Observation:**\n") and last["response"][-1].endswith("HFF[G]")
    ex = bench_examples(rows)[-1]
    assert ex.reference.endswith("HFF[G]") and [m["role"] for m in ex.messages][-2:] == ["assistant", "user"]
    short = bench_examples(rows, history_turns=1)[-1]
    assert len(short.messages) == 2 and short.messages[1]["content"].startswith("State:\n  (Down)\n")


def test_import_round_trips_transitions(bench_file, tmp_path):
    rows, _ = read_jsonl(bench_file)
    imported = bench_to_replay_rows(rows[-1:])
    original = real_episode_rows()
    assert [r["next_obs"] for r in imported] == [r["next_obs"] for r in original]
    store = ReplayStore(str(tmp_path / "replay"))
    store.add(rows_to_batch(imported))
    assert store.count(arm="import") == 6


def test_wm_eval_cli_on_bench_jsonl(bench_file, tmp_path):
    from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer

    rows, _ = read_jsonl(bench_file)
    texts = [render_chatml(e.messages) for e in bench_examples(rows)]
    tok = train_tokenizer(texts, 300, tmp_path / "m")
    build_tiny_model(tok, tmp_path / "m")
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "agentworld", "wm", "eval", "--data", str(bench_file), "--model",
                        str(tmp_path / "m"), "--max-new-tokens", "8", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ":7: skipped" in r.stderr
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and {"id", "task", "prompt", "response", "turn_idx", "prediction", "metrics"} <= set(preds[0])
    scores = json.loads((out / "scores.json").read_text())
    assert scores["n"] == 6 and set(scores["domains"]) == {"gridworld"} and len(scores["skipped_lines"]) == 2
    assert scores["macro"]["exact"] == 0.0  # an untrained model predicts nothing right


def test_wm_eval_unreachable_endpoint_is_one_clear_error(bench_file):
    r = subprocess.run([sys.executable, "-m", "agentworld", "wm", "eval", "--data", str(bench_file), "--endpoint",
                        "http://127.0.0.1:9/v1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("agentworld: error:")
    assert "unreachable" in r.stderr
