"""`agentworld collect` writes real trajectories in the replay schema, across the paper's domains."""

import subprocess
import sys
from pathlib import Path

import pytest

from agentworld.replay import ReplayStore
from agentworld.schema import TRAJECTORY_SCHEMA

ROOT = Path(__file__).resolve().parents[1]

# (env id, policy): one real env per domain, the oracle where the env has one
DOMAINS = [
    ("gymnasium:FrozenLake-v1", "random"),  # gridworld
    ("terminal:count-lines", "oracle"),  # terminal
    ("swe:shlex", "oracle"),  # swe
    ("scienceworld:lifespan-longest-lived", "oracle"),  # science
    ("mcp:sqlite-query", "oracle"),  # mcp
    ("search:python-docs", "oracle"),  # search
    ("miniwob:click-button", "oracle"),  # web
    ("twx:coin", "oracle"),  # textgame
    ("babyai:GoToLocal", "oracle"),  # embodied
]


def collect(env_id, policy, out, episodes=2):
    return subprocess.run([sys.executable, "-m", "agentworld", "collect", "--env", env_id, "--policy", policy,
                           "--episodes", str(episodes), "--out", str(out), "--max-steps", "60"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_collect_writes_arrow_trajectories_from_many_domains(tmp_path):
    out = tmp_path / "replay"
    for env_id, policy in DOMAINS:
        r = collect(env_id, policy, out)
        assert r.returncode == 0, f"{env_id}: {r.stdout[-1500:]}{r.stderr[-1500:]}"
        assert "wrote" in r.stdout
    table = ReplayStore(str(out)).sample()
    assert table.schema.equals(TRAJECTORY_SCHEMA)
    domains = set(table["domain"].to_pylist())
    assert len(domains) >= 6, domains
    assert set(table["env_id"].to_pylist()) == {e for e, _ in DOMAINS}
    assert set(table["source"].to_pylist()) == {"real"}
    rows = table.to_pylist()
    for env_id, policy in DOMAINS:  # the oracles solve their tasks
        if policy == "oracle":
            assert any(r["env_id"] == env_id and r["reward"] > 0 and r["terminated"] for r in rows), env_id


def test_collect_rejects_bad_input_with_one_line(tmp_path):
    r = collect("nosuch:env", "random", tmp_path / "x")
    assert r.returncode == 2 and "unknown env id" in r.stderr and "Traceback" not in r.stderr
    r = collect("gymnasium:FrozenLake-v1", str(tmp_path / "no-model"), tmp_path / "x")
    assert r.returncode == 2 and "--policy must be" in r.stderr
