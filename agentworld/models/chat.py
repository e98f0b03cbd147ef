"""A checkpoint's own chat conventions: its chat template renders every prompt, and its tokenizer and generation
config say which tokens end a reply.

- A system message is rendered as the template renders it; a template without a system role (one that raises on it,
  as Gemma's does, or drops it) gets the system text merged into the first user turn instead.
- `enable_thinking` (Qwen3-style templates) is passed only when the template mentions it.
- The stop set is the tokenizer's EOS plus every id of `generation_config.eos_token_id` (an int or a list), e.g.
  `<|im_end|>` and `<|endoftext|>` for Qwen2.5-Instruct. The tiny default model has one EOS."""

from __future__ import annotations

from pathlib import Path

from jinja2 import TemplateError

SYSTEM_PROBE = "agentworld-system-probe"  # rendered once per template: does the system text come out?
_SYSTEM_OK: dict[str, bool] = {}


def template_text(tok) -> str:
    """The tokenizer's chat template as text ("" when it has none; named templates joined)."""
    t = getattr(tok, "chat_template", None)
    if isinstance(t, dict):
        return "\n".join(t.values())
    return t or ""


def supports_system(tok) -> bool:
    """Whether the template renders a system message: False when it raises on one or leaves its text out."""
    key = template_text(tok)
    if key not in _SYSTEM_OK:
        probe = [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "hi"}]
        try:
            _SYSTEM_OK[key] = SYSTEM_PROBE in tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        except TemplateError:
            _SYSTEM_OK[key] = False
    return _SYSTEM_OK[key]


def merge_system(messages: list[dict]) -> list[dict]:
    """The messages without system turns, their text leading the first user turn (or a user turn of its own)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def render_chat(tok, messages: list[dict], add_generation_prompt: bool = True,
                enable_thinking: bool | None = None) -> str:
    """`messages` as the checkpoint's chat template writes them (see the module doc for system turns and thinking)."""
    text = template_text(tok)
    if not text:
        raise ValueError(f"{getattr(tok, 'name_or_path', '') or 'the tokenizer'}: the tokenizer has no chat template")
    kwargs = {"enable_thinking": enable_thinking} if enable_thinking is not None and "enable_thinking" in text else {}
    if any(m["role"] == "system" for m in messages) and not supports_system(tok):
        messages = merge_system(messages)
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)


def count_tokens(tok, text: str) -> int:
    """Tokens of rendered text, as engines and learners encode it (no special tokens added)."""
    return len(tok(text, add_special_tokens=False).input_ids)


def stop_token_ids(tok, generation_config=None) -> tuple[int, ...]:
    """The ids that end a reply: the tokenizer's EOS first, then those of `generation_config.eos_token_id`."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = [tok.eos_token_id, *(eos if isinstance(eos, (list, tuple)) else [eos])]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))


def checkpoint_generation_config(path: str | Path):
    """The checkpoint's generation config: generation_config.json, else the one transformers derives from config.json
    (as `from_pretrained` does for the model)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(path))
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(path)))
