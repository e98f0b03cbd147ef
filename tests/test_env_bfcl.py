import json

import pytest

pytest.importorskip("bfcl_eval")
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils  # noqa: E402

from agentworld.envs import make_env as make_sandboxed, resolve_env_id  # noqa: E402
from agentworld.envs.bfcl import tasks  # noqa: E402
from tests.oracle import unseen_calls  # noqa: E402

END = '{"end_turn": true}'
OPEN = []  # each env is a sandboxed Python process: the fixture below closes them after each test


def make_env(*args, **kwargs):
    env = make_sandboxed(*args, **kwargs)
    OPEN.append(env)
    return env


@pytest.fixture(autouse=True)
def close_envs():
    yield
    while OPEN:
        OPEN.pop().close()


def play(env, policy, limit=200):
    for _ in range(limit):
        obs, r, term, trunc, info = env.step(policy())
        if term:
            return obs, r, info
    raise AssertionError("the episode did not end")


def test_oracle_passes_bfcls_own_checker_on_every_base_task_and_the_menu_never_holds_its_unseen_calls():
    """At every state of every task's ground-truth episode, a ground-truth call in the menu must have only argument
    values the agent has seen (the function docs, the user's requests, the outputs so far): the old menu, which
    copied the turn's remaining ground truth, fails this on most tasks."""
    ids = list(tasks())
    assert len(ids) == 200
    failed, leaked = [], []
    for test_id in ids:
        env = make_env(f"bfcl:{test_id}")
        obs, info = env.reset()
        assert "Functions:\n" in obs and "\nUser: " in obs and END in info["admissible_actions"]
        seen = [obs]

        def oracle():
            action = env.oracle_action()
            leaked.extend((test_id, a) for a in unseen_calls(info["admissible_actions"], [action], "\n".join(seen)))
            return action

        for _ in range(200):
            obs, r, term, trunc, info = env.step(oracle())
            seen.append(obs)
            if term:
                break
        if not (r == 1.0 and info["won"] and "checker passed" in obs):
            failed.append(test_id)
        env.close()
    assert failed == [] and leaked == []


def test_an_empty_trajectory_fails_the_checker():
    env = make_env("bfcl:multi_turn_base_0")
    env.reset()
    obs, r, info = play(env, lambda: END)
    assert r == 0 and not info["won"] and "empty" in obs


def test_a_wrong_argument_fails_the_checker():
    env = make_env("bfcl:multi_turn_base_1")
    env.reset()
    sent = []

    def oracle_with_a_wrong_grep():  # grep for 'Warning' where the user asked for 'Error', then move on
        call = json.loads(env.oracle_action())
        if call.get("tool") == "grep":
            if sent:
                return END
            call["arguments"]["pattern"] = "Warning"
            sent.append(call)
        return json.dumps(call)

    obs, r, info = play(env, oracle_with_a_wrong_grep)
    assert sent and r == 0 and not info["won"] and "checker failed" in obs


def test_turns_advance_on_end_turn_and_native_python_calls_work():
    env = make_env("bfcl:multi_turn_base_0")
    obs, info = env.reset()
    assert obs.endswith("User: Move 'final_report.pdf' within document directory to 'temp' directory in document. "
                        "Make sure to create the directory")
    assert json.loads(env.step("cd(folder='document')")[0]) == {"current_working_directory": "document"}
    env.step('mkdir("temp")')  # a positional argument maps to the backend's signature
    assert env.steps[0][-1] == ["mkdir(dir_name='temp')"]
    assert env.step("ls()")[0] == json.dumps({"current_directory_content": ["final_report.pdf", "previous_report.pdf", "temp"]})
    env.step('{"tool": "mv", "arguments": {"source": "final_report.pdf", "destination": "temp"}}')
    obs, r, term, trunc, info = env.step(END)
    assert obs.startswith("User: Perform a detailed search using grep") and info["turn"] == 1 and not term


def test_reset_by_seed_is_deterministic():
    a, b = make_env("bfcl:multi_turn_base"), make_env("bfcl:multi_turn_base")
    first, _ = a.reset(seed=11)
    assert b.reset(seed=11)[0] == first
    assert a.reset(seed=12)[0] != first
    a.reset(seed=11)
    for _ in range(6):
        action = a.oracle_action()
        assert a.step(action)[0] == b.step(action)[0]


def test_episodes_do_not_share_backend_state_and_release_it():
    from agentworld.envs.bfcl import make  # in this process, not make_env's sandbox: its globals are checked below

    a, b = make("multi_turn_base_1"), make("multi_turn_base_1")
    a.reset()
    b.reset()
    a.step('{"tool": "cd", "arguments": {"folder": "workspace"}}')
    a.step('{"tool": "mkdir", "arguments": {"dir_name": "mine"}}')
    b.step('{"tool": "cd", "arguments": {"folder": "workspace"}}')
    assert "mine" in a.step("ls()")[0] and "mine" not in b.step("ls()")[0]
    a.reset()  # a new episode starts from the initial state
    a.step('{"tool": "cd", "arguments": {"folder": "workspace"}}')
    assert "mine" not in a.step("ls()")[0]
    a.close()
    b.close()
    assert not [k for k in vars(multi_turn_utils) if k.startswith((a.model, b.model))]


@pytest.mark.parametrize("bad", ["", None, 42, "{", "[1]", '{"tool": "rm_rf", "arguments": {}}',
                                 '{"tool": "cd", "arguments": [1]}', "__import__('os').system('true')",
                                 "cd(folder=open('/etc/hostname').read())", "cd(folder='a', ' '",
                                 '{"tool": "cd", "arguments": {"folder=__import__(\'os\').getpid(),x": 1}}'])
def test_malformed_actions_are_error_observations(bad):
    env = make_env("bfcl:multi_turn_base_0")
    env.reset()
    obs, r, term, trunc, info = env.step(bad)
    assert obs.startswith("Error: ") and info["error"] and info["unparsed"] and r == 0 and not term
    assert env.steps == [[]]  # nothing was executed


def test_bad_arguments_are_the_backends_own_execution_errors():
    env = make_env("bfcl:multi_turn_base_0")
    env.reset()
    obs, r, term, trunc, info = env.step('{"tool": "cd", "arguments": {"directory": "document"}}')
    assert obs.startswith("Error during execution") and "directory" in obs and not term
    assert info["error"] and info["unparsed"] and "folder" in info["error"]  # `folder` is required: no call of cd
    obs, r, term, trunc, info = env.step('{"tool": "mv", "arguments": {"source": "nothere.txt", "destination": "x"}}')
    assert "nothere.txt" in obs and "unparsed" not in info and not term  # a well-formed call that fails


def test_max_steps_truncates():
    env = make_env("bfcl:multi_turn_base_3", max_steps=2)
    env.reset()
    assert [env.step("pwd()")[3] for _ in range(2)] == [False, True]


def test_unknown_names_raise_clear_errors():
    resolve_env_id("bfcl:multi_turn_base_199")
    with pytest.raises(ValueError, match="multi_turn_base_0 .. multi_turn_base_199"):
        resolve_env_id("bfcl:multi_turn_base_200")


def test_splits_hold_disjoint_tasks():
    from agentworld.envs.base import split_of
    from agentworld.envs.bfcl import split_ids

    train, heldout = split_ids("train"), split_ids("heldout")
    assert len(train) == 160 and len(heldout) == 40 and sorted(train + heldout) == sorted(tasks())
    played = {}
    for split in ("train", "heldout"):
        env = make_env("bfcl:multi_turn_base", split=split)
        ids = []
        for seed in (0, 1, 2, 0):
            obs, _ = env.reset(seed=seed)
            assert obs.startswith(f"Task {env.test_id}.")
            ids.append(env.test_id)
        env.close()
        assert ids[0] == ids[3] and len(set(ids)) == 3 and all(split_of(i) == split for i in ids)
        played[split] = set(ids)
    assert not played["train"] & played["heldout"]
    with pytest.raises(ValueError, match="split must be train or heldout, not 'x'"):
        make_env("bfcl:multi_turn_base", split="x")
    with pytest.raises(ValueError, match="of the heldout split, not of train"):
        make_env(f"bfcl:{heldout[0]}", split="train")
