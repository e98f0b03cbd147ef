"""The agent learner's peak memory on long prompts: one policy-loss forward and backward over `--rows` rows of
`--tokens`-token prompts with `--choices` menu entries each (the `choice` action mode, as tooluse.yaml's arms
train), in one forward (learners/agent.GRAD_TOKENS unbounded: how the learner ran before) and in checkpointed chunks
of GRAD_TOKENS padded prompt tokens (how it runs). Each in a child process of its own, one after the other, on the
tiny default model (2 layers, hidden 128, its own BPE): the child's peak RSS and its seconds, and their ratios.

    .venv/bin/python bench/agent_memory.py                   # 64 rows x ~1,500 tokens x 10 choices
    .venv/bin/python bench/agent_memory.py --rows 32 --tokens 800
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args) -> None:
    import torch

    import learners.agent as agent
    from agentworld.models.tiny import build_tiny_model, train_tokenizer

    torch.set_num_threads(args.threads)
    if args.unbounded:
        agent.GRAD_TOKENS = 10**12
    rng = random.Random(0)
    words = (ROOT / "README.md").read_text().split()
    out = Path(args.root)
    if not (out / "config.json").exists():
        tok = train_tokenizer([" ".join(words)] * 2, 2048, out)
        build_tiny_model(tok, out, max_positions=4096)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(str(out)), AutoModelForCausalLM.from_pretrained(str(out))
    rows = []
    for j in range(args.rows):
        prompt = " ".join(rng.choice(words) for _ in range(args.tokens))
        while len(tok(prompt).input_ids) > args.tokens:  # about --tokens tokens
            prompt = prompt[: int(len(prompt) * 0.9)]
        choices = [f'{{"name": "read_query", "arguments": {{"query": "SELECT {i} FROM t{j}"}}}}'
                   for i in range(args.choices)]
        rows.append(dict(prompt=prompt, choices=choices, action=choices[j % args.choices]))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.time()
    lp = agent.action_logprobs(model, tok, rows, 1.0)
    lp.sum().backward()
    print(json.dumps({"seconds": time.time() - t, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      "before_gb": base / 1e6, "chunks": len(agent.token_chunks(tok, rows))}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64, help="rows in one training step (the learner's 64)")
    p.add_argument("--tokens", type=int, default=1500, help="prompt tokens per row (tooluse.yaml's budget: 1,536)")
    p.add_argument("--choices", type=int, default=10, help="menu entries per row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default="/tmp/agentworld-bench/agent-memory")
    p.add_argument("--unbounded", action="store_true", help=argparse.SUPPRESS)  # the child's one-forward mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    res = {}
    for name, extra in (("one forward", ["--unbounded"]), ("chunked", [])):
        cmd = [sys.executable, __file__, "--child", *extra, *(f"--{k}={v}" for k, v in
               (("rows", args.rows), ("tokens", args.tokens), ("choices", args.choices), ("threads", args.threads),
                ("root", args.root)))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res[name] = json.loads(out)
    print(f"{args.rows} rows x ~{args.tokens} prompt tokens x {args.choices} choices, tiny default, "
          f"{args.threads} thread(s)")
    print(f"{'':12} {'chunks':>6} {'peak RSS GB':>12} {'model+data GB':>14} {'seconds':>8}")
    for name, r in res.items():
        print(f"{name:12} {r['chunks']:>6} {r['peak_gb']:>12.2f} {r['before_gb']:>14.2f} {r['seconds']:>8.1f}")
    one, ch = res["one forward"], res["chunked"]
    print(f"chunked / one forward: peak RSS {ch['peak_gb'] / one['peak_gb']:.2f}x, "
          f"time {ch['seconds'] / one['seconds']:.2f}x")


if __name__ == "__main__":
    main()
