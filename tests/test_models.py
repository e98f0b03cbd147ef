import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentworld.models.hf_engine import HFEngine, choice_logprobs, completion_logprobs, encode_pairs
from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer

CORPUS = [render_chatml([{"role": "user", "content": f"Observation:\n[S]FF{i}\nValid actions: left, down"},
                         {"role": "assistant", "content": a}]) for i in range(50) for a in ("left", "down")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(CORPUS, 300, out)
    build_tiny_model(tok, out, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2)
    return str(out)


def test_tiny_model_saves_and_loads_by_path(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny)
    tok = AutoTokenizer.from_pretrained(tiny)
    assert model.config.model_type == "qwen2" and model.config.head_dim == 64
    assert tok.eos_token == "<|im_end|>" and len(tok("<predicted_observation>").input_ids) == 1
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == render_chatml(msgs, True)
    assert model.get_input_embeddings().num_embeddings == len(tok)


def test_shared_prefix_choice_scores_equal_full_sequence_scores(tiny):
    engine = HFEngine(tiny)
    prompts = [render_chatml([{"role": "user", "content": "Observation:\n[S]FF1"}], True), "x"]
    choices = [["left", "down", "right"], ["up"]]
    a = choice_logprobs(engine.model, engine.tok, prompts, choices)
    fp = [p for p, cs in zip(prompts, choices) for _ in cs]
    fc = [c + engine.tok.eos_token for cs in choices for c in cs]
    b = completion_logprobs(engine.model, *encode_pairs(engine.tok, fp, fc))
    assert torch.allclose(a, b, atol=1e-4)


def test_generation_logprobs_match_scoring(tiny):
    engine = HFEngine(tiny, seed=1)
    prompts = [render_chatml([{"role": "user", "content": "Observation:\n[S]FF3"}], True)] * 2
    gens = engine.generate(prompts, max_new_tokens=6, temperature=1.0)
    for g in gens:
        assert len(g.logprobs) >= len(g.token_ids) and all(lp <= 0 for lp in g.logprobs)
    greedy = engine.generate(prompts[:1], max_new_tokens=5, temperature=0.0)[0]
    ids = torch.tensor([engine.tok(prompts[0], add_special_tokens=False).input_ids + greedy.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(input_ids=ids).logits[0, :-1], -1)
    n = len(greedy.token_ids)
    expected = logp[-n:].gather(1, ids[0, -n:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(greedy.logprobs[:n]), expected, atol=1e-4)


def test_weight_update_changes_generation(tiny):
    engine = HFEngine(tiny)
    prompt = [render_chatml([{"role": "user", "content": "Observation:\n[S]FF7"}], True)]
    before = engine.score_choices(prompt, [["left", "down"]])
    sd = {k: v + 0.05 * torch.randn_like(v) for k, v in engine.model.state_dict().items()}
    engine.load_weights(sd, version=3)
    after = engine.score_choices(prompt, [["left", "down"]])
    assert engine.version == 3 and not torch.allclose(before, after)


def test_batched_greedy_predictions_come_back_in_prompt_order(tiny):
    """The LWM's measurement batches prompts by length: each reply still answers its own prompt, and equals the
    reply the prompt gets alone (left padding and the last-position logits change nothing)."""
    from learners.world_model import greedy_texts

    engine = HFEngine(tiny)
    torch.manual_seed(0)  # random weights: replies that differ from prompt to prompt
    engine.load_weights({k: torch.randn_like(v) for k, v in engine.model.state_dict().items()}, 1)
    prompts = [render_chatml([{"role": "user", "content": "Observation:\n" + "[S]FF" * k + str(k)}], True)
               for k in (5, 1, 9, 2, 7)]
    alone = [engine.generate([p], max_new_tokens=6, temperature=0.0)[0].text for p in prompts]
    assert len(set(alone)) >= 3
    assert greedy_texts(engine, prompts, 6, batch_size=2) == alone
