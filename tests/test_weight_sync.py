"""Weight sync strategies on real Ray with real engines: the object store, a shared directory and a gloo broadcast
to shared engine actors all deliver the same weights, and the registry's admission control bounds staleness."""

import pytest
import ray
import torch

from actors.engine_actor import EngineActor, RemoteEngine
from agentworld.config import EngineConfig, Runtime
from agentworld.models.engine import make_engine
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from learners.weight_sync import FilesystemWeightSync, ObjectStoreWeightSync, WeightRegistry, make_weight_sync

PROMPTS = [render_chatml([{"role": "user", "content": f"Observation:\n[S]FF{i}"}], True) for i in (1, 2)]
CHOICES = [["left", "down"], ["up", "right"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(PROMPTS * 20 + ["left down up right"] * 20, 300, path)
    build_tiny_model(tok, path)
    return str(path)


def perturbed(engine, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in engine.model.state_dict().items()}


def test_object_store_and_filesystem_deliver_the_same_weights(ray_local, tiny, tmp_path):
    registry = WeightRegistry.remote()
    ref = make_engine("hf", tiny)
    new = perturbed(ref, 1)
    ref.load_weights(new, 1)
    expected = ref.score_choices(PROMPTS, CHOICES)
    fs = FilesystemWeightSync(registry, str(tmp_path), keep=2)
    for sync, name in ((ObjectStoreWeightSync(registry), "policy/a"), (fs, "policy/b")):
        reader = make_engine("hf", tiny)
        assert sync.fetch(name, reader.version) == (-1, None)  # nothing published yet
        sync.publish(name, 1, new)
        version, weights = sync.fetch(name, reader.version)
        reader.load_weights(weights, version)
        assert reader.version == 1 and torch.allclose(reader.score_choices(PROMPTS, CHOICES), expected)
        assert sync.fetch(name, 1) == (1, None) and sync.version(name) == 1
    for v in (2, 3, 4):
        fs.publish("policy/b", v, new)
    assert sorted(p.name for p in (tmp_path / "policy--b").iterdir()) == ["v3", "v4"]  # the newest `keep` stay


def test_broadcast_pushes_weights_to_every_shared_engine(ray_local, tiny):
    registry = WeightRegistry.remote()
    runtime = Runtime(engine=EngineConfig(weight_sync="broadcast"))
    readers = [RemoteEngine(EngineActor.options(num_cpus=0).remote("policy/a", tiny, k, 0, runtime, registry), tiny)
               for k in range(2)]
    assert len(ray.get(registry.subscribers.remote("policy/a"))) == 2
    ref = make_engine("hf", tiny)
    new = perturbed(ref, 2)
    ref.load_weights(new, 3)
    make_weight_sync(runtime, registry).publish("policy/a", 3, new)  # gloo: the same code as NCCL on GPUs
    for r in readers:
        r.pull()  # nothing to fetch: the weights were pushed
        assert r.version == 3
        assert torch.allclose(r.score_choices(PROMPTS, CHOICES), ref.score_choices(PROMPTS, CHOICES))


def test_admission_never_lets_a_round_become_too_stale(ray_local):
    registry = WeightRegistry.remote()
    begin = lambda actor, v, s: ray.get(registry.begin_round.remote("p", actor, v, s))  # noqa: E731
    close = lambda nxt, s: ray.get(registry.close_batch.remote("p", nxt, s))  # noqa: E731
    assert begin("a", 0, 0) and begin("b", 0, 0)
    assert not close(1, 0)  # rounds with version 0 are under way: the batch for version 1 waits for them
    assert not begin("c", 0, 0)  # ...and no new version-0 round may start
    ray.get([registry.end_round.remote("p", x) for x in "ab"])
    assert close(1, 0)
    ray.get(registry.publish.remote("p", 1, []))
    assert begin("a", 1, 1)
    assert close(2, 1) and begin("b", 1, 1)  # staleness 1 allowed: version-1 rows may train version 2
    assert not close(3, 1)  # but not version 3: wait for them
