"""An OpenAI-compatible chat endpoint for any HF checkpoint (an LWM, or a judge), as a Ray Serve
deployment: `/v1/models` and `/v1/chat/completions`. Bad requests get 4xx, never 5xx. It binds to
127.0.0.1 unless told otherwise."""


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
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


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
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "agentworld"}]}

    @app.post("/v1/chat/completions")
    def chat(self, req: ChatRequest):
        messages = [m.model_dump() for m in req.messages]
        if sum(len(m["content"]) for m in messages) > MAX_MESSAGES_CHARS:
            return JSONResponse({"error": {"message": "messages too long"}}, status_code=413)
        prompt = self.engine.render(messages)
        gen = self.engine.generate([prompt], max_new_tokens=req.max_tokens, temperature=req.temperature)[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                         "finish_reason": "stop" if len(gen.logprobs) > len(gen.token_ids) else "length"}],
            "usage": {"prompt_tokens": len(self.engine.tok(prompt).input_ids),
                      "completion_tokens": len(gen.token_ids), "total_tokens": None},
        }


def start(model_path: str, model_name: str = "agentworld", host: str = "127.0.0.1", port: int = 8000,
          route_prefix: str = "/"):
    """Run the endpoint on the current Ray cluster; returns its base URL (ending in /v1)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(ChatServer.bind(model_path, model_name), name=f"chat-{model_name}", route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}/v1"
