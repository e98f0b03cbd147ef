"""model.dtype, model.lora and device placement (agentworld/models/lora.py): a LoRA learner trains only its adapters,
publishes and saves merged weights that a plain engine runs unchanged, and resumes its own adapter; bfloat16 loads and
generates; a LoRA target the model lacks is one line naming model.lora.target_modules; every forward of the engines
and losses gets its inputs on the model's device. On the tiny model, and (slow, when `make smollm2` has run) on
SmolLM2-135M-Instruct at batch 4 x 64 tokens."""

import pickle
from pathlib import Path

import pytest
import torch

from agentworld.config import ConfigError, EngineConfig, LoRAConfig, Runtime, load_config, runtime
from agentworld.models.chat import render_chat
from agentworld.models.hf_engine import HFEngine, load_model_and_tokenizer
from agentworld.models.lora import is_lora, load_trainable, merged_state_dict, trainable_parameters
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
from agentworld.worldmodel.data import wm_examples
from learners.train_engine import make_trainer
from learners.wm_recipe import cpt_loss, sft_loss, token_logprobs
from tests.test_wm_recipe import episode

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "experiments" / "quickstart.yaml")
# r 4 on attention and MLP projections: 2.8% of the tiny model. Its random base model needs the MLP's adapters to move
# the loss much (q/k/v/o alone stall near the uniform loss)
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
LORA = LoRAConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=TARGETS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint path, a fixed SFT batch) of the tiny model."""
    out = tmp_path_factory.mktemp("tiny")
    examples = wm_examples([episode()], lambda m: render_chatml(m, True), 1)
    build_tiny_model(train_tokenizer([e.prompt + e.target for e in examples] * 3, 300, out), out)
    return str(out), examples[:4]


def sft(model, tok, batch, steps: int, lr: float = 1e-2):
    trainer = make_trainer(model, tok, lr=lr, total_steps=steps)
    return trainer, [trainer.step(sft_loss, batch) for _ in range(steps)]


@torch.no_grad()
def loss_on(model, tok, batch) -> float:
    return float(sft_loss(model, tok, batch))


def test_lora_sft_trains_only_the_adapters_and_lowers_the_loss(tiny):
    path, batch = tiny
    model, tok = load_trainable(path, lora=LORA)
    base = {k: v.clone() for k, v in merged_state_dict(model).items()}
    trainable = sum(p.numel() for p in trainable_parameters(model))
    assert is_lora(model) and 0 < trainable < 0.05 * sum(p.numel() for p in model.parameters())
    trainer, losses = sft(model, tok, batch, 20)
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == trainable
    assert losses[-1] < 0.8 * losses[0], losses
    merged = merged_state_dict(model)
    assert merged.keys() == base.keys()  # the base model's own names: no base_layer, no lora_A/B
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and {k.split(".")[-2] for k in changed} == set(TARGETS)
    assert all(torch.equal(p, base[n.replace("base_model.model.", "").replace(".base_layer", "")])
               for n, p in model.named_parameters() if "base_layer" in n)  # the base itself never moves


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny, lora):
    """model.gradient_checkpointing recomputes each layer's activations in the backward pass: the same numbers,
    and only in training (generation keeps its cache)."""
    path, batch = tiny
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, tok = load_trainable(path, lora=lora, gradient_checkpointing=checkpointing)
        assert model.is_gradient_checkpointing == checkpointing
        model.train()
        sft_loss(model, tok, batch[:4]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        model.eval()
        engine = HFEngine.from_model(model, tok)
        assert len(engine.generate([batch[0].prompt], max_new_tokens=4, temperature=0.0)[0].logprobs) > 0
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])
    assert any(grads[0][k].abs().sum() > 0 for k in grads[0])


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A LoRA model after 20 SFT steps, and its checkpoint (trainer.save)."""
    path, batch = tiny
    torch.manual_seed(0)
    model, tok = load_trainable(path, lora=LORA)
    trainer, _ = sft(model, tok, batch, 20)
    ckpt = tmp_path_factory.mktemp("ckpt")
    trainer.save(ckpt, tok)
    return model, tok, trainer, ckpt


def greedy(engine, prompts, n=12) -> list[list[int]]:
    return [g.token_ids for g in engine.generate(prompts, max_new_tokens=n, temperature=0.0)]


def test_published_weights_are_merged_and_a_plain_engine_generates_what_the_adapter_does(tiny, trained):
    path, batch = tiny
    model, tok, _, _ = trained
    prompts = [e.prompt for e in batch]
    engine = HFEngine(path)  # the base checkpoint, as an actor's engine holds it
    before = greedy(engine, prompts)
    engine.load_weights(merged_state_dict(model), 1)  # what the weight syncs publish
    after = greedy(engine, prompts)
    assert after != before
    assert after == greedy(HFEngine.from_model(model, tok), prompts)


def test_a_lora_checkpoint_loads_by_path_as_a_plain_model(tiny, trained):
    from safetensors.torch import load_file

    _, batch = tiny
    model, tok, _, ckpt = trained
    names = load_file(str(ckpt / "model.safetensors")).keys()
    assert not [k for k in names if "lora" in k or "base_layer" in k]
    plain, _ = load_model_and_tokenizer(str(ckpt))
    assert not is_lora(plain) and abs(loss_on(plain, tok, batch) - loss_on(model, tok, batch)) < 1e-5
    assert (ckpt / "adapter" / "adapter_config.json").is_file() and (ckpt / "trainer_state.pt").is_file()


def test_a_resumed_run_continues_the_saved_adapter(tiny, trained, tmp_path):
    path, batch = tiny
    model, tok, trainer, ckpt = trained
    saved_loss = loss_on(model, tok, batch)
    resumed, _ = load_trainable(str(ckpt), lora=LORA, resume=True)
    again = make_trainer(resumed, tok, lr=1e-2, total_steps=20)
    again.load_trainer_state(ckpt)
    assert again.steps == 20 and abs(loss_on(resumed, tok, batch) - saved_loss) < 1e-5
    base = load_model_and_tokenizer(path)[0].state_dict()  # the adapter sits on the original base, not the merged one
    assert all(torch.equal(p, base[n.replace("base_model.model.", "").replace(".base_layer", "")])
               for n, p in resumed.named_parameters() if "base_layer" in n)
    # the next step is the one the uninterrupted run takes; a fresh adapter on the merged weights takes another
    fresh, _ = load_trainable(str(ckpt), lora=LORA)
    fresh_trainer = make_trainer(fresh, tok, lr=1e-2, total_steps=20)
    for t in (trainer, again, fresh_trainer):
        t.step(sft_loss, batch)
    want = merged_state_dict(model)
    assert all(torch.allclose(want[k], v, atol=1e-6) for k, v in merged_state_dict(resumed).items())
    assert not all(torch.allclose(want[k], v, atol=1e-6) for k, v in merged_state_dict(fresh).items())


def test_bfloat16_loads_trains_and_generates(tiny):
    path, batch = tiny
    model, tok = load_trainable(path, dtype="bfloat16", lora=LORA)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for p in trainable_parameters(model)} == {torch.float32}  # peft keeps adapters in float32
    _, losses = sft(model, tok, batch, 10)
    assert losses[-1] < losses[0]
    assert {v.dtype for v in merged_state_dict(model).values()} == {torch.bfloat16}
    engine = HFEngine(path, dtype="bfloat16")
    assert engine.model.dtype == torch.bfloat16
    engine.load_weights(merged_state_dict(model), 1)
    gens = engine.generate([e.prompt for e in batch], max_new_tokens=8)
    assert all(g.token_ids or g.eos_id is not None for g in gens)


def test_a_missing_target_module_is_one_line_naming_the_key(tiny, capsys):
    from agentworld.cli import main

    path, _ = tiny
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: no module named 'w_nope' in Qwen2ForCausalLM"):
        load_trainable(path, lora=LoRAConfig(enabled=True, target_modules=["q_proj", "w_nope"]))
    with pytest.raises(ConfigError, match="'self_attn' is a Qwen2Attention, not a linear or embedding layer"):
        load_trainable(path, lora=LoRAConfig(enabled=True, target_modules=["self_attn"]))
    bad = ["model.lora.enabled=true", "model.lora.target_modules=[q_proj, w_nope]"]
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: no module named 'w_nope'.*tiny default"):
        load_config(QUICKSTART, bad)
    assert main(["validate", QUICKSTART, *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.lora.target_modules" in err and "w_nope" in err
    load_config(QUICKSTART, ["model.lora.enabled=true"])  # the defaults are all in the tiny Qwen2


def test_a_learners_config_error_reaches_the_driver_whole(ray_local):
    from agentworld.driver import learner_result

    error = ConfigError("runs/r/checkpoints/base", "model.lora.target_modules", "no module named 'w_nope'")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)

    @ray_local.remote
    def learner():
        raise error

    with pytest.raises(ConfigError) as caught:
        learner_result(learner.remote())
    assert type(caught.value) is ConfigError and str(caught.value) == str(error)


def test_model_dtype_and_lora_reach_the_runtime():
    with pytest.raises(ConfigError, match=r"model\.dtype: must be one of float32, bfloat16 \(got 'float16'\)"):
        load_config(QUICKSTART, ["model.dtype=float16"])
    with pytest.raises(ConfigError, match=r"model\.lora\.r: must be >= 1"):
        load_config(QUICKSTART, ["model.lora.r=0"])
    cfg = load_config(QUICKSTART, ["model.dtype=bfloat16", "model.lora.enabled=true", "model.lora.r=8"])
    rt = runtime(cfg, "/tmp/run")
    assert rt.dtype == "bfloat16" and rt.lora.enabled and rt.lora.r == 8 and rt.engine.vllm.dtype is None
    assert not rt.gradient_checkpointing
    assert runtime(load_config(QUICKSTART, ["model.gradient_checkpointing=true"]), "/tmp/run").gradient_checkpointing


# -- device placement: cuda where engine.num_gpus > 0; every input follows model.device ---------------------------

def test_device_is_cpu_here_and_cuda_with_gpus():
    assert Runtime().device == "cpu" and Runtime(engine=EngineConfig(num_gpus=1)).device == "cuda"
    assert Runtime(engine=EngineConfig(num_gpus=0.5)).device == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tiny):
    with pytest.raises(RuntimeError, match=r"engine\.num_gpus > 0 puts the model on cuda, but .* sees no CUDA device"):
        load_trainable(tiny[0], device="cuda", lora=LORA)
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        make_trainer(load_trainable(tiny[0])[0], None, lr=1e-3, total_steps=1,
                     runtime=Runtime(engine=EngineConfig(num_gpus=1)))


class Reached(Exception):
    pass


def inputs_seen(model) -> list[str]:
    """The device types of every tensor the model's decoder gets; the forward stops there (a meta model computes
    nothing). The decoder, not the causal-LM head: peft calls the wrapped model's forward() directly, past its hooks."""
    seen = []

    def hook(module, args, kwargs):
        seen.extend(t.device.type for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor))
        raise Reached

    model.model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("lora", [False, True])
def test_every_forward_gets_its_inputs_on_the_models_device(tiny, lora):
    """The model on `meta`, a device no tensor is created on by default: any input left on cpu shows up."""
    from learners.agent import action_logprobs

    path, batch = tiny
    model, tok = load_trainable(path, lora=LORA if lora else None)
    model.to("meta")
    assert model.device.type == "meta"
    seen = inputs_seen(model.get_base_model() if lora else model)
    engine = HFEngine.from_model(model, tok)
    prompts = [e.prompt for e in batch]
    rows = [dict(prompt=prompts[0], choices=["a0", "a1"], action="a1")]
    for call in (lambda: engine.generate(prompts, max_new_tokens=2), lambda: engine.score_choices(prompts[:1], [["a"]]),
                 lambda: sft_loss(model, tok, batch), lambda: cpt_loss(model, tok, [torch.tensor([1, 2, 3])]),
                 lambda: token_logprobs(model, tok, prompts[:1], [[1, 2]]),
                 lambda: action_logprobs(model, tok, rows, 1.0),
                 lambda: action_logprobs(model, tok, [dict(rows[0], action_ids=[1, 2])], 1.0)):
        with pytest.raises(Reached):
            call()
    assert len(seen) >= 7 and set(seen) == {"meta"}, seen


# -- SmolLM2-135M-Instruct (make smollm2), batch 4 x 64 tokens; smollm2_path (tests/conftest.py) skips without it,
# and fails under CI


def smollm2_batch(tok) -> list:
    """4 chat examples of 64 tokens (prompt, then target up to the 64th token) with an answer the base model does not
    give."""
    from agentworld.worldmodel.data import Example

    out = []
    for i in range(4):
        prompt = render_chat(tok, [{"role": "user", "content": f"Door {i}: the code word?"}])
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        target = f"The code word for door {i} is zebra-{7 * i + 3}, and nothing else, as always. " * 4
        t_ids = tok(target, add_special_tokens=False).input_ids[: 64 - len(p_ids)]
        out.append(Example(prompt=prompt, target=tok.decode(t_ids), next_obs="", reward=0.0, done=False))
    return out


@pytest.mark.slow
def test_smollm2_lora_sft_lowers_the_loss_and_the_merged_weights_change_generation(smollm2_path):
    torch.manual_seed(0)  # the adapters' initialisation and dropout: the same steps every run
    model, tok = load_trainable(smollm2_path, lora=LoRAConfig(enabled=True))  # r 16 on q/k/v/o
    assert sum(p.numel() for p in trainable_parameters(model)) < 0.05 * sum(p.numel() for p in model.parameters())
    batch = smollm2_batch(tok)
    _, losses = sft(model, tok, batch, 6, lr=2e-3)
    assert losses[-1] < 0.5 * losses[0], losses
    prompts = [e.prompt for e in batch[:2]]
    engine = HFEngine(smollm2_path)
    before = greedy(engine, prompts, 8)
    engine.load_weights(merged_state_dict(model), 1)
    assert greedy(engine, prompts, 8) == greedy(HFEngine.from_model(model, tok), prompts, 8) != before


@pytest.mark.slow
def test_smollm2_in_bfloat16_loads_and_generates(smollm2_path):
    engine = HFEngine(smollm2_path, dtype="bfloat16")
    assert engine.model.dtype == torch.bfloat16
    prompt = engine.render([{"role": "user", "content": "Name three colors."}])
    text = engine.generate([prompt], max_new_tokens=12)[0].text
    assert len(text.split()) >= 3, text
    model, tok = load_trainable(smollm2_path, dtype="bfloat16", lora=LoRAConfig(enabled=True))
    _, losses = sft(model, tok, smollm2_batch(tok)[:2], 2, lr=2e-3)
    assert losses[1] < losses[0]


# the quickstart shortened to a few seconds of each part: SmolLM2 is ~100x the tiny model's cost per token
SMOLLM2_QUICKSTART = ["world_model.data.steps=60", "world_model.sft.steps=3", "world_model.sft.batch_size=4",
                      "world_model.sft.warmup_steps=1", "world_model.sft.eval_every=3", "world_model.sft.eval_samples=4",
                      "world_model.generation.max_new_tokens=24", "envs.frozenlake.max_steps=4", "agent.updates=1",
                      "agent.epochs=1", "agent.episodes_per_update=4", "eval.episodes=4", "eval.every_updates=1",
                      # the sim arm alone: its actor, simulator and learner are every part the real arm has, and more
                      "arms=[{name: sim, source: sim, env: frozenlake, envs_per_actor: 4}]", "run.max_minutes=15"]


@pytest.mark.slow
def test_short_quickstart_on_smollm2_with_lora_publishes_and_saves_merged_weights(smollm2_path, tmp_path):
    """The whole loop on a real pretrained checkpoint with model.lora: the LWM and the sim arm train adapters on
    SmolLM2; the simulator and the actor load what is published; every checkpoint loads by path as a plain model and
    carries its adapter."""
    import subprocess
    import sys

    import pandas as pd
    from safetensors.torch import load_file

    r = subprocess.run([sys.executable, "-m", "agentworld", "run", QUICKSTART, f"run.output_dir={tmp_path}",
                        "run.name=lora", f"model.path={smollm2_path}", "model.lora.enabled=true",
                        *SMOLLM2_QUICKSTART], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "lora"
    assert not (run / "checkpoints" / "base").exists()  # no tiny model was built: the run is on SmolLM2
    for name in ("wm", "wm-sft", "agent-sim"):
        assert (run / "checkpoints" / name / "adapter" / "adapter_config.json").is_file(), name
        weights = load_file(str(run / "checkpoints" / name / "model.safetensors"))
        assert not [k for k in weights if "lora" in k], name
        assert weights["model.embed_tokens.weight"].shape[0] == 49152, name  # SmolLM2's vocabulary
    df = pd.read_parquet(run / "metrics.parquet")
    assert df[df.kind == "wm"].wm_version.max() >= 1 and set(df[df.kind == "eval"].arm) == {"sim"}
    assert df[df.kind == "train"]["update"].max() == 1
