"""The MCP env's real fault layer, timed side by side in one run: `--calls` `read_query` calls on the real
mcp-server-sqlite (`mcp:sqlite-train`) with no fault, with every call timed out (`faults={timeout: 1.0}`: sent with a
1 ms deadline, the SDK gives up and cancels it) and with every call meeting a killed server (`faults={crash: 1.0}`:
SIGKILL, the call fails, the server restarts). Per setting: median and max seconds per step, faults recorded in
`info["fault"]` (the replay's `fault` column), and the medians' ratio to no fault.

    .venv/bin/python bench/faults.py
    .venv/bin/python bench/faults.py --calls 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from agentworld.envs.mcp_tools import make

CALL = json.dumps({"tool": "read_query", "arguments": {"query": "SELECT COUNT(*) AS n FROM orders"}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10, help="calls per setting")
    args = ap.parse_args()
    base = None
    for kind in ("none", "timeout", "crash"):
        env = make("sqlite-train", max_steps=10 * args.calls, faults={} if kind == "none" else {kind: 1.0})
        try:
            env.reset(seed=0)
            times, faults = [], 0
            for _ in range(args.calls):
                t = time.perf_counter()
                _, _, _, _, info = env.step(CALL)
                times.append(time.perf_counter() - t)
                faults += info.get("fault") == kind
        finally:
            env.close()
        median = statistics.median(times)
        base = base or median
        print(f"{kind:8s} median {median:.3f} s  max {max(times):.3f} s  faults recorded {faults}/{args.calls}  "
              f"median / no fault {median / base:.2f}x", flush=True)


if __name__ == "__main__":
    main()
