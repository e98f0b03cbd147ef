"""Weight sync: learners publish versioned weights, rollout actors and simulators load them in place.

Three strategies behind one interface (`publish`, `fetch`, `version`), chosen by `engine.weight_sync`:
- `object_store` (default): one `ray.put` per version; readers fetch the state dict when a newer one exists;
- `filesystem`: the learner writes each version as safetensors to a directory every node sees; readers get the
  directory and load it (vLLM reloads from it directly);
- `broadcast` (learners/broadcast_sync.py): the learner sends each version to the shared engine actors over a
  collective group, gloo on CPU and NCCL on GPUs.
A small registry actor records each name's latest version (and what readers need to fetch it). It is also where
admission control lives: which rounds of episodes are under way, with which policy version."""

from __future__ import annotations

import shutil
from pathlib import Path

import ray

WEIGHT_SYNCS = ("object_store", "filesystem", "broadcast")


@ray.remote(num_cpus=0)
class WeightRegistry:
    """name -> (version, [ObjectRef or path]); a ref sits in a list so Ray passes it through un-fetched."""

    def __init__(self):
        self.entries: dict[str, tuple[int, list]] = {}
        self.subscribed: dict[str, list] = {}
        self.admit: dict[str, int] = {}  # name -> the version the learner trains towards once its batch is closed
        self.rounds: dict[str, dict[str, int]] = {}  # name -> actor_id -> policy version of its round under way

    def publish(self, name: str, version: int, refs: list) -> None:
        if version > self.entries.get(name, (-1, None))[0]:
            self.entries[name] = (version, refs)

    def latest(self, name: str, have: int = -1) -> tuple[int, list | None]:
        version, refs = self.entries.get(name, (-1, None))
        return (version, refs) if version > have else (version, None)

    def version(self, name: str) -> int:
        return self.entries.get(name, (-1, None))[0]

    # -- broadcast readers --------------------------------------------------------------------------
    def subscribe(self, name: str, actor) -> None:
        self.subscribed.setdefault(name, []).append(actor)

    def subscribers(self, name: str) -> list:
        return list(self.subscribed.get(name, []))

    # -- admission control (actors/rollout.py, learners/agent.py) ------------------------------------
    def begin_round(self, name: str, actor_id: str, version: int, max_staleness: int) -> bool:
        """May an actor start a round with policy `version`? Only if its rows cannot end up more than
        `max_staleness` versions behind the learner version that trains on them."""
        if version < max(self.admit.get(name, 0), self.version(name)) - max_staleness:
            return False
        self.rounds.setdefault(name, {})[actor_id] = version
        return True

    def end_round(self, name: str, actor_id: str) -> None:
        self.rounds.get(name, {}).pop(actor_id, None)

    def close_batch(self, name: str, next_version: int, max_staleness: int) -> bool:
        """The learner is about to train towards `next_version`: from now on no round may start that would
        be too stale for it. True once no round under way is too stale either (rows already in the replay
        then hold every such round's episodes)."""
        self.admit[name] = max(self.admit.get(name, 0), next_version)
        return all(v >= next_version - max_staleness for v in self.rounds.get(name, {}).values())


class ObjectStoreWeightSync:
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


class FilesystemWeightSync:
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


def make_weight_sync(engine: dict | None, registry):
    """The strategy the config's engine section names (None: the object store)."""
    kind = (engine or {}).get("weight_sync", "object_store")
    if kind == "object_store":
        return ObjectStoreWeightSync(registry)
    if kind == "filesystem":
        return FilesystemWeightSync(registry, engine["weights_dir"])
    if kind == "broadcast":
        from learners.broadcast_sync import BroadcastWeightSync

        return BroadcastWeightSync(registry, backend="nccl" if engine.get("num_gpus", 0) > 0 else "gloo")
    raise ValueError(f"unknown weight sync {kind!r} (one of {', '.join(WEIGHT_SYNCS)})")


def pull_weights(engine, sync, name: str) -> None:
    """Bring `engine` to the newest published version of `name`. A shared engine pulls for itself, once for
    all the rollout actors that use it."""
    if hasattr(engine, "pull"):
        engine.pull()
        return
    version, weights = sync.fetch(name, engine.version)
    if weights is not None:
        engine.load_weights(weights, version)
