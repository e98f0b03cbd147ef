"""EngineActor: one inference engine (hf or vllm) as a Ray actor that several rollout actors share, and
RemoteEngine, the engine interface over it (agentworld/models/engine.py), which is what those actors hold.

Calls take turns on the engine. The actor keeps its weights current itself: `pull` fetches the newest version
from the weight sync once for all its users, and with the `broadcast` sync it subscribes and the learner pushes
each version to it."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import ray

from agentworld.models.chat import render_chat

if TYPE_CHECKING:
    from agentworld.config import Runtime


@ray.remote(max_concurrency=4)
class EngineActor:
    """The `runtime.engine.inference` engine over the checkpoint at `path`, holding weight version `version`, and
    serving the weights `name` (policy/<arm> or wm), which it keeps current through `runtime`'s weight sync."""

    def __init__(self, name: str, path: str, seed: int, version: int, runtime: Runtime, registry):
        import torch

        torch.set_num_threads(runtime.ray.torch_threads)
        from agentworld.models.engine import make_engine
        from learners.weight_sync import make_weight_sync

        self.name = name
        # in model.dtype, on the GPU Ray gave this actor when engine.num_gpus > 0 (runtime.device)
        self.engine = make_engine(runtime.engine.inference, path, seed, version, runtime.engine.vllm, runtime.dtype,
                                  runtime.device)
        self.sync = make_weight_sync(runtime, registry)
        self.lock, self.pulling = threading.Lock(), threading.Lock()
        if self.sync.pushes:  # the learner sends each version here (receive_broadcast)
            ray.get(registry.subscribe.remote(self.name, ray.get_runtime_context().current_actor))

    def generate(self, *args, **kwargs):
        with self.lock:
            return self.engine.version, self.engine.generate(*args, **kwargs)

    def score_choices(self, *args, **kwargs):
        with self.lock:
            return self.engine.version, self.engine.score_choices(*args, **kwargs)

    def load_weights(self, weights, version: int) -> int:
        with self.lock:
            self.engine.load_weights(weights, version)
            return version

    def pull(self) -> int:
        """Load the newest published version, if newer; returns the version held."""
        with self.pulling:
            version, weights = self.sync.fetch(self.name, self.engine.version)
            if weights is not None:
                self.load_weights(weights, version)
            return self.engine.version

    def receive_broadcast(self, version: int, *group) -> None:
        from learners.broadcast_sync import receive_broadcast

        weights = receive_broadcast(*group)  # outside the lock: generation goes on while the bytes arrive
        self.load_weights(weights, version)

    def version(self) -> int:
        return self.engine.version


class RemoteEngine:
    """The engine interface over an EngineActor. `version` is the version of the weights that produced the last
    reply, so rows record what really generated them even when the shared engine moves on."""

    def __init__(self, actor, path: str):
        from transformers import AutoTokenizer

        self.actor = actor
        self.tok = AutoTokenizer.from_pretrained(path)  # rendering stays local: one call per batch, not per prompt
        self.version = ray.get(actor.version.remote())

    def render(self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool | None = None) -> str:
        return render_chat(self.tok, messages, add_generation_prompt, enable_thinking)

    def generate(self, *args, **kwargs):
        self.version, gens = ray.get(self.actor.generate.remote(*args, **kwargs))
        return gens

    def score_choices(self, *args, **kwargs):
        self.version, scores = ray.get(self.actor.score_choices.remote(*args, **kwargs))
        return scores

    def load_weights(self, weights, version: int) -> None:
        self.version = ray.get(self.actor.load_weights.remote(weights, version))

    def pull(self) -> None:
        self.version = ray.get(self.actor.pull.remote())
