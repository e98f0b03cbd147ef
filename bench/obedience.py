"""Does SFT with hindsight controls teach a tiny LWM to obey outcome controls?

Two tiny LWMs learn from the same random-policy transitions of an env (slippery FrozenLake by default, where
a state and action have several possible outcomes, so only a control can say which): one with
world_model.sft.control_fraction = `fraction`, one without controls. Both are probed on held-out real
transitions with a hindsight control the transition has; obedience = share of greedy predictions the labeler
confirms. The uncontrolled model is probed with and without the control line in its prompt.

    .venv/bin/python -m bench.obedience --steps 600 --sft-steps 400
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch


def collect(env_id: str, kwargs: dict, steps: int, max_steps: int, seed: int = 0) -> list[list[dict]]:
    """Random-policy episodes as trajectory-schema row dicts, until `steps` transitions."""
    from agentworld.episodes import play_episodes
    from agentworld.envs import make_env
    from agentworld.policy import RandomPolicy

    envs = [make_env(env_id, max_steps=max_steps, **kwargs) for _ in range(16)]
    policy, episodes, k = RandomPolicy(seed), {}, 0
    while sum(len(e) for e in episodes.values()) < steps:
        def record(i, t, obs, act, nobs, reward, term, trunc, info, k=k):
            episodes.setdefault(k + i, []).append(dict(
                episode_id=str(k + i), step=t, env_id=envs[i].env_id, domain=envs[i].domain, obs=obs,
                action=act.action, next_obs=nobs, reward=float(reward), terminated=bool(term), truncated=bool(trunc)))
        play_episodes(envs, policy, [seed * 100_000 + k + i for i in range(len(envs))], record)
        k += len(envs)
    for env in envs:
        env.close()
    return list(episodes.values())


def train_lwm(base: str, train_eps, control_fraction: float, sft_steps: int, seed: int = 0, batch_size: int = 32):
    """A copy of the base model after next-state SFT, hindsight controls on `control_fraction` of examples."""
    from agentworld.models.hf_engine import HFEngine, load_model_and_tokenizer
    from agentworld.worldmodel.data import wm_examples
    from agentworld.config import WMSFTConfig
    from learners.wm_recipe import run_sft

    torch.manual_seed(seed)
    model, tok = load_model_and_tokenizer(base)
    engine = HFEngine.from_model(model, tok)
    rng = random.Random(seed)
    train = wm_examples(train_eps, engine.render, control_fraction=control_fraction, rng=rng)
    cfg = WMSFTConfig(lr=2e-3, steps=sft_steps, warmup_steps=20, weight_decay=0.0, batch_size=batch_size,
                      eval_every=sft_steps + 1, balance_transitions=1.0, balance_outcomes=0.5)
    run_sft(model, tok, train, cfg, rng, lambda step, loss: None, lambda step: None)
    model.eval()
    return engine


def build_base(episodes, out: str, seed: int = 0, vocab: int = 1024) -> str:
    """The tiny Qwen2 and BPE tokenizer, the tokenizer trained on the data with and without controls."""
    from agentworld.models.tiny import build_tiny_model, render_chatml, train_tokenizer
    from agentworld.worldmodel.data import wm_examples

    render = lambda m: render_chatml(m, True)  # noqa: E731
    texts = [e.prompt + e.target for e in wm_examples(episodes, render, control_fraction=0.5, rng=random.Random(seed))]
    tok = train_tokenizer(texts, vocab, out)
    build_tiny_model(tok, out, seed=seed)
    return out


def compare(env_id: str, kwargs: dict, steps: int, sft_steps: int, fraction: float, out: str, seed: int = 0,
            max_steps: int = 30, probe_size: int = 200) -> dict:
    from agentworld.controls import measure_obedience, obedience_probe
    from agentworld.worldmodel.data import split_episodes

    t0 = time.time()
    episodes = collect(env_id, kwargs, steps, max_steps, seed)
    train_eps, held_eps = split_episodes(episodes, 0.2, seed)
    base = build_base(train_eps, out, seed)
    result = {"env": env_id, "kwargs": kwargs, "real_steps": steps, "sft_steps": sft_steps, "control_fraction": fraction}
    probe = None
    for name, cf in (("controlled", fraction), ("uncontrolled", 0.0)):
        engine = train_lwm(base, train_eps, cf, sft_steps, seed)
        if probe is None:
            probe = obedience_probe(held_eps, engine.render, random.Random(seed + 1))
            probe = random.Random(seed).sample(probe, min(probe_size, len(probe)))
            result["probe_labels"] = {c: sum(p[2].name == c for p in probe) for c in sorted({p[2].name for p in probe})}
        result[name] = measure_obedience(engine, probe, 64, controlled=True)
        if name == "uncontrolled":
            result["uncontrolled_no_control_line"] = measure_obedience(engine, probe, 64, controlled=False)
    result["seconds"] = round(time.time() - t0, 1)
    return result


if __name__ == "__main__":
    import tempfile

    p = argparse.ArgumentParser()
    p.add_argument("--env", default="gymnasium:FrozenLake-v1")
    p.add_argument("--kwargs", default='{"map_name": "4x4", "is_slippery": true}')
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--sft-steps", type=int, default=500)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(compare(a.env, json.loads(a.kwargs), a.steps, a.sft_steps, a.fraction, d, a.seed), indent=2))
