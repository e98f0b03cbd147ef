"""The tiny default model: a byte-level BPE tokenizer trained on the run's own text and a small
Qwen2-architecture causal LM, both saved with `save_pretrained` so everything downstream loads by path."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, EOS = "<|endoftext|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, "<|im_start|>", EOS]
# Tags of the LWM format: kept whole so the model never has to spell them.
TAG_TOKENS = ["<think>", "</think>", "<predicted_observation>", "</predicted_observation>"]

# ChatML, as Qwen2 checkpoints use, so a real checkpoint's own template renders the same messages.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and save it as an HF tokenizer in `out_dir`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_tokens(TAG_TOKENS)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, chat_template=CHAT_TEMPLATE
    )
    hf.save_pretrained(str(out_dir))
    return hf


def tiny_config(vocab_size: int, *, hidden_size: int = 128, intermediate_size: int = 512, num_layers: int = 2,
                num_heads: int = 2, max_positions: int = 1024, eos_token_id: int | None = None,
                pad_token_id: int | None = None) -> Qwen2Config:
    """The tiny model's Qwen2 config (head_dim = hidden_size / num_heads, tied embeddings)."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path, *, hidden_size: int = 128,
                     intermediate_size: int = 512, num_layers: int = 2, num_heads: int = 2,
                     max_positions: int = 1024, seed: int = 0) -> Path:
    """Initialise a tiny Qwen2 for `tokenizer` and save model and tokenizer together in `out_dir`."""
    import torch

    config = tiny_config(len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_layers=num_layers, num_heads=num_heads, max_positions=max_positions,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def render_chatml(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """CHAT_TEMPLATE in Python, for building the tokenizer's corpus before the tokenizer exists."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")
