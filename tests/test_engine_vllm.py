"""The vLLM engine against the HF engine on the same weights: greedy tokens, logprobs, choice scores and stop
strings, and weight updates that reach the running engine, through the worker RPC (a state dict) and from a
checkpoint dir (the filesystem weight sync). The checkpoint's generation config names two EOS ids, as Qwen2.5-Instruct's
does: both engines stop on either. One vLLM engine serves the whole module, inside an EngineActor as
with `engine.shared: true`, which also keeps vLLM's process-wide settings out of the test process."""

import pytest
import ray
import torch
from transformers import GenerationConfig

pytest.importorskip("vllm", reason="the vllm extra is not installed (pip install -e '.[vllm]')")
pytestmark = pytest.mark.slow  # one engine start (~30-60 s on 2 cores) for the module

from actors.engine_actor import EngineActor, RemoteEngine  # noqa: E402
from agentworld.config import EngineConfig, Runtime, VLLMConfig  # noqa: E402
from agentworld.models.engine import make_engine  # noqa: E402
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer  # noqa: E402
from learners.weight_sync import FilesystemWeightSync, WeightRegistry  # noqa: E402

CORPUS = [render_chatml([{"role": "user", "content": f"Observation:\n[S]FF{i}\nValid actions: left, down"},
                         {"role": "assistant", "content": a}]) for i in range(50) for a in ("left", "down")]
PROMPTS = [render_chatml([{"role": "user", "content": f"Observation:\n[S]FF{i}"}], True) for i in (1, 7, 23, 42)]


def noisy(state_dict: dict, seed: int, scale: float = 0.5) -> dict:
    """Weights far from the near-uniform random init, so greedy tokens win by clear margins."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def setup(ray_local, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(CORPUS, 300, path)
    build_tiny_model(tok, path)
    GenerationConfig(eos_token_id=tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])).save_pretrained(str(path))
    hf = make_engine("hf", str(path))
    hf.model.load_state_dict(noisy(hf.model.state_dict(), 0))
    hf.model.save_pretrained(str(path))
    registry = WeightRegistry.remote()
    weights_dir = str(tmp_path_factory.mktemp("weights"))
    runtime = Runtime(engine=EngineConfig(inference="vllm", weight_sync="filesystem", vllm=VLLMConfig(kv_cache_gb=0.25)),
                      weights_dir=weights_dir)
    actor = EngineActor.options(num_cpus=0).remote("policy/a", str(path), 0, 0, runtime, registry)
    vllm = RemoteEngine(actor, str(path))
    return hf, vllm, FilesystemWeightSync(registry, weights_dir)


def same_greedy(hf, vllm, max_new_tokens=16):
    a = hf.generate(PROMPTS, max_new_tokens=max_new_tokens)
    b = vllm.generate(PROMPTS, max_new_tokens=max_new_tokens)
    for x, y in zip(a, b):
        assert y.token_ids == x.token_ids and y.text == x.text and y.eos_id == x.eos_id
        assert len(y.logprobs) == len(x.logprobs)
        assert torch.allclose(torch.tensor(y.logprobs), torch.tensor(x.logprobs), atol=1e-3)
    return [g.token_ids for g in b]


def test_vllm_generates_hf_greedy_tokens_with_logprobs(setup):
    hf, vllm, _ = setup
    tokens = same_greedy(hf, vllm)
    assert len({tuple(t) for t in tokens}) > 1  # the prompts get different replies: a real comparison
    sampled = [vllm.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=5) for _ in range(2)]
    assert [g.token_ids for g in sampled[0]] == [g.token_ids for g in sampled[1]]  # a seed fixes the samples
    assert all(lp <= 0 for g in sampled[0] for lp in g.logprobs)


def test_vllm_scores_choices_and_stops_like_hf(setup):
    hf, vllm, _ = setup
    choices = [["left", "down", "right"], ["up"], ["left"], ["down", "up"]]
    assert torch.allclose(vllm.score_choices(PROMPTS, choices), hf.score_choices(PROMPTS, choices), atol=1e-3)
    stop = [hf.tok.decode(t[2:4]) for t in [hf.generate(PROMPTS[:1], max_new_tokens=6)[0].token_ids]]
    a, b = hf.generate(PROMPTS, max_new_tokens=16, stop=stop), vllm.generate(PROMPTS, max_new_tokens=16, stop=stop)
    assert [g.text for g in b] == [g.text for g in a] and b[0].text.endswith(stop[0])


def test_weight_update_through_rpc_reaches_the_running_engine(setup):
    hf, vllm, _ = setup
    before = vllm.generate(PROMPTS, max_new_tokens=16)
    new = noisy(hf.model.state_dict(), 1)
    vllm.load_weights(new, 5)
    hf.load_weights(new, 5)
    after = same_greedy(hf, vllm)
    assert vllm.version == 5 and after != [g.token_ids for g in before]


def test_weight_update_from_a_checkpoint_dir_reaches_the_running_engine(setup):
    hf, vllm, fs = setup
    before = [g.token_ids for g in vllm.generate(PROMPTS, max_new_tokens=16)]
    new = noisy(hf.model.state_dict(), 2)
    fs.publish("policy/a", 9, new)
    vllm.pull()  # the engine actor fetches the dir and vLLM reloads from it
    hf.load_weights(new, 9)
    assert vllm.version == 9 and same_greedy(hf, vllm) != before
    assert ray.get(vllm.actor.pull.remote()) == 9  # nothing newer: nothing reloaded


def test_both_engines_stop_on_any_eos_of_the_generation_config(setup):
    """With the final norm zeroed every logit is 0 and greedy picks id 0, <|endoftext|>: not the tokenizer's EOS, but
    one of the generation config's, so the reply ends at once, its logprob kept."""
    hf, vllm, _ = setup
    endoftext = hf.tok.convert_tokens_to_ids("<|endoftext|>")
    assert endoftext == 0 and hf.stop_ids == (hf.tok.eos_token_id, endoftext)
    flat = {k: torch.zeros_like(v) if k == "model.norm.weight" else v for k, v in hf.model.state_dict().items()}
    vllm.load_weights(flat, 11)
    hf.load_weights(flat, 11)
    for engine in (hf, vllm):
        gens = engine.generate(PROMPTS, max_new_tokens=8)
        assert [(g.token_ids, g.eos_id, len(g.logprobs)) for g in gens] == [([], endoftext, 1)] * len(PROMPTS)


def test_model_dtype_reaches_vllm_in_an_engine_actor(setup, ray_local):
    """model.dtype (Runtime.dtype) is the dtype a shared vLLM engine runs in when engine.vllm.dtype is unset."""
    hf, _, _ = setup
    path = hf.model.name_or_path
    runtime = Runtime(engine=EngineConfig(inference="vllm", vllm=VLLMConfig(kv_cache_gb=0.25)), dtype="bfloat16")
    actor = EngineActor.options(num_cpus=0).remote("policy/bf16", path, 0, 0, runtime, WeightRegistry.remote())
    dtype = ray.get(actor.__ray_call__.remote(lambda self: str(self.engine.llm.llm_engine.model_config.dtype)))
    assert dtype == "torch.bfloat16"
    assert all(g.token_ids or g.eos_id is not None for g in RemoteEngine(actor, path).generate(PROMPTS, max_new_tokens=4))
    ray.kill(actor)
