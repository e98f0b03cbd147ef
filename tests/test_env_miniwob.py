"""MiniWoB++ in Debian's headless Chromium: real episodes, the scripted oracle, seeded resets, malformed
actions, the task timer, and a close() that leaves no browser process behind. One browser per task."""

import os
import random
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("miniwob")
if not (Path("/usr/lib/chromium/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from agentworld.envs import make_env, resolve_env_id  # noqa: E402


@pytest.fixture(scope="module")
def click_button():
    env = make_env("miniwob:click-button", max_steps=3)
    yield env
    env.close()


@pytest.fixture(scope="module")
def enter_text():
    env = make_env("miniwob:enter-text")
    yield env
    env.close()


def run_oracle(env, seed, limit=6):
    obs, info = env.reset(seed=seed)
    for _ in range(limit):
        action = env.oracle_action()
        assert action is not None, obs
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return reward, info
    raise AssertionError(f"the oracle did not finish in {limit} steps:\n{obs}")


def test_observation_lists_the_instruction_and_elements_by_ref(enter_text):
    obs, info = enter_text.reset(seed=0)
    assert obs.startswith('Task: Enter "')
    assert '] input_text #tt value=""' in obs and '] button "Submit"' in obs
    assert info["open_actions"] is True and info["won"] is False
    target = obs.split('"')[1]
    assert any(a.startswith("type [") and a.endswith(f'"{target}"') for a in info["admissible_actions"])
    assert any(a.startswith("click [") for a in info["admissible_actions"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_oracle_clicks_the_named_button(click_button, seed):
    reward, info = run_oracle(click_button, seed)
    assert reward == 1.0 and info["won"] and info["score"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_types_the_text_and_submits(enter_text, seed):
    enter_text.reset(seed=seed)
    first = enter_text.oracle_action()
    assert first.startswith("type [")
    obs, reward, terminated, _, _ = enter_text.step(first)
    typed = first.split('"')[1]
    assert not terminated and f'value="{typed}"' in obs
    reward, info = run_oracle(enter_text, seed)
    assert reward == 1.0 and info["won"]


@pytest.mark.parametrize("task", ["click-link", "focus-text", "click-dialog", "click-checkboxes", "login-user"])
def test_oracle_solves_other_simple_tasks(task):
    env = make_env(f"miniwob:{task}")
    try:
        for seed in (0, 1):
            reward, info = run_oracle(env, seed)
            assert info["won"], (task, seed)
    finally:
        env.close()


def test_a_wrong_click_loses(click_button):
    obs, _ = click_button.reset(seed=0)
    target = obs.split('"')[1]
    wrong = next(line.split()[0] for line in obs.splitlines() if '] button "' in line and f'"{target}"' not in line)
    _, reward, terminated, _, info = click_button.step(f"click {wrong}")
    assert terminated and reward == -1.0 and not info["won"]


def test_random_policy_plays_whole_episodes(enter_text):
    rng, outcomes = random.Random(0), []
    for seed in range(4):
        obs, info = enter_text.reset(seed=seed)
        for _ in range(8):
            obs, reward, terminated, truncated, info = enter_text.step(rng.choice(info["admissible_actions"]))
            assert isinstance(obs, str) and len(obs) <= 2100
            if terminated or truncated:
                outcomes.append(reward)
                break
    assert outcomes and all(-1.0 <= r <= 1.0 for r in outcomes)


def test_same_seed_same_page_and_same_play(enter_text):
    def play(seed):
        obs, info = enter_text.reset(seed=seed)
        seen = [obs]
        for action in info["admissible_actions"][:1] + ['type [5] "abc"']:
            seen.append(enter_text.step(action)[0])
        return seen

    first = play(7)
    enter_text.reset(seed=3)  # a different episode in between must not leak into the next
    enter_text.step(enter_text.oracle_action())
    assert play(7) == first
    assert enter_text.reset(seed=8)[0] != first[0]


@pytest.mark.parametrize("action", ["", None, 42, "dance", "click", "click [999]", "click [abc]", "type [5]",
                                    "press Hyper", "type"])
def test_malformed_actions_get_an_error_observation(enter_text, action):
    obs0, _ = enter_text.reset(seed=0)
    obs, reward, terminated, truncated, info = enter_text.step(action)
    assert info["error"] and info["unparsed"] and obs.startswith("Invalid action.") and obs0 in obs
    assert reward == 0.0 and not terminated and not truncated


def test_errors_leave_the_episode_running_until_max_steps(click_button):
    click_button.reset(seed=1)
    for _ in range(2):
        _, _, terminated, truncated, info = click_button.step("click [0]")
        assert "error" in info and not terminated and not truncated
    _, reward, terminated, truncated, info = click_button.step(click_button.oracle_action())
    assert terminated and truncated and info["won"]  # the third step both wins and hits max_steps=3


def test_press_and_type_reach_the_page(enter_text):
    enter_text.reset(seed=0)
    obs, *_ = enter_text.step("type 5 hello")
    assert 'value="hello" focused' in obs
    obs, *_ = enter_text.step("press Backspace")
    assert 'value="hell"' in obs


def test_unknown_tasks_are_rejected_with_the_list():
    with pytest.raises(ValueError, match="click-button"):
        resolve_env_id("miniwob:no-such-task")
    with pytest.raises(ValueError):
        resolve_env_id("miniwob:flight.AA")  # FlightWoB links to live airline sites
    resolve_env_id("miniwob:click-checkboxes")


def _browser_pids():
    """Our own live chromium and chromedriver processes: descendants of this test process, read from /proc."""
    kids = {}
    for p in Path("/proc").iterdir():
        try:
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split() if p.name.isdigit() else None
        except (OSError, IndexError):
            continue
        if stat and stat[0] != "Z":
            kids.setdefault(int(stat[1]), []).append(int(p.name))
    found, todo = [], [os.getpid()]
    while todo:
        children = kids.get(todo.pop(), [])
        found += children
        todo += children
    browser = ("/usr/lib/chromium/chromium", "/usr/bin/chromedriver")
    return {p for p in found if os.path.realpath(f"/proc/{p}/exe") in browser}


def _running(pid):
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def test_timer_truncates_and_close_quits_the_browser():
    before = _browser_pids()
    env = make_env("miniwob:click-test", time_limit=1.0)
    env.reset(seed=0)
    mine = _browser_pids() - before
    assert len(mine) >= 2, "chromedriver and chromium should be running"
    time.sleep(1.3)
    obs, reward, terminated, truncated, info = env.step(env.oracle_action())
    assert truncated and not terminated and reward == 0.0 and info.get("timed_out") and not info["won"]
    env.close()
    env.close()  # idempotent
    assert not [p for p in mine if _running(p)]


def test_a_killed_browser_truncates_the_episode_and_comes_back():
    before = _browser_pids()
    env = make_env("miniwob:click-button")
    try:
        env.reset(seed=0)
        old = _browser_pids() - before
        [driver] = [p for p in env.env.sandbox.pids() if Path(f"/proc/{p}/comm").read_text().strip() == "chromedriver"]
        os.kill(driver, signal.SIGKILL)  # chromedriver, in the env's sandbox
        obs, reward, terminated, truncated, info = env.step(env.oracle_action())
        assert info.get("crashed") and truncated and reward == 0.0
        assert not [p for p in old if _running(p)], "the orphaned Chromium was not stopped"
        run_oracle(env, 0)
    finally:
        env.close()


def test_splits_play_disjoint_seeds(click_button):
    from agentworld.envs.base import split_of

    click_button.reset(seed=5)
    assert click_button.seed == 5  # no split: the seed itself, as before
    played = {}
    for split in ("train", "heldout"):
        env = make_env("miniwob:click-button", max_steps=3, split=split)
        try:
            pages, seeds = [], []
            for seed in (0, 1, 0):
                obs, _ = env.reset(seed=seed)
                pages.append(obs)
                seeds.append(env.seed)
        finally:
            env.close()
        assert seeds[0] == seeds[2] != seeds[1] and pages[0] == pages[2]
        assert all(split_of(f"click-button:{s}") == split for s in seeds)
        played[split] = set(seeds)
    assert not played["train"] & played["heldout"]
    with pytest.raises(ValueError, match="split must be train or heldout, not 'x'"):
        make_env("miniwob:click-button", split="x")
