import logging
import re

import pytest
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from agentworld.envs import BUILTIN
from agentworld.models.tiny import render_chatml
from agentworld.worldmodel.baselines import (MAIN_METRIC, Retriever, Transition, baselines, copy_predictions,
                                             domain_rows, rollout_fidelity, score, transitions)
from agentworld.worldmodel.data import wm_examples
from agentworld.worldmodel.prompt import OBS_OPEN, Prediction, parse_prediction, render_state

WIDTH = 10  # a corridor: the agent starts at the left wall, the goal is the right end


def cells(pos: int) -> str:
    return "".join("A" if i == pos else "." for i in range(WIDTH))


def move(pos: int, action: str) -> int:
    return max(0, pos - 1) if action == "left" else min(WIDTH - 1, pos + 1)


def episode(eid: str, actions: list[str], domain: str = "gridworld") -> list[dict]:
    rows, pos = [], 0
    for t, a in enumerate(actions):
        nxt = move(pos, a)
        done = nxt == WIDTH - 1
        rows.append(dict(episode_id=eid, step=t, env_id="gymnasium:Corridor", domain=domain, obs=cells(pos), action=a,
                         next_obs=cells(nxt), reward=float(done), terminated=done))
        pos = nxt
        if done:
            break
    return rows


def render(messages):
    return render_chatml(messages, True)


TRUE_NEXT = {(cells(p), a): (cells(move(p, a)), float(move(p, a) == WIDTH - 1), move(p, a) == WIDTH - 1)
             for p in range(WIDTH) for a in ("left", "right")}


def table_model(table: dict, seen: list | None = None):
    """A world model that looks its current state (the last predicted observation in the prompt, else the
    State block) and the action up in a table of next states; a pair it lacks leaves it lost."""
    def predict(prompts: list[str]) -> list[str]:
        if seen is not None:
            seen.extend(prompts)
        out = []
        for p in prompts:
            chat = p.split("<|im_end|>", 1)[1]  # past the system turn, which names the observation tags
            action = re.findall(r"Action: (\w+)<\|im_end\|>", chat)[-1]
            if OBS_OPEN in chat:
                state = parse_prediction(chat).obs
            else:
                state = re.search(r"State:\n(.*?)\nAction:", chat, re.S)[1]
            out.append(render_state(*table.get((state, action), ("lost", 0.0, False))))
        return out
    return predict


def test_copy_is_exact_wherever_the_state_does_not_change():
    held = transitions([episode("h", ["left", "left", "right"])], render)
    preds = copy_predictions(held)
    assert [p.obs == t.next_obs for p, t in zip(preds, held)] == [True, True, False]  # two bumps into the wall
    s = score(preds, held, "exact_match")
    assert s["exact_match"] == s["main"] == pytest.approx(2 / 3) and s["outcome_accuracy"] == 1.0


def test_retrieve_answers_with_the_exact_training_twin():
    train = transitions([episode("t1", ["right"] * 9), episode("t2", ["left", "left", "right", "left"])], render)
    held = transitions([episode("h", ["left", "right", "right"])], render)
    preds = baselines(held, train)["retrieve"]
    assert [p.obs for p in preds] == [t.next_obs for t in held]
    assert score(preds, held)["outcome_accuracy"] == 1.0


def test_retrieve_ranks_by_lines_then_by_where_on_the_line_the_agent_stands():
    def ex(state, action, nxt):
        return Transition(render([{"role": "user", "content": f"State:\n{state}\nAction: {action}"}]), state, nxt,
                          0.0, False, "gridworld")

    # the same bag of lines, the agent on another row: only characters tell them apart
    train = [ex("FAF\nFFF\nFFF", "down", "top"), ex("FFF\nFAF\nFFF", "down", "middle"),
             ex("FFF\nFFF\nFAF", "down", "bottom")]
    train += [ex(f"row{i}a\nrow{i}b\nrow{i}c", "down", f"far {i}") for i in range(30)]
    held = [ex("FFF\nFAF\nFFF", "up", "?"), ex("row7a\nrow7x\nrow7c", "down", "?")]
    r = Retriever(train, k=3)  # TF-IDF must rank the far rows out before edit similarity picks a look-alike
    assert [p.obs for p in r.predict([t.prompt for t in held])] == ["middle", "far 7"]
    for t, j in zip(held, r.nearest([t.prompt for t in held])):  # what a brute-force edit-distance search finds
        assert process.extractOne(t.prompt, r.prompts, scorer=Levenshtein.normalized_similarity)[2] == j


def test_retrieve_answers_a_stochastic_twin_with_its_commonest_next_state():
    p = render([{"role": "user", "content": "State:\nS\nAction: go"}])
    train = [Transition(p, "S", nxt, 0.0, False, "gridworld") for nxt in ("slip", "goal", "goal")]
    assert Retriever(train).predict([p])[0].obs == "goal"


def test_domain_rows_put_the_model_beside_copy_and_retrieve_and_say_when_a_domain_has_no_data(caplog):
    train = transitions([episode("t1", ["right"] * 9), episode("t2", ["left", "left", "right", "left"])], render)
    held = transitions([episode("h", ["left", "left", "right"])], render)
    model = table_model({k: v for k, v in TRUE_NEXT.items() if k != (cells(0), "right")})  # lost on the last step
    preds = [parse_prediction(text) for text in model([t.prompt for t in held])]
    with caplog.at_level(logging.WARNING):
        rows = domain_rows(held, {"model": preds, **baselines(held, train)}, domains=["gridworld", "mcp"])
    grid, mcp = rows
    assert (grid["domain"], grid["n"], grid["main_metric"], grid["note"]) == ("gridworld", 3, "exact_match", None)
    s = grid["scores"]
    assert s["model"]["exact_match"] == s["model"]["main"] == pytest.approx(2 / 3)
    assert s["model"]["edit_similarity"] == pytest.approx(2 / 3)  # "lost" shares no character with the corridor
    assert s["copy"]["main"] == pytest.approx(2 / 3) and s["retrieve"]["main"] == 1.0
    assert s["model"]["field_f1"] is None and s["retrieve"]["line_f1"] == 1.0
    assert (mcp["n"], mcp["scores"], mcp["main_metric"]) == (0, {}, "field_f1")
    assert "no held-out transitions of domain 'mcp'" in mcp["note"] and mcp["note"] in caplog.text


def test_json_states_are_judged_on_fields_and_their_text_errors_on_edit_similarity():
    held = [Transition("p1", "", '{"a": 1, "b": 2}', 0.0, False, "mcp"),
            Transition("p2", "", "Error: no such tool", 0.0, False, "mcp")]
    preds = [Prediction('{"b": 2, "a": 1}', 0.0, False, True), Prediction("Error: no such tool!", 0.0, False, True)]
    s = score(preds, held, MAIN_METRIC["mcp"])
    assert s["exact_match"] == 0.0 and s["field_f1"] == 1.0  # the field F1 of the JSON result only
    assert s["main"] == pytest.approx((1.0 + 0.95) / 2)


def test_every_builtin_domain_has_a_main_metric():
    assert {domain for _, domain, _ in BUILTIN.values()} <= set(MAIN_METRIC)


def test_open_loop_errors_compound_from_the_first_wrong_prediction(caplog):
    right = episode("a", ["right"] * 9)  # passes the entry the model has wrong on its second step
    zigzag = episode("b", ["left", "right"] * 4 + ["left"])  # never moves right from cell 1
    wrong = {**TRUE_NEXT, (cells(1), "right"): (cells(1), 0.0, False)}  # thinks it cannot leave cell 1
    for turns in (1, 2):  # with history the model reads its own last prediction, as it does in a simulated episode
        with caplog.at_level(logging.WARNING):
            rows = rollout_fidelity([right, zigzag], table_model(wrong), render, history_turns=turns,
                                    domains=["gridworld", "terminal"])
        grid = {r["horizon"]: r for r in rows if r["domain"] == "gridworld"}
        assert {h: grid[h]["scores"]["model"]["exact_match"] for h in (1, 2, 4, 8)} == {1: 1.0, 2: 0.5, 4: 0.5, 8: 0.5}
        assert {h: grid[h]["scores"]["copy"]["exact_match"] for h in (1, 2, 4, 8)} == {1: 0.5, 2: 0.0, 4: 0.0, 8: 0.0}
        assert all(grid[h]["n"] == 2 for h in (1, 2, 4, 8))
        terminal = [r for r in rows if r["domain"] == "terminal"]
        assert [r["n"] for r in terminal] == [0] * 4
        assert terminal[0]["note"] == "no held-out episodes of domain 'terminal'"
        assert "no held-out episodes of domain 'terminal'" in caplog.text
    # teacher-forced, the same model is wrong once in nine steps of the first episode
    one_step = [parse_prediction(t) for t in table_model(wrong)([t.prompt for t in transitions([right], render)])]
    assert sum(p.obs == r["next_obs"] for p, r in zip(one_step, right)) == 8


def test_a_perfect_model_is_prompted_exactly_as_the_lwm_is_trained():
    eps = [episode("a", ["right"] * 9), episode("b", ["left", "right", "right"])]
    seen: list[str] = []
    notes = {"gridworld": "A corridor; the goal is its right end."}  # world_model.prompts
    rows = rollout_fidelity(eps, table_model(TRUE_NEXT, seen), render, history_turns=3, every_start=True, notes=notes)
    assert set(seen) == {e.prompt for e in wm_examples(eps, render, 3, notes=notes)}
    assert all(notes["gridworld"] in p for p in seen)
    grid = {r["horizon"]: r for r in rows}
    assert all(grid[h]["scores"]["model"]["main"] == 1.0 for h in (1, 2, 4, 8))
    assert (grid[1]["n"], grid[2]["n"], grid[4]["n"], grid[8]["n"]) == (12, 10, 6, 2)  # every start, while it lasts
    short = rollout_fidelity([eps[1]], table_model(TRUE_NEXT), render, horizons=(1, 4))
    assert short[1]["n"] == 0 and short[1]["note"] == "no held-out episode of domain 'gridworld' lasts 4 steps"
