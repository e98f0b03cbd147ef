"""MiniWoB++ web tasks (the `miniwob` package) in Debian's headless Chromium, as a text env. The observation
is the task's instruction and its DOM as indented lines with element refs; actions click and type by ref.

Actions (one per step):
  click [12]            click element 12 (`click 12` works too)
  type [7] "hello"      click element 7 to focus it, then type the text (appended to what is there)
  press Enter           press a key: Enter, Tab, Backspace, Up, ... or a combination such as C-a

Reward is miniwob's raw task reward (-1..1, no wall-clock discount): won when it is > 0. When the task's own
timer (10 s for most tasks; `time_limit` seconds if given) runs out, the episode is truncated with reward 0.

A seed draws the task's instance (words, targets, layout). With `split` (`train` or `heldout`) a seed s is in the
split `split_of(f"{task}:{s}")`, and reset(seed) plays the split's (seed mod SPLIT_SEEDS)-th seed. The splits share
no seed; a task with few distinct instances may still show the same page in both.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import miniwob  # noqa: F401  (registers the miniwob/* gymnasium ids that `check` reads)
from miniwob.action import ActionSpaceConfig, ActionTypes
from miniwob.constants import DEFAULT_ALLOWED_KEYS
from miniwob.environment import MiniWoBEnvironment
from miniwob.selenium_instance import SeleniumInstance
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from agentworld.envs.base import split_of, unparsed_info

# Debian's /usr/bin/chromium is a shell wrapper; chromedriver needs the real binary. Naming both paths keeps
# Selenium Manager (which downloads browsers and drivers) from ever running.
CHROME_BINARY = "/usr/lib/chromium/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# We run as root (hence --no-sandbox) with no display. The rest keep Chromium off the network: no
# background fetches, updates, sync or QUIC, and a resolver that answers NOTFOUND for every host name.
CHROME_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
)
MAX_CHARS = 2000
MAX_CLICKS = 20
TEXT_INPUTS = {"input_text", "input_password", "input_email", "input_search", "input_tel", "input_url",
               "input_number", "textarea"}
# Tags worth a line even without text: what an agent can click or fill in.
INTERACTIVE = TEXT_INPUTS | {"button", "a", "select", "option", "input_checkbox", "input_radio",
                             "input_submit", "input_button", "input_date", "input_time", "input_range"}
ACTION_TYPES = [ActionTypes.CLICK_ELEMENT, ActionTypes.FOCUS_ELEMENT_AND_TYPE_TEXT, ActionTypes.PRESS_KEY]
HELP = 'Actions: click [ref], type [ref] "text", press KEY (Enter, Tab, Backspace, ...).'
SPLITS = ("train", "heldout")
SPLIT_SEEDS = 10_000  # a split's instances: its first 10,000 seeds
_ACTION = re.compile(r"""^\s*(click|type|press)\b\s*(?:\[?\s*(-?\d+)\s*\]?)?\s*(.*?)\s*$""", re.I | re.S)


def task_names() -> list[str]:
    """The MiniWoB++ tasks. FlightWoB (`flight.*`) is left out: its pages link to live airline sites."""
    ids = (k for k in gym.envs.registry if k.startswith("miniwob/") and not k.startswith("miniwob/flight."))
    return sorted(k[len("miniwob/"):-len("-v1")] for k in ids)


@functools.cache
def split_seeds(task: str, split: str) -> tuple[int, ...]:
    """The split's seeds: the first SPLIT_SEEDS nonnegative integers s with `split_of(f"{task}:{s}") == split`."""
    return tuple(itertools.islice((s for s in itertools.count() if split_of(f"{task}:{s}") == split), SPLIT_SEEDS))


class _Instance(SeleniumInstance):
    def create_driver(self):
        """miniwob's own driver setup, with our binary paths and flags (miniwob has no way to pass flags)."""
        options = webdriver.ChromeOptions()
        options.binary_location = CHROME_BINARY
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        # chromedriver leads a process group of its own that Chromium joins, so close() can end them all.
        service = Service(executable_path=CHROMEDRIVER, popen_kw={"start_new_session": True})
        self.driver = webdriver.Chrome(service=service, options=options)
        try:
            self.driver.implicitly_wait(5)
            self.driver.get(self.url)
            WebDriverWait(self.driver, 5).until(expected_conditions.element_to_be_clickable((By.ID, self.SYNC_SCREEN_ID)))
            self.inner_width, self.inner_height = self.driver.execute_script("return [window.innerWidth, window.innerHeight];")
        except Exception:  # the task page did not load: leave no browser behind
            self.driver.quit()
            raise


class _Browser(MiniWoBEnvironment):
    def _hard_reset_instance(self):
        if getattr(self, "instance", None):
            self.instance.close()
        self.instance = _Instance(index=0, **self.instance_kwargs)
        self.instance.start()


def mark(html_id: str, classes: str) -> str:
    """`#id` or `.class` naming an element, skipping jQuery UI's own (`ui-*`): icons like `.reply` have no text."""
    names = [f"#{html_id}"] * bool(html_id) + [f".{c}" for c in classes.split() if c != "SVG_CLASS"]
    return next((n for n in names if not n[1:].startswith("ui-")), "")


def page_elements(obs: dict) -> dict[int, dict]:
    """miniwob's dom_elements keyed by ref, each with its children's refs, in document order."""
    els = {}
    for e in obs["dom_elements"]:
        els[int(e["ref"])] = {"ref": int(e["ref"]), "parent": int(e["parent"]), "tag": e["tag"], "text": e["text"],
                              "value": e["value"], "id": e["id"], "focused": bool(e["flags"][0]), "kids": [],
                              "leaf": bool(e["flags"][3]), "mark": mark(e["id"], e["classes"])}
    for el in els.values():
        if el["parent"] in els:
            els[el["parent"]]["kids"].append(el["ref"])
    for el in els.values():  # a button whose words sit in text nodes beside an empty icon: give it the words
        kids = [els[k] for k in el["kids"]]
        words = [k["text"] for k in kids if k["tag"] == "t"]
        if not el["text"] and words and all(k["tag"] == "t" or not (k["text"] or k["kids"] or k["mark"]
                                                                    or k["tag"] in INTERACTIVE) for k in kids):
            el["text"], el["kids"] = " ".join(words), []
    return els


def shown(el: dict) -> bool:
    return el["ref"] > 0 and el["tag"] != "body" and bool(
        el["text"] or el["tag"] in INTERACTIVE or (el["leaf"] and el["mark"]))


def element_line(el: dict) -> str:
    line = f'[{el["ref"]}] {el["tag"]}'
    if el["text"]:
        line += f' "{el["text"]}"'
    elif el["mark"]:
        line += f' {el["mark"]}'
    if el["tag"] in ("input_checkbox", "input_radio"):
        line += " checked" if el["value"] == "True" else " unchecked"
    elif el["tag"] in TEXT_INPUTS or el["value"]:
        line += f' value="{el["value"]}"'
    return line + (" focused" if el["focused"] else "")


def dom_lines(els: dict[int, dict]) -> list[str]:
    """Elements with words or a use, indented by depth; empty containers are skipped, their children kept."""
    lines = []

    def walk(ref: int, depth: int) -> None:
        el = els[ref]
        if el["tag"] == "t":
            lines.append("  " * depth + f'"{el["text"]}"')
            return
        if shown(el):
            lines.append("  " * depth + element_line(el))
            depth += 1
        for kid in el["kids"]:
            walk(kid, depth)

    roots = [r for r, el in els.items() if el["parent"] not in els]
    for r in roots:
        walk(r, 0)
    return lines


def quoted(utterance: str) -> list[str]:
    return re.findall(r'"([^"]+)"', utterance)


class MiniWoBWebEnv:
    def __init__(self, task: str, max_steps: int | None = None, domain: str = "web",
                 time_limit: float | None = None, split: str | None = None):
        check(task)
        if split is not None and split not in SPLITS:
            raise ValueError(f"miniwob:{task}: split must be train or heldout, not {split!r}")
        self.seeds = split_seeds(task, split) if split is not None else None
        self.task, self.env_id, self.domain, self.split = task, f"miniwob:{task}", domain, split
        self.max_steps, self.time_limit, self.seed = max_steps, time_limit, None
        self.browser = _Browser(subdomain=task, action_space_config=ActionSpaceConfig(action_types=ACTION_TYPES))
        self.t, self.score, self.done = 0, 0.0, False
        self.utterance, self.fields, self.els = "", {}, {}

    # ---- observation -------------------------------------------------------------------------------
    def _see(self, obs: dict) -> None:
        self.utterance, self.fields, self.els = obs["utterance"], dict(obs["fields"]), page_elements(obs)

    def _obs(self, note: str = "") -> str:
        head = f"Task: {self.utterance}"
        if note:
            head = f"{note}\n{head}"
        lines, text = dom_lines(self.els), head
        for i, line in enumerate(lines):
            if len(text) + len(line) + 1 > MAX_CHARS:
                return text + f"\n... ({len(lines) - i} more elements)"
            text += "\n" + line
        return text

    def actions(self) -> list[str]:
        """Clicks on every element shown, then typing the instruction's quoted words into each text box."""
        if self.done:
            return []
        shown_els = [el for el in self.els.values() if shown(el)]
        shown_els.sort(key=lambda el: el["tag"] not in INTERACTIVE)  # buttons and inputs first
        acts = [f"click [{el['ref']}]" for el in shown_els[:MAX_CLICKS]]
        words = list(dict.fromkeys(quoted(self.utterance) + [v for v in self.fields.values() if v]))[:4]
        for el in shown_els:
            if el["tag"] in TEXT_INPUTS:
                acts += [f'type [{el["ref"]}] "{w}"' for w in words]
        return acts

    def _info(self, **extra) -> dict[str, Any]:
        return {"admissible_actions": self.actions(), "open_actions": True, "score": self.score,
                "won": False, **extra}

    # ---- actions -----------------------------------------------------------------------------------
    def parse(self, action: Any) -> dict | str:
        """The miniwob action dict for `action`, or a string saying why it is not one."""
        m = _ACTION.match(action) if isinstance(action, str) else None
        if not m:
            return f"Could not parse {action!r}."
        verb, ref, rest = m.group(1).lower(), m.group(2), m.group(3)
        if verb == "press":
            key = f"{ref or ''}{rest}".strip().strip("\"'")
            for name in (f"<{key}>", key, f"<{key.capitalize()}>", f"<Arrow{key.capitalize()}>"):
                if name in DEFAULT_ALLOWED_KEYS:
                    return {"action_type": 2, "key": DEFAULT_ALLOWED_KEYS.index(name)}
            return f"Unknown key {key!r}: use Enter, Tab, Backspace, Delete, Space, Up, Down, Left, Right, a character, or C-a, C-c, C-x, C-v."
        if ref is None:
            return f"{verb} needs an element ref, e.g. {verb} [3]."
        if int(ref) not in self.els or int(ref) <= 0:
            return f"There is no element [{ref}] on the page."
        if verb == "click":
            return {"action_type": 0, "ref": int(ref)}
        text = rest[1:-1] if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "\"'" else rest
        if not text:
            return f'type needs text, e.g. type [{ref}] "hello".'
        return {"action_type": 1, "ref": int(ref), "text": text}

    # ---- episode -----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        driver = self.browser.instance.driver
        # Focus would carry over from the last episode's clicks and make the same seed look different.
        driver.execute_script("if (document.activeElement) document.activeElement.blur();")
        if self.time_limit is not None:  # read by the page when the next episode starts
            driver.execute_script(f"core.EPISODE_MAX_TIME = {int(self.time_limit * 1000)};")
        if self.seeds is not None:  # seed None: a random seed of the split
            seed = self.seeds[random.randrange(len(self.seeds)) if seed is None else seed % len(self.seeds)]
        self.seed = seed
        obs, _ = self.browser.reset(seed=seed, options={"record_screenshots": False})
        self._see(obs)
        self.t, self.score, self.done = 0, 0.0, False
        return self._obs(), self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        if self.done:
            err = "The episode is over; reset to start another."
            return err, 0.0, True, truncated, self._info(error=err)
        act = self.parse(action)
        if isinstance(act, str):
            err = f"{act} {HELP}"
            return self._obs(f"Invalid action. {err}"), 0.0, False, truncated, self._info(**unparsed_info(err))
        obs, _, done, _, meta = self.browser.step(act)
        if not done:
            self._see(obs)
            return self._obs(), 0.0, False, truncated, self._info()
        self.done = True
        if meta["reason"] == "timed out":
            note = "[The task's time ran out. The episode was ended.]"
            return note, 0.0, False, True, self._info(timed_out=True)
        reward = float(meta["raw_reward"])
        self.score += reward
        won = reward > 0
        note = f"[Episode over: {'success' if won else 'failure'}, reward {reward:.2f}.]"
        return note, reward, True, truncated, self._info(won=won)

    def oracle_action(self) -> str | None:
        solver = ORACLES.get(self.task)
        return None if solver is None or self.done else solver(self)

    def close(self) -> None:
        """Quit Chromium and stop chromedriver, and wait until their processes are gone."""
        browser, self.browser = getattr(self, "browser", None), None
        driver = getattr(getattr(browser, "instance", None), "driver", None)
        if driver is None:
            return
        group, wait = driver.service.process.pid, 0.0
        if driver.service.process.poll() is None:  # after a crash that killed chromedriver, only we stop Chromium
            try:
                driver.quit()
                wait = 5.0
            except Exception:  # Chromium is gone or hung
                pass
        end_group(group, wait)


def _group_alive(group: int) -> bool:
    """Whether any process of this process group is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if fields[2] == str(group) and fields[0] != "Z":
            return True
    return False


def end_group(group: int, wait: float = 5.0) -> None:
    """Wait for the browser's processes to exit (quit returns before they all have), then kill what is left:
    after a crash, Chromium outlives its driver."""
    deadline = time.monotonic() + wait
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:  # the group is gone
        pass


# ---- oracles: scripted solvers that read the instruction and the page ---------------------------------
def _find(env: MiniWoBWebEnv, tags: set[str], text: str | None = None) -> list[dict]:
    return [el for el in env.els.values() if el["tag"] in tags and (text is None or el["text"] == text)]


def _click(tags: set[str], text: str | None = None):
    """Click the first element with one of `tags` and this text (by default the instruction's target)."""
    def solve(env: MiniWoBWebEnv) -> str | None:
        hits = _find(env, tags, text or env.fields.get("target"))
        return f"click [{hits[0]['ref']}]" if hits else None
    return solve


def _fill_then_submit(field_of: dict[str, str], button: str):
    """Type each field's value into its input (by element id), then click the button."""
    def solve(env: MiniWoBWebEnv) -> str | None:
        for field, input_id in field_of.items():
            box = next((el for el in env.els.values() if el["id"] == input_id), None)
            if box is not None and not box["value"]:
                return f'type [{box["ref"]}] "{env.fields[field]}"'
        return _click({"button"}, button)(env)
    return solve


def _focus_text(env: MiniWoBWebEnv) -> str | None:
    boxes = _find(env, {"input_text"})
    nth = int(env.fields.get("target", "1")) - 1
    return f"click [{boxes[nth]['ref']}]" if 0 <= nth < len(boxes) else None


def _click_checkboxes(env: MiniWoBWebEnv) -> str | None:
    wanted = {v for k, v in env.fields.items() if k.startswith("target")}
    for box in _find(env, {"input_checkbox"}):
        label = " ".join(env.els[k]["text"] for k in env.els[box["parent"]]["kids"] if env.els[k]["tag"] == "t")
        if (label in wanted) != (box["value"] == "True"):
            return f"click [{box['ref']}]"
    return _click({"button"}, "Submit")(env)


ORACLES = {
    "click-test": _click({"button"}),  # no target: the only button
    "click-button": _click({"button"}),
    "click-link": _click({"a", "span"}),
    "click-dialog": _click({"button"}, "Close"),
    "enter-text": _fill_then_submit({"target": "tt"}, "Submit"),
    "login-user": _fill_then_submit({"username": "username", "password": "password"}, "Login"),
    "focus-text": _focus_text,
    "focus-text-2": _focus_text,
    "click-checkboxes": _click_checkboxes,
}


def check(name: str) -> None:
    names = task_names()
    if name not in names:
        raise ValueError(f"unknown env id 'miniwob:{name}': miniwob tasks are {', '.join(names)}")


def make(name: str, max_steps: int | None = None, domain: str = "web", **kwargs: Any) -> MiniWoBWebEnv:
    return MiniWoBWebEnv(name, max_steps=max_steps, domain=domain, **kwargs)
