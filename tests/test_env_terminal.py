"""The terminal env: a real bash in tmux in bubblewrap, solved by its oracle, seeded, robust to junk actions,
and leaving no process behind."""

import os
import random
import threading
from pathlib import Path

import pytest

from agentworld.envs import make_env, resolve_env_id
from agentworld.envs.sandbox import Limits, Sandbox
from agentworld.envs.terminal import TASKS, TEMPLATES, draw, generate, parse_action, split_of, task_keys


def procs_mentioning(text: str) -> list[int]:
    """Host pids whose command line mentions `text` (a tmux or bwrap of one env names its temp dir)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if text.encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_real_episode_wins_with_the_solution():
    env = make_env("terminal:count-lines", max_steps=10)
    try:
        obs, info = env.reset(seed=0)
        assert obs.startswith("Task: Write the number of lines in log.txt") and obs.endswith("~$")
        assert info["open_actions"] and info["admissible_actions"] == [  # looks at what the task names, no solution
            "ls", "ls -la", "pwd", "<C-c>", "clear", "cat log.txt", "head log.txt", "cat answer.txt", "head answer.txt"]
        n = str(len(Path(env.root, "scratch", "log.txt").read_text().splitlines()))
        obs, r, term, trunc, info = env.step("wc -l log.txt")
        assert obs.splitlines()[-2] == f"{n} log.txt" and r == 0 and not term and not info["won"]
        obs, r, term, trunc, info = env.step(f"echo {int(n) + 1} > answer.txt")  # wrong answer
        assert r == 0 and not term
        obs, r, term, trunc, info = env.step("head -2 lo<Tab><Enter>")  # tab completion, no Enter added
        assert "~$ head -2 log.txt" in obs
        obs, r, term, trunc, info = env.step(env.oracle_action())
        assert r == 1.0 and term and info["won"] and info["score"] == 1.0
        assert Path(env.root, "scratch", "answer.txt").read_text().strip() == n
    finally:
        env.close()


def test_menu_oracle_offers_the_oracles_next_command_and_says_so():
    env = make_env("terminal:sort-uniq", menu="oracle")
    try:
        obs, info = env.reset(seed=0)
        assert info["menu"] == "oracle" and env.oracle_action() in info["admissible_actions"]
        assert info["admissible_actions"] == sorted(info["admissible_actions"])
        *_, info = env.step(env.oracle_action())
        assert info["won"] and info["admissible_actions"] == [] and info["menu"] == "oracle"
    finally:
        env.close()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_oracle_solves_every_task(task):
    env = make_env(f"terminal:{task}", max_steps=8)
    try:
        env.reset(seed=7)
        for _ in range(8):
            obs, r, term, trunc, info = env.step(env.oracle_action())
            if term or trunc:
                break
        assert info["won"] and r == 1.0, obs
        assert env.oracle_action() is None
    finally:
        env.close()


def test_reset_is_deterministic_by_seed():
    actions = ["ls -l", "head -3 notes/note01.txt", "grep -c . notes/*"]

    def run(seed):
        env = make_env("terminal:find-word")
        try:
            obs, info = env.reset(seed=seed)
            return [obs, info["admissible_actions"]] + [env.step(a)[0] for a in actions]
        finally:
            env.close()

    a = run(3)
    assert a == run(3)
    assert a != run(4)  # another seed: another word or other files


def test_keys_interrupt_and_recall():
    env = make_env("terminal:sort-uniq", timeout=3)
    try:
        env.reset(seed=0)
        obs, *_ = env.step("sleep 30")
        assert env.oracle_action() == "<C-c>"  # a program holds the terminal
        obs, *_ = env.step("<C-c>")
        assert obs.endswith("~$ sleep 30\n^C\n~$")
        env.step("echo one-$((0+1))")
        obs, *_ = env.step("<Up><Enter>")
        assert obs.count("one-1") == 2
        obs, *_ = env.step("sleep 1; echo slept<Enter><Wait>")
        assert obs.endswith("slept\n~$")
    finally:
        env.close()


@pytest.mark.parametrize("bad", [None, 42, b"ls", "", "   ", "x" * 100_000])
def test_malformed_actions_are_error_observations(bad):
    keys, err = parse_action(bad)
    assert keys is None and err


def test_junk_never_raises_and_the_shell_survives():
    env = make_env("terminal:csv-column", timeout=3)
    try:
        env.reset(seed=0)
        for bad in [None, "", b"\xff\xfe", "x" * 100_000]:
            obs, r, term, trunc, info = env.step(bad)
            assert info["error"] and obs.startswith("[error:") and r == 0 and not term
            assert info.get("unparsed", False) == (not isinstance(bad, str) or not bad)  # too long: refused, parsed
        obs, *_, info = env.step("cat no-such-file.txt")  # every text is shell input: a failing command parsed
        assert "No such file" in obs and "unparsed" not in info
        for junk in ["\x00\x01\x1b[2J\x7f\udcff", "<C-x><C-q>", "<NoSuchKey>;", ";", "'unbalanced \"quote"]:
            obs, r, term, trunc, info = env.step(junk)
            assert "error" not in info
        env.step("<C-c>")
        obs, *_ = env.step("echo ok-$((40+2))")
        assert "ok-42" in obs
    finally:
        env.close()


def test_exit_restarts_the_shell_and_keeps_the_files():
    env = make_env("terminal:make-tree")
    try:
        env.reset(seed=0)
        env.step("echo kept > note.txt")
        obs, r, term, trunc, info = env.step("exit")
        assert "A new shell was started in /scratch" in obs and not trunc and not info.get("crashed")
        obs, *_ = env.step("cat note.txt")
        assert obs.splitlines()[-2] == "kept"
    finally:
        env.close()


def test_max_steps_truncates():
    env = make_env("terminal:sum-column", max_steps=2)
    try:
        env.reset(seed=0)
        assert [env.step("pwd")[3] for _ in range(2)] == [False, True]
    finally:
        env.close()


def test_close_leaves_no_process_and_no_files():
    env = make_env("terminal:clean-tmp")
    env.reset(seed=0)
    env.step("sleep 100 &")
    root, sandbox = str(env.root), env.sandbox
    assert procs_mentioning(root) and len(sandbox.pids()) >= 4  # bwrap, the tmux server, bash, sleep
    env.close()
    assert procs_mentioning(root) == [] and sandbox.pids() == []
    assert not os.path.exists(root)
    env.close()  # idempotent


def test_a_new_reset_replaces_the_sandbox():
    env = make_env("terminal:rename-ext")
    try:
        env.reset(seed=0)
        old_root, old = str(env.root), env.sandbox
        env.step("touch stray.txt")
        obs, info = env.reset(seed=0)
        assert old.pids() == [] and not os.path.exists(old_root)
        assert "stray.txt" not in env.step("ls")[0]
    finally:
        env.close()


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ValueError, match="count-lines.*heldout"):
        resolve_env_id("terminal:no-such-task")
    resolve_env_id("terminal:train")
    resolve_env_id("terminal:heldout")


def test_the_shell_outlives_the_thread_that_reset_it():
    """bwrap dies with the thread that started it; a Ray actor may reset on one thread and step on another."""
    env = make_env("terminal:count-lines")
    try:
        thread = threading.Thread(target=env.reset, kwargs={"seed": 0})
        thread.start()
        thread.join()
        obs, *_ = env.step("echo same-shell-$((2*2))")
        assert "same-shell-4" in obs and "A new shell" not in obs
    finally:
        env.close()


# ---- generated tasks: terminal:train and terminal:heldout

def test_the_generator_yields_hundreds_of_tasks_in_two_disjoint_splits():
    train, heldout = task_keys("train"), task_keys("heldout")
    assert len(set(task_keys())) == len(task_keys()) == len(train) + len(heldout) >= 500
    assert not set(train) & set(heldout)
    assert 0.15 < len(heldout) / len(task_keys()) < 0.25
    assert all(split_of(k) == "heldout" for k in heldout)
    for split in (train, heldout):  # every template is in both, so held-out tasks are new parameters, not new kinds
        assert {k.split("/")[0] for k in split} == set(TEMPLATES)
    goals = {generate(k, random.Random(0)).goal for k in task_keys()}
    assert len(goals) == len(task_keys())  # every task asks something different
    assert max(map(len, goals)) <= 100  # tiny models read them


def test_every_generated_task_is_solved_by_its_oracle_and_not_by_its_decoy():
    """All tasks in one sandboxed bash: each gets two copies of its files, which its checker rejects as they are; one
    is given the oracle's commands, the other the decoy's (a plausible wrong answer); the checker passes only the
    oracle's."""
    keys = task_keys()
    box = Sandbox(limits=Limits(timeout_s=120))
    try:
        script, checks = [], []
        for i, key in enumerate(keys):
            episode = generate(key, random.Random(i))
            for run in ("oracle", "decoy"):
                (box.scratch / str(i) / run).mkdir(parents=True)
                for rel, text in episode.files.items():
                    (box.scratch / str(i) / run / rel).parent.mkdir(parents=True, exist_ok=True)
                    (box.scratch / str(i) / run / rel).write_text(text)
            assert not episode.check(box.scratch / str(i) / "oracle"), key
            script += [f"cd /scratch/{i}/oracle", *episode.solution, f"cd /scratch/{i}/decoy", *episode.decoy]
            checks.append(episode.check)
        (box.scratch / "run.sh").write_text("\n".join(script) + "\n")
        box.chown()
        r = box.call(["bash", "/scratch/run.sh"])
        assert r.exit_code == 0 and r.output == "", r.output
        for i, (key, check) in enumerate(zip(keys, checks)):
            assert check(box.scratch / str(i) / "oracle") and not check(box.scratch / str(i) / "decoy"), key
    finally:
        box.close()


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_a_split_episode_rejects_the_decoy_and_rewards_the_oracle(split):
    env = make_env(f"terminal:{split}", max_steps=12)
    try:
        for seed in (0, 1, 2):
            obs, info = env.reset(seed=seed)
            assert split_of(info["task_key"]) == split and obs.startswith(f"Task: {env.episode.goal}")
            assert not set(env.episode.solution + env.episode.decoy) & set(info["admissible_actions"])
            for action in env.episode.decoy:
                obs, r, term, trunc, info = env.step(action)
                assert r == 0 and not info["won"], (info["task_key"], obs)
            while not (term or trunc):
                obs, r, term, trunc, info = env.step(env.oracle_action())
            assert info["won"] and r == 1.0, (info["task_key"], obs)
    finally:
        env.close()


def test_a_split_reset_is_deterministic_by_seed():
    def first_screen(seed):
        env = make_env("terminal:heldout")
        try:
            obs, info = env.reset(seed=seed)
            return info["task_key"], obs, info["admissible_actions"], env.step("ls -lR")[0]
        finally:
            env.close()

    a = first_screen(5)
    assert a == first_screen(5)
    assert a[0] == draw("heldout", random.Random(5))[0]
    assert len({draw("heldout", random.Random(seed))[0] for seed in range(40)}) > 20  # seeds spread over the tasks
    key = next(k for k in task_keys("heldout") if k.startswith("count/"))
    assert generate(key, random.Random(5)).files != generate(key, random.Random(6)).files  # same task, new files
