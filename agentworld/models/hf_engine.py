"""The `hf` inference engine (agentworld/models/engine.py): an HF causal LM loaded by path, with batched sampling
and per-token logprobs, scoring of candidate completions on a shared KV cache, and in-place weight updates.
The scoring functions here are also the learners' differentiable logprobs, so both see the same tokens."""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentworld.models.chat import render_chat, stop_token_ids
from agentworld.models.engine import Generation, read_weights
from agentworld.registry import INFERENCE_ENGINES


def load_tokenizer(path: str):
    """The checkpoint's tokenizer, padding with EOS when it has no pad token."""
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def place(model, device: str):
    """`model` moved to `device` (cpu, or cuda where engine.num_gpus > 0: see Runtime.device)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"engine.num_gpus > 0 puts the model on {device}, but torch {torch.__version__} sees no "
                           "CUDA device here")
    return model.to(device)


def load_model_and_tokenizer(path: str, dtype: str = "float32", device: str = "cpu"):
    """Load an HF checkpoint directory (model + tokenizer): the model in `dtype` (float32 | bfloat16) on `device`."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return place(model, device), load_tokenizer(path)


def encode_pairs(tok, prompts: Sequence[str], completions: Sequence[str | Sequence[int]]):
    """Right-padded ids of prompt+completion (each tokenized on its own, then joined; a completion given as token ids
    is taken as it is) and a mask that is 1 on completion tokens. Training and scoring both use it, so they see the
    same tokens."""
    seqs, comp_lens = [], []
    for p, c in zip(prompts, completions):
        p_ids = tok(p, add_special_tokens=False).input_ids
        c_ids = tok(c, add_special_tokens=False).input_ids if isinstance(c, str) else list(c)
        seqs.append(p_ids + c_ids)
        comp_lens.append(len(c_ids))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, comp_lens)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        comp[i, len(s) - n : len(s)] = True
    return ids, attn, comp


def completion_logprobs(model, ids, attn, comp, temperature: float = 1.0) -> torch.Tensor:
    """Summed log-probability of the completion tokens of each row (differentiable)."""
    # logits only where some row predicts a completion token: a long prompt's vocab-wide logits (batch x length x
    # vocab floats, and their gradient) are most of the memory and the LM head's time otherwise
    keep = comp[:, 1:].any(0).nonzero().squeeze(1)  # on the host, before the inputs move to the model's device
    ids, attn, comp, keep = (t.to(model.device) for t in (ids, attn, comp, keep))
    if last_logits(model):
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=keep).logits.float()
    else:
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1][:, keep].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:][:, keep, None]).squeeze(-1)
    return (logp * comp[:, 1:][:, keep]).sum(-1)


def choice_logprobs(model, tok, prompts: Sequence[str], choices: Sequence[Sequence[str]]) -> torch.Tensor:
    """Summed logprob of every `choice + EOS` after its prompt, flat in prompt-major order
    (differentiable). Each prompt is encoded once; its KV cache is shared by all its choices."""
    enc = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(model.device)
    pmask = enc.attention_mask
    ppos = (pmask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=enc.input_ids, attention_mask=pmask, position_ids=ppos, use_cache=True, logits_to_keep=1)
    idx = torch.tensor([i for i, cs in enumerate(choices) for _ in cs], device=model.device)
    cache = out.past_key_values
    cache.batch_select_indices(idx)
    comp = [tok(c + tok.eos_token, add_special_tokens=False).input_ids for cs in choices for c in cs]
    width = max(len(c) for c in comp)
    cids = torch.full((len(comp), width), tok.pad_token_id, dtype=torch.long)
    cmask = torch.zeros((len(comp), width), dtype=torch.long)
    for k, c in enumerate(comp):
        cids[k, : len(c)] = torch.tensor(c)
        cmask[k, : len(c)] = 1
    cids, cmask = cids.to(model.device), cmask.to(model.device)
    first = torch.log_softmax(out.logits[idx, -1].float(), -1).gather(1, cids[:, :1]).squeeze(1)
    if width == 1:
        return first
    pos = ppos[idx, -1:] + 1 + torch.arange(width - 1, device=model.device)[None]
    rest = model(input_ids=cids[:, :-1], attention_mask=torch.cat([pmask[idx], cmask[:, :-1]], 1),
                 position_ids=pos, past_key_values=cache, use_cache=True).logits.float()
    logp = torch.log_softmax(rest, -1).gather(-1, cids[:, 1:, None]).squeeze(-1)
    return first + (logp * cmask[:, 1:]).sum(-1)


class HFEngine:
    """Plain HF/torch inference. `version` is the weight version currently loaded."""

    kind = "hf"

    def __init__(self, path: str, seed: int = 0, dtype: str = "float32", device: str = "cpu"):
        self.path = path
        self.model, self.tok = load_model_and_tokenizer(path, dtype, device)
        self.model.eval()
        self.version = 0
        self.stop_ids = stop_token_ids(self.tok, getattr(self.model, "generation_config", None))
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_model(cls, model, tok) -> "HFEngine":
        """An engine over a model held elsewhere (a learner evaluates its own weights with it)."""
        engine = cls.__new__(cls)
        engine.path, engine.model, engine.tok, engine.version = None, model, tok, 0
        engine.stop_ids = stop_token_ids(tok, getattr(model, "generation_config", None))
        engine.generator = torch.Generator().manual_seed(0)
        return engine

    def load_weights(self, weights: dict | str, version: int) -> None:
        """Swap weights in place (a state dict, or a checkpoint dir; copied into the model's dtype and device): the
        engine keeps running."""
        weights = read_weights(weights) if isinstance(weights, str) else weights
        missing = self.model.load_state_dict(weights, strict=False).missing_keys
        # save_pretrained leaves out tied copies (lm_head = embeddings): only those may be missing
        params = dict(self.model.named_parameters(remove_duplicate=False))
        untied = [k for k in missing if not any(params[k] is params[j] for j in weights if j in params)]
        if untied:
            raise KeyError(f"weights lack {untied[:3]}")
        self.version = version

    def render(self, messages: list[dict], add_generation_prompt: bool = True, enable_thinking: bool | None = None) -> str:
        return render_chat(self.tok, messages, add_generation_prompt, enable_thinking)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int | None = None) -> list[Generation]:
        """Sample (temperature > 0) or decode greedily, with a KV cache, until any of the stop ids (`stop_ids`), a
        stop string or the token limit. Logprobs are under the distribution that was sampled from. A `seed` makes the call
        reproducible; without one the engine's own generator advances."""
        tok, model = self.tok, self.model
        generator = self.generator if seed is None else torch.Generator().manual_seed(seed)
        enc = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        enc = enc.to(model.device)
        mask = enc.attention_mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        # the prompt's last position only: the LM head over every prompt position costs batch x length x vocab floats
        out = model(input_ids=enc.input_ids, attention_mask=mask, position_ids=pos, use_cache=True, **last_logits(model))
        n = len(prompts)
        done = [False] * n
        ids: list[list[int]] = [[] for _ in range(n)]
        lps: list[list[float]] = [[] for _ in range(n)]
        texts = [""] * n
        ended: list[int | None] = [None] * n  # the stop id that ended each reply
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            logp = torch.log_softmax(logits / temperature if temperature > 0 else logits, -1)
            if temperature > 0:
                nxt = torch.multinomial(logp.exp().cpu(), 1, generator=generator).squeeze(1).to(logp.device)
            else:
                nxt = logp.argmax(-1)
            chosen = logp.gather(1, nxt[:, None]).squeeze(1)
            for i in range(n):
                if done[i]:
                    continue
                t = int(nxt[i])
                if t in self.stop_ids:  # its logprob counts: ending the reply is part of the action
                    lps[i].append(float(chosen[i]))
                    done[i], ended[i] = True, t
                    continue
                ids[i].append(t)
                lps[i].append(float(chosen[i]))
                if stop:
                    texts[i] = tok.decode(ids[i], skip_special_tokens=False)
                    if any(s in texts[i] for s in stop):
                        done[i] = True
            if all(done):
                break
            mask = torch.cat([mask, mask.new_ones((n, 1))], 1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                        past_key_values=out.past_key_values, use_cache=True)
        gens = []
        for i in range(n):
            text = tok.decode(ids[i], skip_special_tokens=False)
            for s in stop:
                if s in text:
                    text = text[: text.index(s) + len(s)]
            gens.append(Generation(text, ids[i], lps[i], ended[i]))
        return gens

    @torch.no_grad()
    def score_choices(self, prompts: Sequence[str], choices: Sequence[Sequence[str]]) -> torch.Tensor:
        """Flat summed logprobs of each `choice + EOS`, sharing each prompt's KV cache."""
        return choice_logprobs(self.model, self.tok, prompts, choices)


def last_logits(model) -> dict:
    """`logits_to_keep=1` where the model's forward takes it (transformers' causal LMs do), else nothing."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it on
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}


@INFERENCE_ENGINES.register("hf")
def build_hf_engine(path: str, seed: int, vllm, dtype: str = "float32", device: str = "cpu") -> HFEngine:
    """The INFERENCE_ENGINES builder; the vllm options do not apply to it."""
    return HFEngine(path, seed=seed, dtype=dtype, device=device)
