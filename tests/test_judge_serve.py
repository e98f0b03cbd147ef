"""The judge path against a real OpenAI-compatible server: the project's Ray Serve deployment serving
the tiny model. A tiny model's judgments mostly fail to parse: they must be counted, and the run finish."""

import json
import socket
import urllib.error
import urllib.request

import pytest

from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.worldmodel.bench import bench_examples, read_jsonl, replay_rows_to_bench
from agentworld.worldmodel.evaluate import run_eval
from tests.test_bench import real_episode_rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import ray
    from ray import serve

    from agentworld.serve import start

    d = tmp_path_factory.mktemp("judge")
    rows = replay_rows_to_bench([real_episode_rows()])
    (d / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tokenizer([render_chatml(e.messages) for e in bench_examples(rows)] * 2, 300, d / "m")
    build_tiny_model(tok, d / "m")
    own_ray = not ray.is_initialized()  # another module's tests may have left the session's cluster up
    if own_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    url = start(str(d / "m"), "tiny", port=free_port())
    yield url, d
    serve.shutdown()
    if own_ray:
        ray.shutdown()


def post(url, body, headers=None):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


@pytest.mark.slow
def test_judge_failures_are_counted_and_the_run_finishes(served, tmp_path):
    url, d = served
    summary = run_eval(str(d / "bench.jsonl"), str(tmp_path), model=str(d / "m"), max_new_tokens=8,
                       judge_endpoint=url, judge_model="tiny", judge_retries=1)
    judged = [json.loads(x) for x in (tmp_path / "judged.jsonl").read_text().splitlines()]
    assert len(judged) == 6 and all(j["judge"]["attempts"] >= 1 for j in judged)
    stats = summary["judge"]
    assert stats["failures"] + stats["judged"] == 6 and stats["failures"] == sum(j["judge"]["scores"] is None for j in judged)
    assert stats["attempts"] >= 6 + stats["failures"]  # every failure was retried once
    assert json.loads((tmp_path / "scores.json").read_text())["judge"] == stats


@pytest.mark.slow
def test_endpoint_speaks_openai_and_rejects_bad_requests(served):
    url, _ = served
    with urllib.request.urlopen(url + "/models", timeout=30) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny"
    code, body = post(url + "/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 4})
    assert code == 200 and body["choices"][0]["message"]["role"] == "assistant"
    assert post(url + "/chat/completions", {"messages": []})[0] == 422
    assert post(url + "/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6})[0] == 422
    assert post(url + "/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]})[0] == 422
    assert post(url + "/chat/completions", {"messages": [{"role": "user", "content": "x" * 300_000}]})[0] == 413


@pytest.mark.slow
def test_the_served_model_as_a_think_teacher_fills_the_cache(served, tmp_path):
    """The project's own Serve deployment as the teacher: every transition is asked once, each reply is cached or
    counted as unusable, and a rerun asks only for what is not cached."""
    from agentworld.config import WMThinkConfig
    from agentworld.worldmodel.think import rationale_fn, teacher_rationales

    url, _ = served
    rows = real_episode_rows()[:4]
    cfg = WMThinkConfig(source="teacher", endpoint=url, model="tiny", max_tokens=24, workers=2)
    found, stats = teacher_rationales(rows, cfg, str(tmp_path / "think.jsonl"))
    assert stats["asked"] == stats["transitions"] == len({(r["obs"], r["action"], r["next_obs"]) for r in rows})
    assert stats["failed"] == 0 and stats["written"] + stats["unusable"] == stats["asked"]
    lines = (tmp_path / "think.jsonl").read_text().splitlines() if stats["written"] else []
    assert len(lines) == stats["written"] == len(found)
    _, again = rationale_fn(rows, cfg, str(tmp_path / "think.jsonl"))
    assert again["cached"] == stats["written"] and again["asked"] == stats["unusable"]
