"""BFCL multi-turn tasks: the 200 `multi_turn_base` tasks of `bfcl-eval`, played one call at a time against its
stateful Python backends (file system, trading bot, travel, vehicle, ...) and scored by its own checker: the
backends' final state and the calls' results against those of the ground truth, turn by turn.

With `split` (`train` or `heldout`) a task is in the split `split_of(test_id)` (160 / 40 of the 200), and
`bfcl:multi_turn_base` plays the split's (seed mod its size)-th task."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import random
import re
import uuid
from typing import Any, Sequence

from bfcl_eval.constants.eval_config import MULTI_TURN_FUNC_DOC_PATH
from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING, MULTI_TURN_FUNC_DOC_FILE_MAPPING
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker
from bfcl_eval.utils import load_dataset_entry, load_file, load_ground_truth_entry

from agentworld.envs.base import retry_ast, split_of, unparsed_info

CATEGORY = "multi_turn_base"
SPLITS = ("train", "heldout")
MAX_OBS_CHARS = 4000
END_TURN = {"end_turn": True}
INSTRUCTIONS = ('Act with one function call per step, as JSON {"tool": NAME, "arguments": {...}} or as Python '
                "NAME(arg=value). When you have done what the user asked, reply {\"end_turn\": true}; the next "
                "user request follows, and after the last one your work is checked.")


@functools.cache
def tasks() -> dict[str, tuple[dict, list[list[str]]]]:
    """test id -> (entry with question, initial_config, involved_classes; ground-truth calls per turn)."""
    entries = load_dataset_entry(CATEGORY, include_language_specific_hint=False)
    truth = {g["id"]: g["ground_truth"] for g in load_ground_truth_entry(CATEGORY)}
    return {e["id"]: (e, truth[e["id"]]) for e in entries}


def split_ids(split: str | None = None) -> list[str]:
    """The test ids, in bfcl's order: all of them, or those of the split `train` or `heldout`."""
    return [test_id for test_id in tasks() if split is None or split_of(test_id) == split]


@functools.cache
def backend_class(class_name: str) -> type:
    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


@functools.cache
def class_docs(class_name: str) -> tuple[str, list[dict]]:
    """(what the class is, its function docs). Every doc repeats the class's preamble; it is said once here."""
    docs = load_file(MULTI_TURN_FUNC_DOC_PATH / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name])
    return docs[0]["description"].split("Tool description:")[0].strip(), docs


def render_doc(doc: dict) -> str:
    params = doc["parameters"]
    args, notes = [], []
    for name, p in params.get("properties", {}).items():
        kind = p.get("type", "any")
        if kind == "array" and "items" in p:
            kind += f"[{p['items'].get('type', 'any')}]"
        if kind == "dict" and p.get("properties"):
            kind += "{" + ",".join(p["properties"]) + "}"
        if name in params.get("required", []):
            args.append(f"{name}: {kind}")
        else:
            args.append(f"{name}: {kind} = {p['default']!r}" if "default" in p else f"{name}?: {kind}")
        if p.get("description", "").strip():
            notes.append(f"{name}: {p['description'].strip()}")
    what = doc["description"].split("Tool description:")[-1].strip()
    return f"- {doc['name']}({', '.join(args)}): {what}" + (f" [{' '.join(notes)}]" if notes else "")


def function_docs(involved_classes: list[str]) -> str:
    parts = []
    for class_name in involved_classes:
        about, docs = class_docs(class_name)
        parts.append(f"{class_name}: {about}\n" + "\n".join(render_doc(d) for d in docs))
    return "\n".join(parts)


def _parameters(class_names: list[str]) -> dict[str, list[inspect.Parameter]]:
    """function name -> its parameters but self, for the functions the task's backends offer."""
    names = {d["name"] for c in class_names for d in class_docs(c)[1]}
    return {name: [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
            for c in class_names for name, fn in inspect.getmembers(backend_class(c), inspect.isfunction)
            if name in names}


def signature(class_names: list[str]) -> dict[str, list[str]]:
    """function name -> its parameter names, for the functions the task's backends offer."""
    return {name: [p.name for p in params] for name, params in _parameters(class_names).items()}


def required_args(class_names: list[str]) -> dict[str, list[str]]:
    """function name -> the parameters it cannot do without (no default), for the functions the task's backends offer."""
    return {name: [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            for name, params in _parameters(class_names).items()}


def parse_python_call(text: str, params: dict[str, list[str]]) -> tuple[str, dict] | str:
    """`cd(folder='x')` -> ("cd", {"folder": "x"}); literals only, so nothing but the named function runs."""
    try:
        node = retry_ast(functools.partial(ast.parse, mode="eval"), text.strip()).body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            return "a call looks like NAME(arg=value)"
        name = node.func.id
        if name not in params:
            return f"unknown function {name!r}"
        if len(node.args) > len(params[name]):
            return f"{name} takes at most {len(params[name])} arguments"
        args = {params[name][i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
        args.update({k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg})
        return name, args
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as e:
        return f"the call could not be parsed ({type(e).__name__}: {str(e)[:80]})"


def parse_action(action: Any, params: dict[str, list[str]]) -> tuple[str, dict] | dict | str:
    """(name, arguments) for a call, END_TURN, or an error message."""
    if not isinstance(action, str):
        return f"the action must be a string, not {type(action).__name__}"
    text = re.sub(r"^```(?:json|python)?|```$", "", action.strip()).strip()
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # not JSON; or a number of thousands of digits, or too deep
        return parse_python_call(text, params) if re.match(r"^[A-Za-z_]\w*\s*\(", text) else (
            'the action is neither JSON {"tool": NAME, "arguments": {...}} nor a call NAME(arg=value)')
    if isinstance(obj, dict) and obj.get("end_turn"):
        return END_TURN
    name = obj.get("tool", obj.get("name")) if isinstance(obj, dict) else None
    args = obj.get("arguments", {}) if isinstance(obj, dict) else None
    if isinstance(args, str):  # OpenAI-style tool calls carry their arguments as a JSON string
        try:
            args = json.loads(args or "{}")
        except (ValueError, RecursionError):
            args = None
    if not isinstance(name, str) or not isinstance(args, dict):
        return 'the action must be {"tool": NAME, "arguments": {...}} or {"end_turn": true}'
    if not all(k.isidentifier() for k in args):  # the call is run with eval: a key must not smuggle in code
        return f"argument names must be identifiers, not {[k for k in args if not k.isidentifier()]}"
    return (name, args) if name in params else f"unknown function {name!r}"


def call_string(name: str, args: dict) -> str:
    """The form bfcl executes, as its own `convert_to_function_call` writes it."""
    return f"{name}({','.join(f'{k}={v!r}' for k, v in args.items())})"


class BFCLEnv:
    def __init__(self, name: str, max_steps: int | None = None, domain: str = "mcp", split: str | None = None):
        check(name)
        if split is not None and split not in SPLITS:
            raise ValueError(f"bfcl:{name}: split must be train or heldout, not {split!r}")
        if split is not None and name != CATEGORY and split_of(name) != split:
            raise ValueError(f"bfcl:{name} is a task of the {split_of(name)} split, not of {split}")
        self.env_id, self.domain, self.name, self.split = f"bfcl:{name}", domain, name, split
        self.test_id: str | None = None
        self.max_steps = max_steps
        self.entry: dict | None = None
        self.model = ""

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self._forget()
        self.test_id = test_id = self._pick(seed)
        self.entry, self.truth = tasks()[test_id]
        self.params = signature(self.entry["involved_classes"])
        self.required = required_args(self.entry["involved_classes"])
        # bfcl keeps backend instances in module globals keyed by model name and test id: a name per episode
        self.model = f"agentworld_{uuid.uuid4().hex}"
        self.turn, self.progress, self.steps = 0, 0, [[]]
        self.t, self.score, self.done = 0, 0.0, False
        obs = (f"Task {test_id}. {INSTRUCTIONS}\n\nFunctions:\n{function_docs(self.entry['involved_classes'])}"
               f"\n\n{self._user_turn()}")
        return obs, self._info()

    def _pick(self, seed: int | None) -> str:
        """The task's id: the env's own, else one drawn by the seed (with a split: the seed-th of the split's)."""
        if self.name != CATEGORY:
            return self.name
        ids = split_ids(self.split)
        if self.split is None or seed is None:
            return ids[random.Random(seed).randrange(len(ids))]
        return ids[seed % len(ids)]

    def _user_turn(self) -> str:
        return "\n".join(f"User: {m['content']}" for m in self.entry["question"][self.turn])

    def _truth_call(self, i: int) -> tuple[str, dict]:
        return parse_python_call(self.truth[self.turn][i], self.params)

    def oracle_action(self) -> str | None:
        """The ground truth's next call in this turn, or the end of the turn."""
        if self.entry is None or self.done:
            return None
        if self.progress < len(self.truth[self.turn]):
            name, args = self._truth_call(self.progress)
            return json.dumps({"tool": name, "arguments": args})
        return json.dumps(END_TURN)

    def _info(self, **extra) -> dict[str, Any]:
        return {"open_actions": True, "score": self.score, "won": False, "turn": self.turn, **extra}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.entry is None:
            raise RuntimeError("call reset() before step()")
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        if self.done:
            return "The episode is over.", 0.0, True, truncated, self._info(error="episode over")
        parsed = parse_action(action, self.params)
        if isinstance(parsed, str):
            return f"Error: {parsed}. {INSTRUCTIONS}", 0.0, False, truncated, self._info(**unparsed_info(parsed))
        if parsed == END_TURN:
            return self._end_turn(truncated)
        name, args = parsed
        missing = [a for a in self.required[name] if a not in args]  # the backend answers it, in its own words
        call = call_string(name, args)
        [result], _ = multi_turn_utils.execute_multi_turn_func_call(
            [call], self.entry["initial_config"], self.entry["involved_classes"], self.model, self.entry["id"])
        self.steps[self.turn].append([call])
        if self.progress < len(self.truth[self.turn]) and parsed == self._truth_call(self.progress):
            self.progress += 1
        obs = result if len(result) <= MAX_OBS_CHARS else result[:MAX_OBS_CHARS] + "\n...[truncated]"
        error = {"error": result} if result.startswith("Error during execution") else {}
        if missing:  # no well-formed call of `name`
            error = unparsed_info(f"{name} needs the arguments {', '.join(missing)}: {result}")
        return obs, 0.0, False, truncated, self._info(**error)

    def _end_turn(self, truncated: bool):
        self.turn += 1
        if self.turn < len(self.truth):
            self.progress = 0
            self.steps.append([])
            return self._user_turn(), 0.0, False, truncated, self._info()
        self.turn, self.done = len(self.truth) - 1, True
        verdict = multi_turn_checker(self.steps, self.truth, self.entry, CATEGORY, self.model)
        self._forget()
        won = bool(verdict["valid"])
        self.score += float(won)
        obs = "All requests done. " + ("The checker passed." if won else f"The checker failed: {verdict['error_message']}")
        return obs, float(won), True, truncated, self._info(won=won)

    def _forget(self) -> None:
        """Drop this episode's backend instances (the live ones and the checker's) from bfcl's globals."""
        if self.model:
            store = vars(multi_turn_utils)
            for key in [k for k in store if k.startswith(self.model + "_")]:
                del store[key]

    def close(self) -> None:
        self._forget()


MENU_SIZE = 20


def menu(observations: Sequence[str], actions: Sequence[str]) -> list[str]:
    """Ending the turn, the calls that need no argument, and the calls of one-string-argument functions with each
    value the current user request quotes, of the classes the first observation documents; at most MENU_SIZE."""
    docs = [d for c in re.findall(r"^(\w+): ", observations[0], re.M) if c in CLASS_FILE_PATH_MAPPING
            for d in class_docs(c)[1]]
    request = next((" ".join(re.findall(r"^User: (.*)$", o, re.M)) for o in reversed(observations)
                    if re.search(r"^User: ", o, re.M)), "")
    quoted = dict.fromkeys(a or b for a, b in re.findall(r"'([^'\s]{1,60})'|\"([^\"\n]{1,60})\"", request))
    out = [END_TURN] + [{"tool": d["name"], "arguments": {}} for d in docs if not d["parameters"].get("required")]
    for value in quoted:
        for d in docs:
            required, props = d["parameters"].get("required", []), d["parameters"].get("properties", {})
            if len(required) == 1 and props.get(required[0], {}).get("type") == "string":
                out.append({"tool": d["name"], "arguments": {required[0]: value}})
    return list(dict.fromkeys(json.dumps(a) for a in out))[:MENU_SIZE]


def check(name: str) -> None:
    if name != CATEGORY and name not in tasks():
        raise ValueError(f"unknown env id 'bfcl:{name}': names are {CATEGORY} (a task chosen by the seed) "
                         f"or one of its test ids {CATEGORY}_0 .. {CATEGORY}_{len(tasks()) - 1}")


def make(name: str, max_steps: int | None = None, domain: str = "mcp", split: str | None = None,
         **kwargs: Any) -> BFCLEnv:
    if kwargs:
        raise ValueError(f"bfcl:{name}: unexpected kwargs {sorted(kwargs)}")
    return BFCLEnv(name, max_steps=max_steps, domain=domain, split=split)
