"""The simulator as a service: a real tiny LWM on real Ray Serve, started as `agentworld serve` starts it, talked to
by the unmodified `openai` client and by plain HTTP. Initial states come from the real FrozenLake."""

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from agentworld import sim_service  # imports Ray Serve here, not under a test's captured stderr
from agentworld.cli import main
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.worldmodel.bench import bench_examples, replay_rows_to_bench
from tests.test_bench import real_episode_rows
from tests.test_judge_serve import free_port

TOKEN = "s3cret-token"
TTL_S = 10.0  # long enough that a step on a loaded machine never outlasts it


def write_config(d, port=8000, serve_extra=None):
    frozenlake = {"id": "gymnasium:FrozenLake-v1", "kwargs": {"map_name": "4x4", "is_slippery": False}}
    cfg = {
        "run": {"name": "sim", "output_dir": str(d / "runs")},
        "envs": {"frozenlake": {**frozenlake, "max_steps": 3}, "frozenlake_long": {**frozenlake, "max_steps": 50}},
        "world_model": {"env": "frozenlake", "generation": {"max_new_tokens": 16}},
        "arms": [{"name": "sim", "source": "sim", "env": "frozenlake"}],
        "serve": {"port": port, "session_ttl_s": TTL_S, "max_tokens": 64, "max_body_bytes": 20_000,
                  # short delays and a short window, so the scaling test sees both directions in seconds
                  "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
                                  "upscale_delay_s": 0.5, "downscale_delay_s": 2, "look_back_period_s": 2,
                                  "metrics_interval_s": 0.5},
                  **(serve_extra or {})},
    }
    (d / "sim.yaml").write_text(yaml.safe_dump(cfg))
    return str(d / "sim.yaml")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import ray
    from ray import serve

    from agentworld.config import load_config

    d = tmp_path_factory.mktemp("sim")
    model = d / "runs" / "sim" / "checkpoints" / "wm"  # where `agentworld serve` looks by default
    texts = [render_chatml(e.messages) for e in bench_examples(replay_rows_to_bench([real_episode_rows()]))]
    build_tiny_model(train_tokenizer(texts * 2, 300, model), model)
    cfg = load_config(write_config(d, free_port(), {"token": TOKEN}))
    spec = sim_service.build_spec(cfg)
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    url = sim_service.start(cfg, spec)
    yield url
    serve.shutdown()
    if own_ray:
        ray.shutdown()


def replicas() -> int:
    """Running replicas of the simulator, as serve.status() reports them."""
    from ray import serve

    app = serve.status().applications[sim_service.APP_NAME]
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def call(method, url, body=None, token=TOKEN, raw=None, timeout=60):
    """(status, json body or None) of one HTTP request; `raw` sends bytes as they are."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def test_an_exposed_host_needs_a_token_and_a_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(sim_service.TOKEN_ENV, raising=False)
    cfg = write_config(tmp_path)
    assert main(["serve", cfg]) == 2 and "no HF checkpoint" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert main(["serve", cfg, "serve.host=0.0.0.0", "--model", str(tmp_path / "m")]) == 2
    assert "a token is required" in capsys.readouterr().err
    assert main(["serve", cfg, "serve.autoscaling.max_replicas=0"]) == 2
    assert "serve.autoscaling.max_replicas" in capsys.readouterr().err


@pytest.mark.slow
def test_unmodified_openai_client_talks_to_the_world_model(served):
    from openai import OpenAI

    client = OpenAI(base_url=served, api_key=TOKEN, max_retries=0)
    assert [m.id for m in client.models.list()] == ["agentworld"]
    reply = client.chat.completions.create(model="agentworld", max_tokens=8, messages=[
        {"role": "system", "content": "You are a world model."}, {"role": "user", "content": "Action: right"}])
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens <= 8


@pytest.mark.slow
def test_a_session_plays_an_episode_then_is_gone(served):
    from agentworld.envs import make_env

    real_obs, real_info = make_env("gymnasium:FrozenLake-v1", map_name="4x4", is_slippery=False).reset(seed=5)
    code, s = call("POST", served + "/sessions", {"env": "frozenlake", "seed": 5, "control": "the ice is thin"})
    assert code == 201 and s["observation"] == real_obs and s["control"] == "the ice is thin"
    assert s["info"]["admissible_actions"] == real_info["admissible_actions"]
    step = f"{served}/sessions/{s['id']}/step"
    results = [call("POST", step, {"action": a}) for a in ("right", "down", "right")]
    assert [c for c, _ in results] == [200, 200, 200]
    assert all(isinstance(r["observation"], str) and isinstance(r["reward"], float) for _, r in results)
    assert results[-1][1]["done"]  # max_steps is 3: the third step ends the episode, by truncation or not
    assert call("POST", step, {"action": "up"})[0] == 409  # an ended episode takes no more steps
    assert call("DELETE", f"{served}/sessions/{s['id']}") == (200, {"id": s["id"], "deleted": True})
    assert call("POST", step, {"action": "up"})[0] == 404
    assert call("DELETE", f"{served}/sessions/{s['id']}")[0] == 404


@pytest.mark.slow
def test_an_idle_session_expires(served):
    code, s = call("POST", served + "/sessions", {"env": "frozenlake"})
    assert code == 201
    time.sleep(TTL_S + 0.5)
    assert call("POST", f"{served}/sessions/{s['id']}/step", {"action": "down"})[0] == 404


@pytest.mark.slow
def test_two_steps_from_the_same_state_cannot_both_land(served):
    import ray

    from agentworld.worldmodel.env import WorldModelEnv

    store = sim_service.SessionStore.remote(ttl_s=60, max_sessions=1)
    sim = WorldModelEnv(None, "gymnasium:FrozenLake-v1", "gridworld", [("[S]FFF", {})])
    sid = ray.get(store.create.remote({"sim": sim, "done": False}))
    assert ray.get(store.create.remote({"sim": sim, "done": False})) is None  # max_sessions
    a, b = ray.get([store.get.remote(sid), store.get.remote(sid)])  # two replicas read the same episode
    a["sim"].t = b["sim"].t = 1  # and each simulates one step
    assert ray.get([store.commit.remote(sid, a), store.commit.remote(sid, b)]) == ["ok", "conflict"]
    assert ray.get(store.delete.remote(sid)) and ray.get(store.commit.remote(sid, a)) == "gone"


@pytest.mark.slow
def test_bad_requests_get_4xx_never_5xx(served):
    chat, sessions = served + "/chat/completions", served + "/sessions"
    msg = [{"role": "user", "content": "hi"}]
    cases = {
        "no token": (call("POST", chat, {"messages": msg}, token=None), 401),
        "wrong token": (call("POST", sessions, {"env": "frozenlake"}, token="guess"), 401),
        "no token on models": (call("GET", served + "/models", token=None), 401),
        "malformed json": (call("POST", sessions, raw=b"{not json"), 422),
        "no messages": (call("POST", chat, {"messages": []}), 422),
        "a role that does not exist": (call("POST", chat, {"messages": [{"role": "wizard", "content": "x"}]}), 422),
        "max_tokens over the schema": (call("POST", chat, {"messages": msg, "max_tokens": 10**6}), 422),
        "max_tokens over serve.max_tokens": (call("POST", chat, {"messages": msg, "max_tokens": 65}), 422),
        "body over max_body_bytes": (call("POST", chat, {"messages": [{"role": "user", "content": "x" * 30_000}]}),
                                     413),
        # chunked (no Content-Length): read up to the limit, then refused
        "chunked body over max_body_bytes": (call("POST", chat, raw=(b"x" * 1000 for _ in range(500))), 413),
        "unknown env": (call("POST", sessions, {"env": "chess"}), 422),
        "seed of the wrong type": (call("POST", sessions, {"env": "frozenlake", "seed": "x"}), 422),
        "unknown field": (call("POST", sessions, {"env": "frozenlake", "sneaky": 1}), 422),
        "unknown session": (call("POST", sessions + "/nope/step", {"action": "up"}), 404),
        "delete an unknown session": (call("DELETE", sessions + "/nope"), 404),
    }
    code, s = call("POST", sessions, {"env": "frozenlake"})
    step = f"{sessions}/{s['id']}/step"
    cases["no action"] = (call("POST", step, {}), 422)
    cases["an action over the size limit"] = (call("POST", step, {"action": "x" * 5000}), 422)
    got = {name: code for name, ((code, _), _) in cases.items()}
    assert got == {name: want for name, (_, want) in cases.items()}
    assert call("POST", step, {"action": "down"})[0] == 200  # none of the bad requests touched the episode
    chunked = call("POST", step, raw=iter([b'{"action": ', b'"right"}']))  # a chunked body under the limit is read
    assert chunked[0] == 200 and "observation" in chunked[1], chunked


@pytest.mark.slow
def test_replicas_scale_up_under_load_and_back_down_and_sessions_survive(served):
    counts = {"start": replicas()}
    body = {"messages": [{"role": "user", "content": "Action: right"}], "max_tokens": 48}
    peak, timeline, stop = [counts["start"]], [(0.0, counts["start"])], threading.Event()
    t0 = time.time()

    def sample():  # every change of the replica count, with its time since the load began
        while not stop.is_set():
            peak.append(replicas())
            if peak[-1] != timeline[-1][1]:
                timeline.append((round(time.time() - t0, 1), peak[-1]))
            time.sleep(0.25)

    def client(n):  # a bounded client: at most n requests, and none after the load phase ends
        codes = []
        for _ in range(n):
            if stop.is_set():
                break
            codes.append(call("POST", served + "/chat/completions", body)[0])
        return codes

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client, 60) for _ in range(6)]  # 360 requests at most
        # a new replica counts once it runs: it imports torch and loads the model first, which took 64 s on the
        # suite's busy cores once, so the load goes on for up to 120 s (the clients' 360 requests outlast it)
        while time.time() - t0 < 120 and max(peak) < 3 and not all(f.done() for f in futures):
            time.sleep(0.5)
        counts["under load"] = max(peak)
        # sessions created and stepped while several replicas serve them
        sessions = [call("POST", served + "/sessions", {"env": "frozenlake_long", "seed": i})[1]["id"]
                    for i in range(3)]
        stepped_scaled = [call("POST", f"{served}/sessions/{sid}/step", {"action": "down"})[0] for sid in sessions]
        stop.set()
        codes = [c for f in futures for c in f.result()]
    sampler.join()
    load_s = time.time() - t0
    t1 = time.time()
    while timeline[-1][1] > 1 and time.time() - t1 < 60:
        time.sleep(2.0)  # well within TTL_S: the sessions stay alive, and take at most 30 of their 50 steps
        for sid in sessions:  # light traffic that keeps the sessions from expiring while Serve scales down
            call("POST", f"{served}/sessions/{sid}/step", {"action": "right"})
        if (n := replicas()) != timeline[-1][1]:
            timeline.append((round(time.time() - t0, 1), n))
    counts["after"] = replicas()
    stepped_after = [call("POST", f"{served}/sessions/{sid}/step", {"action": "left"})[0] for sid in sessions]
    print(f"\nreplicas: {counts}; {len(codes)} requests in {load_s:.1f} s of load, then "
          f"{time.time() - t1:.1f} s to scale down; (seconds, replicas) at each change: {timeline}")
    assert set(codes) == {200}
    assert counts["start"] == 1 and counts["under load"] >= 2 and counts["after"] == 1
    assert stepped_scaled == [200] * 3 and stepped_after == [200] * 3
