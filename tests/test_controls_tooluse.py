"""Controls on the tool-use domains (issue 17): controlled SFT targets built from real MCP and search rows in the env's
own words, the obedience checker per kind, and MCP's real fault layer, down to the replay's `fault` column."""

import json
import random

import pytest

pytest.importorskip("mcp")
from agentworld.controls import (PERTURBATIONS, contains_facts, control_probe, controlled_transition,  # noqa: E402
                                 fictional_world, make_control, parse_control)
from agentworld.envs import make_env  # noqa: E402
from agentworld.envs import mcp_tools, search  # noqa: E402
from agentworld.worldmodel.data import wm_examples  # noqa: E402
from agentworld.models.tiny import render_chatml  # noqa: E402


def read(sql):
    return json.dumps({"tool": "read_query", "arguments": {"query": sql}})


def row(env, obs, action, domain):
    nxt, r, term, trunc, info = env.step(action)
    return {"env_id": env.env_id, "domain": domain, "obs": obs, "action": action, "next_obs": nxt, "reward": r,
            "terminated": term, "truncated": trunc, "step": 0, "episode_id": "e"}, info


@pytest.fixture(scope="module")
def sqlite():
    env = make_env("mcp:sqlite-train", max_steps=50)
    obs, _ = env.reset(seed=1)
    yield env, obs
    env.close()


@pytest.fixture(scope="module")
def docs():
    env = make_env("search:train", max_steps=50)
    obs, _ = env.reset(seed=1)
    yield env, obs
    env.close()


def test_mcp_perturbations_are_the_servers_own_words(sqlite):
    """Each perturbation's target for a real call equals what the real server (or the fault layer) says when that
    failure really happens."""
    env, obs = sqlite
    real, _ = row(env, obs, read("SELECT * FROM products"), "mcp")
    assert mcp_tools.perturbed("missing", real["action"], real["next_obs"]) == \
        env.step(read("SELECT * FROM products_gone"))[0].replace("products_gone", "products")
    assert mcp_tools.perturbed("empty", real["action"], real["next_obs"]) == env.step(read("SELECT * FROM products WHERE 1=0"))[0]
    write = json.dumps({"tool": "write_query", "arguments": {"query": "SELECT 1"}})
    assert mcp_tools.perturbed("rejected", write, "") == env.step(write)[0]
    assert mcp_tools.perturbed("rejected", read("DELETE FROM products"), "") == env.step(read("DELETE FROM products"))[0]
    paged = mcp_tools.perturbed("paginated", real["action"], real["next_obs"])
    first = mcp_tools.ast.literal_eval(real["next_obs"])[0]
    assert paged.startswith(str([first])[:-1]) and "Page 1 of 2" in paged
    faulty = make_env("mcp:sqlite-train", max_steps=50, faults={"timeout": 1.0})
    try:
        faulty.reset(seed=1)
        assert mcp_tools.perturbed("timeout", real["action"], "") == faulty.step(real["action"])[0]
    finally:
        faulty.close()
    answer = json.dumps({"answer": "3"})
    assert all(mcp_tools.perturbed(n, answer, "Correct.") is None for n in PERTURBATIONS)
    assert all(mcp_tools.perturbed(n, "not json", "Error") is None for n in PERTURBATIONS)


def test_search_perturbations_are_the_envs_own_words(docs):
    env, obs = docs
    nothing = search.call("web_search", queries=["zzqxv wqzzy"])
    assert search.perturbed("empty", nothing, "") == env.step(nothing)[0]
    gone = search.call("web_extractor", url="pydoc://topics/no-such-topic", page=1)
    assert search.perturbed("missing", gone, "") == env.step(gone)[0]
    found = search.call("web_search", queries=["with statement", "context manager"])
    real, _ = row(env, obs, found, "search")
    paged = search.perturbed("paginated", found, real["next_obs"])
    assert paged.count("\n[1] ") == 2 and "[2] " not in paged and "next page" in paged
    assert search.perturbed("timeout", found, real["next_obs"]) is None  # the search tools have no timeout


def check_kind(kind, real, rng):
    """Every perturbation (or the fictional world) that applies to a real row: its built target obeys the control,
    and the real observation does not."""
    names = PERTURBATIONS if kind == "perturbation" else ("fictional",)
    built = 0
    for name in names:
        made = controlled_transition(kind, real, rng, None if kind == "fictional" else name)
        if made is None:
            continue
        control, nxt, reward, done = made
        assert control.obeyed(real["obs"], nxt, reward, done), (name, nxt)
        assert not control.obeyed(real["obs"], real["next_obs"], real["reward"], real["terminated"]), name
        assert parse_control(control.text).name == control.name  # the replay's `control` column names it
        built += 1
    return built


def test_the_checker_passes_every_built_target_and_fails_the_real_observation(sqlite, docs):
    rng = random.Random(0)
    env, obs = sqlite
    rows = [row(env, obs, a, "mcp")[0] for a in (read("SELECT name, price FROM products"),
                                                 json.dumps({"tool": "describe_table", "arguments": {"table_name": "orders"}}))]
    assert sum(check_kind("perturbation", r, rng) for r in rows) >= 5 + 2  # every kind on a multi-row result
    env, obs = docs
    real = row(env, obs, search.call("web_search", queries=["with statement"]), "search")[0]
    assert check_kind("perturbation", real, rng) == 2  # empty, paginated
    assert check_kind("fictional", real, rng) == 1
    page = row(env, obs, search.call("web_extractor", url="pydoc://topics/with", page=1), "search")[0]
    assert check_kind("fictional", page, rng) == 1


@pytest.mark.parametrize("kind,good,bad", [
    ("timeout", "Error: the read_query call timed out after 0.001 s; the server sent no result.", "[{'a': 1}]"),
    ("missing", "Database error: no such table: orders", "[{'a': 1}]"),
    ("empty", "[]", "[{'a': 1}]"),
    ("empty", '## Results for "x"\nNo results.', '## Results for "x"\n[1] pydoc://topics/with\nwith'),
    ("paginated", "[{'a': 1}]\n[Page 1 of 2: 1 more rows on the next page]", "[{'a': 1}, {'a': 2}]"),
    ("rejected", "Error: Only SELECT queries are allowed for read_query", "[{'a': 1}]"),
])
def test_the_obedience_checker_per_kind(kind, good, bad):
    c = make_control("perturbation", kind, "mcp")
    assert c.obeyed("state", good, 0.0, False) and not c.obeyed("state", bad, 0.0, False)


def test_fictional_worlds_state_their_facts_and_the_checker_needs_every_fact():
    world = fictional_world(random.Random(3))
    assert world["answer"] in " ".join(world["facts"]) and world["query"] in world["question"]
    c = make_control("fictional", "fictional", query=world["query"], facts=world["facts"])
    assert c.obeyed("", "Results:\n" + " ".join(world["facts"]).upper(), 0.0, False)
    assert not c.obeyed("", world["facts"][0], 0.0, False)
    assert contains_facts(search.fictional(search.call("web_search", queries=["q"]), '## Results for "q"\nNo results.',
                                           world["facts"]), world["facts"])


def test_sft_examples_carry_the_controls_in_their_shares(sqlite):
    """perturbation_fraction 1: every tool call's example is a perturbation whose target obeys it; the answer (no such
    text) stays uncontrolled. Hindsight-only shares draw exactly as before (control_fraction alone)."""
    env, obs = sqlite
    episode = []
    for t, a in enumerate([read("SELECT * FROM customers"), read("SELECT * FROM orders"), json.dumps({"answer": "x"})]):
        r, _ = row(env, obs, a, "mcp")
        episode.append(dict(r, step=t))
        obs = r["next_obs"]
    render = lambda m: render_chatml(m, True)  # noqa: E731
    ex = wm_examples([episode], render, 2, perturbation_fraction=1.0, rng=random.Random(0))
    controlled = [e for e in ex if "Control: [" in e.prompt]
    assert len(controlled) == 2 and "Control: [" not in ex[2].prompt
    for e, r in zip(controlled, episode):
        c = parse_control(e.prompt.split("Control: ", 1)[1].split("\n")[0])
        assert c.kind == "perturbation" and c.obeyed(r["obs"], e.next_obs, e.reward, e.done)
        assert e.next_obs in e.target and e.reward == 0.0 and not e.done
    plain = wm_examples([episode], render, 2, control_fraction=0.5, rng=random.Random(7))
    again = wm_examples([episode], render, 2, control_fraction=0.5, rng=random.Random(7), perturbation_fraction=0.0)
    assert [e.prompt for e in plain] == [e.prompt for e in again]


def test_the_probe_pairs_each_applicable_control_with_its_uncontrolled_prompt(sqlite):
    env, obs = sqlite
    r, _ = row(env, obs, read("SELECT * FROM products"), "mcp")
    probe = control_probe([[r]], lambda m: render_chatml(m, True), random.Random(0), 1, ("perturbation", "fictional"))
    assert len(probe) == 1  # MCP has perturbations, not fictional worlds
    controlled, plain, control, _ = probe[0]
    assert control.text in controlled and control.text not in plain


def test_the_fault_layer_really_times_out_and_crashes_and_the_replay_records_it(tmp_path):
    from agentworld.collect import collect
    from agentworld.replay import ReplayStore

    env = make_env("mcp:sqlite-train", max_steps=50, faults={"crash": 1.0})
    try:
        env.reset(seed=2)
        write = json.dumps({"tool": "write_query", "arguments": {"query": "DELETE FROM orders"}})
        inner = env.env.env  # Menu(Supervised(MCPToolEnv))
        pid = inner.server.pids()
        nxt, _, _, trunc, info = env.step(write)
        assert nxt == mcp_tools.CRASH_TEXT.format(tool="write_query") and info["fault"] == "crash" and not trunc
        assert inner.server.pids() and inner.server.pids() != pid  # restarted
        inner.faults = {}
        assert env.step(read("SELECT COUNT(*) AS n FROM orders"))[0] != "[{'n': 0}]"  # the crashed call did nothing
    finally:
        env.close()
    with pytest.raises(ValueError, match="unknown fault 'flood'"):
        mcp_tools.make("sqlite-train", faults={"flood": 0.1})
    with pytest.raises(ValueError, match="sum to 1.5"):
        mcp_tools.make("sqlite-train", faults={"timeout": 0.9, "crash": 0.6})
    out = tmp_path / "replay"
    collect("mcp:sqlite-train", "oracle", 2, str(out), max_steps=6, env_kwargs={"faults": {"timeout": 0.5}}, console=False)
    rows = ReplayStore(str(out)).table().to_pylist()
    timed = [r for r in rows if r["fault"] == "timeout"]
    assert timed and all(r["next_obs"].startswith("Error: the ") and "timed out" in r["next_obs"] for r in timed)
    assert all(r["fault"] is None for r in rows if "timed out" not in r["next_obs"])


def test_a_fictional_episode_asks_its_worlds_question_and_its_answer_is_scored_against_the_facts(docs):
    """A sim arm's per-episode fictional control: the episode asks the generated world's question, every simulated step
    carries the control (the LWM here is scripted to write the facts), the menu offers the facts' quoted values after a
    page read, and the answer is scored by the rule, not by the LWM (which here claims every answer is wrong)."""
    from agentworld.controls import ControlSampler
    from agentworld.worldmodel.env import WorldModelEnv
    from agentworld.worldmodel.prompt import render_state
    from tests.test_worldmodel_env import ScriptedEngine

    env, _ = docs
    start = env.reset(seed=4)
    sampler = ControlSampler("fictional", 1.0, seed=1, per="episode")
    engine = ScriptedEngine([])
    sim = WorldModelEnv(engine, "search:train", "search", [start], max_steps=6, sampler=sampler)
    obs, info = sim.reset(seed=0)
    world = sim.episode_control
    assert obs.startswith(f"Question: {world.question}\n") and obs.endswith(search.HELP)
    url = "pydoc://topics/with"
    engine.replies += [render_state("# The subject\n\n" + " ".join(world.facts), 0, False),
                       render_state("Wrong.", 0, True)]
    nxt, r, done, _, info = sim.step(search.call("web_extractor", url=url, page=1))
    assert info["control"] == world.text and info["control_obeyed"] and world.text in engine.prompts[-1]
    answer = search.call("answer", answer=world.answer)
    assert answer in info["admissible_actions"]
    nxt, r, done, _, info = sim.step(answer)
    assert (nxt, r, done, info["won"]) == ("Correct.", 1.0, True, True) and "control" not in info
    sim.reset(seed=1)
    assert sim.episode_control.question != world.question  # a new world per episode
    engine.replies.append(render_state("Correct.", 1, True))
    nxt, r, done, _, info = sim.step(search.call("answer", answer="something else"))
    assert (r, done) == (0.0, True) and nxt.startswith("Incorrect")
