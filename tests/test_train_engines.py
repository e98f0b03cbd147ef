"""The DeepSpeed engine, data-parallel over two Ray actors with gloo, trains the tiny model, and a checkpoint of
either engine resumes in the other to the same next step: weights, AdamW moments, schedule and step count carry
over. Rank 0 lives in a Ray actor, as it does in a learner, so torch.distributed stays out of the test process."""

import pytest
import ray
import torch

pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed (pip install -e '.[deepspeed]')")

from agentworld.config import DeepSpeedConfig, EngineConfig, LoRAConfig, RayConfig, Runtime  # noqa: E402
from agentworld.models.hf_engine import load_model_and_tokenizer  # noqa: E402
from agentworld.models.lora import load_trainable, merged_state_dict  # noqa: E402
from agentworld.models.tiny import build_tiny_model, train_tokenizer  # noqa: E402
from learners.train_engine import make_trainer  # noqa: E402
from learners.wm_recipe import cpt_loss, pack  # noqa: E402

TEXTS = [f"state {i % 7}: the agent moves {'left' if i % 3 else 'down'} and sees [S]FF{i % 5}H" for i in range(200)]
SCHEDULE = dict(lr=3e-3, total_steps=30, warmup_steps=2)
DEEPSPEED = Runtime(ray=RayConfig(actor_num_cpus=0.25), engine=EngineConfig(
    train="deepspeed", deepspeed=DeepSpeedConfig(zero_stage=2, data_parallel=2, backend="gloo", offload_optimizer=False,
                                                 torch_adam=True)))
LORA = LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])


@ray.remote
class Learner:
    """A learner process holding rank 0 of a training engine (with `lora`, of a LoRA model: a process of its own, as
    its data-parallel ranks are made once per process)."""

    def __init__(self, path: str, lora: LoRAConfig | None = None):
        torch.set_num_threads(1)
        self.lora = lora
        self.open(path)

    def open(self, path: str, resume: bool = False) -> None:
        self.model, self.tok = load_trainable(path, lora=self.lora, resume=resume)
        runtime = Runtime(ray=DEEPSPEED.ray, engine=DEEPSPEED.engine, lora=self.lora or LoRAConfig())
        self.trainer = make_trainer(self.model, self.tok, runtime=runtime, **SCHEDULE)
        if resume:
            self.trainer.load_trainer_state(path)

    def train(self, batches: list) -> list[float]:
        return [self.trainer.step(cpt_loss, b) for b in batches]

    def save(self, path: str) -> torch.Tensor:
        """Save, then draw from torch's RNG: a resumed run must draw the same numbers."""
        self.trainer.save(path, self.tok)
        return torch.rand(4)

    def weights(self) -> dict:
        return {k: v.clone() for k, v in merged_state_dict(self.model).items()}


@pytest.fixture(scope="module")
def setup(ray_local, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(TEXTS, 300, path)
    build_tiny_model(tok, path)
    rows = pack(tok, TEXTS, 32)
    batches = [[rows[(8 * k + j) % len(rows)] for j in range(8)] for k in range(4)]
    return str(path), batches, Learner.options(num_cpus=0.25).remote(str(path))


def torch_trainer(path: str, resume: bool = False):
    model, tok = load_model_and_tokenizer(path)
    trainer = make_trainer(model, tok, **SCHEDULE)
    if resume:
        trainer.load_trainer_state(path)
    return trainer


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5), k


@pytest.mark.slow
def test_deepspeed_data_parallel_training_lowers_the_loss(setup):
    _, batches, learner = setup
    losses = ray.get(learner.train.remote([batches[0]] * 10))  # torch alone: 5.6 -> 1.8 in 10 steps
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.slow
def test_a_torch_checkpoint_resumes_in_deepspeed(setup, tmp_path):
    path, batches, learner = setup
    trainer = torch_trainer(path)
    for b in batches[:3]:
        trainer.step(cpt_loss, b)
    trainer.save(tmp_path, trainer.tok)
    trainer.step(cpt_loss, batches[3])
    ray.get(learner.open.remote(str(tmp_path), resume=True))
    ray.get(learner.train.remote(batches[3:]))
    assert_same_weights(trainer.model.state_dict(), ray.get(learner.weights.remote()))


def test_a_deepspeed_checkpoint_resumes_in_torch(setup, tmp_path):
    path, batches, learner = setup
    ray.get(learner.open.remote(path))
    ray.get(learner.train.remote(batches[:3]))
    drawn = ray.get(learner.save.remote(str(tmp_path)))
    ray.get(learner.train.remote(batches[3:]))
    trainer = torch_trainer(str(tmp_path), resume=True)
    assert trainer.steps == 3 and torch.equal(torch.rand(4), drawn)  # the RNG state came along
    trainer.step(cpt_loss, batches[3])
    assert_same_weights(trainer.model.state_dict(), ray.get(learner.weights.remote()))


def test_a_lora_deepspeed_checkpoint_resumes_its_adapter_in_torch(setup, tmp_path):
    """DeepSpeed over the adapters only (replicas add the same adapters and get rank 0's weights); the checkpoint's
    optimizer state is the adapters', in the torch engine's format."""
    path, batches, _ = setup
    learner = Learner.options(num_cpus=0.25).remote(path, LORA)
    ray.get(learner.train.remote(batches[:3]))
    ray.get(learner.save.remote(str(tmp_path)))
    ray.get(learner.train.remote(batches[3:]))
    model, tok = load_trainable(str(tmp_path), lora=LORA, resume=True)
    trainer = make_trainer(model, tok, **SCHEDULE)
    trainer.load_trainer_state(tmp_path)
    assert trainer.steps == 3 and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    trainer.step(cpt_loss, batches[3])
    assert_same_weights(merged_state_dict(model), ray.get(learner.weights.remote()))
    ray.kill(learner)
