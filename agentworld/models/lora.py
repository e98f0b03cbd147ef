"""What a learner trains: the checkpoint in `model.dtype` on its device, with LoRA adapters (peft) when `model.lora`
is enabled; and what it publishes and saves.

- `load_trainable(path, dtype, device, lora, resume)`: the model and tokenizer a learner trains. With LoRA only the
  adapters' parameters require grad (the training engines optimize only those).
- `merged_state_dict(model)`: the full weights, base + adapter delta (computed in float32), under the base model's own
  parameter names: what the weight syncs publish, so the HF and vLLM engines load it into a plain model unchanged.
- `save_model(model, path)`: a plain HF checkpoint of those merged weights (anything loads it by path) and, for a
  LoRA model, `adapter/` beside it in peft's format, naming the base checkpoint it was trained on. A resumed learner
  (`load_trainable(path, resume=True)`, then the trainer's `load_trainer_state(path)`) continues that adapter on
  that base, not a fresh adapter on the merged weights.
- `lora_targets_error(model, targets)`: a target module that is not in the model (peft ignores it when another one
  matches); `skeleton(path, tiny)` builds a checkpoint's model on the meta device, so config validation checks the
  targets without reading weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from agentworld.config import ConfigError

if TYPE_CHECKING:
    from agentworld.config import LoRAConfig, TinyModelConfig

ADAPTER_DIR = "adapter"
TARGET_KEY = "model.lora.target_modules"


def _adaptable(module) -> bool:
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, nn.Embedding, Conv1D))


def lora_targets_error(model, targets: list[str]) -> str | None:
    """What is wrong with `targets` (names or name suffixes, as peft matches them) for `model`; None: each one names
    at least one linear or embedding layer of it."""
    modules = dict(model.named_modules())
    layers = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n, m in modules.items() if n and _adaptable(m)))
    for t in targets:
        hits = [m for n, m in modules.items() if n == t or n.endswith("." + t)]
        if not hits:
            return f"no module named {t!r} in {type(model).__name__} (its linear and embedding layers: {layers})"
        if not all(_adaptable(m) for m in hits):
            kind = next(type(m).__name__ for m in hits if not _adaptable(m))
            return f"{t!r} is a {kind}, not a linear or embedding layer (those are: {layers})"
    return None


def skeleton(path: str | None, tiny: TinyModelConfig):
    """The model of the checkpoint at `path` (None: the tiny default of `tiny`'s sizes) on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agentworld.models.tiny import tiny_config

    config = AutoConfig.from_pretrained(path) if path else tiny_config(
        tiny.vocab_size, hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
        num_layers=tiny.num_layers, num_heads=tiny.num_heads, max_positions=tiny.max_positions)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def wrap_lora(model, lora: LoRAConfig, where: str = "the model"):
    """`model` with fresh adapters on `lora.target_modules` (peft): only those train. In eval mode, as loaded models
    are (peft leaves the new dropout layers in training mode)."""
    from peft import LoraConfig, get_peft_model

    problem = lora_targets_error(model, list(lora.target_modules))
    if problem:  # one line naming the key; a learner's reaches the driver whole (agentworld/driver.py)
        raise ConfigError(where, TARGET_KEY, problem)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config).eval()


def load_trainable(path: str, dtype: str = "float32", device: str = "cpu", lora: LoRAConfig | None = None,
                   resume: bool = False, gradient_checkpointing: bool = False):
    """(model, tokenizer) for a learner: the checkpoint at `path` in `dtype` on `device`, with new adapters when
    `lora.enabled` (the checkpoint's weights, merged ones included, are their base). `resume` with a checkpoint that
    holds `adapter/`: that adapter, trainable, on the base checkpoint it names. `gradient_checkpointing`: layers'
    activations are recomputed in the backward pass (model.gradient_checkpointing)."""
    model, tok = _load_trainable(path, dtype, device, lora, resume)
    if gradient_checkpointing:  # non-reentrant: gradients reach adapters whose layer inputs need none
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tok


def _load_trainable(path: str, dtype: str, device: str, lora: LoRAConfig | None, resume: bool):
    from agentworld.models.hf_engine import load_model_and_tokenizer, load_tokenizer

    adapter = Path(path) / ADAPTER_DIR
    if resume and lora is not None and lora.enabled and (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        if not (Path(base) / "config.json").is_file():
            raise FileNotFoundError(f"{adapter}: its base checkpoint {base} is gone: the adapter cannot be resumed")
        model, _ = load_model_and_tokenizer(base, dtype, device)
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True).eval(), load_tokenizer(path)
    model, tok = load_model_and_tokenizer(path, dtype, device)
    if lora is not None and lora.enabled:
        model = wrap_lora(model, lora, where=str(path))
    return model, tok


def trainable_parameters(model) -> list:
    """The parameters an optimizer gets: all of a plain model's, only the adapters' of a LoRA model."""
    return [p for p in model.parameters() if p.requires_grad]


def merged_state_dict(model) -> dict:
    """The model's full weights under the base model's parameter names: for a LoRA model each adapted layer's weight
    plus its adapter's delta, added in float32 and stored in the base weight's dtype. A plain model's own state dict."""
    if not is_lora(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    out = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(a).float() for a in module.active_adapters)
            out[f"{name}.weight"] = (weight.detach().float() + delta).to(weight.dtype)
    return out


def save_model(model, path: str | Path) -> Path:
    """A plain HF checkpoint of the merged weights at `path`; for a LoRA model also `path/adapter` (peft's format,
    naming the absolute path of its base checkpoint), from which a learner resumes."""
    path = Path(path)
    if not is_lora(model):
        model.save_pretrained(str(path))
        shutil.rmtree(path / ADAPTER_DIR, ignore_errors=True)  # an earlier LoRA save's adapter is not this model's
        return path
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    base = model.get_base_model()
    base.save_pretrained(str(path), state_dict=merged_state_dict(model))
    adapter = path / ADAPTER_DIR
    adapter.mkdir(parents=True, exist_ok=True)
    config = model.peft_config[model.active_adapter]
    if Path(str(config.base_model_name_or_path)).is_dir():
        config.base_model_name_or_path = str(Path(config.base_model_name_or_path).resolve())
    config.save_pretrained(str(adapter))
    weights = get_peft_model_state_dict(model, adapter_name=model.active_adapter)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(adapter / "adapter_model.safetensors"))
    return path
