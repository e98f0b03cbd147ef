"""The Search env: a real SQLite FTS5 index over the machine's Python documentation, two tools, and
question tasks whose reference answers the oracle finds by searching and reading."""

import json
import random
import time

import pytest

from agentworld.envs import make_env, resolve_env_id
from agentworld.envs import search


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("search-index")
    search.build_index(d)
    return d


def env_for(name, index_dir, **kw):
    return make_env(f"search:{name}", index_dir=index_dir, **kw)


def ws(*queries):
    return json.dumps({"tool": "web_search", "arguments": {"queries": list(queries)}})


def test_index_builds_fast_and_ranks_the_right_page_first(tmp_path):
    start = time.perf_counter()
    path = search.build_index(tmp_path)
    assert time.perf_counter() - start < 15
    con = search.sqlite3.connect(path)
    urls = [u for (u,) in con.execute("SELECT url FROM docs")]
    assert "pydoc://topics/with" in urls and "pydoc://module/json" in urls
    assert any(u.startswith("pypi://") for u in urls)
    hits = search.search(con, "division by zero exception")
    assert hits[0][0] == "pydoc://topics/binary" and len(hits) == search.TOP_K
    assert "ZeroDivisionError" in hits[0][2]
    assert search.search(con, 'NOT with AND ( "for" *')  # FTS5 syntax in user text is read as words
    assert search.search(con, '"* ()') == []
    con.close()


def test_index_is_built_once_and_reused(tmp_path):
    first = search.build_index(tmp_path)
    stamp = first.stat().st_mtime_ns
    start = time.perf_counter()
    again = search.build_index(tmp_path)
    assert again == first and again.stat().st_mtime_ns == stamp
    assert time.perf_counter() - start < 2
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


def test_a_real_episode_searches_reads_and_answers(index_dir):
    env = env_for("q5", index_dir, max_steps=10)
    obs, info = env.reset()
    assert "division by zero" in obs and info["open_actions"] and info["admissible_actions"]
    obs, r, term, trunc, info = env.step(ws("division by zero exception", "floor division"))
    assert obs.count("[1] ") == 2 and "[1] pydoc://topics/binary\n" in obs and "error" not in info
    read = json.dumps({"tool": "web_extractor", "arguments": {"url": "pydoc://topics/binary"}})
    assert read in info["admissible_actions"]
    obs, *_ = env.step(read)
    assert obs.startswith("# Binary arithmetic operations") and "ZeroDivisionError" in obs
    obs, r, term, trunc, info = env.step('{"answer": "ZeroDivisionError"}')
    assert (r, term, info["won"], info["score"]) == (1.0, True, True, 1.0)
    env.close()


def test_long_pages_come_in_pages_with_a_note(index_dir):
    env = env_for("q15", index_dir)
    env.reset()
    obs, *_ = env.step('web_extractor(url="pydoc://topics/string-methods")')
    assert len(obs) < search.PAGE_CHARS + 300 and "[Page 1 of" in obs
    obs2, _, _, _, info = env.step('web_extractor("pydoc://topics/string-methods", page=2)')
    assert "error" not in info and obs2 != obs and "[Page 2 of" in obs2
    env.close()


def test_the_oracle_answers_every_question(index_dir):
    for k, task in enumerate(search.QUESTIONS, 1):
        env = env_for(f"q{k}", index_dir, max_steps=10)
        env.reset()
        observations, reward, info = [], 0.0, {}
        while (action := env.oracle_action()) is not None:
            obs, reward, term, trunc, info = env.step(action)
            observations.append(obs)
        assert reward == 1.0 and info["won"], task["question"]
        assert len(observations) == 3  # search, read, answer
        assert task["url"] in observations[0], f"the good query does not find {task['url']}"
        assert task["evidence"] in observations[1], f"{task['url']} does not hold the answer"
        env.close()


def test_a_wrong_answer_loses_and_ends_the_episode(index_dir):
    env = env_for("q5", index_dir)
    env.reset()
    obs, r, term, trunc, info = env.step('answer("ValueError")')
    assert (r, term, info["won"]) == (0.0, True, False) and "Incorrect" in obs
    assert env.oracle_action() is None
    env.close()


def test_answers_are_compared_after_normalization():
    assert search.is_correct("  the `StopIteration`. ", ["StopIteration"])
    assert search.is_correct("__enter__()", ["__enter__"])
    assert search.is_correct("str.casefold()", ["casefold", "str.casefold"])
    assert not search.is_correct("Stop Iteration", ["StopIteration"])
    assert not search.is_correct("", ["pass"])


def test_resets_and_steps_are_deterministic(index_dir):
    def run(seed):
        env = env_for("python-docs", index_dir)
        obs, info = env.reset(seed=seed)
        trace = [obs, info["admissible_actions"]]
        for action in [ws("exception raised"), info["admissible_actions"][0], env.oracle_action()]:
            obs, r, term, trunc, info = env.step(action)
            trace += [obs, r, info["admissible_actions"]]
        env.close()
        return trace

    assert run(7) == run(7)
    first_obs = {run(s)[0] for s in range(8)}
    assert len(first_obs) > 1  # the seed chooses the question


@pytest.mark.parametrize("action", [
    "", None, 42, "   ", "{", "[1, 2]", "hello there", '{"tool": "browse", "arguments": {}}',
    '{"tool": "web_search", "arguments": {"queries": 3}}', '{"tool": "web_search", "arguments": "nope"}',
    '{"tool": "web_extractor", "arguments": {}}', '{"tool": "web_extractor", "arguments": {"url": "x", "page": "2"}}',
    '{"answer": 7}', "web_search(queries=[x for x in y])", "os.system('ls')",
])
def test_malformed_actions_give_an_error_observation(index_dir, action):
    env = env_for("q8", index_dir)
    env.reset()
    obs, r, term, trunc, info = env.step(action)
    assert info["error"] and info["unparsed"] and "Invalid action" in obs and (r, term) == (0.0, False)
    assert env.step('{"answer": "pass"}')[1] == 1.0  # the episode goes on
    env.close()


@pytest.mark.parametrize("action", ['{"tool": "web_extractor", "arguments": {"url": "https://example.com"}}',
                                    '{"tool": "web_extractor", "arguments": {"url": "pydoc://topics/pass", "page": 99}}'])
def test_a_well_formed_call_the_tool_cannot_serve_is_an_error_but_parsed(index_dir, action):
    env = env_for("q8", index_dir)
    env.reset()
    obs, r, term, trunc, info = env.step(action)
    assert info["error"] and "unparsed" not in info and "Invalid action" in obs and (r, term) == (0.0, False)
    env.close()


def test_a_random_policy_on_the_menu_makes_valid_moves(index_dir):
    env = env_for("python-docs", index_dir, max_steps=40)
    rng = random.Random(0)
    _, info = env.reset(seed=1)
    for _ in range(40):
        obs, r, term, trunc, info = env.step(rng.choice(info["admissible_actions"]))
        assert "error" not in info, obs
        if term or trunc:
            obs, info = env.reset(seed=rng.randrange(100))
    env.close()


def test_max_steps_truncates(index_dir):
    env = env_for("q1", index_dir, max_steps=2)
    env.reset()
    assert env.step(ws("with"))[3] is False
    assert env.step(ws("with"))[3] is True
    env.close()


def test_unknown_names_are_rejected_and_close_releases_the_index(index_dir):
    with pytest.raises(ValueError, match="search:python-docs"):
        resolve_env_id("search:q999")
    resolve_env_id("search:python-docs")
    env = env_for("q1", index_dir)
    con = env.env.con
    env.close()
    with pytest.raises(search.sqlite3.ProgrammingError):  # the connection is really closed
        con.execute("SELECT 1")
    env.close()  # idempotent


# --- Generated tasks: search:train and search:heldout ---------------------------------------------------

@pytest.fixture(scope="module")
def splits(index_dir):
    return {split: search.split_tasks(split, index_dir) for split in search.SPLITS}


def play_oracle(env):
    observations, reward, info = [], 0.0, {}
    while (action := env.oracle_action()) is not None:
        obs, reward, term, trunc, info = env.step(action)
        observations.append(obs)
    return observations, reward, info


def test_each_split_holds_hundreds_of_distinct_tasks(splits):
    for split, tasks in splits.items():
        assert len(tasks) >= 200, split
        assert len({t["id"] for t in tasks}) == len({t["question"] for t in tasks}) == len(tasks)
        assert {t["template"] for t in tasks} == {"passage", "fill-blank", "module-first", "package-summary",
                                                  "package-version"}
        assert all(t["split"] == split == search.split_of(t["url"]) for t in tasks)
    share = len(splits["heldout"]) / (len(splits["train"]) + len(splits["heldout"]))
    assert 0.1 < share < 0.3  # about one page in five is held out


def test_the_splits_share_no_task_and_no_answer_page(splits):
    train, heldout = splits["train"], splits["heldout"]
    assert not {t["id"] for t in train} & {t["id"] for t in heldout}
    assert not {t["question"] for t in train} & {t["question"] for t in heldout}
    assert not {t["url"] for t in train} & {t["url"] for t in heldout}
    assert len({t["url"] for t in heldout}) >= 50  # held-out tasks come from many pages, not a few


def test_a_question_never_names_its_own_answer(splits):
    for task in splits["train"] + splits["heldout"]:
        quote = task["question"].split('"', 1)[-1] if task["template"] != "package-version" else ""
        for answer in task["answers"][:1]:
            assert not search.re.search(rf"(?<![\w-]){search.re.escape(answer)}(?![\w-])", quote, search.re.I), task


def test_the_oracle_solves_sampled_tasks_of_each_split_and_a_wrong_answer_fails(index_dir, splits):
    for split in search.SPLITS:
        env = env_for(split, index_dir, max_steps=10)
        for seed in range(15):
            env.reset(seed=seed)
            task = env.env.task
            assert task in splits[split]
            observations, reward, info = play_oracle(env)
            assert reward == 1.0 and info["won"] and len(observations) == 3, task["id"]
            assert task["url"] in observations[0] and task["evidence"] in observations[1]
            env.reset(seed=seed)
            wrong = next(t["answers"][0] for t in splits[split] if not search.is_correct(t["answers"][0],
                                                                                         task["answers"]))
            obs, reward, term, trunc, info = env.step(json.dumps({"answer": wrong}))
            assert (reward, term, info["won"]) == (0.0, True, False)
        env.close()


def test_a_task_whose_query_ranks_another_page_first_is_still_solved(index_dir, splits):
    env = env_for("train", index_dir, max_steps=10)
    seed = next(s for s in range(2000) if env.reset(seed=s) and env.env.task["distractor"])
    task = env.env.task
    observations, reward, info = play_oracle(env)
    assert reward == 1.0 and task["rank"] > 1
    assert observations[0].index(task["distractor"]) < observations[0].index(task["url"]), seed
    env.close()


def test_after_reading_the_right_page_the_menu_offers_the_answer(index_dir):
    env = env_for("heldout", index_dir, max_steps=10)
    offered = 0
    for seed in range(20):
        env.reset(seed=seed)
        for _ in range(2):  # search, read
            *_, info = env.step(env.oracle_action())
        offered += env.oracle_action() in info["admissible_actions"]
    assert offered >= 18
    env.close()


def test_same_seed_same_task_and_observations_and_seeds_cover_many_tasks(index_dir):
    def run(split, seed):
        env = env_for(split, index_dir, max_steps=10)
        obs, info = env.reset(seed=seed)
        trace = [obs, info["admissible_actions"]]
        for action in [info["admissible_actions"][0], env.oracle_action(), env.oracle_action()]:
            obs, r, term, trunc, info = env.step(action)
            trace += [obs, r, info["admissible_actions"]]
        env.close()
        return trace

    for split in search.SPLITS:
        assert run(split, 3) == run(split, 3)
    env = env_for("heldout", index_dir)
    questions = {env.reset(seed=s)[0] for s in range(60)}
    assert len(questions) >= 50
    env.close()


def test_the_split_ids_are_known_and_a_bad_split_is_rejected(index_dir):
    resolve_env_id("search:train")
    resolve_env_id("search:heldout")
    with pytest.raises(ValueError, match="search:train"):
        resolve_env_id("search:test")
    with pytest.raises(ValueError, match="heldout"):
        search.split_tasks("validation", index_dir)
