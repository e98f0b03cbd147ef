"""The models the engine benchmarks run on, built the way a run builds its tiny default: a BPE tokenizer trained on
LWM-style text and a Qwen2 with head_dim 64. `tiny` is the quickstart's size; `medium` is ~34M parameters."""

from __future__ import annotations

from pathlib import Path

SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_layers=2, num_heads=2),
    "medium": dict(hidden_size=512, intermediate_size=2048, num_layers=8, num_heads=8),
}


def corpus(n: int = 300) -> list[str]:
    from agentworld.models.tiny import render_chatml

    grid = ["SFFF", "FHFH", "FFFH", "HFFG"]
    return [render_chatml([{"role": "system", "content": "Predict the next state of the grid world."},
                           {"role": "user", "content": "State:\n" + "\n".join(grid[i % 4:] + grid[: i % 4]) +
                            f"\nAction: {('left', 'down', 'right', 'up')[i % 4]}"},
                           {"role": "assistant", "content": f"<predicted_observation>\n{grid[(i + 1) % 4]}\n"
                            f"</predicted_observation>\n[reward=0 done=false]"}]) for i in range(n)]


def build(size: str, root: str | Path) -> str:
    """The checkpoint dir of `size` under `root`, built once; returns its path."""
    from agentworld.models.tiny import build_tiny_model, train_tokenizer

    out = Path(root) / size
    if not (out / "config.json").exists():
        tok = train_tokenizer(corpus(), 1024, out)
        build_tiny_model(tok, out, max_positions=2048, **SIZES[size])
    return str(out)


def prompts(n: int) -> list[str]:
    """`n` LWM prompts of ~100 tokens (without the reply)."""
    return [p[: p.index("<|im_start|>assistant")] + "<|im_start|>assistant\n" for p in corpus(n)]


def parameters(path: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    import sys

    for s in SIZES:
        path = build(s, sys.argv[1] if len(sys.argv) > 1 else "/tmp/agentworld-bench")
        print(s, path, f"{parameters(path) / 1e6:.1f}M parameters")
