"""The LWM recipe's three stages, each a plain loop over a model held by the WorldModelLearner.

CPT injects dynamics (causal LM on packed raw text), SFT activates predict-the-next-state in the chat
format (loss on the state tokens only), RL sharpens fidelity: G sampled predictions per prompt, a hybrid
rule (+ rubric) reward, and the loss `rl.algorithm` names in learners/losses.py: group-relative advantages and a
clipped importance ratio taken per token (GRPO) or per sequence (GSPO: the length-normalised sequence ratio)."""

from __future__ import annotations

import random
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from agentworld.config import Runtime, WMCPTConfig, WMRLConfig, WMSFTConfig
from agentworld.models.hf_engine import completion_logprobs, encode_pairs
from agentworld.registry import LOSSES
from agentworld.worldmodel.rewards import hybrid_reward, rule_scores
from learners.losses import Loss, kl_penalty
from learners.train_engine import make_trainer

OnStep = Callable[[int, float], None]  # (step, loss or, for RL, mean reward)
Save = Callable[[int, object], None]  # (step, trainer): checkpoint the stage mid-way


# ---- CPT --------------------------------------------------------------------------------------------

def corpus_texts(paths: list[str]) -> list[str]:
    """Text of the named files, and of the .txt/.md files under named folders."""
    texts = []
    for p in map(Path, paths):
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        texts += [f.read_text(errors="replace") for f in files if f.is_file() and (f == p or f.suffix in (".txt", ".md"))]
    return texts


def pack(tok, texts: list[str], seq_len: int) -> torch.Tensor:
    """All texts, EOS-separated, cut into rows of `seq_len` tokens (the tail that does not fill a row is dropped)."""
    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"CPT corpus has {len(ids)} tokens, fewer than one sequence of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def cpt_loss(model, tok, rows: list[torch.Tensor]) -> torch.Tensor:
    """Causal-LM loss on packed rows."""
    batch = torch.stack(rows).to(model.device)
    return model(input_ids=batch, labels=batch).loss


def run_cpt(model, tok, texts: list[str], cfg: WMCPTConfig, rng: random.Random, on_step: OnStep,
            runtime: Runtime | None = None, start: int = 0, resume: str | None = None, save: Save | None = None,
            save_every: int = 0):
    """`runtime.engine` names the training engine that runs the steps (None: torch). Returns the trainer, whose
    `save` checkpoints the stage with its optimizer, scheduler and RNG state. `save(step, trainer)` runs every
    `save_every` steps before the last; `resume` (a checkpoint `save` made at step `start`) goes on after it."""
    rows = pack(tok, texts, cfg.seq_len)
    trainer = make_trainer(model, tok, cfg.lr, cfg.steps, min(20, cfg.steps // 10), runtime=runtime)
    if resume:
        trainer.load_trainer_state(resume)
    for step in range(start + 1, cfg.steps + 1):
        batch = [rows[rng.randrange(len(rows))] for _ in range(cfg.batch_size)]
        on_step(step, trainer.step(cpt_loss, batch))
        if save and save_every and step % save_every == 0 and step < cfg.steps:
            save(step, trainer)
    return trainer


# ---- SFT --------------------------------------------------------------------------------------------

def sampling_weights(examples, balance_transitions: float, balance_outcomes: float) -> list[float]:
    """count(same prompt)^-a * count(same outcome)^-b: rare transitions and outcomes get seen."""
    prompts = Counter(e.prompt for e in examples)
    outcomes = Counter((e.reward, e.done) for e in examples)
    return [prompts[e.prompt] ** -balance_transitions * outcomes[(e.reward, e.done)] ** -balance_outcomes
            for e in examples]


def sft_loss(model, tok, batch) -> torch.Tensor:
    """Mean cross-entropy over target tokens (the tagged next state and EOS)."""
    ids, attn, comp = encode_pairs(tok, [e.prompt for e in batch], [e.target + tok.eos_token for e in batch])
    return -completion_logprobs(model, ids, attn, comp).sum() / comp[:, 1:].sum()


def run_sft(model, tok, train, cfg: WMSFTConfig, rng: random.Random, on_step: OnStep,
            on_eval: Callable[[int], None], runtime: Runtime | None = None, start: int = 0, resume: str | None = None,
            save: Save | None = None, save_every: int = 0):
    """As `run_cpt`; `on_eval(step)` every `cfg.eval_every` steps before the last."""
    trainer = make_trainer(model, tok, cfg.lr, cfg.steps, cfg.warmup_steps, cfg.weight_decay, runtime=runtime)
    if resume:
        trainer.load_trainer_state(resume)
    weights = sampling_weights(train, cfg.balance_transitions, cfg.balance_outcomes)
    for step in range(start + 1, cfg.steps + 1):
        on_step(step, trainer.step(sft_loss, rng.choices(train, weights, k=cfg.batch_size)))
        if step % cfg.eval_every == 0 and step != cfg.steps:
            on_eval(step)
        if save and save_every and step % save_every == 0 and step < cfg.steps:
            save(step, trainer)
    return trainer


# ---- RL ---------------------------------------------------------------------------------------------

def token_logprobs(model, tok, prompts: list[str], completions: list[list[int]], temperature: float = 1.0):
    """Per-token logprobs (at `temperature`, as sampled) of given completion token ids after each prompt,
    right-padded, and their mask."""
    seqs = [tok(p, add_special_tokens=False).input_ids + c for p, c in zip(prompts, completions)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    ids, attn = ids.to(model.device), attn.to(model.device)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = torch.log_softmax(logits / temperature if temperature > 0 else logits, -1)
    logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    width_c = max(map(len, completions))
    out = torch.zeros((len(seqs), width_c), device=logp.device)
    mask = torch.zeros((len(seqs), width_c), device=logp.device)
    for i, (s, c) in enumerate(zip(seqs, completions)):
        start = len(s) - len(c) - 1
        out[i, : len(c)] = logp[i, start : start + len(c)]
        mask[i, : len(c)] = 1
    return out, mask


def padded(rows: list[list[float]], device) -> torch.Tensor:
    out = torch.zeros((len(rows), max(map(len, rows))), device=device)
    for j, r in enumerate(rows):
        out[j, : len(r)] = torch.tensor(r)
    return out


def rl_loss(model, tok, items: list[dict], loss: Loss, clip: float, temperature: float, kl: float) -> torch.Tensor:
    """`loss`'s clipped objective on sampled completions (`prompt`, `comp` ids, behaviour logprobs `old`, `adv`),
    plus `kl` times the KL to the reference logprobs `ref`."""
    new, mask = token_logprobs(model, tok, [i["prompt"] for i in items], [i["comp"] for i in items], temperature)
    old = padded([i["old"] for i in items], new.device)
    adv = torch.tensor([i["adv"] for i in items], device=new.device)
    out = loss.objective(new, old, mask, adv, clip)
    if kl > 0:
        out = out + kl * kl_penalty(new, padded([i["ref"] for i in items], new.device), mask)
    return out


def run_rl(model, engine, tok, train, cfg: WMRLConfig, rng: random.Random, on_step: OnStep,
           weights: list[float] | None = None, rubric=None, runtime: Runtime | None = None):
    """`rubric(example, reply) -> 0..1 or None` adds the judge's part when the reward config weighs it.
    `engine` samples the predictions; `runtime.engine` names the training engine."""
    w, rl = cfg.reward, LOSSES.get(cfg.algorithm)
    trainer = make_trainer(model, tok, cfg.lr, cfg.steps * cfg.epochs, runtime=runtime)
    g = cfg.group_size
    beta = cfg.kl
    ref = None
    if beta > 0:  # a frozen copy of the model RL starts from: the KL term keeps sharpening from drifting
        import copy

        ref = copy.deepcopy(model).eval().requires_grad_(False)
    for step in range(1, cfg.steps + 1):
        prompts_ex = rng.choices(train, weights, k=cfg.prompts_per_step)
        prompts = [e.prompt for e in prompts_ex for _ in range(g)]
        gens = engine.generate(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
        rewards = []
        for i, gen in enumerate(gens):
            e = prompts_ex[i // g]
            rb = rubric(e, gen.text) if rubric is not None and w.rubric > 0 else None
            finished = len(gen.logprobs) > len(gen.token_ids)  # ended with EOS, not cut at max_new_tokens
            rewards.append(hybrid_reward(rule_scores(gen.text, e.next_obs, e.reward, e.done), w, rb) if finished else 0.0)
        r = torch.tensor(rewards).view(-1, g)
        # torch's unbiased std, as this RL always had it (the agent's groups use the population std): same numbers
        adv = rl.advantage(r, r.mean(1, keepdim=True), r.std(1, keepdim=True), g).view(-1)
        # the completion is what was sampled, the EOS that ended it included (any of the checkpoint's stop ids)
        comps = [gen.reply_ids for gen in gens]
        keep = [i for i in range(len(gens)) if abs(float(adv[i])) > 1e-6 and comps[i]]
        if keep:
            items = [dict(prompt=prompts[i], comp=comps[i], old=gens[i].logprobs, adv=float(adv[i])) for i in keep]
            if ref is not None:  # frozen: computed once per step, on this rank only
                with torch.no_grad():
                    ref_lp, mask = token_logprobs(ref, tok, [prompts[i] for i in keep], [comps[i] for i in keep],
                                                  cfg.temperature)
                for item, lp, m in zip(items, ref_lp, mask):
                    item["ref"] = lp[: int(m.sum())].tolist()
            loss_fn = partial(rl_loss, loss=rl, clip=cfg.clip, temperature=cfg.temperature, kl=beta)
            for _ in range(cfg.epochs):
                trainer.step(loss_fn, items)
        on_step(step, float(r.mean()))
    return trainer
