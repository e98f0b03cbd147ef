"""ActorPool: the rollout actors of one arm, grown and shrunk between actors_min and actors_max by the
learner's demand.

Every `interval_s` the pool reads the learner's demand and takes at most one step:
- grow while the learner starves: it waited for rollouts most of the interval;
- shrink while rollouts pile up: the learner is busy, two or more of its batches wait unconsumed, and the
  replay fills at least as fast as the learner consumes (extra actors then only make staler data);
- hold while an actor it added is not placed yet: the autoscaler is bringing up a node for it.
Each decision is one `pool` row in metrics.parquet. The cluster side is Ray's: `request_cluster` asks
the autoscaler (ray.autoscaler.sdk.request_resources) for room for every pool's actors, so nodes are
added when actors cannot be placed, and the request falls when pools shrink, so idle nodes go."""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from agentworld.metrics import first_line, metric_row

STARVED = 0.5  # share of the interval the learner waited for rollouts before the pool grows
PILED = 2.0  # batches waiting before the pool shrinks: one is the batch under training, more is surplus

@dataclass
class Demand:
    """What the learner asked of the pool over one interval."""
    starved: float  # share of the interval the learner waited for rollouts
    batches_waiting: float  # rows written but not yet trained on, in learner batches
    fill_rate: float  # rows/s the arm's actors wrote to the replay
    consume_rate: float  # rows/s the learner trained on


def decide(actors: int, lo: int, hi: int, pending: int, d: Demand) -> tuple[int, str]:
    """The next actor count and why: one step at a time, never outside [lo, hi]."""
    if pending:
        return actors, f"{pending} actor(s) waiting to be placed"
    if d.starved >= STARVED:
        if actors >= hi:
            return actors, f"learner waited for rollouts {d.starved:.0%} of the time, pool at actors_max"
        return actors + 1, f"learner waited for rollouts {d.starved:.0%} of the time"
    if d.batches_waiting >= PILED and d.fill_rate >= d.consume_rate and actors > lo:
        return actors - 1, (f"{d.batches_waiting:.1f} batches waiting: replay fills at {d.fill_rate:.0f} rows/s, "
                            f"learner consumes {d.consume_rate:.0f}")
    return actors, "steady"


class ActorPool:
    """RolloutActors of one arm. `spec` is the arm's RolloutSpec; actor k gets its own id and seed (actor_spec)."""

    def __init__(self, spec, replay, registry, *, lo: int, hi: int, start: int, num_cpus: float,
                 interval_s: float, t0: float, episodes_per_update: int, max_replacements: int = 0):
        self.spec, self.replay, self.registry = spec, replay, registry
        self.arm, self.lo, self.hi, self.num_cpus = spec.arm.name, lo, hi, num_cpus
        self.interval_s, self.t0, self.episodes_per_update = interval_s, t0, episodes_per_update
        self.members: list[dict] = []  # live actors, oldest first: handle, run ref, ready ref
        self.retiring: list[dict] = []  # told to stop; killed once their round under way has finished
        self.statuses: list[dict] = []  # final status of every actor that has stopped
        self.rows: list[dict] = []
        self.max_replacements, self.replaced = max_replacements, 0
        self.lost = 0  # dead actors not replaced: the pool's bounds shrink by them, so scaling does not replace them
        self._next_k = 0
        self._waiting: list[bool] = []
        self._produced0 = ray.get(replay.count.remote(arm=self.arm))  # rows of earlier attempts are not ours
        self._last = (time.time(), 0, 0)  # time, rows produced, rows trained at the last decision
        for _ in range(start):
            self._grow()
        self._log("start", f"{start} actor(s), bounds [{lo}, {hi}]", None)

    @property
    def size(self) -> int:
        return len(self.members)

    def pending(self) -> int:
        """Actors created but not yet placed and initialised."""
        ready = [m["ready"] for m in self.members]
        done, _ = ray.wait(ready, num_returns=len(ready), timeout=0) if ready else ([], [])
        return len(ready) - len(done)

    def bundles(self) -> list[dict]:
        return [{"CPU": self.num_cpus}] * self.size

    def _grow(self) -> None:
        from actors.rollout import RolloutActor, actor_spec

        k = self._next_k
        self._next_k += 1
        spec = actor_spec(self.spec, k)
        actor = RolloutActor.options(num_cpus=self.num_cpus).remote(spec, self.replay, self.registry)
        self.members.append({"actor": actor, "id": spec.actor_id, "run": actor.run.remote(),
                             "ready": actor.status.remote()})

    def replace_dead(self) -> list[dict]:
        """Every member whose actor died (its round under way is lost; rows it had written stay) is replaced by a new
        actor, up to `max_replacements` for the arm; its admission round is ended. Returns a `fault` row each."""
        runs = [m["run"] for m in self.members]
        done, _ = ray.wait(runs, num_returns=len(runs), timeout=0) if runs else ([], [])
        rows = []
        for m in [m for m in self.members if m["run"] in done]:
            try:
                self.statuses.append(ray.get(m["run"]))
                cause = "its loop returned"
            except ray.exceptions.RayError as e:
                cause = first_line(e)
            self.members.remove(m)
            ray.get(self.registry.end_round.remote(f"policy/{self.arm}", m["id"]))
            if self.replaced < self.max_replacements:
                self.replaced += 1
                self._grow()
                action = f"replaced by {self.members[-1]['id']}"
            else:
                self.lost += 1
                action = f"not replaced: pool.max_replacements ({self.max_replacements}) used"
            rows.append(metric_row("fault", arm=self.arm, source=self.spec.arm.source, wall_time=time.time() - self.t0,
                                   what="rollout actor", who=m["id"], cause=cause, action=action, actors=self.size))
        return rows

    def kill(self) -> None:
        """End every actor now, rounds under way included (their learner is gone: they play its versions)."""
        from actors.rollout import retire

        retire([m["actor"] for m in self.members + self.retiring])
        for engine in (self.spec.policy_engine, self.spec.wm_engine):  # engine.shared: the arm's engine actors
            if engine is not None:
                ray.kill(engine)
        self.members, self.retiring = [], []
        self._log("stop", "learner restarting", None)

    def errors(self) -> list[str]:
        """The live actors' recent errors (a replay write error among them), each one's last line."""
        refs = [m["actor"].status.remote() for m in self.members]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=5) if refs else ([], [])
        out = []
        for ref in ready:
            try:
                out += [e.strip().splitlines()[-1] for e in ray.get(ref)["errors"] if e.strip()]
            except ray.exceptions.RayError:
                pass
        return out

    def _shrink(self) -> None:
        m = self.members.pop()  # the newest: the oldest keep their warm engines
        m["actor"].stop.remote()
        self.retiring.append(m)

    def _reap(self, timeout: float = 0) -> None:
        """Kill retired actors whose last round has finished, keeping their final status."""
        from actors.rollout import retire

        for m in list(self.retiring):
            done, _ = ray.wait([m["run"]], timeout=timeout)
            if done:
                try:
                    self.statuses.append(ray.get(m["run"]))
                except ray.exceptions.RayError as e:
                    self.statuses.append({"errors": [str(e)]})
                retire([m["actor"]])
                self.retiring.remove(m)

    def step(self, learner_phase: str, trained_steps: int, trained_episodes: int) -> dict | None:
        """Called on every driver tick; every `interval_s` it decides and returns the `pool` row."""
        self._waiting.append(learner_phase == "waiting for rollouts")
        now = time.time()
        if now - self._last[0] < self.interval_s:
            return None
        self._reap()
        produced = ray.get(self.replay.count.remote(arm=self.arm)) - self._produced0
        t, p0, c0 = self._last
        steps_per_episode = trained_steps / trained_episodes if trained_episodes else None
        batch_rows = self.episodes_per_update * steps_per_episode if steps_per_episode else None
        d = Demand(starved=sum(self._waiting) / len(self._waiting),
                   batches_waiting=(produced - trained_steps) / batch_rows if batch_rows else 0.0,
                   fill_rate=(produced - p0) / (now - t), consume_rate=(trained_steps - c0) / (now - t))
        self._last, self._waiting = (now, produced, trained_steps), []
        pending = self.pending()
        hi = max(0, self.hi - self.lost)
        target, reason = decide(self.size, min(self.lo, hi), hi, pending, d)
        decision = "grow" if target > self.size else "shrink" if target < self.size else "hold"
        while self.size < target:
            self._grow()
        while self.size > target:
            self._shrink()
        return self._log(decision, reason, d, pending)

    def _log(self, decision: str, reason: str, d: Demand | None, pending: int = 0) -> dict:
        row = metric_row("pool", arm=self.arm, source=self.spec.arm.source, wall_time=time.time() - self.t0,
                   actors=self.size, actors_pending=pending, decision=decision, reason=reason,
                   learner_starved=d and d.starved, batches_waiting=d and d.batches_waiting,
                   fill_rate=d and d.fill_rate, consume_rate=d and d.consume_rate)
        self.rows.append(row)
        return row

    def stop(self) -> list[dict]:
        """Stop every actor after its round under way; returns their final statuses."""
        while self.members:
            self._shrink()
        self._reap(timeout=None)
        self._log("stop", "arm finished", None)
        return self.statuses


def request_cluster(pools) -> None:
    """Ask the autoscaler for room for every pool's actors; the request replaces the previous one, so it
    shrinks with the pools. Pending actors also count as demand: this only makes the autoscaler act
    at once, bypassing its upscaling speed, and keep nodes for actors the pools plan to keep."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[b for p in pools for b in p.bundles()])
