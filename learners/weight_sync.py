"""Weight sync: learners publish versioned weights, rollout actors and simulators pull them.

The default strategy is the Ray object store: one `ray.put` per version, and a small registry actor
hands the reference to every reader. The registry is also where actors read the learner's version
for admission control."""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class WeightRegistry:
    """name -> (version, [ObjectRef]); the ref sits in a list so Ray passes it through un-fetched."""

    def __init__(self):
        self.entries: dict[str, tuple[int, list]] = {}

    def publish(self, name: str, version: int, refs: list) -> None:
        if version > self.entries.get(name, (-1, None))[0]:
            self.entries[name] = (version, refs)

    def latest(self, name: str, have: int = -1) -> tuple[int, list | None]:
        version, refs = self.entries.get(name, (-1, None))
        return (version, refs) if version > have else (version, None)

    def version(self, name: str) -> int:
        return self.entries.get(name, (-1, None))[0]


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
