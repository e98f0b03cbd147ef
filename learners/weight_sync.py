"""Weight sync: learners publish versioned weights, rollout actors and simulators load them in place.

Three strategies behind one interface (`WeightSync`: `publish`, `fetch`, `version`), registered in WEIGHT_SYNCS
(agentworld/registry.py) as a builder `build(runtime, registry) -> WeightSync` and chosen by `engine.weight_sync`:
- `object_store` (default): one `ray.put` per version; readers fetch the state dict when a newer one exists;
- `filesystem`: the learner writes each version as safetensors to a directory every node sees; readers get the
  directory and load it (vLLM reloads from it directly);
- `broadcast` (learners/broadcast_sync.py): the learner sends each version to the shared engine actors over a
  collective group, gloo on CPU and NCCL on GPUs.
A small registry actor records each name's latest version (and what readers need to fetch it). It also holds
admission control (learners/admission.py): which rounds of episodes are under way, with which policy version."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import ray

from agentworld.registry import WEIGHT_SYNCS
from learners.admission import Admission

if TYPE_CHECKING:
    from agentworld.config import Runtime


class WeightSync(Protocol):
    """How a name's weight versions go from its learner to its readers."""

    # True: `publish` sends each version to the engine actors that subscribed (actors/engine_actor.py), which
    # then hold it without fetching; False: readers fetch
    pushes: bool = False

    def publish(self, name: str, version: int, state_dict: dict) -> None: ...

    def fetch(self, name: str, have: int) -> tuple[int, dict | str | None]:
        """(newest version, its weights if newer than `have` else None): a state dict or a checkpoint dir."""
        ...

    def version(self, name: str) -> int: ...


@ray.remote(num_cpus=0)
class WeightRegistry:
    """name -> (version, [ObjectRef or path]); a ref sits in a list so Ray passes it through un-fetched."""

    def __init__(self):
        self.entries: dict[str, tuple[int, list]] = {}
        self.subscribed: dict[str, list] = {}
        self.admission = Admission()

    def publish(self, name: str, version: int, refs: list) -> None:
        if version > self.entries.get(name, (-1, None))[0]:
            self.entries[name] = (version, refs)

    def latest(self, name: str, have: int = -1) -> tuple[int, list | None]:
        version, refs = self.entries.get(name, (-1, None))
        return (version, refs) if version > have else (version, None)

    def version(self, name: str) -> int:
        return self.entries.get(name, (-1, None))[0]

    def forget(self, name: str) -> None:
        """A learner restarting from a checkpoint: its later versions and its actors' rounds are of a lost timeline."""
        self.entries.pop(name, None)
        self.subscribed.pop(name, None)
        self.admission.admit.pop(name, None)
        self.admission.rounds.pop(name, None)

    # -- broadcast readers --------------------------------------------------------------------------
    def subscribe(self, name: str, actor) -> None:
        self.subscribed.setdefault(name, []).append(actor)

    def subscribers(self, name: str) -> list:
        return list(self.subscribed.get(name, []))

    # -- admission control (learners/admission.py), called by actors/rollout.py and learners/agent.py ------
    def begin_round(self, name: str, actor_id: str, version: int, max_staleness: int) -> bool:
        return self.admission.begin_round(name, actor_id, version, max_staleness, self.version(name))

    def end_round(self, name: str, actor_id: str) -> None:
        self.admission.end_round(name, actor_id)

    def close_batch(self, name: str, next_version: int, max_staleness: int) -> bool:
        return self.admission.close_batch(name, next_version, max_staleness)


class ObjectStoreWeightSync(WeightSync):
    """Publish with one `ray.put`; readers fetch only when a newer version exists."""

    def __init__(self, registry):
        self.registry = registry

    def publish(self, name: str, version: int, state_dict: dict) -> None:
        ref = ray.put({k: v.detach().cpu() for k, v in state_dict.items()})
        ray.get(self.registry.publish.remote(name, version, [ref]))

    def fetch(self, name: str, have: int) -> tuple[int, dict | None]:
        version, refs = ray.get(self.registry.latest.remote(name, have))
        return version, (ray.get(refs[0]) if refs else None)

    def version(self, name: str) -> int:
        return ray.get(self.registry.version.remote(name))


class FilesystemWeightSync(WeightSync):
    """Publish writes `root/<name>/v<version>/model.safetensors` (complete before it is announced); readers get
    that directory. The newest `keep` versions stay on disk: readers lag by at most a few versions."""

    def __init__(self, registry, root: str, keep: int = 4):
        self.registry, self.root, self.keep = registry, Path(root), keep

    def publish(self, name: str, version: int, state_dict: dict) -> None:
        from safetensors.torch import save_file

        base = self.root / name.replace("/", "--")
        final, tmp = base / f"v{version}", base / f".v{version}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        # clone: tied weights share storage, which safetensors refuses to write twice
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, str(tmp / "model.safetensors"))
        shutil.rmtree(final, ignore_errors=True)  # a rerun of the run dir counts versions from 1 again
        tmp.rename(final)
        ray.get(self.registry.publish.remote(name, version, [str(final)]))
        versions = sorted((int(p.name[1:]) for p in base.glob("v*")), reverse=True)
        for old in versions[self.keep:]:
            shutil.rmtree(base / f"v{old}", ignore_errors=True)

    def fetch(self, name: str, have: int) -> tuple[int, str | None]:
        version, refs = ray.get(self.registry.latest.remote(name, have))
        return version, (refs[0] if refs else None)

    def version(self, name: str) -> int:
        return ray.get(self.registry.version.remote(name))


WEIGHT_SYNCS.register("object_store", lambda runtime, registry: ObjectStoreWeightSync(registry))
WEIGHT_SYNCS.register("filesystem", lambda runtime, registry: FilesystemWeightSync(registry, runtime.weights_dir))


def make_weight_sync(runtime: Runtime | None, registry) -> WeightSync:
    """The strategy `runtime.engine.weight_sync` names (None: every default, so the object store)."""
    from agentworld.config import Runtime

    runtime = runtime or Runtime()
    return WEIGHT_SYNCS.get(runtime.engine.weight_sync)(runtime, registry)


def pull_weights(engine, sync, name: str) -> None:
    """Bring `engine` to the newest published version of `name`. A shared engine pulls for itself, once for
    all the rollout actors that use it."""
    if hasattr(engine, "pull"):
        engine.pull()
        return
    version, weights = sync.fetch(name, engine.version)
    if weights is not None:
        engine.load_weights(weights, version)
