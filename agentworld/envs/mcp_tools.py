"""MCP tool-use tasks on real MCP servers (`mcp-server-time`, `mcp-server-git`, `mcp-server-sqlite`) spoken to
over stdio through the official `mcp` client SDK. The first observation is the task and the server's tool
schemas; an action is a JSON tool call (or a final answer); the observation is the raw tool output or error.
Each task's checker inspects real state: the repository's commits and branches, the database's rows, the answer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

CALL_TIMEOUT = 30.0  # seconds; a server that takes longer is taken as hung
MAX_OBS_CHARS = 4000
MARKER = "AGENTWORLD_MCP_SERVER"  # set in each server's environment, so its processes can be found and checked

# Git identity and clock for the scratch repositories and for the git server itself: commit hashes then
# depend only on the seed and the agent's actions. No user or system config leaks in.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "AgentWorld", "GIT_AUTHOR_EMAIL": "agent@agentworld.invalid",
    "GIT_COMMITTER_NAME": "AgentWorld", "GIT_COMMITTER_EMAIL": "agent@agentworld.invalid",
    # 2024-03-01, in the raw form that both git and GitPython read
    "GIT_AUTHOR_DATE": "1709294400 +0000", "GIT_COMMITTER_DATE": "1709294400 +0000",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


class MCPServer:
    """One MCP server process over stdio, driven from synchronous code: the SDK's client runs on an asyncio
    loop in a background thread, and one task there owns the connection from start to close."""

    def __init__(self, command: str, args: list[str], cwd: str | None = None, env: dict[str, str] | None = None,
                 log_path: str = os.devnull):
        self.token = uuid.uuid4().hex
        self.params = StdioServerParameters(command=command, args=args, cwd=cwd, env={**(env or {}), MARKER: self.token})
        self._log = open(log_path, "w")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"mcp:{Path(command).name}")
        self._thread.start()
        self._stop = asyncio.Event()  # binds to the loop on first use, in the loop's thread
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._main = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)
        try:
            self.tools = self._ready.result(CALL_TIMEOUT)
        except BaseException:
            self.close()
            raise RuntimeError(f"MCP server {command} did not start; its log: {self.log_tail()}") from None

    async def _connect(self) -> None:
        """Owns the connection: the SDK's context managers must be entered and left by the same task."""
        try:
            async with stdio_client(self.params, errlog=self._log) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    tools = (await session.list_tools()).tools
                    self.session = session
                    self._ready.set_result(tools)
                    await self._stop.wait()
        except Exception as e:
            if not self._ready.done():
                self._ready.set_exception(e)

    def _request(self, coroutine):
        """Run one request on the loop; a closed connection or a timeout means the server died or hung."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(CALL_TIMEOUT + 5)
        except TimeoutError:
            future.cancel()
            raise
        except MCPError as e:
            if e.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                raise RuntimeError(f"MCP server {Path(self.params.command).name}: {e.message}") from None
            raise

    def ping(self) -> None:
        self._request(self.session.send_ping())

    def call(self, name: str, arguments: dict) -> tuple[str, bool]:
        """(text, is_error). Errors the server reports come back as text; a dead or hung server raises."""
        try:
            result = self._request(self.session.call_tool(name, arguments, read_timeout_seconds=CALL_TIMEOUT))
        except MCPError as e:  # e.g. an unknown tool: a protocol error, not a crash
            return f"Error: {e.message}", True
        text = "\n".join(c.text if c.type == "text" else json.dumps(c.model_dump(mode="json")) for c in result.content)
        return text, bool(result.is_error)

    def pids(self) -> list[int]:
        """The live processes of this server (it and any children it started), found by their marker."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if f"{MARKER}={self.token}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:  # gone meanwhile, or not ours to read
                    pass
        return found

    def log_tail(self, n: int = 300) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        try:
            self._main.result(15)  # the SDK closes stdin, waits, then kills the process group
        except BaseException:
            self._main.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._log.close()


# ---------------------------------------------------------------- servers and scratch state

def server_command(kind: str, scratch: Path) -> tuple[str, list[str], str]:
    """(executable, args, cwd). Console scripts are looked up beside the interpreter, not on PATH."""
    bin_dir = Path(sys.executable).parent
    if kind == "time":  # a fixed local zone: the server's answers do not depend on the machine's
        return str(bin_dir / "mcp-server-time"), ["--local-timezone", "UTC"], str(scratch)
    if kind == "git":  # cwd is the scratch dir, so the repository is named "project" in every episode
        return str(bin_dir / "mcp-server-git"), ["--repository", str(scratch / "project")], str(scratch)
    # mcp-server-sqlite's last release needs mcp<2, which the time and git servers cannot share a venv with
    script = Path(sys.prefix) / "mcp-sqlite" / "bin" / "mcp-server-sqlite"
    if not script.exists():
        raise RuntimeError(f"{script} is missing: python -m venv {script.parent.parent} && "
                           f"{script.parent}/pip install mcp-server-sqlite==2025.4.25 'mcp[cli]>=1.6,<2'")
    return str(script), ["--db-path", str(scratch / "shop.db")], str(scratch)


def git(repo: Path, *args: str, **env: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_repo(repo: Path, commits: list[tuple[str, str, str, str]]) -> None:
    """A fresh repository on branch main; each commit is (author, file, content, message), one day apart."""
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    for day, (author, path, content, message) in enumerate(commits, start=1):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)
        date = f"{1706781600 + day * 86400} +0000"  # February 2024
        git(repo, "add", path)
        git(repo, "commit", "-q", "-m", message, GIT_AUTHOR_NAME=author,
            GIT_AUTHOR_EMAIL=f"{author.split()[0].lower()}@example.com", GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)


def query(db: Path, sql: str, *params) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        with conn:  # commits
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def answer_of(text: str) -> dict:
    return {"answer": text}


def call(tool: str, **arguments) -> dict:
    return {"tool": tool, "arguments": arguments}


# ---------------------------------------------------------------- tasks

@dataclass
class Task:
    """A prompt, a scripted solution (JSON actions), a checker of real state or of the answer (None when the
    agent has not answered), and extra candidate actions for the menu."""
    prompt: str
    solution: list[dict]
    check: Callable[[str | None], bool]
    distractors: list[dict] = field(default_factory=list)


NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Donald Knuth",
         "Frances Allen", "John Backus"]
WORDS = ["apple", "banana", "cherry", "delta", "falcon", "garnet", "harbor", "island", "jasper", "kettle"]
# Zones without daylight saving time: a conversion gives the same clock time on any date.
NO_DST_ZONES = ["UTC", "Asia/Tokyo", "Asia/Kolkata", "Asia/Shanghai", "Asia/Dubai", "Asia/Kathmandu",
                "Asia/Singapore", "Africa/Nairobi", "America/Phoenix", "Pacific/Honolulu", "Australia/Brisbane",
                "America/Bogota"]


def hhmm(text: str | None) -> str | None:
    m = re.search(r"\b(\d{1,2}):(\d{2})\b", text or "")
    return f"{int(m.group(1)):02d}:{m.group(2)}" if m else None


def time_convert(rng: random.Random, scratch: Path) -> Task:
    src, dst = rng.sample(NO_DST_ZONES, 2)
    at = f"{rng.randrange(24):02d}:{rng.choice([0, 15, 30, 45]):02d}"
    h, m = map(int, at.split(":"))
    expected = datetime(2024, 1, 15, h, m, tzinfo=ZoneInfo(src)).astimezone(ZoneInfo(dst)).strftime("%H:%M")
    other = rng.choice([z for z in NO_DST_ZONES if z not in (src, dst)])
    return Task(
        prompt=f"When it is {at} in {src}, what time is it in {dst}? Answer with the time as HH:MM.",
        solution=[call("convert_time", source_timezone=src, time=at, target_timezone=dst), answer_of(expected)],
        check=lambda answer: hhmm(answer) == expected,
        distractors=[call("get_current_time", timezone=dst), call("convert_time", source_timezone=dst, time=at,
                     target_timezone=src), call("convert_time", source_timezone=src, time=at, target_timezone=other),
                     answer_of(at)])


def seeded_history(rng: random.Random, n: int) -> list[tuple[str, str, str, str]]:
    authors = rng.sample(NAMES, n)
    words = rng.sample(WORDS, n)
    return [(a, f"src/{w}.py", f"def {w}():\n    return {rng.randrange(100)}\n", f"Add {w} module")
            for a, w in zip(authors, words)]


def git_commit(rng: random.Random, scratch: Path) -> Task:
    repo = scratch / "project"
    make_repo(repo, seeded_history(rng, 3))
    before = git(repo, "rev-parse", "HEAD")
    path, message = f"docs/{rng.choice(WORDS)}-notes.md", f"Document the {rng.choice(WORDS)} release"
    content = f"# Notes\n\nRelease {rng.randrange(1, 10)}.{rng.randrange(10)} is ready.\n"
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(content)

    def check(answer):
        head = git(repo, "rev-parse", "HEAD")
        return (head != before and git(repo, "rev-parse", "HEAD~1") == before
                and git(repo, "log", "-1", "--format=%B", "HEAD") == message
                and git(repo, "show", f"HEAD:{path}") == content.strip())

    return Task(
        prompt=(f"In the git repository at repo_path 'project', a new file {path} is not yet committed. "
                f"Commit it, on top of the current HEAD, with the message: {message}"),
        solution=[call("git_add", repo_path="project", files=[path]), call("git_commit", repo_path="project", message=message)],
        check=check,
        distractors=[call("git_status", repo_path="project"), call("git_log", repo_path="project", max_count=5),
                     call("git_diff_staged", repo_path="project"), call("git_reset", repo_path="project"),
                     call("git_commit", repo_path="project", message="update")])


def git_branch(rng: random.Random, scratch: Path) -> Task:
    repo = scratch / "project"
    history = seeded_history(rng, 3)
    make_repo(repo, history)
    git(repo, "branch", "release", "HEAD~1")
    base = rng.choice(["main", "release"])
    branch = f"feature/{rng.choice(WORDS)}"

    def check(answer):
        return (git(repo, "rev-parse", "--abbrev-ref", "HEAD") == branch
                and git(repo, "rev-parse", branch) == git(repo, "rev-parse", base))

    return Task(
        prompt=(f"In the git repository at repo_path 'project', create a branch named {branch} starting from "
                f"the branch {base}, and switch to it."),
        solution=[call("git_create_branch", repo_path="project", branch_name=branch, base_branch=base),
                  call("git_checkout", repo_path="project", branch_name=branch)],
        check=check,
        distractors=[call("git_branch", repo_path="project", branch_type="local"),
                     call("git_log", repo_path="project", max_count=5), call("git_status", repo_path="project"),
                     call("git_checkout", repo_path="project", branch_name="release")])


def git_log_question(rng: random.Random, scratch: Path) -> Task:
    repo = scratch / "project"
    history = seeded_history(rng, 5)
    make_repo(repo, history)
    author, _, _, message = rng.choice(history)

    def check(answer):  # the author as the repository records it
        log = dict(line.split("\0") for line in git(repo, "log", "--format=%s%x00%an").splitlines())
        return (answer or "").strip().strip(".").lower() == log[message].lower()

    return Task(
        prompt=(f"In the git repository at repo_path 'project', who authored the commit with the message "
                f"'{message}'? Answer with the author's name."),
        solution=[call("git_log", repo_path="project", max_count=10), answer_of(author)],
        check=check,
        distractors=[call("git_status", repo_path="project"), call("git_show", repo_path="project", revision="HEAD"),
                     call("git_branch", repo_path="project", branch_type="local"),
                     answer_of(rng.choice([a for a, *_ in history if a != author]))])


def fresh_db(scratch: Path) -> Path:
    db = scratch / "shop.db"
    db.unlink(missing_ok=True)
    query(db, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT)")
    query(db, "INSERT INTO customers VALUES (1, 'Ada', 'London'), (2, 'Linus', 'Helsinki'), (3, 'Grace', 'New York')")
    return db


def sqlite_create_insert(rng: random.Random, scratch: Path) -> Task:
    db = fresh_db(scratch)
    rows = sorted((i, w, rng.randrange(1, 50)) for i, w in enumerate(rng.sample(WORDS, 3), start=1))
    values = ", ".join(f"({i}, '{w}', {q})" for i, w, q in rows)
    return Task(
        prompt=(f"In the SQLite database, create a table products (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER) "
                f"and insert exactly these rows (id, name, qty): {values}."),
        solution=[call("create_table", query="CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)"),
                  call("write_query", query=f"INSERT INTO products (id, name, qty) VALUES {values}")],
        check=lambda answer: _rows(db, "SELECT id, name, qty FROM products ORDER BY id") == rows,
        distractors=[call("list_tables"), call("describe_table", table_name="customers"),
                     call("read_query", query="SELECT * FROM customers"),
                     call("write_query", query=f"INSERT INTO products (id, name, qty) VALUES {values.split('), ')[0]})")])


def _rows(db: Path, sql: str) -> list[tuple] | None:
    try:
        return query(db, sql)
    except sqlite3.Error:  # the table is not there (yet)
        return None


def sqlite_query(rng: random.Random, scratch: Path) -> Task:
    db = fresh_db(scratch)
    query(db, "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, amount REAL)")
    for i in range(1, 13):
        query(db, "INSERT INTO orders VALUES (?, ?, ?)", i, rng.randrange(1, 4), rng.randrange(100, 10000) / 100)
    name, cid = rng.choice([("Ada", 1), ("Linus", 2), ("Grace", 3)])
    sql = ("SELECT ROUND(SUM(o.amount), 2) AS total FROM orders o JOIN customers c ON c.id = o.customer_id "
           f"WHERE c.name = '{name}'")
    total = query(db, sql)[0][0] or 0.0

    def check(answer):  # against the database as it is now
        m = re.search(r"-?\d+(?:\.\d+)?", (answer or "").replace(",", ""))
        return m is not None and abs(float(m.group()) - (query(db, sql)[0][0] or 0.0)) < 0.01

    return Task(
        prompt=f"In the SQLite database, what is the total amount of all orders placed by the customer {name}? "
               "Answer with the number.",
        solution=[call("read_query", query=sql), answer_of(f"{total:.2f}")],
        check=check,
        distractors=[call("list_tables"), call("describe_table", table_name="orders"),
                     call("read_query", query="SELECT * FROM orders"), call("read_query", query="SELECT * FROM customers"),
                     answer_of(f"{total + 10:.2f}")])


def sqlite_update(rng: random.Random, scratch: Path) -> Task:
    db = fresh_db(scratch)
    cid, city = rng.randrange(1, 4), rng.choice(["Paris", "Tokyo", "Lagos", "Lima"])
    name = query(db, "SELECT name FROM customers WHERE id = ?", cid)[0][0]
    before = query(db, "SELECT id, name, city FROM customers ORDER BY id")
    expected = [(i, n, city if i == cid else c) for i, n, c in before]
    return Task(
        prompt=f"In the SQLite database, the customer {name} has moved to {city}. Update their city, and change nothing else.",
        solution=[call("write_query", query=f"UPDATE customers SET city = '{city}' WHERE name = '{name}'")],
        check=lambda answer: _rows(db, "SELECT id, name, city FROM customers ORDER BY id") == expected,
        distractors=[call("list_tables"), call("describe_table", table_name="customers"),
                     call("read_query", query="SELECT * FROM customers"),
                     call("write_query", query=f"UPDATE customers SET city = '{city}'")])


# name -> (server kind, task builder)
TASKS: dict[str, tuple[str, Callable[[random.Random, Path], Task]]] = {
    "time-convert": ("time", time_convert),
    "git-commit": ("git", git_commit),
    "git-branch": ("git", git_branch),
    "git-log-question": ("git", git_log_question),
    "sqlite-create-insert": ("sqlite", sqlite_create_insert),
    "sqlite-query": ("sqlite", sqlite_query),
    "sqlite-update": ("sqlite", sqlite_update),
}

INSTRUCTIONS = ('Act with one JSON tool call per step: {"tool": NAME, "arguments": {...}}. '
                'When the task asks a question, reply {"answer": "..."} (one answer ends the episode).')


# ---------------------------------------------------------------- the env

def parse_action(action: Any) -> dict | str:
    """A tool call {"tool"/"name", "arguments"} or {"answer"}; an error message for anything else."""
    if not isinstance(action, str):
        return f"the action must be a JSON string, not {type(action).__name__}"
    text = re.sub(r"^```(?:json)?|```$", "", action.strip()).strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"the action is not valid JSON ({e.msg})"
    if isinstance(obj, dict) and "answer" in obj:
        return {"answer": str(obj["answer"])}
    if not isinstance(obj, dict) or not isinstance(obj.get("tool", obj.get("name")), str):
        return 'the action must be a JSON object {"tool": NAME, "arguments": {...}} or {"answer": "..."}'
    args = obj.get("arguments", {})
    if isinstance(args, str):  # OpenAI-style tool calls carry their arguments as a JSON string
        try:
            args = json.loads(args or "{}")
        except json.JSONDecodeError as e:
            return f"the arguments are not valid JSON ({e.msg})"
    if not isinstance(args, dict):
        return "the arguments must be a JSON object"
    return {"tool": obj.get("tool", obj.get("name")), "arguments": args}


def tool_schemas(tools) -> str:
    def compact(schema):  # titles repeat the names; drop them
        if isinstance(schema, dict):
            return {k: compact(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
        return [compact(v) for v in schema] if isinstance(schema, list) else schema

    return "\n".join(f"- {t.name}: {t.description} input={json.dumps(compact(t.input_schema), separators=(',', ':'))}"
                     for t in tools)


class MCPToolEnv:
    def __init__(self, task: str, max_steps: int | None = None, domain: str = "mcp"):
        check(task)
        self.env_id, self.domain = f"mcp:{task}", domain
        self.kind, self.builder = TASKS[task]
        self.max_steps = max_steps
        self.scratch = Path(tempfile.mkdtemp(prefix="agentworld-mcp-"))
        try:
            self.command = server_command(self.kind, self.scratch)
        except RuntimeError:
            shutil.rmtree(self.scratch)
            raise
        self.server: MCPServer | None = None
        self.task: Task | None = None
        self.t, self.score, self.done, self.progress = 0, 0.0, False, 0

    def _start_server(self) -> None:
        command, args, cwd = self.command
        self.server = MCPServer(command, args, cwd=cwd, env=GIT_ENV if self.kind == "git" else None,
                                log_path=str(self.scratch / "server.log"))

    def _info(self, **extra) -> dict[str, Any]:
        menu = self.task.distractors + self.task.solution if self.task else []
        actions = sorted({json.dumps(a) for a in menu})
        return {"admissible_actions": actions, "open_actions": True, "score": self.score, "won": False, **extra}

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.task = self.builder(random.Random(seed), self.scratch)  # state first: the git server needs its repo
        if self.server is None:
            self._start_server()
        self.server.ping()  # a server that died between episodes fails the reset (Supervised starts a new env)
        self.t, self.score, self.done, self.progress = 0, 0.0, False, 0
        obs = f"Task: {self.task.prompt}\n\nTools:\n{tool_schemas(self.server.tools)}\n\n{INSTRUCTIONS}"
        return obs, self._info()

    def oracle_action(self) -> str | None:
        """The next step of the scripted solution that the agent has not taken yet."""
        if self.task is None or self.done or self.progress >= len(self.task.solution):
            return None
        return json.dumps(self.task.solution[self.progress])

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        parsed = parse_action(action)
        if isinstance(parsed, str):
            obs = f"Error: {parsed}. {INSTRUCTIONS}"
            return obs, 0.0, False, truncated, self._info(error=parsed)
        if self.done:
            return "The episode is over.", 0.0, True, truncated, self._info(error="episode over")
        if self.progress < len(self.task.solution) and parsed == self.task.solution[self.progress]:
            self.progress += 1
        if "answer" in parsed:
            won = self._passes(parsed["answer"])
            obs, error = ("Correct." if won else "Wrong answer."), None
            self.done = True
        else:
            obs, is_error = self.server.call(parsed["tool"], parsed["arguments"])
            obs = obs if len(obs) <= MAX_OBS_CHARS else obs[:MAX_OBS_CHARS] + "\n...[truncated]"
            error = obs if is_error else None
            won = self._passes(None)
            self.done = won
        reward = 1.0 if won else 0.0
        self.score += reward
        info = self._info(won=won, **({"error": error} if error else {}))
        return obs, reward, self.done, truncated, info

    def _passes(self, answer: str | None) -> bool:
        try:
            return self.task.check(answer)
        except (subprocess.CalledProcessError, sqlite3.Error, KeyError):  # the state is not even close
            return False

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        shutil.rmtree(self.scratch, ignore_errors=True)


def check(name: str) -> None:
    if name not in TASKS:
        raise ValueError(f"unknown env id 'mcp:{name}': tasks are {', '.join(TASKS)}")


def make(name: str, max_steps: int | None = None, domain: str = "mcp", **kwargs: Any) -> MCPToolEnv:
    if kwargs:
        raise ValueError(f"mcp:{name}: unexpected kwargs {sorted(kwargs)}")
    return MCPToolEnv(name, max_steps=max_steps, domain=domain)
