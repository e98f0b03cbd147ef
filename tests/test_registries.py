"""Engines and weight syncs by name: a strategy registered in a test is built from a Runtime like the built-ins,
unknown names are one-line errors, naming the registries imports neither vllm nor deepspeed, and admission
control keeps every trained row within max_staleness versions of the policy that produced it."""

import random
import subprocess
import sys

import pytest
import torch

from agentworld.config import EngineConfig, RayConfig, Runtime
from agentworld.models.engine import make_engine
from agentworld.registry import TRAIN_ENGINES, WEIGHT_SYNCS
from learners.admission import Admission
from learners.broadcast_sync import BroadcastWeightSync
from learners.torch_engine import TorchEngine
from learners.train_engine import make_trainer
from learners.weight_sync import ObjectStoreWeightSync, WeightSync, make_weight_sync


class InMemoryWeightSync(WeightSync):
    """Versions in a dict of this process: the smallest strategy there is."""

    def __init__(self, root: str):
        self.root, self.versions = root, {}

    def publish(self, name: str, version: int, state_dict: dict) -> None:
        self.versions[name] = (version, state_dict)

    def fetch(self, name: str, have: int):
        version, weights = self.versions.get(name, (-1, None))
        return (version, weights) if version > have else (version, None)

    def version(self, name: str) -> int:
        return self.versions.get(name, (-1, None))[0]


class SGDEngine:
    """Plain SGD, no schedule: a training engine in a dozen lines."""

    def __init__(self, model, tok, lr: float, num_cpus: float):
        self.model, self.tok, self.steps, self.num_cpus = model, tok, 0, num_cpus
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, loss_fn, items: list) -> float:
        self.optimizer.zero_grad()
        loss = loss_fn(self.model, self.tok, items)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return float(loss.detach())


def mse(model, tok, items) -> torch.Tensor:
    x, y = items
    return torch.nn.functional.mse_loss(model(x), y)


def regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return [x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])]


def test_a_weight_sync_registered_in_a_test_is_built_by_name():
    WEIGHT_SYNCS.register("in_memory", lambda runtime, registry: InMemoryWeightSync(runtime.weights_dir))
    try:
        sync = make_weight_sync(Runtime(engine=EngineConfig(weight_sync="in_memory"), weights_dir="/shared"), None)
        assert isinstance(sync, InMemoryWeightSync) and sync.root == "/shared" and not sync.pushes
        assert sync.fetch("policy/a", -1) == (-1, None)
        sync.publish("policy/a", 2, {"w": torch.ones(2)})
        version, weights = sync.fetch("policy/a", 1)
        assert version == 2 and torch.equal(weights["w"], torch.ones(2))
        assert sync.fetch("policy/a", 2) == (2, None) and sync.version("policy/a") == 2
        assert "in_memory" in WEIGHT_SYNCS.names()
    finally:
        WEIGHT_SYNCS.unregister("in_memory")
    assert isinstance(make_weight_sync(None, None), ObjectStoreWeightSync)  # every default
    gpus = make_weight_sync(Runtime(engine=EngineConfig(weight_sync="broadcast", num_gpus=1)), None)
    assert isinstance(gpus, BroadcastWeightSync) and gpus.pushes and gpus.backend == "nccl"
    assert make_weight_sync(Runtime(engine=EngineConfig(weight_sync="broadcast")), None).backend == "gloo"


def test_a_train_engine_registered_in_a_test_is_built_by_name():
    TRAIN_ENGINES.register("sgd", lambda model, tok, lr, total_steps, warmup_steps, weight_decay, runtime:
                           SGDEngine(model, tok, lr, runtime.ray.actor_num_cpus))
    try:
        torch.manual_seed(0)
        runtime = Runtime(ray=RayConfig(actor_num_cpus=0.5), engine=EngineConfig(train="sgd"))
        trainer = make_trainer(torch.nn.Linear(4, 1), None, lr=0.05, total_steps=100, runtime=runtime)
        assert isinstance(trainer, SGDEngine) and trainer.num_cpus == 0.5
        losses = [trainer.step(mse, regression()) for _ in range(50)]
        assert trainer.steps == 50 and losses[-1] < 0.1 * losses[0]
    finally:
        TRAIN_ENGINES.unregister("sgd")
    assert "sgd" not in TRAIN_ENGINES
    assert isinstance(make_trainer(torch.nn.Linear(4, 1), None, lr=0.01, total_steps=10), TorchEngine)  # every default


def test_unknown_names_are_one_line_errors():
    builds = {
        "inference engine": lambda: make_engine("sglang", "/nowhere"),
        "training engine": lambda: make_trainer(torch.nn.Linear(2, 1), None, 0.1, 10,
                                                runtime=Runtime(engine=EngineConfig(train="fsdp"))),
        "weight sync": lambda: make_weight_sync(Runtime(engine=EngineConfig(weight_sync="nfs")), None),
    }
    for what, build in builds.items():
        with pytest.raises(ValueError) as e:
            build()
        assert str(e.value).startswith(f"unknown {what} ") and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"\(one of hf, vllm\)"):
        make_engine("sglang", "/nowhere")


def test_naming_the_registries_imports_no_engine_package():
    """The registries load the modules that define the built-ins; those import vllm and deepspeed only to build."""
    code = ("import sys; import agentworld.models.engine; assert 'agentworld.models.hf_engine' not in sys.modules\n"
            "from agentworld.registry import INFERENCE_ENGINES, TRAIN_ENGINES, WEIGHT_SYNCS\n"
            "print(INFERENCE_ENGINES.names(), TRAIN_ENGINES.names(), WEIGHT_SYNCS.names())\n"
            "assert 'vllm' not in sys.modules and 'deepspeed' not in sys.modules, 'engine package imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == ("['hf', 'vllm'] ['deepspeed', 'torch'] "
                                          "['broadcast', 'filesystem', 'object_store']")


def test_admission_follows_the_fixed_sequence():
    adm = Admission()
    assert adm.begin_round("p", "a", 0, 0, published=-1) and adm.begin_round("p", "b", 0, 0, published=-1)
    assert not adm.close_batch("p", 1, 0)  # rounds with version 0 are under way: the batch for version 1 waits
    assert not adm.begin_round("p", "c", 0, 0, published=-1)  # ...and no new version-0 round may start
    adm.end_round("p", "a")
    adm.end_round("p", "b")
    assert adm.close_batch("p", 1, 0)
    assert adm.begin_round("p", "a", 1, 1, published=1)
    assert adm.close_batch("p", 2, 1) and adm.begin_round("p", "b", 1, 1, published=1)  # version-1 rows may train 2
    assert not adm.close_batch("p", 3, 1)  # but not 3: wait for them
    assert not adm.begin_round("p", "c", 1, 1, published=1)  # the learner trains towards 3 now
    assert adm.begin_round("q", "c", 0, 0, published=-1)  # names are independent


@pytest.mark.parametrize("max_staleness", [0, 1, 2])
def test_admission_bounds_staleness_on_a_fixed_schedule(max_staleness):
    """Three actors and a learner take seeded turns: the learner trains every row by weights at most max_staleness
    versions newer than the policy that produced it, and keeps training."""
    adm, rng = Admission(), random.Random(max_staleness)
    learner, held = 0, dict.fromkeys("abc", 0)  # published version, and the version each actor holds
    under_way, landed, staleness = {}, [], []
    for _ in range(3000):
        actor = rng.choice("abc")
        event = rng.random()
        if event < 0.3:  # the learner: close the batch, train on what has landed, publish
            if landed and adm.close_batch("p", learner + 1, max_staleness):
                staleness += [learner - v for v in landed]  # versions between a row's policy and the one it trains
                learner, landed = learner + 1, []
        elif actor in under_way:  # the actor's round ends: its rows land in the replay
            if event < 0.6:
                landed.append(under_way.pop(actor))
                adm.end_round("p", actor)
        elif event < 0.7:
            held[actor] = learner  # it pulls the newest weights
        elif adm.begin_round("p", actor, held[actor], max_staleness, learner):
            under_way[actor] = held[actor]
    assert learner > 100 and len(staleness) > 200
    assert max(staleness) == max_staleness  # reached, never passed
