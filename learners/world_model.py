"""WorldModelLearner: next-state SFT on real transitions from the replay (loss on the observation
tokens only), fidelity on held-out real transitions, and versioned weights for the simulators."""

from __future__ import annotations

import random
import time
from collections import Counter

import ray
import torch

from agentworld.models.hf_engine import HFEngine, completion_logprobs, encode_pairs, load_model_and_tokenizer
from agentworld.worldmodel.data import episodes_from_table, split_episodes, wm_examples
from agentworld.worldmodel.fidelity import fidelity
from agentworld.worldmodel.prompt import parse_prediction


def measure_fidelity(engine: HFEngine, examples, max_new_tokens: int, batch_size: int = 32) -> dict:
    """Greedy predictions on `examples` scored against the real next states."""
    preds = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        gens = engine.generate([e.prompt for e in chunk], max_new_tokens=max_new_tokens, temperature=0.0)
        preds += [parse_prediction(g.text) for g in gens]
    return fidelity(preds, [(e.next_obs, e.reward, e.done) for e in examples])


def sampling_weights(examples, balance_transitions: float, balance_outcomes: float) -> list[float]:
    """count(same prompt)^-a * count(same outcome)^-b: rare transitions and outcomes get seen."""
    prompts = Counter(e.prompt for e in examples)
    outcomes = Counter((e.reward, e.done) for e in examples)
    return [prompts[e.prompt] ** -balance_transitions * outcomes[(e.reward, e.done)] ** -balance_outcomes
            for e in examples]


def distinct(examples):
    """One example per distinct prompt, so fidelity is not dominated by the commonest transitions."""
    return list({e.prompt: e for e in examples}.values())


def sft_loss(model, tok, batch) -> torch.Tensor:
    """Mean cross-entropy over target tokens (the tagged next state and EOS)."""
    ids, attn, comp = encode_pairs(tok, [e.prompt for e in batch], [e.target + tok.eos_token for e in batch])
    return -completion_logprobs(model, ids, attn, comp).sum() / comp[:, 1:].sum()


@ray.remote(max_concurrency=2)
class WorldModelLearner:
    """`spec` keys: base_path, run_dir, t0, data_arm, world_model (WorldModelConfig as dict), seed,
    torch_threads."""

    def __init__(self, spec: dict, replay, registry):
        torch.set_num_threads(spec.get("torch_threads", 1))
        from learners.weight_sync import ObjectStoreWeightSync

        self.spec, self.replay = spec, replay
        self.sync = ObjectStoreWeightSync(registry)
        self.rows: list[dict] = []
        self.step = self.version = 0
        self.total_steps = spec["world_model"]["train"]["steps"]
        self.phase = "starting"

    def _log(self, kind: str, **row) -> None:
        self.rows.append(dict(kind=kind, wall_time=time.time() - self.spec["t0"], **row))

    def train(self) -> dict:
        """Train for the configured steps, publishing a version at every fidelity measurement."""
        from learners.torch_engine import TorchEngine

        spec, wm = self.spec, self.spec["world_model"]
        cfg = wm["train"]
        torch.manual_seed(spec["seed"])
        rng = random.Random(spec["seed"])
        model, tok = load_model_and_tokenizer(spec["base_path"])
        engine = HFEngine.from_model(model, tok)
        table = ray.get(self.replay.sample.remote(arm=spec["data_arm"], source="real"))
        train_eps, held_eps = split_episodes(episodes_from_table(table), wm["data"]["heldout_fraction"], spec["seed"])
        train = wm_examples(train_eps, engine.render, wm["history_turns"])
        held = wm_examples(held_eps, engine.render, wm["history_turns"])
        if not train:
            raise RuntimeError(f"no real transitions for arm {spec['data_arm']!r} in the replay")
        held = distinct(held or train)  # no held-out episodes: measure on training data, said in the row
        held = rng.sample(held, min(len(held), cfg["eval_samples"]))
        max_new = wm["generation"]["max_new_tokens"]

        def measure():
            self.phase = "measuring fidelity"
            f = measure_fidelity(engine, held, max_new)
            self._log("wm", wm_version=self.version, train_step=self.step, train_examples=len(train),
                      heldout=bool(held_eps), **f)
            self.phase = "training"
            return f

        f = measure()  # the untrained model: version 0
        trainer = TorchEngine(model, cfg["lr"], cfg["steps"], cfg["warmup_steps"], cfg["weight_decay"])
        out = f"{spec['run_dir']}/checkpoints/wm"
        losses = []
        weights = sampling_weights(train, cfg["balance_transitions"], cfg["balance_outcomes"])
        while self.step < cfg["steps"]:
            loss = sft_loss(model, tok, rng.choices(train, weights, k=cfg["batch_size"]))
            trainer.step(loss)
            losses.append(loss.item())
            self.step += 1
            if self.step % cfg["eval_every"] == 0 or self.step == cfg["steps"]:
                self.version += 1
                self._log("wm_train", wm_version=self.version, train_step=self.step,
                          loss=sum(losses) / len(losses))
                losses = []
                f = measure()
                self.sync.publish("wm", self.version, model.state_dict())
                trainer.save(out, tok)
        if self.version == 0:  # no training asked for: the untrained model is the world model
            trainer.save(out, tok)
        self.phase = "done"
        return {"path": out, "wm_version": self.version, **f}

    def status(self) -> dict:
        last = next((r for r in reversed(self.rows) if r["kind"] == "wm"), {})
        return {"step": self.step, "total_steps": self.total_steps, "version": self.version, "phase": self.phase,
                "exact_match": last.get("exact_match"), "edit_similarity": last.get("edit_similarity")}

    def metrics(self, since: int = 0) -> list[dict]:
        return self.rows[since:]
