from agentworld.worldmodel.judge import normalized_total, parse_judgment
from agentworld.worldmodel.prompt import render_state
from agentworld.worldmodel.rewards import RewardWeights, field_f1, hybrid_reward, line_f1, rule_scores


def test_rule_scores_of_a_perfect_and_a_wrong_reply():
    ref = "S[F]FF\nFHFH"
    good = rule_scores(render_state(ref, 0, False), ref, 0.0, False)
    assert good["format"] == good["exact"] == good["edit"] == good["line_f1"] == good["outcome"] == 1.0
    assert good["field_f1"] is None  # not a JSON state
    bad = rule_scores(render_state("[S]FFF\nFHFH", 1, True), ref, 0.0, False)
    assert bad["exact"] == 0 and bad["line_f1"] == 0.5 and bad["outcome"] == 0.0 and 0 < bad["edit"] < 1


def test_format_gate_zeroes_a_reply_without_a_block():
    w = RewardWeights()
    assert hybrid_reward(rule_scores("S[F]FF", "S[F]FF"), w) == 0.0
    assert hybrid_reward(rule_scores(render_state("S[F]FF", 0, False), "S[F]FF"), w) == 1.0


def test_length_penalty_and_rubric_floor():
    w = RewardWeights(rubric=1.0, rubric_floor=0.9)
    ref = "abc"
    padded = rule_scores(render_state("abc" + "x" * 30, 0, False), ref)
    assert hybrid_reward(padded, w) < 0  # padding costs more than its partial similarity earns
    exact = rule_scores(render_state(ref, 0, False), ref)
    assert hybrid_reward(exact, w, rubric=0.5) == 1.5
    poor = rule_scores(render_state("zzz", 0, False), ref)
    assert hybrid_reward(poor, w, rubric=1.0) == hybrid_reward(poor, w)  # below the floor the judge is ignored


def test_line_and_field_f1():
    assert line_f1("a\nb\nc", "a\nb\nd") == 2 / 3
    assert field_f1('{"a": 1, "b": {"c": 2}}', '{"a": 1, "b": {"c": 3}}') == 0.5
    assert field_f1("not json", '{"a": 1}') == 0.0


def test_judge_parser_well_formed_and_malformed():
    good = 'Sure.<scores>{"format": 5, "factuality": 4, "consistency": 4, "realism": 3, "quality": 4}</scores> done'
    s = parse_judgment(good)
    assert s["factuality"] == 4 and normalized_total(s) == 75.0
    bare = 'I think {"format": 1, "factuality": 1, "consistency": 1, "realism": 1, "quality": 1} overall'
    assert normalized_total(parse_judgment(bare)) == 0.0
    assert parse_judgment("<scores>{not json}</scores>") is None
    assert parse_judgment('<scores>{"format": 9, "factuality": 1, "consistency": 1, "realism": 1, "quality": 1}</scores>') is None
    assert parse_judgment('{"format": 5}') is None and parse_judgment("") is None
    two = good + '<scores>{"format": 1, "factuality": 1, "consistency": 1, "realism": 1, "quality": 2}</scores>'
    assert parse_judgment(two)["quality"] == 2  # the last block wins


def test_field_f1_reads_python_literals_as_mcp_sqlite_prints_them():
    ref = "[{'cid': 0, 'name': 'id', 'dflt_value': None}, {'cid': 1, 'name': 'city', 'dflt_value': None}]"
    assert field_f1(ref, ref) == 1.0
    assert 0 < field_f1("[{'cid': 0, 'name': 'id', 'dflt_value': None}]", ref) < 1
    assert field_f1("Error: no such table", ref) == 0.0
    assert field_f1(ref, "Error: no such table") is None
    assert field_f1("[1, 2]", "(1, 2)") is None  # a tuple is not what a tool prints
