"""Print an LWM's greedy predictions beside the real next states, for held-out transitions of one replay arm, with
the prompts the LWM was trained on (its run's config: history turns and token budget).

    python experiments/show_predictions.py runs/tooluse_lwm_s1 wm_data.5 [--n 6]
"""

from __future__ import annotations

import argparse

import torch
from omegaconf import OmegaConf

from agentworld.models.hf_engine import HFEngine
from agentworld.replay import ReplayStore
from agentworld.worldmodel.data import episodes_from_table, wm_examples
from agentworld.worldmodel.fidelity import edit_similarity
from agentworld.worldmodel.prompt import parse_prediction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run dir of `agentworld wm train`")
    ap.add_argument("arm", help="replay arm, e.g. wm_data.5 (the sixth data source)")
    ap.add_argument("--n", type=int, default=6, help="transitions to show (every other one of the first episodes)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    wm = OmegaConf.load(f"{args.run}/config.yaml").world_model
    engine = HFEngine(f"{args.run}/checkpoints/wm", seed=0)
    episodes = episodes_from_table(ReplayStore(f"{args.run}/replay").sample(arm=args.arm, source="real"))
    count = lambda text: len(engine.tok(text).input_ids)  # noqa: E731
    examples = wm_examples(episodes[: args.n], engine.render, wm.history_turns, None, wm.history_budget_tokens or 0,
                           count)[: 2 * args.n : 2]
    for e, g in zip(examples, engine.generate([e.prompt for e in examples], max_new_tokens=args.max_new_tokens)):
        pred = parse_prediction(g.text).obs
        print(f"action:  {e.prompt.rsplit('Action: ', 1)[-1].split('<', 1)[0].strip()!r}")
        print(f"real:    {e.next_obs[:300]!r}")
        print(f"LWM:     {pred[:300]!r}  (edit similarity {edit_similarity(pred, e.next_obs):.2f})\n")


if __name__ == "__main__":
    main()
