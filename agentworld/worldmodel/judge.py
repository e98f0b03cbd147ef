"""The rubric judge: an OpenAI-compatible chat endpoint scores a predicted state on five dimensions from
1 to 5 in a tagged JSON block. Replies are parsed tolerantly, retried a bounded number of times, and
failures are counted rather than fatal."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

DIMENSIONS = ("format", "factuality", "consistency", "realism", "quality")

JUDGE_SYSTEM = (
    "You grade a world model's predicted environment observation against the real one. Score each of "
    "format, factuality, consistency, realism and quality from 1 (worst) to 5 (best). Answer with "
    '<scores>{"format": n, "factuality": n, "consistency": n, "realism": n, "quality": n}</scores>.'
)

_TAGGED = re.compile(r"<scores>(.*?)</scores>", re.S)
_OBJECT = re.compile(r"\{[^{}]*\}", re.S)


class EndpointError(RuntimeError):
    """The endpoint could not be reached or answered with an error."""


def parse_judgment(text: str) -> dict[str, float] | None:
    """The five scores from a reply (the last tagged block, else the last bare JSON object that has
    them); None when absent or out of 1..5."""
    candidates = _TAGGED.findall(text or "") or _OBJECT.findall(text or "")
    for block in reversed(candidates):
        try:
            obj = json.loads(block.strip())
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        try:
            scores = {d: float(obj[d]) for d in DIMENSIONS}
        except (KeyError, TypeError, ValueError):
            continue
        if all(1 <= v <= 5 for v in scores.values()):
            return scores
    return None


def normalized_total(scores: dict[str, float]) -> float:
    """Mean of the five, mapped to 0..100 as (x - 1) / 4 * 100."""
    mean = sum(scores[d] for d in DIMENSIONS) / len(DIMENSIONS)
    return (mean - 1) / 4 * 100


def chat(endpoint: str, model: str, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0,
         api_key: str | None = None, timeout: float = 60.0) -> str:
    """One OpenAI-compatible chat completion; `endpoint` is the base URL ending in /v1."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens,
                       "temperature": temperature}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(endpoint.rstrip("/") + "/chat/completions", body, headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise EndpointError(f"{endpoint}: HTTP {e.code}: {e.read()[:200]!r}") from None
    except (urllib.error.URLError, OSError) as e:
        raise EndpointError(f"{endpoint}: unreachable ({getattr(e, 'reason', e)})") from None
    try:
        return data["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"{endpoint}: not an OpenAI chat completion: {str(data)[:200]}") from None


def judge(endpoint: str, model: str, context: list[dict], prediction: str, reference: str,
          retries: int = 2, api_key: str | None = None) -> tuple[dict[str, float] | None, int, str]:
    """Scores (or None), the attempts used and the last raw reply."""
    history = "\n".join(f"{m['role']}: {m['content']}" for m in context[-6:])
    user = (f"Interaction so far:\n{history}\n\nReal next observation:\n{reference}\n\n"
            f"Predicted next observation:\n{prediction}")
    messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
    reply = ""
    for attempt in range(1, retries + 2):
        reply = chat(endpoint, model, messages, api_key=api_key)
        scores = parse_judgment(reply)
        if scores is not None:
            return scores, attempt, reply
    return None, retries + 1, reply
