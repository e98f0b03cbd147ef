"""The world-model simulator as a service on Ray Serve (`agentworld serve`): the LWM behind an OpenAI-compatible
`/v1/chat/completions` and `/v1/models`, and a session API that plays WorldModelEnv episodes from real initial states.

Replicas hold the engine and nothing else: every session lives in one SessionStore, a deployment-scoped actor
shared by all replicas, so any replica serves any step and Serve can add or remove replicas at will. A step reads
the episode from the store, simulates it in the replica and writes it back only if no other step landed meanwhile."""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from agentworld.serve import ChatRequest, complete, model_list

APP_NAME = "simulator"
TOKEN_ENV = "AGENTWORLD_SERVE_TOKEN"
MAX_TEXT_CHARS = 4096  # an action or a control: the prompt must stay short enough to simulate quickly

app = FastAPI()


class NewSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: str = Field(min_length=1, max_length=200)  # a key of `envs` in the config
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    control: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(max_length=MAX_TEXT_CHARS)
    control: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)  # this step only (agentworld/controls.py)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status, headers=headers)


@ray.remote(num_cpus=0)
class SessionStore:
    """Every live session ({sim: its WorldModelEnv without the engine, done}), least recently used first. Calls
    run one at a time, so `commit` is a compare-and-set on the step count: a step lands only on the episode it
    was simulated from."""

    def __init__(self, ttl_s: float, max_sessions: int):
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self.sessions: OrderedDict[str, tuple[float, dict]] = OrderedDict()  # id -> (last used, session)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.sessions and now - next(iter(self.sessions.values()))[0] > self.ttl_s:
            self.sessions.popitem(last=False)

    def _touch(self, sid: str, session: dict) -> None:
        self.sessions[sid] = (time.monotonic(), session)
        self.sessions.move_to_end(sid)

    def create(self, session: dict) -> str | None:
        """A new session id, or None when max_sessions are live."""
        self._expire()
        if len(self.sessions) >= self.max_sessions:
            return None
        sid = uuid.uuid4().hex  # unguessable: the id is the session's only handle
        self._touch(sid, session)
        return sid

    def get(self, sid: str):
        self._expire()
        if sid not in self.sessions:
            return None
        session = self.sessions[sid][1]
        self._touch(sid, session)
        return session

    def commit(self, sid: str, session: dict) -> str:
        """'ok'; 'gone' if the session expired or was deleted meanwhile; 'conflict' if another step landed first."""
        self._expire()
        if sid not in self.sessions:
            return "gone"
        if self.sessions[sid][1]["sim"].t != session["sim"].t - 1:
            return "conflict"
        self._touch(sid, session)
        return "ok"

    def delete(self, sid: str) -> bool:
        self._expire()
        return self.sessions.pop(sid, None) is not None


@app.middleware("http")
async def guard(request: Request, call_next):
    """The token first, then the body size, so an unauthorized or oversized request costs no parsing."""
    spec = serve.get_replica_context().servable_object.spec
    token = spec["token"]
    if token and not hmac.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {token}".encode()):
        return error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    limit = spec["max_body_bytes"]
    if "content-length" not in request.headers and request.method in ("POST", "PUT", "PATCH"):
        body = bytearray()  # a chunked body: read only up to the limit, never the whole of an oversized one
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return error(413, f"request body over {limit} bytes")
        request._body = bytes(body)  # what the route reads (starlette's middleware request replays it)
        return await call_next(request)
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError:
        return error(400, "bad Content-Length")
    if size > limit:
        return error(413, f"request body over {limit} bytes")
    return await call_next(request)


@serve.deployment
@serve.ingress(app)
class Simulator:
    """One replica: the LWM engine and one real env per env key, used only to reset (real initial states)."""

    def __init__(self, spec: dict):
        import torch

        from agentworld.models.hf_engine import HFEngine

        torch.set_num_threads(spec["torch_threads"])
        self.spec, self.engine = spec, HFEngine(spec["model_path"])
        self.real: dict = {}
        self.real_lock = threading.Lock()  # FastAPI runs these routes in threads; a real env is not thread-safe

    def _store(self):
        # resolved per request: the controller may recreate the store, and a cached handle would then be dead
        return serve.get_deployment_actor("sessions")

    def _real_reset(self, key: str, seed: int):
        from agentworld.envs import make_env_from

        with self.real_lock:
            if key not in self.real:
                self.real[key] = make_env_from(self.spec["envs"][key])
            real = self.real[key]
            obs, info = real.reset(seed=seed)
        return real, obs, json.loads(json.dumps(info, default=str))

    @app.get("/v1/models")
    def models(self) -> dict:
        return model_list(self.spec["model_name"])

    @app.post("/v1/chat/completions")
    def chat(self, req: ChatRequest):
        return complete(self.engine, self.spec["model_name"], req, self.spec["max_tokens"])

    @app.post("/v1/sessions", status_code=201)
    def create(self, req: NewSession):
        from agentworld.worldmodel.env import WorldModelEnv

        if req.env not in self.spec["envs"]:
            return error(422, f"unknown env {req.env!r}: one of {', '.join(self.spec['envs'])}")
        real, obs, info = self._real_reset(req.env, req.seed)
        gen = self.spec["generation"]
        sim = WorldModelEnv(self.engine, real.env_id, real.domain, [(obs, info)],
                            max_steps=self.spec["envs"][req.env].max_steps, history_turns=self.spec["history_turns"],
                            max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, control=req.control,
                            notes=self.spec["notes"])
        sim.reset(req.seed)
        sim.engine = None  # the engine stays in this replica; only the episode goes to the store
        sid = ray.get(self._store().create.remote({"sim": sim, "done": False}))
        if sid is None:
            return error(429, f"{self.spec['max_sessions']} sessions are live: delete one or wait for one to expire")
        return {"id": sid, "env": req.env, "env_id": real.env_id, "seed": req.seed, "control": req.control,
                "observation": obs, "info": info}

    @app.post("/v1/sessions/{sid}/step")
    def step(self, sid: str, req: StepRequest):
        store = self._store()
        session = ray.get(store.get.remote(sid))
        if session is None:
            return error(404, f"no session {sid!r} (unknown, deleted or expired)")
        if session["done"]:
            return error(409, "the episode is over: delete the session")
        sim = session["sim"]
        sim.engine = self.engine
        sim.next_control = req.control
        obs, reward, terminated, truncated, info = sim.step(req.action)
        sim.engine = None
        outcome = ray.get(store.commit.remote(sid, {"sim": sim, "done": terminated or truncated}))
        if outcome == "gone":
            return error(404, f"session {sid!r} expired or was deleted during the step")
        if outcome == "conflict":
            return error(409, "another step of this session landed first; steps of a session must be sequential")
        return {"observation": obs, "reward": reward, "done": terminated or truncated, "terminated": terminated,
                "truncated": truncated, "info": json.loads(json.dumps(info, default=str))}

    @app.delete("/v1/sessions/{sid}")
    def delete(self, sid: str):
        if not ray.get(self._store().delete.remote(sid)):
            return error(404, f"no session {sid!r} (unknown, deleted or expired)")
        return {"id": sid, "deleted": True}

    def __del__(self):
        for env in self.real.values():  # JVMs, browsers, shells
            env.close()


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_spec(cfg, model_path: str | None = None) -> dict:
    """What every replica needs, checked before anything starts: the model exists, and an exposed host has a token."""
    from agentworld.config import lwm_generation, section

    s = cfg.serve
    model = model_path or str(Path(cfg.run.output_dir) / cfg.run.name / "checkpoints" / "wm")
    if not (Path(model) / "config.json").is_file():
        raise FileNotFoundError(f"no HF checkpoint (config.json) at {model!r}: train the LWM first "
                                f"(agentworld wm train) or pass --model PATH")
    token = s.token or os.environ.get(TOKEN_ENV) or None
    if not token and not is_loopback(s.host):
        raise ValueError(f"serve.host {s.host!r} is not a loopback address: a token is required "
                         f"(serve.token or ${TOKEN_ENV})")
    return dict(model_path=model, model_name=s.model_name, token=token, envs={k: section(v) for k, v in cfg.envs.items()},
                history_turns=cfg.world_model.history_turns, generation=lwm_generation(cfg.world_model),
                notes=dict(cfg.world_model.prompts),
                max_tokens=s.max_tokens,
                max_body_bytes=s.max_body_bytes, max_sessions=s.max_sessions, torch_threads=cfg.ray.torch_threads)


def start(cfg, spec: dict) -> str:
    """Deploy the simulator on the current Ray cluster; returns its base URL (ending in /v1)."""
    from omegaconf import OmegaConf
    from ray.serve.config import DeploymentActorConfig

    s = cfg.serve
    autoscaling = {k: v for k, v in OmegaConf.to_container(s.autoscaling).items() if v is not None}
    store = DeploymentActorConfig(name="sessions", actor_class=SessionStore, actor_options={"num_cpus": 0},
                                  init_kwargs=dict(ttl_s=s.session_ttl_s, max_sessions=s.max_sessions))
    deployment = Simulator.options(autoscaling_config=autoscaling, deployment_actors=[store],
                                   ray_actor_options={"num_cpus": cfg.ray.actor_num_cpus})
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(deployment.bind(spec), name=APP_NAME, route_prefix="/")
    return f"http://{s.host}:{s.port}/v1"

