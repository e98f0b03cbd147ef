import random
import string

from agentworld.worldmodel.fidelity import edit_distance, edit_similarity, fidelity, outcome_correct, python_edit_distance
from agentworld.worldmodel.prompt import parse_prediction, render_state


# The pure-Python implementation fidelity.py had before rapidfuzz is the spec the fast one must equal.
reference_edit_distance = python_edit_distance


def reference_edit_similarity(pred: str, ref: str) -> float:
    if not pred and not ref:
        return 1.0
    return 1.0 - reference_edit_distance(pred, ref) / max(len(pred), len(ref))


# the pairs the fidelity and reward tests score (test_prompt.py, test_rewards_judge.py)
FIXTURES = [("kitten", "sitting"), ("abc", "abc"), ("", ""), ("ab", "ab"), ("xb", "ab"),
            ("S[F]FF\nFHFH", "S[F]FF\nFHFH"), ("[S]FFF\nFHFH", "S[F]FF\nFHFH"), ("abc" + "x" * 30, "abc"),
            ("zzz", "abc"), ("a\nb\nc", "a\nb\nd"), ('{"a": 1, "b": {"c": 2}}', '{"a": 1, "b": {"c": 3}}'),
            ("not json", '{"a": 1}'), ("", "abc"), ("abc", "")]


def random_pairs(n=400, seed=0):
    rng = random.Random(seed)
    alphabets = ["ab", "SFHG[]\n", string.ascii_letters + " \n", "héllo wörld ✓ 😀"]
    for _ in range(n):
        chars = rng.choice(alphabets)
        a = "".join(rng.choices(chars, k=rng.randint(0, 60)))
        # unrelated strings, or a prefix of the first with a change: long common runs
        if rng.random() < 0.5:
            b = "".join(rng.choices(chars, k=rng.randint(0, 60)))
        else:
            b = a[: rng.randint(0, len(a))] + "x"
        yield a, b


def test_fast_edit_metrics_equal_the_pure_python_ones_on_the_fixtures_and_random_strings():
    for a, b in FIXTURES + list(random_pairs()):
        assert edit_distance(a, b) == reference_edit_distance(a, b), (a, b)
        assert edit_similarity(a, b) == reference_edit_similarity(a, b), (a, b)


def test_fidelity_aggregates_as_before_with_outcome_correct_shared():
    preds = [parse_prediction(render_state("ab", 0, False)), parse_prediction(render_state("xb", 1, True))]
    f = fidelity(preds, [("ab", 0.0, False), ("ab", 0.0, True)])
    assert f == {"exact_match": 0.5, "edit_similarity": 0.75, "outcome_accuracy": 0.5, "n": 2}
    assert not outcome_correct(parse_prediction("<predicted_observation>\nab\n</predicted_observation>"), 0.0, False)
