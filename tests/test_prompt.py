from agentworld.worldmodel.fidelity import edit_distance, edit_similarity, fidelity
from agentworld.worldmodel.prompt import OBS_OPEN, build_messages, parse_prediction, render_state, window, wm_system_prompt


def test_render_then_parse_round_trips():
    p = parse_prediction(render_state("S[F]FF\nFHFH", 1.0, True))
    assert (p.obs, p.reward, p.done, p.well_formed) == ("S[F]FF\nFHFH", 1.0, True, True)


def test_parse_drops_think_and_takes_last_block():
    text = ("<think>the agent moves <predicted_observation>\nwrong\n</predicted_observation></think>"
            "<predicted_observation>\nfirst\n[reward=0 done=false]\n</predicted_observation>"
            "<predicted_observation>\nlast\n[reward=0.5 done=true]\n</predicted_observation>")
    p = parse_prediction(text)
    assert (p.obs, p.reward, p.done) == ("last", 0.5, True)


def test_parse_unclosed_think_is_dropped():
    p = parse_prediction("<predicted_observation>\nstate\n[reward=0 done=false]\n</predicted_observation><think>and then")
    assert p.obs == "state" and p.well_formed
    p = parse_prediction("<think>never closed <predicted_observation>x</predicted_observation>")
    assert p.obs == "" and not p.well_formed


def test_parse_without_block_falls_back_to_whole_text():
    p = parse_prediction("just some text")
    assert p.obs == "just some text" and p.reward is None and p.done is None and not p.well_formed


def test_messages_carry_state_in_first_kept_turn():
    obs, acts, replies = ["s0", "s1", "s2"], ["a0", "a1", "a2"], ["r0", "r1"]
    state, turns = window(obs, acts, replies, history_turns=2)
    assert state == "s1" and turns == [("a1", "r1"), ("a2", None)]
    msgs = build_messages(wm_system_prompt("gymnasium:X", "grid"), state, turns)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"] == "State:\ns1\nAction: a1" and msgs[3]["content"] == "Action: a2"
    state, turns = window(obs, acts, replies, history_turns=1)
    assert state == "s2" and turns == [("a2", None)]


def test_a_stateful_domain_keeps_the_task_when_turns_are_dropped():
    obs = ["Task: count the lines of log.txt.\nYou are at a bash prompt.\n\n~$", "~$ ls\nlog.txt\n~$", "~$ wc -l log.txt\n3\n~$"]
    acts, replies = ["ls", "wc -l log.txt", "echo 3 > out"], ["r0", "r1"]
    state, turns = window(obs, acts, replies, history_turns=2, keep_task=True)
    assert state == "Task: count the lines of log.txt.\nYou are at a bash prompt.\n[1 earlier step(s) not shown]\n" + obs[1]
    assert turns == [("wc -l log.txt", "r1"), ("echo 3 > out", None)]
    assert window(obs, acts, replies, history_turns=3, keep_task=True)[0] == obs[0]  # nothing dropped: as it was
    assert window(obs, acts, replies, history_turns=2)[0] == obs[1]  # grid worlds: the state is the whole story


def test_fidelity_metrics():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_similarity("abc", "abc") == 1.0 and edit_similarity("", "") == 1.0
    preds = [parse_prediction(render_state("ab", 0, False)), parse_prediction(render_state("xb", 1, True))]
    f = fidelity(preds, [("ab", 0.0, False), ("ab", 0.0, True)])
    assert f["exact_match"] == 0.5 and f["edit_similarity"] == 0.75 and f["outcome_accuracy"] == 0.5 and f["n"] == 2


def test_trailing_text_or_repeated_blocks_are_not_well_formed():
    good = render_state("s", 0, False)
    assert parse_prediction(good + "\n").well_formed
    assert not parse_prediction(good + "[reward=0 done=true]\n</predicted_observation>").well_formed
    assert not parse_prediction(good + good).well_formed
    assert not parse_prediction("<think>\n</think>\n</think>\n" + good).well_formed
    assert not parse_prediction(OBS_OPEN + "\n" + good).well_formed


def test_each_tool_domain_gets_its_own_note_and_grids_keep_the_plain_instruction():
    from agentworld.worldmodel.prompt import DOMAIN_NOTES, WM_SYSTEM

    grid = wm_system_prompt("gymnasium:FrozenLake-v1", "gridworld")
    assert grid == WM_SYSTEM.format(env_id="gymnasium:FrozenLake-v1", domain="gridworld", open=OBS_OPEN,
                                    close="</predicted_observation>")
    for domain in ("terminal", "mcp", "search", "swe", "web"):
        assert DOMAIN_NOTES[domain] in wm_system_prompt(f"x:{domain}", domain)
    mine = wm_system_prompt("mcp:sqlite-train", "mcp", "timeout", notes={"mcp": "A SQLite server."})
    assert "A SQLite server." in mine and DOMAIN_NOTES["mcp"] not in mine and mine.endswith("Control: timeout")


def test_mcp_keeps_its_tools_and_call_format_when_turns_are_dropped():
    first = ('Task: how many orders are there?\n\nTools:\n- read_query: Run a SELECT input={"required":["query"]}\n'
             '- list_tables: List the tables input={}\n\nAct with one JSON tool call per step: {"tool": NAME, ...}.')
    obs, acts, replies = [first, "[{'name': 'orders'}]", "[{'n': 30}]"], ["a0", "a1", "a2"], ["r0", "r1"]
    state, _ = window(obs, acts, replies, history_turns=1, keep_task=True, domain="mcp")
    assert state == f"{first}\n[2 earlier step(s) not shown]\n{obs[2]}"  # the task, every tool and how to call them
    state, _ = window(obs, acts, replies, history_turns=1, keep_task=True, domain="terminal")
    assert state == "Task: how many orders are there?\n[2 earlier step(s) not shown]\n" + obs[2]  # others: as before
