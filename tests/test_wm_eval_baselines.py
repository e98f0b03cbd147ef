"""`agentworld wm eval` beside its baselines: copy (the previous state) and retrieve (the next state of the
nearest --train prompt), per domain on its main metric, through the CLI against a stub OpenAI endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentworld.cli import main
from agentworld.worldmodel.bench import OBS_PREFIX
from agentworld.worldmodel.evaluate import NO_TRAIN_NOTE, previous_observation

# the stub model's one reply, whatever it is asked: the state ".A."
REPLY = "<predicted_observation>\n.A.\n[reward=0 done=false]\n</predicted_observation>"
SYSTEM = {"gridworld": "You are a world model of a corridor.", "terminal": "You are a world model of a shell."}
TAGGED_ABCD = "<predicted_observation>\nabcd\n[reward=0 done=false]\n</predicted_observation>"


def row(rid, domain, prompts, observations):
    """A bench row predicting its last turn; an observation already in a tagged block is kept as it is."""
    return {"id": rid, "task": f"hand/{domain}", "system_str": SYSTEM[domain], "prompt": prompts,
            "response": [o if o.startswith("<") else f"{OBS_PREFIX}\n{o}" for o in observations],
            "turn_idx": len(prompts)}


# gridworld (exact match): model ".A." right on g2-g4; copy right only on g1, whose state does not change
G1 = row("g1", "gridworld", ["State:\nA..\nAction: left", "Action: left"], ["A..", "A.."])
G2 = row("g2", "gridworld", ["State:\nA..\nAction: right"], [".A."])
G3 = row("g3", "gridworld", ["State:\n..A\nAction: left"], [".A."])
G4 = row("g4", "gridworld", ["go right"], [".A."])  # no previous state: copy predicts ""
# terminal (edit similarity): the model shares no character with any screen; copy 1, 1 and 0.75
K1 = row("k1", "terminal", ["State:\n$ \nAction: ls", "Action: ls"], ["$ ls\nfile", "$ ls\nfile"])
K2 = row("k2", "terminal", ["Action: x", "Action: y"], [TAGGED_ABCD, "abcd"])  # previous state in a tagged block
K3 = row("k3", "terminal", ["State:\nabcd\nAction: x"], ["abce"])
DATA = [G1, G2, G3, G4, K1, K2, K3]
# training rows, gridworld only: twins of every gridworld prompt, right for g1 and g3 (leaks), wrong for g2 and
# g4; and a different transition under g2's id (a leak by id)
TRAIN = [dict(G1, id="t1"), dict(G2, id="t2", response=[f"{OBS_PREFIX}\n..A"]), dict(G3, id="t3"),
         dict(G4, id="t4", response=[f"{OBS_PREFIX}\nx"]),
         row("g2", "gridworld", ["State:\nzzz\nAction: jump"], ["zzz"])]


class _Fixed(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.asked.append(body["messages"])
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": REPLY}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fixed)
    server.asked = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", server.asked
    server.shutdown()
    server.server_close()
    thread.join()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wm_eval(tmp_path, url, *extra):
    data = write_jsonl(tmp_path / "data.jsonl", DATA)
    out = tmp_path / "out"
    code = main(["wm", "eval", "--data", str(data), "--endpoint", url, "--out", str(out), *extra])
    return code, out


def test_previous_observation_is_the_state_the_action_was_taken_in():
    sys_ = {"role": "system", "content": "s"}
    assert previous_observation([sys_, {"role": "user", "content": "State:\nA.\n.B\nAction: up"}]) == "A.\n.B"
    assert previous_observation([sys_, {"role": "user", "content": "State:\n\nAction: up"}]) == ""
    assert previous_observation([sys_, {"role": "user", "content": "open the door"}]) == ""
    chat = [sys_, {"role": "user", "content": "State:\nold\nAction: a"}, {"role": "assistant", "content": TAGGED_ABCD},
            {"role": "user", "content": "Action: b"}]
    assert previous_observation(chat) == "abcd"  # the block, without its outcome line
    chat[2] = {"role": "assistant", "content": f"{OBS_PREFIX}\n  indented"}
    assert previous_observation(chat) == "  indented"  # the bench prefix line off, the state as it is


@pytest.mark.parametrize("history_turns", [None, 1])
def test_model_copy_and_retrieve_per_domain(tmp_path, endpoint, capsys, history_turns):
    url, asked = endpoint
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN)
    extra = ["--train", str(train)] + ([] if history_turns is None else ["--history-turns", str(history_turns)])
    code, out = wm_eval(tmp_path, url, *extra)
    printed = capsys.readouterr().out
    assert code == 0
    assert len(asked) == 1 + len(DATA)  # the ping, then one prediction per row
    scores = json.loads((out / "scores.json").read_text())
    grid, term = scores["main"]["gridworld"], scores["main"]["terminal"]
    assert (grid["metric"], grid["n"], term["metric"], term["n"]) == ("exact_match", 4, "edit_similarity", 3)
    assert (grid["model"], grid["copy"], grid["retrieve"]) == (0.75, 0.25, 0.5)
    assert grid["beats_baselines"] is True
    assert term["model"] == 0.0 and term["copy"] == pytest.approx(2.75 / 3) and term["retrieve"] is None
    assert term["beats_baselines"] is False
    assert scores["domains"]["gridworld"]["exact"] == grid["model"]  # the main table agrees with the model's own
    copy, retrieve = scores["baselines"]["copy"], scores["baselines"]["retrieve"]
    assert copy["n"] == 7 and copy["domains"]["gridworld"]["exact"] == 0.25 and copy["macro"]["format"] is None
    assert copy["domains"]["terminal"]["edit"] == pytest.approx(2.75 / 3)
    assert retrieve["n"] == 4 and set(retrieve["domains"]) == {"gridworld"}  # only where --train has rows
    assert retrieve["domains"]["gridworld"]["exact"] == 0.5
    leak = [line for line in printed.splitlines() if "also in --train" in line]
    assert len(leak) == 1 and leak[0].startswith("warning: 3 of 7 evaluated rows")  # g1, g3 by content, g2 by id
    assert any("no --train rows of domain(s) terminal" in line for line in printed.splitlines())
    assert "main metric per domain: model / copy / retrieve" in printed
    term_line = next(line for line in printed.splitlines() if "terminal" in line and "edit_similarity" in line)
    assert "0.917" in term_line and "-" in term_line.split("0.917")[1] and "no" in term_line


def test_without_train_retrieve_is_omitted_with_one_line(tmp_path, endpoint, capsys):
    url, _ = endpoint
    code, out = wm_eval(tmp_path, url)
    printed = capsys.readouterr().out
    assert code == 0
    assert [line for line in printed.splitlines() if "retrieve" in line and "--train" in line] == [NO_TRAIN_NOTE]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["baselines"]["retrieve"] is None and scores["baseline_notes"] == [NO_TRAIN_NOTE]
    assert all(v["retrieve"] is None for v in scores["main"].values())
    assert scores["main"]["gridworld"]["copy"] == 0.25 and scores["main"]["gridworld"]["beats_baselines"] is True


def test_missing_train_file_exits_2_naming_it_before_predicting(tmp_path, endpoint, capsys):
    url, asked = endpoint
    missing = tmp_path / "no_such_train.jsonl"
    code, out = wm_eval(tmp_path, url, "--train", str(missing))
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("agentworld: error:") and str(missing) in err
    assert asked == [] and not (out / "scores.json").exists()
