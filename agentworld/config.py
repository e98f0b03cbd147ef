"""Experiment configuration: OmegaConf structured configs. The YAML says what to run; the driver runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from agentworld.registry import ARM_KINDS, INFERENCE_ENGINES, LOSSES, TRAIN_ENGINES, WEIGHT_SYNCS


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    max_minutes: float = 30.0  # the driver stops every arm after this much wall-clock
    # An arm that makes no progress this long (no new rows, no update, no phase change of its learner) fails, with
    # the cause the driver sees (dead actors, actor errors such as replay write errors, the learner waiting); 0: never
    stall_timeout_s: float = 900.0
    # After the report, copy the run dir to <storage>/<name>: an absolute local path or any pyarrow.fs URI
    # (file://, s3://, gs://, hdfs://). On a cluster the run dir lives on the node of the job's driver;
    # this is how its results leave it (`agentworld jobs fetch` reads them back). None: keep it in place.
    storage: Optional[str] = None


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: $RAY_ADDRESS if set (inside a Ray Job), else a new embedded cluster; "auto" or "ray://...": join one
    num_cpus: Optional[int] = None  # CPUs of the embedded cluster (None: all)
    torch_threads: int = 1  # torch threads per process; keep actors from fighting over cores
    actor_num_cpus: float = 0.25  # CPU reservation of each actor


@dataclass
class EnvConfig:
    id: str = "gymnasium:FrozenLake-v1"  # registry id, e.g. gymnasium:<gym id>
    kwargs: Dict[str, Any] = field(default_factory=dict)
    max_steps: int = 50  # episode truncation
    domain: Optional[str] = None  # defaults to the registry's domain for the id


@dataclass
class TinyModelConfig:
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden_size / num_heads; vLLM's CPU kernels need 64
    max_positions: int = 1024  # the BPE tokenizer is trained on the LWM's collected data, as the models will see it


MODEL_DTYPES = ("float32", "bfloat16")


@dataclass
class LoRAConfig:
    """LoRA adapters (peft) on the model the learners train: only the adapters' parameters train; what they publish
    and save are the merged weights (base + adapter delta), so engines and `model.path` readers see a plain model."""
    enabled: bool = False
    r: int = 16  # rank of each adapter
    alpha: int = 32  # the adapter's output is scaled by alpha / r
    dropout: float = 0.05  # on the adapter's input, in training only
    # modules to adapt, by name or name suffix (q_proj matches model.layers.0.self_attn.q_proj): linear or embedding layers
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    path: Optional[str] = None  # any HF causal-LM checkpoint dir; None builds the tiny default in the run dir
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # the dtype the learners train in and the HF and vLLM engines run in (engine.vllm.dtype may override vLLM's).
    # bfloat16 full fine-tuning keeps AdamW's weights in bfloat16; with LoRA, peft keeps the adapters in float32
    dtype: str = "float32"  # float32 | bfloat16
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # learners keep only each layer's input for the backward pass and recompute the rest: activation memory (a
    # long sequence's attention weights in every layer) for about a third more compute
    gradient_checkpointing: bool = False


@dataclass
class GenerationConfig:
    max_new_tokens: int = 96
    temperature: float = 0.0  # 0 = greedy


@dataclass
class WMSourceConfig:
    """One source of the LWM's training data: a real env played by a behaviour policy, or an import."""
    env: Optional[str] = None  # key into `envs`: play this env ...
    steps: int = 0  # ... for this many real env steps
    policy: str = "random"  # random | oracle | mix:<p> (the oracle with probability p, else random) | PATH of a checkpoint
    data: Optional[str] = None  # or import: an AgentWorldBench-style JSONL file, or a replay dir
    heldout: bool = False  # every episode of this source is held out: a split by task (e.g. an env's heldout split)


@dataclass
class WMDataConfig:
    policy: str = "random"  # behaviour policy that gathers the LWM's real transitions: random | oracle | mix:<p> | PATH
    steps: int = 3000  # budget of real env steps for the LWM's training data
    heldout_fraction: float = 0.1  # share of episodes held out for fidelity, per env
    # Several sources, trained on together, each row keeping its env and domain; empty: one source, world_model.env
    # played by `policy` for `steps`
    sources: List[WMSourceConfig] = field(default_factory=list)


@dataclass
class WMSFTConfig:
    """Next-state SFT: the chat format, loss on the predicted state only."""
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    eval_every: int = 100  # fidelity is measured and a version published this often
    eval_samples: int = 64  # distinct held-out transitions per fidelity measurement, shared equally among domains
    # Sampling weight of a transition: count(same state and action)^-balance_transitions *
    # count(same outcome)^-balance_outcomes, outcome = (reward, done). Random-policy data repeats easy
    # transitions thousands of times and rare ones (reaching the goal) a handful; 0 and 0 sample uniformly.
    balance_transitions: float = 1.0
    balance_outcomes: float = 0.5
    # Hindsight controls (agentworld/controls.py): this share of examples carries its real transition's
    # outcome label as the prompt's Control line, so the LWM learns to obey controls; 0: no controls
    control_fraction: float = 0.0
    # ... this share a perturbation (timeout, missing, paginated, empty, rejected) and this share a fictional world
    # (search results that state given facts), each target built from the real row in the env family's own words
    # (MCP and search; other families' rows stay uncontrolled). The three shares sum to at most 1.
    perturbation_fraction: float = 0.0
    fictional_fraction: float = 0.0


@dataclass
class WMCPTConfig:
    """Continued pre-training: causal LM on raw text, packed into fixed-length sequences."""
    steps: int = 100
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 2e-3
    corpora: List[str] = field(default_factory=list)  # extra text files or folders of .txt/.md
    trajectories: bool = True  # include the real trajectories, rendered as text


@dataclass
class RewardWeights:
    """Weights of the next-state RL reward's parts (agentworld/worldmodel/rewards.py)."""
    exact: float = 1.0
    edit: float = 1.0
    line_f1: float = 0.5
    field_f1: float = 0.5  # used only when the reference is a JSON object
    outcome: float = 0.5  # reward and done both right
    rubric: float = 0.0  # weight of the judge's normalised total
    rubric_floor: float = 0.5  # the rubric counts only when the rule score reaches this share of its maximum
    length_penalty: float = 0.5  # per unit of length beyond the reference, relative to its length


@dataclass
class WMRLConfig:
    """Next-state RL: G sampled predictions per prompt, hybrid reward, group-relative advantages."""
    steps: int = 40
    prompts_per_step: int = 8
    group_size: int = 8
    algorithm: str = "gspo"  # a loss in learners/losses.py: gspo (sequence-level ratio) | grpo (token-level) | ppo | rloo
    lr: float = 3e-4
    clip: float = 0.2
    epochs: int = 1
    temperature: float = 1.0  # sampling temperature of the G predictions (ratios are taken at the same one)
    kl: float = 0.0  # weight of KL(policy || the model RL started from), per token; 0 = none
    max_new_tokens: int = 64
    reward: RewardWeights = field(default_factory=RewardWeights)  # see agentworld/worldmodel/rewards.py
    judge_endpoint: Optional[str] = None  # OpenAI-compatible base URL for the rubric part
    judge_model: str = "judge"


THINK_SOURCES = ("none", "empty", "describe", "teacher")


@dataclass
class WMThinkConfig:
    """The reasoning SFT targets carry in <think>...</think> before the next state (agentworld/worldmodel/think.py)."""
    source: str = "none"  # none | empty: an empty block | describe: the domain's describer | teacher: an endpoint
    endpoint: Optional[str] = None  # teacher: OpenAI-compatible base URL ending in /v1
    model: str = "teacher"  # the model name sent to the teacher
    cache: Optional[str] = None  # teacher rationales by transition, JSONL; default <run dir>/think_cache.jsonl
    max_tokens: int = 96  # a rationale's budget (longer ones are cut); generation and RL budgets add it
    timeout_s: float = 60.0  # per teacher request; one that times out is counted and skipped
    workers: int = 4  # teacher requests in flight


def think_tokens(think: WMThinkConfig) -> int:
    """Tokens a think block may take: what generation and RL budgets add for it."""
    return {"none": 0, "empty": 16}.get(think.source, think.max_tokens + 16)


@dataclass
class WMContinualConfig:
    """After its stages, keep training on real transitions as they arrive during the experiment."""
    enabled: bool = False
    stage: str = "rl"  # rl | sft: what each round runs on the fresh transitions
    min_new: int = 256  # new real transitions that trigger a round
    steps: int = 10  # optimizer steps per round


@dataclass
class WorldModelConfig:
    env: Optional[str] = "frozenlake"  # key into `envs` whose real transitions train the LWM (with no data.sources)
    data: WMDataConfig = field(default_factory=WMDataConfig)
    # domain -> what its environment is and what an observation looks like, after the LWM's instruction;
    # unset domains get agentworld/worldmodel/prompt.py's DOMAIN_NOTES
    prompts: Dict[str, str] = field(default_factory=dict)
    # past (action, observation) turns kept in the prompt; unset: 4 when a data source's domain keeps state beyond one
    # screen (shells, databases, files, games: envs.STATEFUL), else 1
    history_turns: Optional[int] = None
    # if > 0, drop the oldest kept turns until the prompt fits; unset: 1,536 tokens (at most the tiny model's
    # positions less the generation budget) when history_turns > 1, else 0
    history_budget_tokens: Optional[int] = None
    stages: List[str] = field(default_factory=lambda: ["sft"])  # in order, from: cpt, sft, rl
    cpt: WMCPTConfig = field(default_factory=WMCPTConfig)
    sft: WMSFTConfig = field(default_factory=WMSFTConfig)
    rl: WMRLConfig = field(default_factory=WMRLConfig)
    continual: WMContinualConfig = field(default_factory=WMContinualConfig)
    think: WMThinkConfig = field(default_factory=WMThinkConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class BCConfig:
    """Behaviour cloning before RL (learners/bc.py): each arm's start checkpoint fine-tuned on the oracle's actions in
    its real env (its train split). Those episodes' real env steps count against the arm."""
    episodes: int = 0  # oracle episodes played in the arm's env; 0: no behaviour cloning
    steps: int = 100  # optimizer steps on their actions
    batch_size: int = 8  # actions per step
    lr: float = 1e-3


@dataclass
class AgentConfig:
    # a loss in learners/losses.py: grpo (group-normalised advantages, clipped ratio) | ppo (group-mean baseline)
    # | rloo (leave-one-out baseline) | gspo (sequence-level ratio: the same as grpo for one action)
    algorithm: str = "grpo"
    # what every arm's policy starts from, unless the arm sets its own `init`: lwm (the LWM) | cpt (the LWM recipe's
    # CPT-only checkpoint: a control for "just more text of the domain") | scratch (the base model: model.path or the
    # tiny default) | PATH to a checkpoint
    init: str = "lwm"
    lr: float = 1e-3
    episodes_per_update: int = 32
    updates: int = 60
    epochs: int = 2  # gradient passes over each batch
    clip: float = 0.2
    temperature: float = 1.0  # behaviour sampling temperature
    max_staleness: int = 1  # actors start an episode only within this many versions of the learner
    action_mode: str = "choice"  # choice: pick among admissible actions | generate: free text, parsed by the env
    # a generated action's token limit; unset: the arm's domain's (ACTION_TOKENS: 8 for grids, 128 for MCP JSON calls)
    max_action_tokens: Optional[int] = None
    # past (observation, action) turns in the policy's prompt; unset: 4 when the arm's domain keeps state beyond one
    # screen (envs.STATEFUL), else 1. In those domains the prompt keeps the episode's task when turns are dropped
    history_turns: Optional[int] = None
    # if > 0, drop the oldest turns until the prompt fits; unset: 1,536 tokens (at most the tiny model's positions less
    # max_action_tokens) when history_turns > 1, else 0
    history_budget_tokens: Optional[int] = None
    bc: BCConfig = field(default_factory=BCConfig)  # behaviour cloning on the oracle's actions before RL


@dataclass
class FictionalConfig:
    """A fictional world (controls kind fictional): simulated results must contain these facts. Query and facts
    empty: each draw is a new generated world (a made-up subject, two facts, a question one of them answers)."""
    query: str = ""  # the target query the world is built around
    facts: List[str] = field(default_factory=list)  # reference facts every answering observation must contain


@dataclass
class ControlConfig:
    """How a sim arm steers its simulator, step by step (agentworld/controls.py). kind none: uncontrolled."""
    kind: str = "none"  # none | hindsight | perturbation | fictional
    fraction: float = 0.5  # share of simulated steps that carry a control; the rest run uncontrolled
    # name -> sampling weight: hindsight labels (success, failure, error, noop, terminal, moved) or
    # perturbation names (timeout, missing, paginated, empty, rejected); empty: uniform over the kind's names
    mix: Dict[str, float] = field(default_factory=dict)
    fictional: FictionalConfig = field(default_factory=FictionalConfig)
    # step: each simulated step draws its own control; episode: one draw per episode, kept for all its steps (a
    # generated fictional world then asks its own question, and the episode's answer is scored against its facts)
    per: str = "step"


@dataclass
class HybridConfig:
    """The hybrid arm's fidelity gate (agentworld/worldmodel/hybrid.py)."""
    shadow_fraction: float = 0.25  # share of simulated steps shadow-executed in the seeded real env
    window: int = 32  # live fidelity: exact-match rate over the last `window` scored steps
    threshold: float = 0.8  # below it, the env's episodes route to the real env ...
    recover_threshold: float = 0.9  # ... until fidelity, scored on the routed real steps, is back to this
    min_scores: int = 8  # scores needed before the gate may route


@dataclass
class ArmConfig:
    name: str = "real"
    # The arm kind (agentworld/arms/): real: trains on real env steps | sim: only in the LWM simulator (with
    # `control`, the controlled arm) | hybrid: in the LWM, shadow-checked in the real env and routed there while
    # live fidelity is low (`hybrid`)
    source: str = "real"
    env: str = "frozenlake"  # key into `envs`: the real env it trains on and is scored in; sim episodes start from its states
    actors: int = 1  # rollout actors at the start; a fixed pool unless actors_min/actors_max widen it
    # The pool scales between these, driven by the learner's demand (actors/pool.py); None: `actors`.
    actors_min: Optional[int] = None
    actors_max: Optional[int] = None
    envs_per_actor: int = 16
    # real envs an actor steps and resets at once, in threads (they wait on their processes); 1: one by one
    env_threads: int = 8
    init: Optional[str] = None  # what its policy starts from (lwm | cpt | scratch | PATH); unset: agent.init
    action_mode: Optional[str] = None  # how its policy acts (choice | generate); unset: agent.action_mode
    # key into `envs`: the real env its evaluations play, e.g. the heldout split of the `env` it trains on (same
    # domain); unset: `env`
    eval_env: Optional[str] = None
    # key into `envs`: a real env (same domain) with a fault layer (e.g. mcp kwargs faults: {timeout: 0.2}) where the
    # trained policy is scored once more at the end, for robustness to real faults; unset: no such score
    fault_env: Optional[str] = None
    control: ControlConfig = field(default_factory=ControlConfig)  # sim arms: per-step controls (sim-controlled)
    hybrid: HybridConfig = field(default_factory=HybridConfig)  # source hybrid: shadow execution and routing


@dataclass
class PoolConfig:
    """How the rollout actor pools scale (arms with actors_min < actors_max)."""
    interval_s: float = 10.0  # seconds between scaling decisions: long enough to see a few learner updates
    max_replacements: int = 20  # dead rollout actors an arm's pool replaces (each one a `fault` row); 0: none


@dataclass
class CheckpointConfig:
    """The arms' learners save their whole state (weights, optimizer, scheduler, RNG, replay cursor, metric rows)
    to <run dir>/checkpoints/agent-<arm>-last: a dead learner restarts from it, and a rerun of the run dir resumes
    every arm from it."""
    every_updates: int = 5  # 0: never (a dead learner then restarts from update 0)
    max_restarts: int = 2  # restarts of a dead learner; past them its arm fails and the other arms finish
    wm_every_steps: int = 50  # the LWM learner's CPT and SFT save every N steps (0: at stage ends only); a dead
    # LWM learner restarts from the last save, RL from its stage's start, up to max_restarts times


@dataclass
class TrackingConfig:
    """Live metrics beside metrics.parquet, which stays the canonical record."""
    tensorboard: bool = True  # event files in <run dir>/tensorboard: `tensorboard --logdir runs`
    mlflow: bool = False  # needs `pip install mlflow-skinny` (or mlflow)
    mlflow_uri: Optional[str] = None  # None: a local file store, file:<output_dir>/mlruns
    mlflow_experiment: str = "agentworld"


@dataclass
class EvalConfig:
    every_updates: int = 5
    episodes: int = 32
    greedy: bool = False
    success_target: float = 0.8


@dataclass
class ReplayConfig:
    dir: Optional[str] = None  # None: <run dir>/replay
    capacity: Optional[int] = None  # rows held in memory per (arm, source), FIFO; None or 0: all (disk keeps all)
    shards: int = 1  # replay actors sharing the dir: writes spread over them, reads ask all (cluster throughput)


@dataclass
class ServeAutoscalingConfig:
    """Ray Serve autoscaling of the simulator's replicas (each holds the LWM; sessions live elsewhere)."""
    min_replicas: int = 1  # 0 scales to zero when idle; sessions survive (they are not in the replicas)
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0  # requests in flight per replica that Serve aims for
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_period_s: Optional[float] = None  # None: Serve's default (30 s) window of load averaging
    metrics_interval_s: Optional[float] = None  # None: Serve's default (10 s); how often load is reported


@dataclass
class ServeConfig:
    """`agentworld serve`: the LWM as an OpenAI-compatible endpoint and a session API (sim_service.py)."""
    host: str = "127.0.0.1"  # a non-loopback host needs a token
    port: int = 8000
    token: Optional[str] = None  # bearer token every request must carry; or set $AGENTWORLD_SERVE_TOKEN
    model_name: str = "agentworld"  # the id /v1/models lists
    session_ttl_s: float = 600.0  # a session idle this long is dropped (then 404)
    max_sessions: int = 1000  # live sessions at once; more get 429
    max_tokens: int = 512  # per chat completion
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    autoscaling: ServeAutoscalingConfig = field(default_factory=ServeAutoscalingConfig)


@dataclass
class VLLMConfig:
    """The vLLM inference engine (engine.inference: vllm)."""
    # null: model.dtype. float32 gives the HF engine's tokens on CPU; bfloat16 on GPUs
    dtype: Optional[str] = None
    max_model_len: int = 1024  # prompt + reply tokens
    kv_cache_gb: Optional[float] = 1.0  # KV cache per engine; null: gpu_memory_utilization decides (GPUs)
    gpu_memory_utilization: float = 0.1  # share of the GPU's memory (on CPU, of RAM) when kv_cache_gb is null
    enforce_eager: bool = True  # no CUDA graphs or compilation: an engine starts in seconds
    tensor_parallel_size: int = 1
    in_process: bool = True  # engine core and worker in the caller's process (tensor_parallel_size 1)


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed training engine (engine.train: deepspeed)."""
    zero_stage: int = 2  # 0-2: 1 partitions optimizer states, 2 also gradients, over the data-parallel ranks
    offload_optimizer: bool = False  # ZeRO-Offload: optimizer states and step in CPU memory (GPU runs)
    torch_adam: bool = True  # torch's AdamW; false: DeepSpeed's fused (GPU) or CPU Adam, compiled at first use
    data_parallel: int = 1  # ranks per learner: the learner's own process and data_parallel - 1 Ray actors
    backend: str = "gloo"  # gloo on CPU, nccl on GPUs


@dataclass
class EngineConfig:
    """Which engines generate and train, and how new weights reach the generating engines."""
    inference: str = "hf"  # hf | vllm: generation and scoring for the policy and the LWM simulator
    train: str = "torch"  # torch | deepspeed: the learners' optimizer steps
    weight_sync: str = "object_store"  # object_store | filesystem | broadcast (gloo on CPU, NCCL on GPUs)
    shared: bool = False  # true: one engine actor per arm (and one per sim arm for the LWM), shared by the arm's actors
    weights_dir: Optional[str] = None  # filesystem sync: a directory every node sees; null: <run dir>/weights
    num_gpus: float = 0  # GPUs per learner rank and per shared engine actor
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


@dataclass
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    envs: Dict[str, EnvConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    arms: List[ArmConfig] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class Runtime:
    """Where and how an actor or learner runs, built once by the driver (`runtime(cfg, run_dir)`) from the `ray`
    and `engine` sections: torch threads, CPU shares, engines, weight sync and its resolved directory."""
    ray: RayConfig = field(default_factory=RayConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    weights_dir: Optional[str] = None  # engine.weights_dir, or <run dir>/weights
    dtype: str = "float32"  # model.dtype: what learners train in and engines run in
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # model.lora: the learners' adapters
    gradient_checkpointing: bool = False  # model.gradient_checkpointing

    @property
    def device(self) -> str:
        """Where learners and shared engine actors put their model: cuda when engine.num_gpus > 0 (Ray then gives the
        process its GPUs and sets CUDA_VISIBLE_DEVICES), else cpu. Rollout actors reserve no GPU: their engines stay
        on cpu."""
        return "cuda" if self.engine.num_gpus > 0 else "cpu"


def section(cfg_node) -> Any:
    """A config section as its dataclass (what actors and learners receive)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg_node)


def runtime(cfg, run_dir) -> Runtime:
    return Runtime(ray=section(cfg.ray), engine=section(cfg.engine),
                   weights_dir=cfg.engine.weights_dir or str(Path(run_dir) / "weights"), dtype=cfg.model.dtype,
                   lora=section(cfg.model.lora), gradient_checkpointing=cfg.model.gradient_checkpointing)


# ---------------------------------------------------------------------------------------------------
# Loading and validation: every error is one line naming the file and the dotted key.

ACTION_MODES = ("choice", "generate")
AGENT_INITS = ("lwm", "cpt", "scratch")
# a generated action's token limit per domain (agent.max_action_tokens overrides): a grid move, a game command, a
# shell line, a search call, a JSON tool call, an edit block
ACTION_TOKENS = {"gridworld": 8, "textgame": 24, "science": 24, "embodied": 24, "web": 32, "terminal": 64,
                 "search": 96, "mcp": 128, "swe": 256}
DEFAULT_ACTION_TOKENS = 64  # a domain not listed above
BEHAVIOUR_POLICIES = ("random", "oracle")
WM_STAGES = ("cpt", "sft", "rl")


# Value ranges, by dotted key (fnmatch patterns; `*` is one key or list index): (low, high, low is excluded).
# Every number anywhere must also be finite, and an int within +-2**31 (a count of 1e30 updates is a typo).
_GT0, _GE1, _GE0, _UNIT = (0, None, True), (1, None, False), (0, None, False), (0, 1, False)
VALUE_RULES = [
    (_GT0, ("run.max_minutes", "ray.num_cpus", "ray.actor_num_cpus", "*.lr", "agent.clip", "world_model.rl.clip",
            "agent.temperature", "world_model.rl.temperature", "world_model.think.timeout_s", "pool.interval_s",
            "serve.session_ttl_s", "serve.autoscaling.target_ongoing_requests", "engine.vllm.kv_cache_gb",
            "engine.vllm.gpu_memory_utilization")),
    (_GE1, ("ray.torch_threads", "model.tiny.*", "model.lora.r", "model.lora.alpha", "world_model.cpt.seq_len",
            "*.batch_size", "world_model.sft.eval_every", "world_model.sft.eval_samples", "world_model.rl.prompts_per_step",
            "world_model.rl.epochs", "*.max_new_tokens", "world_model.think.max_tokens", "world_model.think.workers",
            "world_model.data.steps", "*history_turns", "agent.episodes_per_update", "agent.updates", "agent.epochs",
            "agent.max_action_tokens", "arms.*.actors", "arms.*.actors_min", "arms.*.actors_max", "arms.*.envs_per_actor",
            "arms.*.hybrid.window", "arms.*.hybrid.min_scores", "eval.every_updates", "eval.episodes", "serve.max_sessions",
            "serve.max_tokens", "serve.max_body_bytes", "serve.autoscaling.max_replicas", "engine.vllm.max_model_len",
            "engine.vllm.tensor_parallel_size", "engine.deepspeed.data_parallel", "arms.*.env_threads",
            "replay.shards", "agent.bc.steps")),
    (_GE0, ("run.seed", "world_model.*.steps", "world_model.*.warmup_steps", "world_model.sft.weight_decay",
            "world_model.sft.balance_*", "world_model.rl.kl", "world_model.rl.reward.*", "world_model.generation.temperature",
            "agent.max_staleness", "*history_budget_tokens", "run.stall_timeout_s", "checkpoint.*", "pool.max_replacements",
            "world_model.continual.min_new", "engine.num_gpus", "replay.capacity",
            "serve.autoscaling.min_replicas", "serve.autoscaling.*_s", "arms.*.control.mix.*", "agent.bc.episodes")),
    (_UNIT, ("model.lora.dropout", "*fraction", "arms.*.hybrid.*threshold", "eval.success_target")),
    ((1, 65535, False), ("serve.port",)),
    ((0, 3, False), ("engine.deepspeed.zero_stage",)),
]
FREE_FORM = ("envs.*.kwargs.*", "world_model.prompts.*")  # users' own values: only finiteness is checked there


def _numbers(node, prefix: str = ""):
    """(dotted key, value) of every number in a plain config container."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)):
            yield from _numbers(v, key + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield key, v


def _validate_values(cfg, fail) -> None:
    """Every number finite and in its range (VALUE_RULES), before any other check reads them."""
    import fnmatch
    import math

    from omegaconf import OmegaConf

    for key, v in _numbers(OmegaConf.to_container(cfg, resolve=True)):
        if isinstance(v, float) and not math.isfinite(v):
            fail(key, f"must be a finite number (got {v})")
        if isinstance(v, int) and abs(v) >= 2**31:
            fail(key, f"is out of range (got {v})")
        if any(fnmatch.fnmatchcase(key, pat) for pat in FREE_FORM):
            continue
        rule = next((r for r, pats in VALUE_RULES if any(fnmatch.fnmatchcase(key, p) for p in pats)), None)
        if rule is None:
            continue
        lo, hi, open_lo = rule
        if (v <= lo if open_lo else v < lo) or (hi is not None and v > hi):
            want = f"in [{lo}, {hi}]" if hi is not None else f"> {lo}" if open_lo else f">= {lo}"
            fail(key, f"must be {want} (got {v})")


class ConfigError(Exception):
    def __init__(self, file: str, key: str | None, message: str):
        self.file, self.key, self.message = file, key, message
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")

    def __reduce__(self):  # whole across processes: a learner's ConfigError reaches the driver as itself
        return type(self), (self.file, self.key, self.message)


def _omegaconf_error(e, file: str) -> ConfigError:
    from omegaconf.errors import ConfigKeyError

    key = getattr(e, "full_key", None) or None
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError):
        return ConfigError(file, None, f"unknown key '{key}'")
    return ConfigError(file, key, msg)


def _check_keys(raw, cls, prefix: str, file: str) -> None:
    """Unknown keys, with their full dotted path (OmegaConf loses the path inside lists)."""
    import dataclasses
    import typing

    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin is typing.Union:
        cls = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(cls), typing.get_args(cls)
    if dataclasses.is_dataclass(cls) and isinstance(raw, dict):
        hints = typing.get_type_hints(cls)
        for k, v in raw.items():
            if k not in hints:
                raise ConfigError(file, None, f"unknown key '{prefix}{k}'")
            _check_keys(v, hints[k], f"{prefix}{k}.", file)
    elif origin is list and isinstance(raw, list):
        for i, v in enumerate(raw):
            _check_keys(v, args[0], f"{prefix}{i}.", file)
    elif origin is dict and isinstance(raw, dict):
        for k, v in raw.items():
            _check_keys(v, args[1], f"{prefix}{k}.", file)


MAX_YAML_VALUES = 100_000  # a config holds hundreds; a few lines of nested aliases expand to billions


def _expanded_size_over(node, budget: int) -> bool:
    """Whether `node`, with every alias expanded (as OmegaConf copies it), holds more than `budget` values; stops as
    soon as it does. PyYAML keeps aliases as shared references, so loading was cheap: the copy would not be."""
    stack, seen = [node], 0
    while stack:
        n = stack.pop()
        seen += 1
        if seen > budget:
            return True
        if isinstance(n, dict):
            stack += list(n.keys()) + list(n.values())
        elif isinstance(n, list):
            stack += n
    return False


def load_config(path: str, overrides: Sequence[str] = ()):
    """Load an experiment YAML onto the structured defaults, apply `key=value` overrides, validate."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), None, "config file not found")
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(str(path), None, f"cannot read the file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), None, f"not UTF-8 text (byte {e.start}); save the YAML as UTF-8") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), None, f"YAML syntax error{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), None, "the top level must be a mapping")
    if _expanded_size_over(raw, MAX_YAML_VALUES):
        raise ConfigError(str(path), None, f"the YAML expands to over {MAX_YAML_VALUES:,} values (nested aliases?)")
    _check_keys(raw, ExperimentConfig, "", str(path))
    cfg = OmegaConf.structured(ExperimentConfig)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(raw))
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, str(path)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError("command line", item, "an override must look like key=value")
        key, value = item.split("=", 1)
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, merge=True)
        except (OmegaConfBaseException, yaml.YAMLError, ValueError, TypeError, IndexError) as e:
            msg = str(e).splitlines()[0]
            if "not in struct" in msg or "Key" in msg and "not" in msg or isinstance(e, IndexError):
                raise ConfigError("command line", None, f"unknown key '{key}'") from None
            raise ConfigError("command line", key, msg) from None
    validate_config(cfg, str(path))
    return cfg


def validate_config(cfg, file: str) -> None:
    """Checks that types alone cannot express, section by section."""
    def fail(key, msg):
        raise ConfigError(file, key, msg)

    _validate_values(cfg, fail)
    _validate_paths(cfg, fail)
    _validate_envs(cfg, fail)
    _validate_arms(cfg, fail)
    validate_engine(cfg.engine, fail)
    _validate_model(cfg, fail)
    _validate_agent(cfg, fail)
    if cfg.model.lora.enabled:  # on the checkpoints model.path and agent.init name, checked above
        _validate_lora_targets(cfg, fail)
    _validate_world_model(cfg, fail)
    _validate_run(cfg, fail)
    _validate_serve(cfg.serve, fail)


def _validate_paths(cfg, fail) -> None:
    """The run dir stays inside output_dir; the dirs a run writes are not files."""
    name = cfg.run.name
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        fail("run.name", f"must be one plain folder name inside run.output_dir (got {name!r})")
    for key, path in (("run.output_dir", cfg.run.output_dir), ("replay.dir", cfg.replay.dir)):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            fail(key, f"{path!r} is a file, not a folder")


def _validate_envs(cfg, fail) -> None:
    from agentworld.envs import check_menu, resolve_env_id

    for name, env in cfg.envs.items():
        try:
            resolve_env_id(env.id)
        except ValueError as e:
            fail(f"envs.{name}.id", str(e))
        try:
            check_menu(env.id, env.kwargs.get("menu", "visible"))
        except ValueError as e:
            fail(f"envs.{name}.kwargs.menu", str(e))
        if env.max_steps < 1:
            fail(f"envs.{name}.max_steps", "must be >= 1")
        if set(env.kwargs) - {"menu"}:  # kwargs only the env itself can judge: build it once, before anything starts
            _try_env(env, f"envs.{name}.kwargs", fail)


def _try_env(env, key: str, fail) -> None:
    from omegaconf import OmegaConf

    from agentworld.envs import make_env

    kwargs = OmegaConf.to_container(env.kwargs, resolve=True) if OmegaConf.is_config(env.kwargs) else dict(env.kwargs)
    try:
        built = make_env(env.id, max_steps=env.max_steps, **kwargs)
    except Exception as e:  # noqa: BLE001  (whatever the env's package raises for kwargs it does not take)
        fail(key, f"{env.id} does not take these kwargs: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    built.close()


def _env_key(cfg, key: str, where: str, fail) -> None:
    if key not in cfg.envs:
        fail(where, f"{key!r} is not a key of envs ({', '.join(cfg.envs) or 'none'})")


def _validate_arms(cfg, fail) -> None:
    if not cfg.arms:
        fail("arms", "at least one arm is required")
    names = [a.name for a in cfg.arms]
    if len(set(names)) != len(names):
        fail("arms", f"arm names must be unique (got {names})")
    for i, arm in enumerate(cfg.arms):
        if arm.source not in ARM_KINDS:
            fail(f"arms.{i}.source", f"must be one of {', '.join(ARM_KINDS.names())} (got {arm.source!r})")
        _env_key(cfg, arm.env, f"arms.{i}.env", fail)
        if arm.eval_env is not None:
            _validate_eval_env(cfg, arm, f"arms.{i}.eval_env", fail, arm.eval_env)
        if arm.fault_env is not None:
            _validate_eval_env(cfg, arm, f"arms.{i}.fault_env", fail, arm.fault_env)
        for key in ("actors", "envs_per_actor"):
            if getattr(arm, key) < 1:
                fail(f"arms.{i}.{key}", "must be >= 1")
        lo, hi = actor_bounds(arm)
        if not 1 <= lo <= arm.actors:
            fail(f"arms.{i}.actors_min", f"must be between 1 and actors ({arm.actors}), got {lo}")
        if hi < arm.actors:
            fail(f"arms.{i}.actors_max", f"must be >= actors ({arm.actors}), got {hi}")
        ARM_KINDS.get(arm.source)().validate(arm, lambda key, msg, i=i: fail(f"arms.{i}.{key}", msg))
        if arm.control.kind == "fictional" and not arm.control.fictional.facts:
            from agentworld.envs import family_module

            if not hasattr(family_module(cfg.envs[arm.env].id), "fictional_task"):
                fail(f"arms.{i}.control.fictional", f"generated fictional worlds ask their own question, which only "
                     f"search envs can (got {cfg.envs[arm.env].id!r}): give a fixed world's query and facts")


def _validate_eval_env(cfg, arm, key: str, fail, env_key: str) -> None:
    """An arm's eval env: a key of envs, of the domain of the env it trains on (its policy's prompts, action tokens
    and menus are that domain's)."""
    from agentworld.envs import domain_of

    _env_key(cfg, env_key, key, fail)
    trains, scored = domain_of(cfg.envs[arm.env]), domain_of(cfg.envs[env_key])
    if trains != scored:
        fail(key, f"{env_key!r} is a {scored} env, but the arm trains in {arm.env!r}, a {trains} env: "
                  "score it in an env of its own domain (e.g. the heldout split)")


def _checkpoint(path: str) -> bool:
    return (Path(path) / "config.json").is_file()


def _checkpoint_problem(path: str) -> str | None:
    """What stops `path` being a checkpoint dir the models here load and render prompts with (config.json transformers
    reads, a causal LM, a tokenizer with a chat template; a GGUF gets the `agentworld model import` to run); None: it
    is one. Reads no weights (agentworld/models/convert.py)."""
    from agentworld.models.convert import checkpoint_problem as problem

    return problem(path)


def _validate_model(cfg, fail) -> None:
    m = cfg.model
    if m.path is not None and (problem := _checkpoint_problem(m.path)):
        fail("model.path", problem)
    if m.tiny.hidden_size % m.tiny.num_heads:
        fail("model.tiny.num_heads", f"must divide hidden_size {m.tiny.hidden_size}")
    if m.dtype not in MODEL_DTYPES:
        fail("model.dtype", f"must be one of {', '.join(MODEL_DTYPES)} (got {m.dtype!r})")
    lora = m.lora
    if lora.r < 1:
        fail("model.lora.r", f"must be >= 1 (got {lora.r})")
    if lora.alpha <= 0:
        fail("model.lora.alpha", f"must be > 0 (got {lora.alpha})")
    if not 0 <= lora.dropout < 1:
        fail("model.lora.dropout", f"must be in [0, 1) (got {lora.dropout})")
    if not lora.target_modules:
        fail("model.lora.target_modules", "name at least one module to adapt (e.g. q_proj)")


def _validate_lora_targets(cfg, fail) -> None:
    """Every target module exists in the models the learners train: model.path (or the tiny default, a Qwen2) and the
    checkpoints agent.init and arms[i].init name. Built on the meta device: no weights are read."""
    from agentworld.models.lora import lora_targets_error, skeleton

    inits = [cfg.agent.init] + [arm.init for arm in cfg.arms if arm.init is not None]
    paths = [cfg.model.path] + [p for p in inits if _checkpoint(p)]
    for path in dict.fromkeys(paths):
        try:
            model = skeleton(path, cfg.model.tiny)
        except Exception:  # a model that cannot be built on the meta device: its learner checks the targets on loading
            continue
        problem = lora_targets_error(model, list(cfg.model.lora.target_modules))
        if problem:
            fail("model.lora.target_modules", f"{problem}, at {path or 'the tiny default model'}")


def _validate_init(cfg, init: str, key: str, fail) -> None:
    if init not in AGENT_INITS and (problem := _checkpoint_problem(init)):
        fail(key, f"must be lwm, cpt, scratch or a checkpoint dir: {problem}")
    if init == "cpt" and "cpt" not in cfg.world_model.stages:
        fail(key, f"cpt starts from the LWM recipe's CPT checkpoint: add cpt to world_model.stages "
                  f"(now {list(cfg.world_model.stages)})")


def _validate_agent(cfg, fail) -> None:
    a = cfg.agent
    _validate_init(cfg, a.init, "agent.init", fail)
    for i, arm in enumerate(cfg.arms):
        if arm.init is not None:
            _validate_init(cfg, arm.init, f"arms.{i}.init", fail)
    for key, least in (("max_action_tokens", 1), ("history_turns", 1), ("history_budget_tokens", 0)):
        if getattr(a, key) is not None and getattr(a, key) < least:
            fail(f"agent.{key}", f"must be >= {least}, or unset")
    if a.action_mode not in ACTION_MODES:
        fail("agent.action_mode", f"must be one of {', '.join(ACTION_MODES)} (got {a.action_mode!r})")
    for i, arm in enumerate(cfg.arms):
        if arm.action_mode is not None and arm.action_mode not in ACTION_MODES:
            fail(f"arms.{i}.action_mode", f"must be one of {', '.join(ACTION_MODES)}, or unset (got {arm.action_mode!r})")
    if a.algorithm not in LOSSES:
        fail("agent.algorithm", f"must be one of {', '.join(LOSSES.names())} (got {a.algorithm!r})")
    for key in ("updates", "episodes_per_update", "epochs"):
        if getattr(a, key) < 1:
            fail(f"agent.{key}", "must be >= 1")
    if a.max_staleness < 0:
        fail("agent.max_staleness", "must be >= 0")
    if a.lr <= 0:
        fail("agent.lr", "must be > 0")


def _behaviour_policy_problem(policy: str) -> str | None:
    """None for random, oracle, mix:<p> with p in [0, 1] or a checkpoint dir; else what is wrong with it."""
    usage = f"must be random, oracle, mix:<p> with p in [0, 1], or a checkpoint dir (got {policy!r})"
    if policy.startswith("mix:"):
        try:
            return None if 0 <= float(policy[4:]) <= 1 else usage
        except ValueError:
            return usage
    if policy in BEHAVIOUR_POLICIES:
        return None
    if not Path(policy).exists():
        return usage
    problem = _checkpoint_problem(policy)
    return f"a checkpoint policy: {problem}" if problem else None


def _validate_sources(cfg, fail) -> None:
    wm = cfg.world_model
    if not wm.data.sources:
        if wm.env is None:
            fail("world_model.env", "name the env whose transitions train the LWM, or list world_model.data.sources")
        _env_key(cfg, wm.env, "world_model.env", fail)
    for i, src in enumerate(wm.data.sources):
        key = f"world_model.data.sources.{i}"
        if (src.env is None) == (src.data is None):
            fail(key, "give exactly one of env (a real env to play) and data (a JSONL file or replay dir to import)")
        if src.env is not None:
            _env_key(cfg, src.env, f"{key}.env", fail)
            if src.steps < 1:
                fail(f"{key}.steps", "must be >= 1")
            if problem := _behaviour_policy_problem(src.policy):
                fail(f"{key}.policy", problem)
        elif not Path(src.data).exists():
            fail(f"{key}.data", f"no such file or replay dir {src.data!r}")


def _validate_world_model(cfg, fail) -> None:
    wm = cfg.world_model
    _validate_sources(cfg, fail)
    resolve_history(cfg)
    reply = lwm_generation(wm).max_new_tokens
    need = wm.history_budget_tokens + reply
    if cfg.engine.inference == "vllm" and cfg.engine.vllm.max_model_len < need:  # vLLM refuses a longer request
        fail("engine.vllm.max_model_len", f"{cfg.engine.vllm.max_model_len} cannot hold the LWM's prompt budget and "
             f"reply: needs >= {need} (world_model.history_budget_tokens {wm.history_budget_tokens} + its "
             f"max_new_tokens {reply})")
    t = wm.sft
    if t.steps < 0:
        fail("world_model.sft.steps", "must be >= 0")
    for key in ("batch_size", "eval_every", "eval_samples"):
        if getattr(t, key) < 1:
            fail(f"world_model.sft.{key}", "must be >= 1")
    for key in ("control_fraction", "perturbation_fraction", "fictional_fraction"):
        if not 0 <= getattr(t, key) <= 1:
            fail(f"world_model.sft.{key}", f"must be in [0, 1] (got {getattr(t, key)})")
    if t.control_fraction + t.perturbation_fraction + t.fictional_fraction > 1:
        fail("world_model.sft.fictional_fraction", "control_fraction + perturbation_fraction + fictional_fraction "
             "must be at most 1 (each SFT example carries at most one control)")
    for i, stage in enumerate(wm.stages):
        if stage not in WM_STAGES:
            fail(f"world_model.stages.{i}", f"must be one of {', '.join(WM_STAGES)} (got {stage!r})")
    for corpus in wm.cpt.corpora:
        if not Path(corpus).exists():
            fail("world_model.cpt.corpora", f"no such file or folder {corpus!r}")
    if wm.continual.stage not in ("rl", "sft"):
        fail("world_model.continual.stage", f"must be rl or sft (got {wm.continual.stage!r})")
    rl = wm.rl
    if rl.algorithm not in LOSSES:
        fail("world_model.rl.algorithm", f"must be one of {', '.join(LOSSES.names())} (got {rl.algorithm!r})")
    if rl.kl < 0:
        fail("world_model.rl.kl", "must be >= 0")
    if rl.group_size < 2:
        fail("world_model.rl.group_size", "must be >= 2 (advantages are relative to the group)")
    if rl.reward.rubric > 0 and not rl.judge_endpoint:
        fail("world_model.rl.judge_endpoint", "reward.rubric > 0 needs a judge endpoint")
    d = wm.data
    if problem := _behaviour_policy_problem(d.policy):
        fail("world_model.data.policy", problem)
    if d.steps < 1:
        fail("world_model.data.steps", "must be >= 1")
    if not 0 <= d.heldout_fraction < 1:
        fail("world_model.data.heldout_fraction", "must be in [0, 1)")
    if wm.history_turns < 1:
        fail("world_model.history_turns", "must be >= 1")
    _validate_think(wm.think, fail)


def _validate_think(t, fail) -> None:
    if t.source not in THINK_SOURCES:
        fail("world_model.think.source", f"must be one of {', '.join(THINK_SOURCES)} (got {t.source!r})")
    if t.source == "teacher" and not t.endpoint:
        fail("world_model.think.endpoint", "think.source teacher needs an OpenAI-compatible endpoint (base URL ending in /v1)")
    for key in ("max_tokens", "workers"):
        if getattr(t, key) < 1:
            fail(f"world_model.think.{key}", "must be >= 1")
    if t.timeout_s <= 0:
        fail("world_model.think.timeout_s", "must be > 0")


def resolve_history(cfg) -> None:
    """Fill an unset world_model.history_turns and history_budget_tokens from the domains the LWM learns: 4 turns
    within 1,536 tokens when one keeps state beyond a screen (envs.STATEFUL), else 1 turn and no budget."""
    from agentworld.envs import STATEFUL, domain_of

    wm = cfg.world_model
    keys = [s.env for s in wm.data.sources if s.env is not None] or ([wm.env] if wm.env else [])
    stateful = any(domain_of(cfg.envs[k]) in STATEFUL for k in keys if k in cfg.envs)
    if wm.history_turns is None:
        wm.history_turns = 4 if stateful else 1
    if wm.history_budget_tokens is None:
        room = 1536 if cfg.model.path else cfg.model.tiny.max_positions - lwm_generation(wm).max_new_tokens
        wm.history_budget_tokens = max(0, min(1536, room)) if wm.history_turns > 1 else 0


def lwm_generation(wm) -> GenerationConfig:
    """The LWM's generation settings, its token budget grown by the think block's."""
    return GenerationConfig(wm.generation.max_new_tokens + think_tokens(wm.think), wm.generation.temperature)


def lwm_rl(wm, rl) -> "WMRLConfig":
    """An RL stage's settings (`rl`: world_model.rl, maybe with other steps), its token budget grown by the think
    block's, as lwm_generation does for generation."""
    import dataclasses

    return dataclasses.replace(rl, max_new_tokens=rl.max_new_tokens + think_tokens(wm.think))


def agent_for(cfg, env_key: str, init: str | None = None, action_mode: str | None = None) -> AgentConfig:
    """The agent section as one arm's policy uses it: `init` and `action_mode` (the arm's; None: the agent section's),
    and the unset history and token limits filled for the domain of `envs[env_key]` (resolve_agent)."""
    import dataclasses

    from agentworld.envs import domain_of

    a = section(cfg.agent)
    a = dataclasses.replace(a, init=init or a.init, action_mode=action_mode or a.action_mode)
    return resolve_agent(a, domain_of(cfg.envs[env_key]), None if cfg.model.path else cfg.model.tiny.max_positions)


def resolve_agent(a: AgentConfig, domain: str, max_positions: int | None = None) -> AgentConfig:
    """`a` with its unset max_action_tokens, history_turns and history_budget_tokens filled for `domain`, as
    resolve_history fills the LWM's: the domain's token limit; 4 turns within 1,536 tokens (at most `max_positions`,
    the tiny model's, less the action's tokens) where the domain keeps state beyond one screen, else 1 turn."""
    import dataclasses

    from agentworld.envs import STATEFUL

    tokens = a.max_action_tokens or ACTION_TOKENS.get(domain, DEFAULT_ACTION_TOKENS)
    turns = a.history_turns or (4 if domain in STATEFUL else 1)
    budget = a.history_budget_tokens
    if budget is None:
        room = 1536 if max_positions is None else max_positions - tokens
        budget = max(0, min(1536, room)) if turns > 1 else 0
    return dataclasses.replace(a, max_action_tokens=tokens, history_turns=turns, history_budget_tokens=budget)


def _validate_run(cfg, fail) -> None:
    if cfg.eval.episodes < 1 or cfg.eval.every_updates < 1:
        fail("eval", "episodes and every_updates must be >= 1")
    if cfg.run.max_minutes <= 0:
        fail("run.max_minutes", "must be > 0")
    if cfg.run.storage is not None and "://" not in cfg.run.storage and not Path(cfg.run.storage).is_absolute():
        fail("run.storage", f"must be an absolute path or a URI such as s3://bucket/runs (got {cfg.run.storage!r})")
    if cfg.pool.interval_s <= 0:
        fail("pool.interval_s", "must be > 0")
    _validate_reservations(cfg, fail)
    if cfg.tracking.mlflow:
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            fail("tracking.mlflow", "mlflow is not installed (pip install mlflow-skinny)")


def _validate_reservations(cfg, fail) -> None:
    """On an embedded cluster of ray.num_cpus CPUs, every arm's learner and starting rollout actors reserve
    ray.actor_num_cpus each, all at once: more than fit would wait forever for CPUs that finished arms never give
    back (their actors live until the last arm ends)."""
    import os

    r = cfg.ray
    if r.address is not None or os.environ.get("RAY_ADDRESS") or r.num_cpus is None:
        return  # a cluster: the autoscaler adds nodes
    n = sum(1 + arm.actors for arm in cfg.arms)
    if n * r.actor_num_cpus > r.num_cpus + 1e-9:
        fail("ray.actor_num_cpus", f"the arms' {n} learners and rollout actors reserve {n} x {r.actor_num_cpus:g} = "
                                   f"{n * r.actor_num_cpus:g} CPUs, more than ray.num_cpus {r.num_cpus}: some would never "
                                   f"start; set it to at most {r.num_cpus / n:.3g}")


def _validate_serve(sv, fail) -> None:
    if not 1 <= sv.port <= 65535:
        fail("serve.port", f"must be in 1..65535 (got {sv.port})")
    for key in ("session_ttl_s", "max_sessions", "max_tokens", "max_body_bytes"):
        if getattr(sv, key) <= 0:
            fail(f"serve.{key}", "must be > 0")
    sa = sv.autoscaling
    if sa.min_replicas < 0 or sa.max_replicas < max(1, sa.min_replicas):
        fail("serve.autoscaling.max_replicas",
             f"must be >= 1 and >= min_replicas >= 0 (got {sa.min_replicas}..{sa.max_replicas})")
    if sa.target_ongoing_requests <= 0:
        fail("serve.autoscaling.target_ongoing_requests", "must be > 0")


def validate_engine(e, fail) -> None:
    """The engine section: registered names, installed packages, and combinations that can run."""
    import importlib.util

    for key, known in (("inference", INFERENCE_ENGINES), ("train", TRAIN_ENGINES), ("weight_sync", WEIGHT_SYNCS)):
        if getattr(e, key) not in known:
            fail(f"engine.{key}", f"must be one of {', '.join(known.names())} (got {getattr(e, key)!r})")
    for key, package in (("inference", "vllm"), ("train", "deepspeed")):
        if getattr(e, key) == package and importlib.util.find_spec(package) is None:
            fail(f"engine.{key}", f"{package} is not installed (pip install -e '.[{package}]')")
    if e.weight_sync == "broadcast" and not e.shared:
        fail("engine.weight_sync", "broadcast pushes weights to shared engine actors: set engine.shared: true")
    if e.num_gpus < 0:
        fail("engine.num_gpus", "must be >= 0")
    if e.inference == "vllm" and e.num_gpus > 0 and not e.shared:
        fail("engine.shared", "vLLM on GPUs runs in shared engine actors, which get the GPUs: set engine.shared: true")
    d = e.deepspeed
    if d.zero_stage not in (0, 1, 2):
        fail("engine.deepspeed.zero_stage", "must be 0, 1 or 2: ZeRO-3 partitions the parameters, which the "
             f"learner's own evaluation and sampling need whole (got {d.zero_stage})")
    if d.data_parallel < 1:
        fail("engine.deepspeed.data_parallel", "must be >= 1")
    if d.backend not in ("gloo", "nccl"):
        fail("engine.deepspeed.backend", f"must be gloo or nccl (got {d.backend!r})")
    if d.backend == "nccl" and e.num_gpus <= 0:
        fail("engine.deepspeed.backend", "nccl needs GPUs: set engine.num_gpus, or use gloo")
    v = e.vllm
    if v.tensor_parallel_size < 1:
        fail("engine.vllm.tensor_parallel_size", "must be >= 1")
    if v.kv_cache_gb is not None and v.kv_cache_gb <= 0:
        fail("engine.vllm.kv_cache_gb", "must be > 0, or null")
    if not 0 < v.gpu_memory_utilization <= 1:
        fail("engine.vllm.gpu_memory_utilization", "must be in (0, 1]")


def actor_bounds(arm) -> tuple[int, int]:
    """(min, max) rollout actors of an arm: `actors` where actors_min or actors_max is unset."""
    lo = arm.actors if arm.actors_min is None else arm.actors_min
    hi = arm.actors if arm.actors_max is None else arm.actors_max
    return lo, hi


def save_config(cfg, path) -> None:
    from omegaconf import OmegaConf

    Path(path).write_text(OmegaConf.to_yaml(cfg))
