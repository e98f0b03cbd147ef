"""The engine section: every experiment YAML takes the scale engines by changing only the engine keys, and a bad
engine setting is one error naming the key and the file."""

from pathlib import Path

import pytest

from agentworld.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
# dyna_rllib.yaml is not an `agentworld run` experiment: its learner is RLlib's PPO on an MLP (no LLM to train
# or serve with these engines); its LWM is trained by quickstart.yaml's recipe, covered here.
EXPERIMENTS = sorted(str(p) for p in (ROOT / "experiments").glob("*.yaml") if p.stem != "dyna_rllib")


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_experiment_takes_vllm_and_deepspeed_by_the_engine_keys(path):
    assert load_config(path).engine.inference == "hf"
    cfg = load_config(path, ["engine.inference=vllm", "engine.train=deepspeed"])
    assert (cfg.engine.inference, cfg.engine.train, cfg.engine.deepspeed.zero_stage) == ("vllm", "deepspeed", 2)


@pytest.mark.parametrize("override, key", [
    ("engine.inference=vlm", "engine.inference"),
    ("engine.train=fsdp", "engine.train"),
    ("engine.weight_sync=broadcast", "engine.weight_sync"),  # needs shared engine actors
    ("engine.deepspeed.zero_stage=3", "engine.deepspeed.zero_stage"),
    ("engine.deepspeed.backend=nccl", "engine.deepspeed.backend"),  # needs GPUs
    ("engine.vllm.kv_cache_gb=0", "engine.vllm.kv_cache_gb"),
])
def test_bad_engine_settings_name_key_and_file(override, key):
    path = str(ROOT / "experiments" / "quickstart.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(path, [override])
    assert e.value.key == key and e.value.file == path and "\n" not in str(e.value)


def test_a_vllm_context_shorter_than_the_lwms_prompt_budget_and_reply_names_the_key():
    """vLLM refuses a request longer than its max_model_len (the sim_edge bench met one: 1,034 prompt tokens against
    1,024); a YAML whose LWM prompts may be longer is refused up front."""
    path = str(ROOT / "experiments" / "warmup.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["engine.inference=vllm", "engine.vllm.max_model_len=1024"])
    assert e.value.key == "engine.vllm.max_model_len" and "1728" in str(e.value) and "\n" not in str(e.value)
    assert load_config(path, ["engine.inference=vllm", "engine.vllm.max_model_len=1728"]).engine.vllm.max_model_len
