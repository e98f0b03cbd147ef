"""Think traces: per-domain describers, the teacher's rationales cached per transition, and a teacher that fails, times
out or answers without a rationale counted and skipped, never fatal."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agentworld.config import ConfigError, WMThinkConfig, load_config, think_tokens
from agentworld.envs import make_env
from agentworld.models.tiny import render_chatml
from agentworld.worldmodel.data import wm_examples
from agentworld.worldmodel.prompt import parse_prediction
from agentworld.worldmodel.think import (Cache, describe, rationale_fn, teacher_rationales, think_block, transition_key,
                                         usable)

QUICKSTART = str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")


def row(obs, action, next_obs, domain, reward=0.0, done=False, env_id="e"):
    return dict(env_id=env_id, domain=domain, obs=obs, action=action, next_obs=next_obs, reward=reward,
                terminated=done)


def played(env_id, actions, seed=0, **kwargs):
    """Real rows of `env_id` under `actions`."""
    env = make_env(env_id, **kwargs)
    obs, _ = env.reset(seed=seed)
    out = []
    for a in actions:
        nxt, r, term, _, _ = env.step(a)
        out.append(row(obs, a, nxt, env.domain, r, term, env_id))
        obs = nxt
    env.close()
    return out


def test_grid_describer_says_where_the_agent_goes_on_real_cliffwalking():
    up, right, down = played("gymnasium:CliffWalking-v1", ["up", "right", "down"])
    assert describe(up).startswith("The agent is at row 3, column 0. Moving up takes it to row 2, column 0.")
    assert "Reward -1; the episode goes on." in describe(up)
    assert "Moving right takes it to row 2, column 1" in describe(right)
    # down from (2, 1) is the cliff: the agent is sent back to the start, not to (3, 1)
    assert "does not take it to row 3, column 1: it ends at row 3, column 0" in describe(down)
    assert "Reward -100" in describe(down)


def test_grid_describer_on_frozenlake_names_the_cell_and_a_blocked_move():
    left, right = played("gymnasium:FrozenLake-v1", ["left", "right"], is_slippery=False)
    assert "does not move it: it stays at row 0, column 0" in describe(left)
    assert "takes it to row 0, column 1 (F)" in describe(right)
    slipped = played("gymnasium:FrozenLake-v1", ["right"], seed=0, is_slippery=True)[0]
    assert "Moving right" in describe(slipped)  # wherever the ice takes it, said as it is


def test_terminal_mcp_and_search_describers_on_real_transitions():
    shell = row("Task: x\n\n~$", "printf 'a\\nb\\n'", "Task: x\n\n~$ printf 'a\\nb\\n'\na\nb\n~$", "terminal")
    assert describe(shell).startswith("The shell runs `printf 'a\\nb\\n'`. It prints 2 line(s), starting with \"a\".")
    quiet = row("~$", "cd /tmp", "~$ cd /tmp\n~$", "terminal")
    assert "It prints nothing" in describe(quiet)
    listed = row("Task", '{"tool": "read_query", "arguments": {"query": "SELECT 1"}}', "[{'a': 1}, {'a': 2}]", "mcp")
    assert "The call is read_query(query=\"SELECT 1\"). It returns a list of 2 item(s)." in describe(listed)
    failed = row("Task", '{"tool": "read_query", "arguments": {}}', "Error: no such table: x", "mcp")
    assert "The tool fails" in describe(failed)
    assert "not a JSON tool call" in describe(row("Task", "hello", "Error", "mcp"))
    search = played("search:train", ['{"tool": "web_search", "arguments": {"queries": ["python version"]}}'])[0]
    assert "The engine searches for \"python version\" and lists" in describe(search)
    answer = row("q", '{"answer": "3.11"}', "Correct.", "search", 1.0, True)
    assert describe(answer).startswith("The agent answers \"3.11\", which is right.")
    assert "the episode ends" in describe(answer)
    other = row("You are in a room.", "go north", "You are in a room.\nYou see a coin.", "textgame")
    assert "1 line(s) of the observation are new, starting with \"You see a coin.\"" in describe(other)


def test_think_blocks_lead_the_targets_and_parse_away():
    rows = played("gymnasium:CliffWalking-v1", ["up", "right"])
    ex = wm_examples([rows], lambda m: render_chatml(m, True), think=describe)
    assert ex[0].target.startswith("<think>\nThe agent is at row 3, column 0.")
    assert parse_prediction(ex[0].target).obs == rows[0]["next_obs"]
    empty = wm_examples([rows], lambda m: render_chatml(m, True), think=lambda r: None)
    assert empty[0].target.startswith(think_block(""))
    assert not wm_examples([rows], lambda m: render_chatml(m, True))[0].target.startswith("<think>")


def test_a_usable_rationale_is_reasoning():
    r = row("s", "a", "a long next observation that a lazy teacher copies whole", "textgame")
    assert usable("<think>The door opens and the room is lit.</think>", r) == "The door opens and the room is lit."
    assert usable("", r) is None and usable("ok then", r) is None
    assert usable("<predicted_observation>x</predicted_observation> and more words", r) is None
    assert usable("It shows: a long next observation that a lazy teacher copies whole", r) is None


def test_the_cache_survives_a_torn_line(tmp_path):
    c = Cache(tmp_path / "c.jsonl")
    c.add("k1", "one")
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "k2", "te')
    assert Cache(tmp_path / "c.jsonl").items == {"k1": "one"}


class Teacher(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint whose answer depends on the action in the prompt: `good` reasons, `junk`
    answers without a rationale, `boom` is an HTTP 500, `slow` answers after the client's timeout."""
    calls: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        Teacher.calls.append(user)
        action = user.split("Action: ", 1)[1].split("\n", 1)[0]
        if action == "boom":
            self.send_response(500)
            self.end_headers()
            return
        if action == "slow":
            time.sleep(2)
        text = {"junk": "ok"}.get(action, f"The action {action} changes the state as the rules say.")
        data = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # `slow`: the client gave up
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def teacher():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Teacher.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_teacher_rationales_are_cached_and_failures_counted_and_skipped(teacher, tmp_path):
    rows = [row(f"s{i}", a, f"s{i + 1}", "textgame") for i, a in enumerate(["good", "junk", "boom", "slow", "good"])]
    cfg = WMThinkConfig(source="teacher", endpoint=teacher, model="t", timeout_s=0.5, workers=2)
    found, stats = teacher_rationales(rows, cfg, str(tmp_path / "cache.jsonl"))
    assert stats["asked"] == 5 and stats["written"] == 2 and stats["unusable"] == 1 and stats["failed"] == 2
    assert "HTTP 500" in stats["first_error"] or "timed out" in stats["first_error"]
    assert set(found) == {transition_key(rows[0], "t"), transition_key(rows[4], "t")}
    # two workers ask in any order: the first row's request is among the calls
    assert any("Action: good" in c and "True next state:\ns1" in c for c in Teacher.calls)
    # a rerun asks only for what is not cached yet
    Teacher.calls = []
    fn, again = rationale_fn(rows, cfg, str(tmp_path / "cache.jsonl"))
    assert again["cached"] == 2 and again["asked"] == 3 and len(Teacher.calls) == 3
    assert fn(rows[0]) == "The action good changes the state as the rules say." and fn(rows[1]) == ""


def test_an_unreachable_teacher_is_counted_not_fatal(tmp_path):
    rows = [row("s", "a", "t", "textgame")]
    cfg = WMThinkConfig(source="teacher", endpoint="http://127.0.0.1:9/v1", timeout_s=1)
    found, stats = teacher_rationales(rows, cfg, str(tmp_path / "c.jsonl"))
    assert found == {} and stats["failed"] == 1 and "unreachable" in stats["first_error"]


def test_think_config_is_checked_and_budgets_grow():
    with pytest.raises(ConfigError, match="world_model.think.source"):
        load_config(QUICKSTART, ["world_model.think.source=dream"])
    with pytest.raises(ConfigError, match="world_model.think.endpoint"):
        load_config(QUICKSTART, ["world_model.think.source=teacher"])
    cfg = load_config(QUICKSTART, ["world_model.think.source=describe", "world_model.think.max_tokens=40"])
    assert think_tokens(cfg.world_model.think) == 56 and think_tokens(WMThinkConfig()) == 0
    from agentworld.config import lwm_generation

    assert lwm_generation(cfg.world_model).max_new_tokens == cfg.world_model.generation.max_new_tokens + 56
