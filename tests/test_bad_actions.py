"""Actions no parser expects (issue 18): nesting deeper than the JSON parser goes and numbers of thousands of digits
are error observations from the env, never an exception out of it; the env stays usable."""

import json

import pytest

from agentworld.envs import make_env
from agentworld.envs import bfcl, search

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = '{"answer": ' + "9" * 5000 + "}"
DEEP_ARGS = json.dumps({"tool": "read_query", "arguments": "[" * 50_000})
DEEP_CALL = "f(" + "[" * 100_000 + ")"


@pytest.mark.parametrize("action", [DEEP, HUGE, DEEP_ARGS], ids=["deep", "huge", "deep-args"])
def test_search_and_bfcl_parsers_answer_with_an_error(action):
    with pytest.raises(ValueError):
        search.parse_action(action)
    assert isinstance(bfcl.parse_action(action, {"f": ["x"]}), str)


def test_a_python_call_nested_too_deep_is_an_error():
    assert isinstance(bfcl.parse_action(DEEP_CALL, {"f": ["x"]}), str)


def test_the_real_mcp_and_search_envs_answer_them_and_go_on():
    pytest.importorskip("mcp")
    for env_id, ok in (("mcp:sqlite-train", json.dumps({"tool": "list_tables", "arguments": {}})),
                       ("search:train", search.call("web_search", queries=["with statement"]))):
        env = make_env(env_id, max_steps=20)
        try:
            env.reset(seed=0)
            for bad in (DEEP, HUGE, DEEP_ARGS):
                obs, r, term, trunc, info = env.step(bad)
                assert info.get("unparsed") and r == 0.0 and not term and not trunc, (env_id, obs[:80])
            assert env.crashes == 0
            obs, r, term, trunc, info = env.step(ok)
            assert not info.get("error"), obs[:200]
        finally:
            env.close()


def test_overrides_may_follow_options():
    from agentworld.cli import _parse

    args = _parse(["serve", "experiments/quickstart.yaml", "--model", "m", "serve.port=8001"])
    assert (args.model, args.overrides) == ("m", ["serve.port=8001"])
    with pytest.raises(SystemExit):
        _parse(["serve", "experiments/quickstart.yaml", "--modle", "m"])
