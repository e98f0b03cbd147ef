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
    '{"tool": "web_extractor", "arguments": {"url": "https://example.com"}}',
    '{"tool": "web_extractor", "arguments": {"url": "pydoc://topics/pass", "page": 99}}',
    '{"answer": 7}', "web_search(queries=[x for x in y])", "os.system('ls')",
])
def test_malformed_actions_give_an_error_observation(index_dir, action):
    env = env_for("q8", index_dir)
    env.reset()
    obs, r, term, trunc, info = env.step(action)
    assert info["error"] and "Invalid action" in obs and (r, term) == (0.0, False)
    assert env.step('{"answer": "pass"}')[1] == 1.0  # the episode goes on
    env.close()


def test_a_random_policy_on_the_menu_makes_valid_moves(index_dir):
    env = env_for("python-docs", index_dir, max_steps=40)
    rng = random.Random(0)
    env.reset(seed=1)
    info = {"admissible_actions": env.actions()}
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
