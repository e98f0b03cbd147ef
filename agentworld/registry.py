"""Registries: the names a YAML picks for the things users add (arm kinds, losses, engines, weight syncs).

A built-in registers itself where it is defined, with the registry's decorator. The registry imports the
modules that hold its built-ins on its first lookup, so naming a registry costs nothing until it is used,
and `agentworld/config.py` can check names without importing the learners. A user's own entry is one
`register` call (a decorator). Arm kinds and the agent loss are resolved by the driver and handed to the
actors as objects, so registering them in the script that runs the experiment is enough. Engines and weight
syncs are looked up in the actor that builds them: register those in a module the registry imports (its
`modules` list), or in one your actors import."""

from __future__ import annotations

import importlib
from typing import Any, Sequence


class Registry:
    def __init__(self, what: str, modules: Sequence[str] = ()):
        self.what, self.modules = what, tuple(modules)
        self._items: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, thing: Any = None) -> Any:
        """`@REG.register("name")` over a function or class, or `REG.register("name", thing)`."""
        if thing is None:
            def deco(obj: Any) -> Any:
                self._items[name] = obj
                return obj
            return deco
        self._items[name] = thing
        return thing

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for m in self.modules:
                importlib.import_module(m)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._items:
            raise ValueError(f"unknown {self.what} {name!r} (one of {', '.join(self.names())})")
        return self._items[name]


ARM_KINDS = Registry("arm kind", ["agentworld.arms"])
LOSSES = Registry("loss", ["learners.losses"])
WEIGHT_SYNCS = Registry("weight sync", ["learners.weight_sync", "learners.broadcast_sync"])
TRAIN_ENGINES = Registry("training engine", ["learners.torch_engine", "learners.deepspeed_engine"])
INFERENCE_ENGINES = Registry("inference engine", ["agentworld.models.hf_engine", "agentworld.models.vllm_engine"])
