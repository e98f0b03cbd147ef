"""A rollout actor's envs leave nothing behind: when the driver retires an actor (a finished data collection, a
shrinking pool, a learner's restart) it closes the envs first, so their servers and sandboxes stop and their scratch
dirs go; `ray.kill` alone left every env's dir in the temp dir. Real Ray, real sandboxed MCP servers."""

import shutil
import tempfile
from pathlib import Path

import pytest
import ray

from actors.rollout import RolloutActor, RolloutSpec, retire
from agentworld.arms.real import Real
from agentworld.config import AgentConfig, ArmConfig, EnvConfig, Runtime, resolve_agent
from agentworld.replay import ReplayService
from learners.weight_sync import WeightRegistry


@pytest.fixture
def tmp_root():
    """A temp dir the sandbox's uid can search (pytest's tmp_path is 0700), as /tmp is."""
    root = Path(tempfile.mkdtemp(prefix="agentworld-test-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def actor_with_tmpdir(root: Path, k: int):
    """A scripted actor of two sqlite envs whose temp dir is `root`/k, so its scratch dirs can be counted."""
    tmp = root / str(k)
    tmp.mkdir(mode=0o711)
    env = EnvConfig(id="mcp:sqlite-query", max_steps=4)
    spec = RolloutSpec(run_id="r", arm=ArmConfig(name="a", source="real", env="db", envs_per_actor=2), kind=Real(),
                       env=env, domain="mcp", agent=resolve_agent(AgentConfig(), "mcp"), runtime=Runtime(), seed=k,
                       policy="random", actor_id=f"a{k}")
    replay = ReplayService.options(num_cpus=0).remote(str(root / f"replay{k}"))
    actor = RolloutActor.options(num_cpus=0, runtime_env={"env_vars": {"TMPDIR": str(tmp)}}).remote(
        spec, replay, WeightRegistry.remote())
    assert ray.get(actor.collect_steps.remote(2)) >= 2
    return actor, tmp


def scratch_dirs(tmp: Path) -> int:
    """An env's scratch dir (its server's log file beside it is counted by the emptiness check below)."""
    return sum(p.is_dir() for p in tmp.glob("agentworld-mcp-*"))


def test_retire_closes_the_envs_and_removes_their_scratch_dirs(ray_local, tmp_root):
    killed, kept = actor_with_tmpdir(tmp_root, 0)
    retired, gone = actor_with_tmpdir(tmp_root, 1)
    assert scratch_dirs(kept) == scratch_dirs(gone) == 2
    ray.kill(killed)  # as before: the dirs stay
    retire([retired])
    assert scratch_dirs(kept) == 2
    assert list(gone.iterdir()) == []
    retire([killed])  # a dead actor is killed as it is, without an error
