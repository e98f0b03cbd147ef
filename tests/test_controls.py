"""Controls: the hindsight labeler on real transitions, the per-arm sampler, per-step control text in the
LWM prompt, perturbation and fictional-world controls, obedience rows and report, and SFT with hindsight
controls making a tiny LWM obey them."""

import random
from collections import Counter

import pytest

from agentworld.controls import (LABELS, PERTURBATIONS, ControlSampler, contains_facts, label, labels, make_control,
                                 obedience_metric_rows, parse_control, row_obeyed)
from agentworld.config import ControlConfig
from agentworld.envs import make_env


def play(actions, max_steps=30, **kw):
    """Real FrozenLake 4x4 (not slippery) transitions for a fixed action sequence."""
    env = make_env("gymnasium:FrozenLake-v1", max_steps=max_steps, map_name="4x4", is_slippery=False, **kw)
    obs, _ = env.reset(seed=0)
    out = []
    for a in actions:
        nobs, r, term, trunc, info = env.step(a)
        out.append(dict(obs=obs, action=a, next_obs=nobs, reward=r, terminated=term, truncated=trunc, info=info))
        obs = nobs
        if term or trunc:
            break
    env.close()
    return out


def lab(t):
    return labels(t["obs"], t["next_obs"], t["reward"], t["terminated"], t["truncated"], t["info"])


def test_labeler_hits_every_label_on_real_frozenlake():
    to_goal = play(["down", "down", "right", "right", "down", "right"])  # S F F F / F H F H / F F F H / H F F G
    assert [label(t["obs"], t["next_obs"], t["reward"], t["terminated"]) for t in to_goal] == ["moved"] * 5 + ["success"]
    assert lab(to_goal[-1]) == {"success", "terminal"}
    into_hole = play(["right", "down"])
    assert lab(into_hole[-1]) == {"failure", "terminal"}
    wall = play(["left", "up"])  # the agent starts in the corner: both leave the state as it is
    assert lab(wall[0]) == lab(wall[1]) == {"noop"}  # the echoed "(Left)"/"(Up)" line is not state
    bad = play(["fly"])
    assert lab(bad[0]) == {"error"} and bad[0]["info"]["error"]
    assert "error" in labels(bad[0]["obs"], bad[0]["next_obs"], 0.0, False)  # from the text alone (replay rows)
    out_of_time = play(["left", "left", "left"], max_steps=3)
    assert lab(out_of_time[-1]) == {"noop", "terminal"}
    seen = set().union(*(lab(t) for t in to_goal + into_hole + wall + bad + out_of_time))
    assert seen == set(LABELS)


def test_sampler_draws_the_configured_mix_and_fraction():
    mix = {"success": 0.5, "failure": 0.3, "noop": 0.2}
    s = ControlSampler.from_config(ControlConfig(kind="hindsight", fraction=0.4, mix=mix), "gridworld", seed=1)
    draws = [s() for _ in range(20_000)]
    controlled = [c for c in draws if c is not None]
    assert abs(len(controlled) / len(draws) - 0.4) < 0.015
    counts = Counter(c.name for c in controlled)
    for name, w in mix.items():
        assert abs(counts[name] / len(controlled) - w) < 0.02, counts
    assert set(counts) == set(mix)
    uniform = ControlSampler("perturbation", 1.0, {}, "mcp", seed=2)
    assert set(Counter(uniform().name for _ in range(500))) == set(PERTURBATIONS)
    assert ControlSampler.from_config(ControlConfig(), "gridworld")() is None


def test_perturbation_and_fictional_controls_render_and_check_real_obs():
    for domain, word in (("mcp", "tool call"), ("terminal", "command"), ("search", "search request")):
        for name in PERTURBATIONS:
            c = make_control("perturbation", name, domain)
            assert c.text.startswith(f"[{name}] ") and parse_control(c.text).name == name
            assert name == "paginated" or word in c.text
    obs = play(["down"])[0]["next_obs"]  # a real FrozenLake observation
    assert make_control("perturbation", "rejected", "gridworld").obeyed(obs, obs, 0.0, False)
    assert not make_control("perturbation", "timeout", "mcp").obeyed(obs, obs, 0.0, False)
    assert make_control("perturbation", "timeout", "mcp").obeyed(obs, "Error: the tool call timed out after 30 s", 0.0, False)
    world = make_control("fictional", "fictional", query="map of the lake", facts=["FFFH", "HFFG"])
    assert "Query: map of the lake" in world.text and "FFFH" in world.text
    assert contains_facts(obs, ["fffh", "HFFG"]) and not contains_facts(obs, ["HFFG", "Fredville"])
    assert world.obeyed("", obs, 0.0, False)
    parsed = parse_control(world.text)  # the replay keeps only the text: the facts come back from it
    assert parsed.facts == ("FFFH", "HFFG") and parsed.obeyed("", obs, 0.0, False)
    assert not make_control("fictional", "fictional", query="q", facts=["Fredville"]).obeyed("", obs, 0.0, False)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    from agentworld.models.hf_engine import HFEngine
    from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
    from agentworld.worldmodel.data import wm_examples

    rows = [dict(episode_id="e", step=i, env_id="gymnasium:FrozenLake-v1", domain="gridworld", **t)
            for i, t in enumerate(play(["down", "down", "right", "right", "down", "right"]))]
    out = tmp_path_factory.mktemp("tiny")
    texts = [e.prompt + e.target for e in wm_examples([rows], lambda m: render_chatml(m, True), control_fraction=1.0)]
    build_tiny_model(train_tokenizer(texts * 3, 400, out), out)
    return HFEngine(str(out), seed=0), rows


def test_per_step_control_reaches_the_prompt_and_the_replay_info(tiny_engine):
    from agentworld.worldmodel.env import WorldModelEnv

    engine, rows = tiny_engine
    plan = iter([make_control("hindsight", "success"), None, make_control("perturbation", "rejected", "gridworld"),
                 "[noop] The action has no effect: the state stays the same."])
    env = WorldModelEnv(engine, "gymnasium:FrozenLake-v1", "gridworld", [(rows[0]["obs"], {})], max_new_tokens=16,
                        sampler=lambda: next(plan))
    env.reset(seed=0)
    expected = ["Control: [success]", None, "Control: [rejected] The move is rejected", "Control: [noop]"]
    for want in expected:
        prompt = env.prompt("down")
        if want is None:
            assert "Control:" not in prompt
        else:
            assert want in prompt
        before = env.observations[-1]
        nobs, r, term, trunc, info = env.observe("down", engine.generate([prompt], max_new_tokens=16)[0].text)
        if want is None:
            assert "control" not in info
        else:
            c = parse_control(info["control"])
            assert info["control"] in prompt and info["control_obeyed"] == c.obeyed(before, nobs, r, term, trunc)
    env.sampler = None
    env.next_control = make_control("hindsight", "failure").text  # one step only (the session API's `control`)
    assert "Control: [failure]" in env.prompt("down")
    assert "Control:" not in env.prompt("down")


def test_sft_examples_carry_hindsight_labels_of_their_own_transition(tiny_engine):
    from agentworld.worldmodel.data import wm_examples

    engine, rows = tiny_engine
    eps = [rows] * 40
    ex = wm_examples(eps, engine.render, control_fraction=0.5, rng=random.Random(0))
    flat = [r for ep in eps for r in ep]
    controlled = 0
    for e, r in zip(ex, flat):
        if "Control: [" in e.prompt:
            controlled += 1
            name = e.prompt.split("Control: [", 1)[1].split("]", 1)[0]
            assert name in labels(r["obs"], r["next_obs"], r["reward"], r["terminated"])
    assert 0.4 < controlled / len(ex) < 0.6
    assert not any("Control:" in e.prompt for e in wm_examples(eps, engine.render))


def test_obedience_rows_and_report(tmp_path):
    from agentworld.report import write_report

    t = play(["down", "down", "right", "right", "down", "right"])
    base = dict(created_at=100.0, truncated=False)
    rows = [dict(base, obs=t[0]["obs"], next_obs=t[0]["next_obs"], reward=0.0, terminated=False,
                 control=make_control("hindsight", "moved").text),  # obeyed
            dict(base, obs=t[0]["obs"], next_obs=t[0]["next_obs"], reward=0.0, terminated=False,
                 control=make_control("hindsight", "success").text),  # not obeyed
            dict(base, obs=t[-1]["obs"], next_obs=t[-1]["next_obs"], reward=1.0, terminated=True, created_at=130.0,
                 control=make_control("hindsight", "success").text),  # obeyed
            dict(base, obs=t[0]["obs"], next_obs=t[0]["next_obs"], reward=0.0, terminated=False, control=None)]
    assert [row_obeyed(r) for r in rows] == [True, False, True, None]
    m = obedience_metric_rows(rows, "sim-controlled", t0=90.0)
    final = {r["control"]: r for r in m if r.get("final")}
    assert final["all"]["steps"] == 3 and final["all"]["obedience"] == pytest.approx(2 / 3)
    assert final["success"]["obedience"] == 0.5 and final["moved"]["obedience"] == 1.0
    curve = [r for r in m if not r.get("final") and r["control"] == "all"]
    assert [r["steps"] for r in curve] == [2, 1] and curve[-1]["obedience"] == pytest.approx(2 / 3)
    success = [(r["wall_time"], r["obedience"]) for r in m if not r.get("final") and r["control"] == "success"]
    assert success == [(15.0, 0.0), (45.0, 0.5)]  # per control over time: the first draw disobeyed, the next obeyed
    evals = [dict(kind="eval", arm="sim-controlled", source="sim", wall_time=w, success=0.1, **{"return": 0.1},
                  real_steps=0, sim_steps=10, wm_real_steps=100, update=u) for u, w in ((1, 5.0), (2, 50.0))]
    summary = write_report(tmp_path, evals + m)
    assert summary["arms"]["sim-controlled"]["control"]["obedience"] == pytest.approx(2 / 3)
    assert "Controls: obedience" in (tmp_path / "report.html").read_text()


def test_malformed_control_config_names_key_and_file(tmp_path):
    from agentworld.config import ConfigError, load_config

    src = "experiments/quickstart.yaml"
    for override, key in ((["arms.1.control.kind=bogus"], "arms.1.control.kind"),
                          (["arms.1.control.kind=hindsight", "arms.1.control.mix={win: 1}"], "arms.1.control.mix.win"),
                          (["arms.1.control.kind=hindsight", "arms.1.control.fraction=1.5"], "arms.1.control.fraction"),
                          (["arms.1.control.kind=fictional"], "arms.1.control.fictional"),
                          (["arms.0.control.kind=hindsight"], "arms.0.control.kind"),
                          (["world_model.sft.control_fraction=-0.1"], "world_model.sft.control_fraction")):
        with pytest.raises(ConfigError) as e:
            load_config(src, override)
        assert e.value.key == key and e.value.file == src
    cfg = load_config(src, ["arms.1.control.kind=hindsight", "arms.1.control.mix={success: 2, failure: 1}"])
    assert cfg.arms[1].control.mix == {"success": 2, "failure": 1}


def test_counterfactual_probe_asks_for_an_outcome_reality_did_not_have():
    from agentworld.controls import COUNTERFACTUAL, measure_obedience, obedience_probe
    from agentworld.models.engine import Generation
    from agentworld.worldmodel.prompt import render_state

    eps = []
    for actions in (["down", "down", "right", "right", "down", "right"], ["right", "down"], ["left", "up"]):
        rows = play(actions)
        eps.append([dict(r, env_id="gymnasium:FrozenLake-v1", domain="gridworld") for r in rows])
    render = lambda messages: "\n".join(m["content"] for m in messages)  # noqa: E731
    probe = obedience_probe(eps, render, random.Random(0), counterfactual=True)
    assert len(probe) == 10
    for controlled, uncontrolled, c, r in probe:
        assert c.name in COUNTERFACTUAL and c.name not in lab(r) and c.text in controlled and c.text not in uncontrolled

    class Faithful:  # an LWM that predicts every real transition exactly and ignores controls
        def __init__(self, items):
            self.rows = {p[0]: p[3] for p in items} | {p[1]: p[3] for p in items}

        def generate(self, prompts, **_):
            return [Generation(render_state(self.rows[p]["next_obs"], self.rows[p]["reward"], self.rows[p]["terminated"]))
                    for p in prompts]

    assert measure_obedience(Faithful(probe), probe, 64)["obedience"] == 0.0  # reality never obeys a counterfactual
    factual = obedience_probe(eps, render, random.Random(0))
    assert measure_obedience(Faithful(factual), factual, 64)["obedience"] == 1.0  # ... and always a factual label


def test_a_small_control_probe_takes_each_kind_and_each_control_in_turn():
    from agentworld.controls import balanced_sample

    # a probe as control_probe makes it, dominated by one control: 40 timeouts, 5 empty pages, 3 fictional worlds
    probe = ([("p", "q", make_control("perturbation", "timeout", "mcp"), {})] * 40
             + [("p", "q", make_control("perturbation", "empty", "mcp"), {})] * 5
             + [("p", "q", make_control("fictional", "fictional", query="x", facts=["a"]), {})] * 3)
    for seed in range(5):
        got = Counter(item[2].name for item in balanced_sample(probe, 4, random.Random(seed)))
        assert got == {"fictional": 2, "timeout": 1, "empty": 1}, got
    got = Counter(item[2].name for item in balanced_sample(probe, 20, random.Random(0)))
    assert got == {"fictional": 3, "empty": 5, "timeout": 12}  # a group used up: the others fill in
    assert len(balanced_sample(probe, 100, random.Random(0))) == len(probe)
