"""Fidelity metrics on text-sized observations, measured side by side in one run: the edit distance that
fidelity.py used before (pure Python) against rapidfuzz's, and the retrieve baseline's nearest-neighbour search
against an exhaustive one.

    .venv/bin/python bench/metrics.py                 # 2,000-character screens, 3,000 x 300 prompts
    .venv/bin/python bench/metrics.py --chars 500 --train 1000 --held 100
"""

from __future__ import annotations

import argparse
import random
import string
import time

from rapidfuzz.distance import Levenshtein

from agentworld.worldmodel.baselines import Retriever, Transition
from agentworld.worldmodel.fidelity import edit_similarity, python_edit_distance


def python_edit_similarity(pred: str, ref: str) -> float:
    """fidelity.py's edit similarity before rapidfuzz: the dynamic programme in Python."""
    return 1.0 if not pred and not ref else 1.0 - python_edit_distance(pred, ref) / max(len(pred), len(ref))


def screen(rng: random.Random, chars: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase + "     \n", k=chars))


def edited(rng: random.Random, text: str, share: float = 0.05) -> str:
    out = list(text)
    for i in rng.sample(range(len(out)), int(len(out) * share)):
        out[i] = rng.choice(string.ascii_lowercase)
    return "".join(out)


def seconds(fn, repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, default=2000, help="characters per observation")
    p.add_argument("--train", type=int, default=3000, help="training prompts for retrieve")
    p.add_argument("--held", type=int, default=300, help="held-out prompts for retrieve")
    p.add_argument("--exhaustive", type=int, default=10, help="held-out prompts the exhaustive search is timed on")
    a = p.parse_args()
    rng = random.Random(0)
    x = screen(rng, a.chars)
    y = edited(rng, x)
    assert python_edit_similarity(x, y) == edit_similarity(x, y)
    slow, fast = seconds(lambda: python_edit_similarity(x, y), 1), seconds(lambda: edit_similarity(x, y), 200)
    print(f"edit similarity of two {a.chars}-character observations: pure Python {slow * 1000:.1f} ms, "
          f"rapidfuzz {fast * 1000:.3f} ms ({slow / fast:,.0f}x)")

    train = [Transition(screen(rng, a.chars), "", screen(rng, 40), 0.0, False, "terminal") for _ in range(a.train)]
    held = [edited(rng, rng.choice(train).prompt, 0.1) for _ in range(a.held)]
    t = time.perf_counter()
    retriever = Retriever(train)
    found = retriever.nearest(held)
    indexed = (time.perf_counter() - t) / a.held
    t = time.perf_counter()
    exact = [max(range(len(train)), key=lambda i: Levenshtein.normalized_similarity(q, train[i].prompt))
             for q in held[: a.exhaustive]]
    exhaustive = (time.perf_counter() - t) / a.exhaustive
    agree = sum(f == e for f, e in zip(found, exact))
    print(f"retrieve, {a.train:,} training x {a.held:,} held-out prompts: {indexed * 1000:.2f} ms per query "
          f"(build included) vs exhaustive {exhaustive * 1000:.0f} ms ({exhaustive / indexed:,.0f}x); "
          f"same neighbour on {agree}/{len(exact)}")


if __name__ == "__main__":
    main()
