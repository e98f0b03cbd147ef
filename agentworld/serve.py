"""An OpenAI-compatible chat endpoint for any HF checkpoint (an LWM, or a judge), as a Ray Serve
deployment: `/v1/models` and `/v1/chat/completions`. Bad requests get 4xx, never 5xx. It binds to
127.0.0.1 unless told otherwise. The simulator service (sim_service.py) answers chat with `complete` too."""


import time
import uuid

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve

MAX_MESSAGES_CHARS = 200_000
MAX_TOKENS_LIMIT = 2048

app = FastAPI()


class Message(BaseModel):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str


class ChatRequest(BaseModel):
    model: str = "agentworld"
    messages: list[Message] = Field(min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)  # newer clients' name
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


def model_list(name: str) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "agentworld"}]}


def complete(engine, name: str, req: ChatRequest, max_tokens: int = MAX_TOKENS_LIMIT):
    """One chat completion in the OpenAI format; a request over the limits gets 413 or 422."""
    limit = req.max_completion_tokens or req.max_tokens
    if limit > max_tokens:
        return JSONResponse({"error": {"message": f"max_tokens must be <= {max_tokens}"}}, status_code=422)
    messages = [m.model_dump() for m in req.messages]
    if sum(len(m["content"]) for m in messages) > MAX_MESSAGES_CHARS:
        return JSONResponse({"error": {"message": "messages too long"}}, status_code=413)
    prompt = engine.render(messages)
    gen = engine.generate([prompt], max_new_tokens=limit, temperature=req.temperature)[0]
    prompt_tokens = len(engine.tok(prompt).input_ids)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                     "finish_reason": "stop" if len(gen.logprobs) > len(gen.token_ids) else "length"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(gen.token_ids),
                  "total_tokens": prompt_tokens + len(gen.token_ids)},
    }


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class ChatServer:
    def __init__(self, model_path: str, model_name: str = "agentworld", torch_threads: int = 1):
        import torch

        from agentworld.models.hf_engine import HFEngine

        torch.set_num_threads(torch_threads)
        self.engine, self.name = HFEngine(model_path), model_name

    @app.get("/v1/models")
    def models(self) -> dict:
        return model_list(self.name)

    @app.post("/v1/chat/completions")
    def chat(self, req: ChatRequest):
        return complete(self.engine, self.name, req)


def start(model_path: str, model_name: str = "agentworld", host: str = "127.0.0.1", port: int = 8000,
          route_prefix: str = "/"):
    """Run the endpoint on the current Ray cluster; returns its base URL (ending in /v1)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(ChatServer.bind(model_path, model_name), name=f"chat-{model_name}", route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}/v1"
