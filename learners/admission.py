"""Admission control: which rounds of episodes may start, so that no row is trained on too stale a policy.

The bound: an actor starts a round of episodes with policy version p only while p >= v - max_staleness, v the
version the learner trains towards (the newest published version, or the one the learner has closed a batch for,
whichever is higher). Before training towards v the learner closes its batch, and waits until no round under way
has p < v - max_staleness: those rounds' rows then land in this batch. So every row is trained on at most
max_staleness versions after the one that produced it, `max_staleness: 0` is the synchronous loop, and rounds
under way always finish. The WeightRegistry actor (learners/weight_sync.py) holds one Admission for every weight
name; rollout actors (actors/rollout.py) and the agent learner (learners/agent.py) call it through the registry."""

from __future__ import annotations


class Admission:
    """The rounds under way and the version each learner trains towards, per weight name (policy/<arm>)."""

    def __init__(self):
        self.admit: dict[str, int] = {}  # name -> the version the learner trains towards once its batch is closed
        self.rounds: dict[str, dict[str, int]] = {}  # name -> actor_id -> policy version of its round under way

    def begin_round(self, name: str, actor_id: str, version: int, max_staleness: int, published: int) -> bool:
        """May an actor start a round with policy `version` (`published`: the newest published version of `name`)?
        Only if its rows cannot end up more than `max_staleness` versions behind the learner version that trains
        on them."""
        if version < max(self.admit.get(name, 0), published) - max_staleness:
            return False
        self.rounds.setdefault(name, {})[actor_id] = version
        return True

    def end_round(self, name: str, actor_id: str) -> None:
        """The actor's round is over and its rows are in the replay."""
        self.rounds.get(name, {}).pop(actor_id, None)

    def close_batch(self, name: str, next_version: int, max_staleness: int) -> bool:
        """The learner is about to train towards `next_version`: from now on no round may start that would
        be too stale for it. True once no round under way is too stale either (rows already in the replay
        then hold every such round's episodes)."""
        self.admit[name] = max(self.admit.get(name, 0), next_version)
        return all(v >= next_version - max_staleness for v in self.rounds.get(name, {}).values())
