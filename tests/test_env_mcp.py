import json
import os
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp")
from agentworld.envs import make_env, resolve_env_id  # noqa: E402
from agentworld.envs.mcp_tools import TASKS  # noqa: E402


def play_oracle(env, limit=10):
    for _ in range(limit):
        obs, r, term, trunc, info = env.step(env.oracle_action())
        if term or trunc:
            return obs, r, term, info
    raise AssertionError("the oracle did not finish")


@pytest.mark.parametrize("task", list(TASKS))
def test_oracle_solves_each_task_on_the_real_server(task):
    env = make_env(f"mcp:{task}")
    try:
        obs, info = env.reset(seed=7)
        assert obs.startswith("Task: ") and "Tools:\n- " in obs and "input={" in obs
        assert info["open_actions"] and env.oracle_action() in info["admissible_actions"]
        assert not info["won"]
        obs, r, term, info = play_oracle(env)
        assert r == 1.0 and term and info["won"] and info["score"] == 1.0
    finally:
        env.close()


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
    assert info["error"] and obs.startswith("Error") and r == 0 and not term and not trunc


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
