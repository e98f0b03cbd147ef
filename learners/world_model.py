"""WorldModelLearner: runs the LWM recipe's stages (`world_model.stages`, any of cpt, sft, rl, in order)
on real transitions from the replay, measures fidelity on held-out real transitions after every stage,
and publishes versioned weights that the simulators reload. The model is loaded in model.dtype on the learner's
device; with model.lora one adapter trains through every stage, and what is published and saved is merged."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from agentworld.config import Runtime, WorldModelConfig, lwm_generation, lwm_rl
from agentworld.metrics import metric_row

from agentworld.models.hf_engine import HFEngine
from agentworld.models.lora import load_trainable, merged_state_dict, save_model
from agentworld.worldmodel.data import episodes_from_table, sample_by_domain, split_by_env, trajectory_text, wm_examples
from agentworld.worldmodel.fidelity import fidelity
from agentworld.worldmodel.prompt import parse_prediction


def greedy_texts(engine: HFEngine, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """The engine's greedy replies to `prompts`, in batches of similar length (a batch is padded to its longest)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        for i, g in zip(idx, engine.generate([prompts[i] for i in idx], max_new_tokens=max_new_tokens, temperature=0.0)):
            texts[i] = g.text
    return texts


def predict(engine: HFEngine, examples, max_new_tokens: int) -> list:
    """Greedy predictions of the next state of each example."""
    return [parse_prediction(t) for t in greedy_texts(engine, [e.prompt for e in examples], max_new_tokens)]


def distinct(examples):
    """One example per distinct prompt, so fidelity is not dominated by the commonest transitions."""
    return list({e.prompt: e for e in examples}.values())


class PerDomain:
    """Held-out fidelity per domain beside the copy and retrieve baselines on the same transitions
    (agentworld/worldmodel/baselines.py), and open-loop fidelity against horizon."""

    HORIZONS = (1, 2, 4, 8)

    def __init__(self, held_eps, train_eps, held, engine, wm, count):
        from agentworld.worldmodel.baselines import baselines, transitions

        self.make = lambda eps: transitions(eps, engine.render, wm.history_turns, wm.history_budget_tokens,  # noqa: E731
                                            count, notes=dict(wm.prompts))
        self.wm, self.engine, self.count = wm, engine, count
        by_prompt = {t.prompt: t for t in self.make(held_eps)}
        # the measured examples, with their state and domain (on training data, those without a control line)
        self.idx = [i for i, e in enumerate(held) if e.prompt in by_prompt]
        self.held = [by_prompt[held[i].prompt] for i in self.idx]
        self.domains = sorted({e[0]["domain"] for e in held_eps + train_eps})
        self.base = baselines(self.held, self.make(train_eps))

    def rows(self, preds) -> list[dict]:
        from agentworld.worldmodel.baselines import domain_rows

        return [dict(domain=r["domain"], predictor=name, main_metric=r["main_metric"], n=r["n"], **scores)
                for r in domain_rows(self.held, {"model": [preds[i] for i in self.idx], **self.base}, self.domains)
                for name, scores in r["scores"].items()]

    def horizon(self, predict_texts, held_eps, seed: int) -> list[dict]:
        from agentworld.worldmodel.baselines import rollout_fidelity

        eps = random.Random(seed + 2).sample(held_eps, min(len(held_eps), self.wm.sft.eval_samples // 4 or 1))
        rows = rollout_fidelity(eps, predict_texts, self.engine.render, self.wm.history_turns, self.HORIZONS,
                                self.wm.history_budget_tokens, self.count, domains=self.domains,
                                notes=dict(self.wm.prompts))
        return [dict(domain=r["domain"], predictor=name, main_metric=r["main_metric"], horizon=r["horizon"], n=r["n"],
                     **{k: v for k, v in scores.items() if k in ("main", "exact_match", "edit_similarity")})
                for r in rows for name, scores in r["scores"].items()]


@dataclass
class WMLearnerSpec:
    """What the WorldModelLearner trains: built by the driver from the config sections."""
    base_path: str  # the checkpoint the stages start from
    run_dir: str
    t0: float
    data_arms: list[str]  # the replay arms holding its real transitions, one per source
    heldout_arms: list[str]  # sources held out whole (a split by task); the others' episodes split per env
    seed: int
    world_model: WorldModelConfig
    runtime: Runtime
    checkpoint_every: int = 0  # CPT and SFT save their state every this many steps (checkpoint.wm_every_steps)


def progress_file(run_dir: str) -> Path:
    """Where a WorldModelLearner records how far it got: a restarted one goes on from there."""
    return Path(run_dir) / "checkpoints" / "wm-progress.json"


def read_progress(run_dir: str) -> dict | None:
    try:
        return json.loads(progress_file(run_dir).read_text())
    except (OSError, ValueError):
        return None


def progress_words(p: dict | None) -> str:
    """Where a learner starting from progress `p` goes on from, in words."""
    if not p:
        return "the start"
    return f"{p['stage']} step {p['step']}" if p["stage"] else f"the end of {p['done'][-1]}"


@ray.remote(max_concurrency=2)
class WorldModelLearner:
    def __init__(self, spec: WMLearnerSpec, replay, registry):
        torch.set_num_threads(spec.runtime.ray.torch_threads)
        from learners.weight_sync import make_weight_sync

        self.spec, self.replay = spec, replay
        self.sync = make_weight_sync(spec.runtime, registry)
        self.rows: list[dict] = []
        self.version = 0
        self.stage, self.step, self.total_steps = "starting", 0, 0
        self.phase = "starting"
        self.resumed_from = None  # train() sets it: where this learner's training goes on from

    def _log(self, kind: str, **row) -> None:
        self.rows.append(metric_row(kind, wall_time=time.time() - self.spec.t0, **row))

    def train(self) -> dict:
        """Run every configured stage; returns the final checkpoint path, each stage's checkpoint path, the version and
        fidelity."""
        from learners import wm_recipe

        spec, wm = self.spec, self.spec.world_model
        torch.manual_seed(spec.seed)
        rng = random.Random(spec.seed)
        # an earlier learner of this run's LWM died: go on from its last checkpoint (a stage's end, or CPT/SFT mid-way)
        pfile = progress_file(spec.run_dir)
        progress = read_progress(spec.run_dir)
        self.resumed_from = progress_words(progress)
        model, tok = load_trainable(progress["path"] if progress else spec.base_path, spec.runtime.dtype,
                                    spec.runtime.device, spec.runtime.lora, resume=bool(progress),
                                    gradient_checkpointing=spec.runtime.gradient_checkpointing)
        engine = HFEngine.from_model(model, tok)
        train_eps, held_eps = [], []
        for arm in spec.data_arms:
            eps = episodes_from_table(ray.get(self.replay.sample.remote(arm=arm, source="real")))
            t, h = ([], eps) if arm in spec.heldout_arms else split_by_env(eps, wm.data.heldout_fraction, spec.seed)
            train_eps, held_eps = train_eps + t, held_eps + h
        if not train_eps:
            raise RuntimeError(f"no real training transitions in the replay arms {', '.join(spec.data_arms)}")
        count = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
        rationale = self._rationales(train_eps, tok)
        make = lambda eps, cf=0.0, pf=0.0, ff=0.0: wm_examples(  # noqa: E731
            eps, engine.render, wm.history_turns, rationale, wm.history_budget_tokens, count, cf, rng, dict(wm.prompts),
            pf, ff)
        # controls on training examples only: held-out fidelity is measured without them
        train = make(train_eps, wm.sft.control_fraction, wm.sft.perturbation_fraction, wm.sft.fictional_fraction)
        held = make(held_eps)
        held = distinct(held or train)  # no held-out episodes: measured on training data, said in the row
        held = sample_by_domain(held, wm.sft.eval_samples, rng)
        max_new = lwm_generation(wm).max_new_tokens  # the think block's budget included
        per_domain = PerDomain(held_eps or train_eps, train_eps, held, engine, wm, count)
        out = f"{spec.run_dir}/checkpoints/wm"
        from agentworld.controls import balanced_sample, control_probe, measure_obedience, obedience_probe

        # trained with hindsight controls: held-out obedience to a counterfactual outcome (one the real transition
        # did not have), with the control line and without it (the chance that the LWM predicts it anyway)
        probe = []
        if wm.sft.control_fraction > 0:
            probe = obedience_probe(held_eps or train_eps, engine.render, random.Random(spec.seed + 1),
                                    wm.history_turns, counterfactual=True)
            probe = random.Random(spec.seed).sample(probe, min(len(probe), wm.sft.eval_samples))
        # trained with perturbation or fictional controls: held-out obedience per control, with and without the line
        kinds = tuple(k for k, share in (("perturbation", wm.sft.perturbation_fraction),
                                         ("fictional", wm.sft.fictional_fraction)) if share > 0)
        kprobe = []
        if kinds:
            kprobe = control_probe(held_eps or train_eps, engine.render, random.Random(spec.seed + 2), wm.history_turns,
                                   kinds)
            kprobe = balanced_sample(kprobe, wm.sft.eval_samples, random.Random(spec.seed))

        def measure(stage: str) -> dict:
            self.phase = f"{stage}: measuring fidelity"
            preds = predict(engine, held, max_new)
            f = fidelity(preds, [(e.next_obs, e.reward, e.done) for e in held])
            for row in per_domain.rows(preds):
                self._log("wm_domain", wm_version=self.version, stage=stage, train_step=self.step_total,
                          heldout=bool(held_eps), **row)
            if probe:
                f = dict(f, obedience=measure_obedience(engine, probe, max_new)["obedience"],
                         obedience_without_control=measure_obedience(engine, probe, max_new, controlled=False)["obedience"])
            if kprobe:
                on, off = (measure_obedience(engine, kprobe, max_new, controlled=c) for c in (True, False))
                for name, rate in sorted(on["by_label"].items()):
                    self._log("wm_control", wm_version=self.version, stage=stage, train_step=self.step_total,
                              heldout=bool(held_eps), control=name, n=on["n_by_label"][name], obedience=rate,
                              obedience_without_control=off["by_label"][name])
            self._log("wm", wm_version=self.version, stage=stage, train_step=self.step_total, heldout=bool(held_eps),
                      train_examples=len(train), **f)
            return f

        def publish(stage: str) -> dict:
            self.version += 1
            f = measure(stage)
            self.sync.publish("wm", self.version, merged_state_dict(model))  # base + adapter delta, base names
            save_model(model, out)  # loadable by path; a LoRA model's adapter in out/adapter
            tok.save_pretrained(out)
            return f

        def on_step(stage: str):
            def cb(step: int, value: float) -> None:
                self.step, self.step_total = step, self.step_total + 1
                self.phase = stage
                losses.append(value)
                if step % 25 == 0 or step == self.total_steps:
                    self._log("wm_train", stage=stage, wm_version=self.version, train_step=self.step_total,
                              value=sum(losses) / len(losses))
                    losses.clear()
            return cb

        def save(stage: str, step: int | None, trainer, path: str, stages_done: list) -> None:
            """Checkpoint: the trainer at `path` (weights, optimizer, scheduler, RNG), then the progress file that
            points at it (written last, atomically: a death mid-save leaves the previous one)."""
            self.phase = f"{stage}: checkpointing"
            trainer.save(path, tok)
            state = {"stage": stage if step is not None else None, "step": step, "path": path, "done": stages_done,
                     "version": self.version, "step_total": self.step_total, "rows": self.rows,
                     "rng": rng.getstate(), "pid": os.getpid()}
            tmp = pfile.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, default=str))
            os.replace(tmp, pfile)

        def mid_stage(stage: str, stages_done: list):
            return lambda step, trainer: save(stage, step, trainer, f"{out}-partial", stages_done)

        self.step_total = 0
        losses: list[float] = []
        if progress:
            rng.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in progress["rng"]))
            self.rows, self.version, self.step_total = progress["rows"], progress["version"], progress["step_total"]
            last = next(r for r in reversed(self.rows) if r["kind"] == "wm")
            f = {k: last[k] for k in ("exact_match", "edit_similarity", "outcome_accuracy", "n", "obedience",
                                      "obedience_without_control") if k in last}
        else:
            f = measure("untrained")  # version 0
        stages_done = list(progress["done"]) if progress else []
        for stage in wm.stages:
            if stage in stages_done:
                continue
            cfg = getattr(wm, stage)
            start = progress["step"] if progress and progress["stage"] == stage else 0
            resume = progress["path"] if start else None
            self.stage, self.step, self.total_steps = stage, start, cfg.steps
            every = spec.checkpoint_every
            if stage == "cpt":
                texts = [trajectory_text(e) for e in train_eps] if cfg.trajectories else []
                trainer = wm_recipe.run_cpt(model, tok, texts + wm_recipe.corpus_texts(cfg.corpora), cfg, rng,
                                            on_step("cpt"), runtime=spec.runtime, start=start, resume=resume,
                                            save=mid_stage(stage, stages_done), save_every=every)
            elif stage == "sft":
                trainer = wm_recipe.run_sft(model, tok, train, cfg, rng, on_step("sft"), lambda step: publish("sft"),
                                            runtime=spec.runtime, start=start, resume=resume,
                                            save=mid_stage(stage, stages_done), save_every=every)
            elif stage == "rl":  # restarts at the stage's start: its KL reference is the model the stage began with
                cfg = lwm_rl(wm, cfg)
                weights = wm_recipe.sampling_weights(train, wm.sft.balance_transitions, wm.sft.balance_outcomes)
                trainer = wm_recipe.run_rl(model, engine, tok, train, cfg, rng, on_step("rl"), weights,
                                           self._rubric(cfg), runtime=spec.runtime)
            f = publish(stage)
            stages_done = stages_done + [stage]
            save(stage, None, trainer, f"{out}-{stage}", stages_done)  # weights, optimizer, scheduler, RNG: resumable
        if self.version == 0:  # no stage asked for: the untrained model is the world model
            publish("untrained")
        self.phase = "open-loop rollouts"
        for row in per_domain.horizon(lambda prompts: greedy_texts(engine, prompts, max_new), held_eps, spec.seed):
            self._log("wm_horizon", stage=wm.stages[-1] if wm.stages else "untrained", **row)
        self.phase = "done"
        self._state = (model, tok, engine, rng, held, max_new, measure, publish, on_step, make)
        # each stage's own checkpoint too: `init: cpt` starts an agent from the CPT-only one
        return {"path": out, "wm_version": self.version, "stages": {st: f"{out}-{st}" for st in wm.stages}, **f}

    def _rationales(self, train_eps, tok):
        """`rationale(row)` for the SFT targets' think blocks (None: no think block), cut to think.max_tokens, and
        a `think` row of counts; teacher failures are counted, and their transitions train without a rationale."""
        from agentworld.worldmodel.think import rationale_fn

        t = self.spec.world_model.think
        if t.source == "none":
            return None
        rows = [r for e in train_eps for r in e]
        self.phase = f"think traces: {t.source}"
        progress = lambda i, n: setattr(self, "phase", f"think traces: teacher {i}/{n}")  # noqa: E731
        fn, stats = rationale_fn(rows, t, t.cache or f"{self.spec.run_dir}/think_cache.jsonl", progress)
        if t.source in ("describe", "teacher"):
            with_text = sum(bool(fn(r)) for r in rows)
            self._log("think", source=t.source, transitions=len(rows), with_rationale=with_text,
                      **{k: stats[k] for k in ("cached", "asked", "failed", "unusable") if k in stats})
            if stats.get("failed") or stats.get("unusable"):
                print(f"think traces: {stats['failed']} teacher requests failed, {stats['unusable']} replies had no "
                      f"usable rationale (first error: {stats['first_error']}); those transitions train without one")

        def clipped(row):
            text = fn(row)
            ids = tok(text or "", add_special_tokens=False).input_ids
            return tok.decode(ids[: t.max_tokens]) if len(ids) > t.max_tokens else text

        return clipped

    def continual(self, cursor: int | list) -> int:
        """Keep training on real transitions of any arm that arrive after replay row `cursor`, a round
        of `continual.steps` RL (or SFT) steps per `continual.min_new` transitions, publishing a version
        after each round, until stopped. Returns the number of rounds."""
        from learners import wm_recipe

        if not hasattr(self, "_state"):
            raise RuntimeError("continual() needs train() to have run in this learner")
        model, tok, engine, rng, held, max_new, measure, publish, on_step, make = self._state
        wm = self.spec.world_model
        c = wm.continual
        self._stop, rounds, fresh = False, 0, []
        while not self._stop:
            table, cursor = ray.get(self.replay.since.remote(cursor, source="real"))
            if table.num_rows:
                fresh += episodes_from_table(table)
            if sum(len(e) for e in fresh) < c.min_new:
                time.sleep(0.5)
                continue
            examples, fresh = make(fresh), []
            self.stage, self.step, self.total_steps = f"continual-{c.stage}", 0, c.steps
            cfg = dataclasses.replace(getattr(wm, c.stage), steps=c.steps)
            if c.stage == "rl":
                cfg = lwm_rl(wm, cfg)
            if c.stage == "sft":
                wm_recipe.run_sft(model, tok, examples, dataclasses.replace(cfg, eval_every=c.steps + 1), rng,
                                  on_step(self.stage), lambda step: None, runtime=self.spec.runtime)
            else:
                wm_recipe.run_rl(model, engine, tok, examples, cfg, rng, on_step(self.stage), runtime=self.spec.runtime)
            publish(self.stage)
            rounds += 1
        return rounds

    def stop(self) -> None:
        self._stop = True

    @staticmethod
    def _rubric(cfg):
        """The judge's part of the RL reward (a WMRLConfig), where it is weighed."""
        if not cfg.judge_endpoint or cfg.reward.rubric <= 0:
            return None
        from agentworld.worldmodel.judge import judge, normalized_total
        from agentworld.worldmodel.prompt import parse_prediction

        def score(example, reply: str):
            scores, _, _ = judge(cfg.judge_endpoint, cfg.judge_model, [{"role": "user", "content": example.prompt}],
                                 parse_prediction(reply).obs, example.next_obs)
            return None if scores is None else normalized_total(scores) / 100

        return score

    def status(self) -> dict:
        last = next((r for r in reversed(self.rows) if r["kind"] == "wm"), {})
        return {"stage": self.stage, "step": self.step, "total_steps": self.total_steps, "version": self.version,
                "phase": self.phase, "resumed_from": self.resumed_from, "exact_match": last.get("exact_match"),
                "edit_similarity": last.get("edit_similarity")}

    def metrics(self, since: int = 0) -> list[dict]:
        return self.rows[since:]
