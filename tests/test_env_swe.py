import ast

import pytest

from agentworld.envs import make_env, resolve_env_id
from agentworld.envs import swe

EDIT = "edit {path}\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE"


@pytest.fixture
def make():
    """make_env, closing every env at the end even when the test fails."""
    made = []

    def _make(env_id, **kwargs):
        made.append(make_env(env_id, **kwargs))
        return made[-1]

    yield _make
    for env in made:
        env.close()


def parse_edit(action):
    header, body = action.split("\n", 1)
    old, new = body.removeprefix("<<<<<<< SEARCH\n").removesuffix("\n>>>>>>> REPLACE").split("\n=======\n")
    return header.split()[1], old, new


def test_every_mutation_changes_the_code_and_its_revert_edit_undoes_it():
    source, _ = swe.stdlib_files("textwrap")
    muts = swe.mutations(source)
    assert len(muts) > 100
    original = ast.dump(swe.parse(source))
    for m in muts:
        mutated = m.apply(source)
        assert ast.dump(swe.parse(mutated)) != original, m.what
        path, old, new = parse_edit(swe.revert_edit("pkg/textwrap.py", source, m))
        assert path == "pkg/textwrap.py" and mutated.count(old) == 1
        assert mutated.replace(old, new) == source


def test_oracle_fixes_the_bug_and_submit_wins(tmp_path, monkeypatch, make):
    monkeypatch.setattr(swe, "CACHE", tmp_path)  # cold cache: reset validates mutations itself
    env = make("swe:textwrap")
    obs, info = env.reset(seed=1)
    assert " failing: " in obs and "Traceback" in obs and "pkg/textwrap.py" in obs and len(obs) <= swe.OBS_CHARS
    assert info["open_actions"] and "submit" in info["admissible_actions"] and not info["won"]
    assert list(tmp_path.glob("textwrap-*.json"))
    fix = env.oracle_action()
    assert fix.startswith("edit pkg/textwrap.py\n") and fix not in info["admissible_actions"]
    obs, r, term, trunc, info = env.step(fix)
    assert obs.startswith("Edited") and r == 0 and not term and "error" not in info
    assert env.oracle_action() == "submit"
    obs, r, term, trunc, info = env.step("submit")
    assert r == 1.0 and term and info["won"] and "All tests pass" in obs


def test_wrong_fix_loses(make):
    env = make("swe:fnmatch")
    env.reset(seed=2)
    _, old, _ = parse_edit(env.oracle_action())
    obs, *_ = env.step(EDIT.format(path="pkg/fnmatch.py", old=old, new=old + "  # looks fine"))
    assert obs.startswith("Edited")
    obs, r, term, trunc, info = env.step("submit")
    assert r == 0 and term and not info["won"] and "tests fail" in obs


def test_editing_the_tests_cannot_win(make):
    env = make("swe:colorsys")
    env.reset(seed=0)
    obs, *_ = env.step("printf 'import unittest\\n' > tests/test_colorsys.py && python -m unittest -q")
    assert "Ran 0 tests" in obs
    obs, r, term, trunc, info = env.step("submit")
    assert r == 0 and term and not info["won"]


def test_same_seed_same_bug_and_seeds_differ(make):
    a, b = make("swe:textwrap"), make("swe:textwrap")
    assert a.reset(seed=3) == b.reset(seed=3)
    assert a.oracle_action() == b.oracle_action()
    assert a.step(swe.TEST_CMD)[0] == b.step(swe.TEST_CMD)[0]  # test timings are left out
    env = make("swe:colorsys")
    fixes = set()
    for seed in range(4):
        env.reset(seed=seed)
        fixes.add(env.oracle_action())
    assert len(fixes) >= 3


def test_shell_commands_run_in_the_project(make):
    env = make("swe:colorsys")
    env.reset(seed=0)
    obs, r, term, trunc, info = env.step("ls pkg tests && pwd")
    assert "colorsys.py" in obs and "test_colorsys.py" in obs and "/scratch" in obs and not term
    obs, *_ = env.step("python -m unittest -q")  # `python` works although the sandbox has only python3
    assert "FAILED" in obs
    obs, *_ = env.step("exit 3")
    assert "[exit code 3]" in obs


def test_the_stdlib_copy_of_a_hidden_module_is_unreadable(make):
    env = make("swe:shlex")
    env.reset(seed=0)
    lib = swe.sandbox_python()[1]
    obs, *_ = env.step(f"wc -c {lib}/shlex.py; python3 -c 'import shlex; print(shlex.split)'")
    assert "Error" in obs and "<function" not in obs


MALFORMED = ["", None, 42, "edit", "edit pkg/colorsys.py\nno markers here",
             EDIT.format(path="pkg/colorsys.py", old="", new="x")]
FAILING = [EDIT.format(path="pkg/colorsys.py", old="text that is not there", new="x"),  # well-formed, then failed
           EDIT.format(path="pkg/nothere.py", old="a", new="b")]


def test_malformed_actions_are_error_observations(make):
    env = make("swe:colorsys")
    env.reset(seed=0)
    for bad in MALFORMED + FAILING:
        obs, r, term, trunc, info = env.step(bad)
        assert info["error"] and obs and r == 0 and not term, bad
        assert info.get("unparsed", False) == (bad in MALFORMED), bad
    assert env.step("submit")[1] == 0  # nothing was changed: the bug is still there


def test_edits_outside_the_project_are_refused(make):
    env = make("swe:colorsys")
    env.reset(seed=0)
    env.step("ln -s /etc/hostname link")  # a symlink out of the project is refused inside the sandbox
    for path in ["../outside.py", "/etc/passwd", "link", "pkg/../../x"]:
        obs, r, term, trunc, info = env.step(EDIT.format(path=path, old="a", new="b"))
        assert "outside the project" in obs and info["error"], path


def test_max_steps_truncates(make):
    env = make("swe:colorsys", max_steps=2)
    env.reset(seed=0)
    assert [env.step("true")[3] for _ in range(2)] == [False, True]


def test_close_removes_scratch_and_processes(make):
    env = make("swe:colorsys")
    env.reset(seed=0)
    inner = env.env
    scratch, sandbox = inner.scratch, inner.sandbox
    env.step("(sleep 60 &) ; true")
    assert scratch.exists()
    env.close()
    env.close()  # idempotent
    assert not scratch.exists() and sandbox.pids() == []


def test_unknown_name_lists_the_envs():
    with pytest.raises(ValueError, match="swe:textwrap"):
        resolve_env_id("swe:nope")


def test_splits_plant_disjoint_mutations(make):
    from agentworld.envs.base import split_of

    played, pools = {}, {}
    for split in ("train", "heldout"):
        env = make("swe:colorsys", split=split)
        keys = []
        for seed in (0, 1, 0):
            env.reset(seed=seed)
            keys.append(env.mutation.key("colorsys"))
        assert keys[0] == keys[2] and all(split_of(k) == split for k in keys)
        played[split], pools[split] = set(keys), set(env.pool)
    assert played["train"] and played["heldout"] and not played["train"] & played["heldout"]
    assert not pools["train"] & pools["heldout"]
    with pytest.raises(ValueError, match="split must be train or heldout, not 'x'"):
        make("swe:colorsys", split="x")
