import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp")
from agentworld.envs import make_env, resolve_env_id  # noqa: E402
from agentworld.envs.mcp_tools import (CATALOGUE, NAMES, SPLITS, TASKS, TEMPLATES, build_task, call,  # noqa: E402
                                       draw_key, git, query, split_of, task_keys)
from tests.oracle import unseen_calls  # noqa: E402

GENERATED = [f"{family}-{split}" for family in TEMPLATES for split in SPLITS]
HAND_WRITTEN = [t for t in TASKS if t not in GENERATED]


def play_oracle(env, limit=10):
    for _ in range(limit):
        obs, r, term, trunc, info = env.step(env.oracle_action())
        if term or trunc:
            return obs, r, term, info
    raise AssertionError("the oracle did not finish")


def play_checking_the_menu(env, seed):
    """Play the oracle's episode (the scripted solution, in order). At every state the menu must offer none of the
    solution's calls whose values the agent has not seen, and the first menu no answer. Returns the tool outputs,
    and the last step's reward, termination and info."""
    obs, info = env.reset(seed=seed)
    assert info["admissible_actions"] and not any("answer" in json.loads(a) for a in info["admissible_actions"])
    solution, outputs = list(map(json.dumps, env.task.solution)), []
    for action in solution:
        assert env.oracle_action() == action and not info["won"]
        leaked = unseen_calls(info["admissible_actions"], solution, "\n".join([obs, *outputs]))
        assert not leaked, (env.task.key or env.env_id, leaked)
        out, r, term, trunc, info = env.step(action)
        outputs.append(out)
    return outputs, r, term, info


@pytest.mark.parametrize("task", HAND_WRITTEN)
def test_oracle_solves_each_task_on_the_real_server_and_the_menu_never_holds_its_unseen_calls(task):
    env = make_env(f"mcp:{task}")
    try:
        obs, info = env.reset(seed=7)
        assert obs.startswith("Task: ") and "Tools:\n- " in obs and "input={" in obs
        assert info["open_actions"] and not info["won"] and "menu" not in info
        _, r, term, info = play_checking_the_menu(env, seed=7)
        assert r == 1.0 and term and info["won"] and info["score"] == 1.0
    finally:
        env.close()


def test_menu_oracle_adds_the_oracles_next_call_and_says_so():
    env = make_env("mcp:sqlite-train", menu="oracle")
    try:
        obs, info = env.reset(seed=seed_of("sqlite", "train", "orders-after"))
        oracle = env.oracle_action()
        assert info["menu"] == "oracle" and oracle in info["admissible_actions"]
        assert info["admissible_actions"] == sorted(info["admissible_actions"])  # no place of its own
        solution = list(map(json.dumps, env.task.solution))
        assert unseen_calls(info["admissible_actions"], solution, obs) == [oracle]  # what the check catches
        *_, info = env.step(oracle)
        assert info["menu"] == "oracle" and env.oracle_action() in info["admissible_actions"]
    finally:
        env.close()
    with pytest.raises(ValueError, match="menu must be one of"):
        make_env("mcp:git-train", menu="solution")


def test_git_commit_is_checked_against_the_repository_and_is_deterministic():
    env = make_env("mcp:git-commit")
    try:
        first, info = env.reset(seed=3)
        add = env.oracle_action()
        assert env.step(add)[:3] == ("Files staged successfully", 0.0, False)  # staged is not committed yet
        commit = json.loads(env.oracle_action())
        wrong = dict(commit, arguments={**commit["arguments"], "message": "wrong message"})
        obs, r, term, _, info = env.step(json.dumps(wrong))
        assert "committed successfully" in obs and r == 0 and not term  # a real commit, but not the asked one
        again, _ = env.reset(seed=3)
        assert again == first
        env.step(add)
        obs, r, term, _, info = env.step(json.dumps(commit))
        assert r == 1.0 and info["won"]
        again, _ = env.reset(seed=3)  # same seed, same actions: the same commit hash
        env.step(add)
        assert env.step(json.dumps(commit))[0] == obs
        assert env.reset(seed=4)[0] != first
    finally:
        env.close()


@pytest.mark.parametrize("bad", ["", None, 42, "git status", "[1, 2]", '{"tool": "no_such_tool", "arguments": {}}',
                                 '{"tool": "git_status", "arguments": {}}', '{"tool": "git_status", "arguments": [1]}',
                                 '{"arguments": {"repo_path": "project"}}'])
def test_malformed_actions_are_error_observations(git_env, bad):
    obs, r, term, trunc, info = git_env.step(bad)
    assert info["error"] and info["unparsed"] and obs.startswith("Error") and r == 0 and not term and not trunc


def test_a_well_formed_call_that_fails_is_an_error_but_parsed(git_env):
    add = {"tool": "git_add", "arguments": {"repo_path": "project", "files": ["no-such-file.txt"]}}
    obs, r, term, trunc, info = git_env.step(json.dumps(add))  # a missing file
    assert info["error"] and "unparsed" not in info and r == 0 and not term
    env = make_env("mcp:sqlite-train")
    try:
        env.reset(seed=0)
        obs, r, term, trunc, info = env.step(json.dumps(call("read_query", query="SELECT * FROM no_such_table")))
        assert "no such table" in obs and "unparsed" not in info and not term  # an SQL error (the server sets no isError)
        obs, r, term, trunc, info = env.step(json.dumps(call("read_query", sql="SELECT 1")))  # `query` missing
        assert info["error"] and info["unparsed"] and "query" in info["error"]
    finally:
        env.close()


@pytest.fixture(scope="module")
def git_env():
    env = make_env("mcp:git-log-question")
    env.reset(seed=1)
    yield env
    obs, r, term, info = play_oracle(env)  # the errors did not break the episode
    assert r == 1.0 and info["won"]
    env.close()


def test_accepts_name_form_string_arguments_and_code_fences():
    env = make_env("mcp:sqlite-update")
    try:
        env.reset(seed=0)
        call = json.loads(env.oracle_action())
        action = json.dumps({"name": call["tool"], "arguments": json.dumps(call["arguments"])})
        obs, r, term, trunc, info = env.step(f"```json\n{action}\n```")
        assert "affected_rows" in obs and r == 1.0 and info["won"]
    finally:
        env.close()


def test_a_wrong_answer_ends_the_episode_unrewarded_and_max_steps_truncates():
    env = make_env("mcp:time-convert", max_steps=2)
    try:
        env.reset(seed=5)
        convert = env.oracle_action()
        obs, r, term, trunc, info = env.step(convert)
        assert '"target"' in obs and not trunc  # the server's raw JSON
        right = json.loads(env.oracle_action())["answer"]
        wrong = f"{(int(right[:2]) + 1) % 24:02d}:{right[3:]}"
        obs, r, term, trunc, info = env.step(json.dumps({"answer": wrong}))
        assert obs == "Wrong answer." and r == 0 and term and not info["won"] and trunc
    finally:
        env.close()


def test_killed_server_truncates_the_episode_and_the_env_recovers():
    env = make_env("mcp:sqlite-query")
    try:
        env.reset(seed=2)
        pids = env.server.pids()
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        obs, r, term, trunc, info = env.step('{"tool": "list_tables", "arguments": {}}')
        assert trunc and info["crashed"] and "Connection closed" in obs and env.crashes == 1
        env.reset(seed=2)
        obs, r, term, info = play_oracle(env)
        assert r == 1.0 and info["won"]
    finally:
        env.close()


def running(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_close_stops_the_server_and_its_children_and_removes_scratch():
    env = make_env("mcp:git-commit")
    env.reset(seed=0)
    env.step(env.oracle_action())  # GitPython starts git helper processes under the server
    server, scratch = env.server, env.scratch
    pids = server.pids()
    assert pids and (scratch / "project" / ".git").is_dir()
    env.close()
    env.close()  # idempotent
    deadline = time.time() + 5
    while server.pids() and time.time() < deadline:
        time.sleep(0.1)
    assert server.pids() == [] and not any(running(p) for p in pids)
    assert not scratch.exists()


def test_unknown_task_names_list_the_tasks():
    with pytest.raises(ValueError, match="git-commit"):
        resolve_env_id("mcp:no-such-task")


# ---------------------------------------------------------------- generated tasks (issue 14): splits by key

@pytest.mark.parametrize("family", list(TEMPLATES))
def test_each_generator_has_hundreds_of_tasks_split_80_20_and_no_task_is_in_both_splits(family):
    train, heldout = task_keys(family, "train"), task_keys(family, "heldout")
    assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)
    assert not set(train) & set(heldout)
    assert len(heldout) >= 200 and 0.15 < len(heldout) / (len(train) + len(heldout)) < 0.25
    assert {split_of(k) for k in train} == {"train"} and {split_of(k) for k in heldout} == {"heldout"}
    assert {k.split()[0] for k in train} == set(TEMPLATES[family])  # every template trains
    assert sorted(task_keys(family)) == sorted(train + heldout)


def test_the_split_is_a_fixed_hash_of_template_and_parameters():
    assert split_of('orders-after {"after": "2024-03-03", "customer": "Ada Lovelace"}') == "train"
    assert split_of('orders-after {"after": "2024-03-18", "customer": "Ada Lovelace"}') == "heldout"
    assert split_of('last-author {"file": "src/garnet.py"}') == "heldout"
    with pytest.raises(ValueError, match="not a sqlite task"):
        build_task("sqlite", 'orders-after {"after": "2025-01-01", "customer": "Ada Lovelace"}', random.Random(0),
                   Path("."))
    resolve_env_id("mcp:sqlite-heldout")  # the split ids are env ids
    resolve_env_id("mcp:git-train")


def some_keys(family, split, per_template):
    """A few keys of each template of the split, spread over its task list."""
    keys = task_keys(family, split)
    by_template = {}
    for k in keys:
        by_template.setdefault(k.split()[0], []).append(k)
    return [k for ks in by_template.values() for k in ks[::max(1, len(ks) // per_template)][:per_template]]


def wrong(answer):
    """A wrong answer of the right kind: another number, or another name."""
    try:
        return f"{float(answer) + 1:g}"
    except ValueError:
        pool = NAMES if answer in NAMES else [p for ps in CATALOGUE.values() for p in ps]
        return next(n for n in pool if n != answer)


def test_the_oracle_sql_on_the_seeded_db_passes_the_checker_and_a_no_op_or_wrong_answer_does_not(tmp_path):
    db = tmp_path / "shop.db"
    for split in SPLITS:
        for i, key in enumerate(some_keys("sqlite", split, 6)):
            task = build_task("sqlite", key, random.Random(i), tmp_path)
            assert task.key == key and not task.passes(None), key  # doing nothing, or not answering, fails
            rows = query(db, task.solution[0]["arguments"]["query"])  # the SQL the oracle sends to the server
            if "answer" in task.solution[-1]:
                answer = task.solution[-1]["answer"]
                assert task.passes(answer) and task.passes(str(rows[0][0])), key  # the Python answer is the SQL one
                assert not task.passes(wrong(answer)) and not task.passes(""), key
            else:
                assert task.passes(None), key


GIT_TRUTH = {  # each question asked of git itself
    "last-author": lambda repo, p: git(repo, "log", "-1", "--format=%an", "--", p["file"]),
    "created-by": lambda repo, p: git(repo, "log", "--reverse", "--format=%an", "--", p["file"]).splitlines()[0],
    "commits-by": lambda repo, p: git(repo, "rev-list", "--count", f"--author={p['author']}", "HEAD"),
    "commits-touching": lambda repo, p: git(repo, "rev-list", "--count", "HEAD", "--", p["file"]),
    "file-value": lambda repo, p: git(repo, "show", f"HEAD:{p['file']}").split("return ")[1],
}


def test_git_answers_agree_with_git_and_a_no_op_or_wrong_answer_fails(tmp_path):
    assert set(GIT_TRUTH) < set(TEMPLATES["git"])
    for split in SPLITS:
        for i, key in enumerate(some_keys("git", split, 1)):
            task = build_task("git", key, random.Random(i), tmp_path)
            assert not task.passes(None), key
            name, params = key.split(" ", 1)
            if name in GIT_TRUTH:
                truth = GIT_TRUTH[name](tmp_path / "project", json.loads(params))
                assert task.solution[-1]["answer"] == truth and task.passes(truth), key
                assert not task.passes(wrong(truth)), key


def said(answer, text):
    m = re.search(r"-?\d+(?:\.\d+)?", text)
    return answer in text or (m is not None and abs(float(m.group()) - float(answer)) < 0.005)


@pytest.mark.parametrize("env_id", GENERATED)
def test_oracle_solves_every_template_of_the_split_on_the_real_server_and_the_menu_never_holds_its_unseen_calls(
        env_id):
    family, split = env_id.split("-")
    seeds = {}
    for seed in range(300):
        seeds.setdefault(draw_key(family, split, random.Random(seed)).split()[0], seed)
    assert set(seeds) == {k.split()[0] for k in task_keys(family, split)}
    env = make_env(f"mcp:{env_id}")
    try:
        for name, seed in sorted(seeds.items()):
            seen, r, term, info = play_checking_the_menu(env, seed)
            assert env.task.key.startswith(name + " ") and split_of(env.task.key) == split
            assert r == 1.0 and term and info["won"], (env.task.key, seen)
            if family == "sqlite" and "answer" in env.task.solution[-1]:  # the server said what the oracle answers
                assert said(env.task.solution[-1]["answer"], seen[-2]), (env.task.key, seen)
    finally:
        env.close()


def state(env):
    scratch = env.scratch
    if env.kind == "git":
        return git(scratch / "project", "log", "--format=%H %an %s"), git(scratch / "project", "status", "--short")
    return query(scratch / "shop.db", "SELECT name, sql FROM sqlite_master ORDER BY name"), [
        query(scratch / "shop.db", f"SELECT * FROM {t}") for t in ("customers", "products", "orders")]


@pytest.mark.parametrize("env_id", ["mcp:sqlite-heldout", "mcp:git-train"])
def test_same_seed_same_task_same_data_and_same_first_observation(env_id):
    env = make_env(env_id)
    try:
        first, info = env.reset(seed=11)
        key, data = env.task.key, state(env)
        other, _ = env.reset(seed=12)
        assert env.task.key != key and other != first
        again, again_info = env.reset(seed=11)
        assert (again, env.task.key, state(env), again_info) == (first, key, data, info)
    finally:
        env.close()


def seed_of(family, split, name):
    return next(s for s in range(300) if draw_key(family, split, random.Random(s)).startswith(name + " "))


def test_a_wrong_write_or_a_wrong_answer_is_unrewarded_on_the_real_server():
    env = make_env("mcp:sqlite-train")
    try:
        env.reset(seed=seed_of("sqlite", "train", "set-category-price"))
        right = env.task.solution[0]["arguments"]["query"]
        price = re.search(r"price = (\d+)", right).group(1)
        off = right.replace(f"price = {price}", f"price = {int(price) + 1}")
        obs, r, term, _, info = env.step(json.dumps({"tool": "write_query", "arguments": {"query": off}}))
        assert "affected_rows" in obs and r == 0 and not term and not info["won"]  # written, but not the asked price
        obs, r, term, _, info = env.step(json.dumps({"tool": "list_tables", "arguments": {}}))
        assert r == 0 and not term
        assert env.step(env.oracle_action())[1] == 1.0
        env.reset(seed=seed_of("sqlite", "train", "orders-after"))
        env.step(env.oracle_action())
        answer = json.loads(env.oracle_action())["answer"]
        obs, r, term, _, info = env.step(json.dumps({"answer": wrong(answer)}))
        assert obs == "Wrong answer." and r == 0 and term and not info["won"]
    finally:
        env.close()
    env = make_env("mcp:git-heldout")
    try:
        env.reset(seed=seed_of("git", "heldout", "commit-change"))
        env.step(env.oracle_action())
        commit = json.loads(env.oracle_action())
        obs, r, term, _, info = env.step(json.dumps(dict(commit, arguments={**commit["arguments"], "message": "wip"})))
        assert "committed successfully" in obs and r == 0 and not term
    finally:
        env.close()


def test_a_server_slower_to_start_than_a_call_timeout_is_waited_for_and_a_dead_one_fails_at_once(tmp_path,
                                                                                                 monkeypatch):
    import agentworld.envs.mcp_tools as m

    command, args, cwd = m.server_command("time", tmp_path)
    monkeypatch.setattr(m, "CALL_TIMEOUT", 0.5)  # a start under load is slower than a call may be
    slow = m.MCPServer("/bin/sh", ["-c", 'sleep 2; exec "$0" "$@"', command, *args], cwd=cwd)
    try:
        assert "get_current_time" in {t.name for t in slow.tools}
    finally:
        slow.close()
    t = time.time()
    with pytest.raises(RuntimeError, match="did not start"):
        m.MCPServer("/bin/sh", ["-c", "exit 3"], cwd=cwd)
    assert time.time() - t < 10  # a server that exits is not waited START_TIMEOUT for
