"""MCP tool-use tasks on real MCP servers (`mcp-server-time`, `mcp-server-git`, `mcp-server-sqlite`) spoken to
over stdio through the official `mcp` client SDK. The first observation is the task and the server's tool
schemas; an action is a JSON tool call (or a final answer); the observation is the raw tool output or error.
Each task's checker inspects real state: the repository's commits and branches, the database's rows, the answer.

Two kinds of tasks. Seven hand-written ones (`mcp:time-convert`, `mcp:git-commit`, ...). And seeded procedural ones
(`mcp:sqlite-train`, `mcp:sqlite-heldout`, `mcp:git-train`, `mcp:git-heldout`): templates x parameters (1,044 sqlite,
1,976 git), split 80/20 by a stable hash of the task's key (template and parameters) so no held-out task is a
training task; `reset(seed)` draws one task of the split and seeds its data (shop database, repository) from the seed.

The menu (`menu`) is built from what the agent has seen, never from the scripted solution: read-only calls of the
listed tools with arguments the task or an earlier output names (`list_tables`, `describe_table`, `SELECT *` of the
tables named; `git_status`, `git_log`, ... of the repository named; the time zones and clock times the question
names), and answers read off the last tool output. Writing, and answers that need more than reading off a value,
take free text (`open_actions`)."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence
from zoneinfo import ZoneInfo

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
from agentworld.envs.base import split_of, unparsed_info  # noqa: F401  (split_of: the shared split rule; re-exported)
from agentworld.envs.sandbox import Limits, Sandbox, python_binds

CALL_TIMEOUT = 30.0  # seconds; a server that takes longer is taken as hung
# seconds a server may take to start and list its tools: a Python server's imports took over 30 s on 2 cores shared by
# tooluse.yaml's ~30 processes, and killing and restarting it there only adds load
START_TIMEOUT = 120.0
MAX_OBS_CHARS = 4000
# The real fault layer (`faults` kwarg): a share of tool calls really times out (sent with a deadline the server cannot
# meet; the SDK gives up and cancels it) or meets a dead server (its processes killed before the call; restarted after).
FAULTS = ("timeout", "crash")
FAULT_DEADLINE = 0.001  # seconds
TIMEOUT_TEXT = "Error: the {tool} call timed out after {seconds:g} s; the server sent no result."
CRASH_TEXT = "Error: the MCP server exited during the {tool} call and sent no result; it was restarted."
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
# Our own git commands (building and checking tasks) run outside the sandbox, on repositories the sandboxed server
# owns: git must accept that owner, and never run what a repository's config or hooks name.
HOST_GIT_ENV = {**GIT_ENV, "GIT_CONFIG_COUNT": "3", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*",
                "GIT_CONFIG_KEY_1": "core.fsmonitor", "GIT_CONFIG_VALUE_1": "false",
                "GIT_CONFIG_KEY_2": "core.hooksPath", "GIT_CONFIG_VALUE_2": os.devnull}
INSIDE = "/scratch"  # the scratch dir, as a sandboxed server sees it
# A server lives for the env's life: its CPU budget is an hour, not a command's ten seconds; Python's threads and
# imports need more address space than a shell command
SERVER_LIMITS = Limits(cpu_seconds=3600, memory_mb=8192, nproc=64, fsize_mb=256, timeout_s=CALL_TIMEOUT)


# In a Ray worker, asyncio loops are uvloop's, and uvloop refuses to spawn from two loops at once ("Racing with another
# loop to spawn a process"): servers started from concurrent env threads take turns to spawn.
_SPAWN_LOCK = threading.Lock()


def _leaf(error: BaseException) -> str:
    """The first real error inside the SDK's (nested) exception groups, as "Type: message"."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}".strip().rstrip(":")


class CallTimedOut(Exception):
    """A call that missed a deadline shorter than CALL_TIMEOUT: a timeout the caller asked for, not a hung server."""


class MCPServer:
    """One MCP server process over stdio, driven from synchronous code: the SDK's client runs on an asyncio
    loop in a background thread, and one task there owns the connection from start to close."""

    def __init__(self, command: str, args: list[str], cwd: str | None = None, env: dict[str, str] | None = None,
                 log_path: str = os.devnull, sandbox: Sandbox | None = None):
        """In `sandbox` when given: the command and its args then name paths inside it, and `env` is its own."""
        self.token, self.name = uuid.uuid4().hex, Path(command).name
        env = {**(env or {}), MARKER: self.token}
        if sandbox is not None:
            sandbox.env.update(env)
            command, *args = sandbox.argv([command, *args])
            env = {}  # `env -i` starts the sandbox's command line with none of ours
        self.params = StdioServerParameters(command=command, args=args, cwd=cwd, env=env)
        self._log = open(log_path, "w")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"mcp:{self.name}")
        self._thread.start()
        self._stop = asyncio.Event()  # binds to the loop on first use, in the loop's thread
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._main = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)
        try:
            self.tools = self._ready.result(START_TIMEOUT)
        except BaseException as e:
            self.close()
            raise RuntimeError(f"MCP server {self.name} did not start ({_leaf(e)}); its log: "
                               f"{self.log_tail() or '(empty)'}") from None

    async def _connect(self) -> None:
        """Owns the connection: the SDK's context managers must be entered and left by the same task."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                with _SPAWN_LOCK:
                    read, write = await stack.enter_async_context(stdio_client(self.params, errlog=self._log))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                tools = (await session.list_tools()).tools
                self.session = session
                self._ready.set_result(tools)
                await self._stop.wait()
        except Exception as e:
            if not self._ready.done():
                self._ready.set_exception(e)

    def _request(self, coroutine, deadline: float = CALL_TIMEOUT):
        """Run one request on the loop; a closed connection or a missed CALL_TIMEOUT means the server died or hung."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(CALL_TIMEOUT + 5)
        except TimeoutError:
            future.cancel()
            raise
        except MCPError as e:
            if e.code == REQUEST_TIMEOUT and deadline < CALL_TIMEOUT:
                raise CallTimedOut(e.message) from None
            if e.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                raise RuntimeError(f"MCP server {self.name}: {e.message}") from None
            raise

    def ping(self) -> None:
        self._request(self.session.send_ping())

    def call(self, name: str, arguments: dict, deadline: float = CALL_TIMEOUT) -> tuple[str, bool]:
        """(text, is_error). Errors the server reports come back as text; a dead or hung server raises. A `deadline`
        shorter than CALL_TIMEOUT that the server misses is a timeout error (TIMEOUT_TEXT), not a hung server."""
        try:
            result = self._request(self.session.call_tool(name, arguments, read_timeout_seconds=deadline), deadline)
        except CallTimedOut:
            return TIMEOUT_TEXT.format(tool=name, seconds=deadline), True
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

def server_command(kind: str, scratch: Path | str = INSIDE) -> tuple[str, list[str], str]:
    """(executable, args, cwd), with the scratch dir's paths as the server sees them: by default from inside its
    sandbox. Console scripts are looked up beside the interpreter, not on PATH."""
    scratch = Path(scratch)
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
    out = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **HOST_GIT_ENV, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def make_repo(repo: Path, commits: list[tuple[str, str, str, str]]) -> None:
    """A fresh repository on branch main; each commit is (author, file, content, message), one day apart.
    One `git fast-import` writes them all (a process per `git add` and `git commit` is slow on a busy machine);
    the commits, hashes included, are those that `git add` and `git commit -m` make."""
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")

    def data(text: str) -> bytes:
        raw = text.encode()
        return b"data %d\n%s\n" % (len(raw), raw)

    stream = b""
    for day, (author, path, content, message) in enumerate(commits, start=1):
        date = f"{1706781600 + day * 86400} +0000"  # February 2024
        stream += (f"commit refs/heads/main\nauthor {author} <{author.split()[0].lower()}@example.com> {date}\n"
                   f"committer {GIT_ENV['GIT_COMMITTER_NAME']} <{GIT_ENV['GIT_COMMITTER_EMAIL']}> {date}\n").encode()
        stream += data(message.strip() + "\n") + f"M 100644 inline {path}\n".encode() + data(content)
    subprocess.run(["git", "fast-import", "--quiet"], cwd=repo, env={**os.environ, **HOST_GIT_ENV}, input=stream,
                   capture_output=True, check=True)
    git(repo, "reset", "-q", "--hard")  # the work tree and index of the last commit


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
    """A prompt, a scripted solution (JSON actions), and a checker of real state or of the answer (None when the
    agent has not answered). A generated task has its key."""
    prompt: str
    solution: list[dict]
    check: Callable[[str | None], bool]
    key: str | None = None

    def passes(self, answer: str | None) -> bool:
        try:
            return self.check(answer)
        except (subprocess.CalledProcessError, sqlite3.Error, KeyError):  # the state is not even close
            return False


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
    return Task(
        prompt=f"When it is {at} in {src}, what time is it in {dst}? Answer with the time as HH:MM.",
        solution=[call("convert_time", source_timezone=src, time=at, target_timezone=dst), answer_of(expected)],
        check=lambda answer: hhmm(answer) == expected)


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
        check=check)


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
        check=check)


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
        check=check)


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
        check=lambda answer: _rows(db, "SELECT id, name, qty FROM products ORDER BY id") == rows)


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
        check=check)


def sqlite_update(rng: random.Random, scratch: Path) -> Task:
    db = fresh_db(scratch)
    cid, city = rng.randrange(1, 4), rng.choice(["Paris", "Tokyo", "Lagos", "Lima"])
    name = query(db, "SELECT name FROM customers WHERE id = ?", cid)[0][0]
    before = query(db, "SELECT id, name, city FROM customers ORDER BY id")
    expected = [(i, n, city if i == cid else c) for i, n, c in before]
    return Task(
        prompt=f"In the SQLite database, the customer {name} has moved to {city}. Update their city, and change nothing else.",
        solution=[call("write_query", query=f"UPDATE customers SET city = '{city}' WHERE name = '{name}'")],
        check=lambda answer: _rows(db, "SELECT id, name, city FROM customers ORDER BY id") == expected)


# ---------------------------------------------------------------- generated tasks, split by key

@dataclass(frozen=True)
class Template:
    """A kind of task: each parameter's values (their product is the template's task space), and a builder that
    seeds the data (database, repository) around one choice of them and returns the Task."""
    name: str
    params: dict[str, tuple]
    build: Callable[[random.Random, Path, dict], Task]


TEMPLATES: dict[str, dict[str, Template]] = {"sqlite": {}, "git": {}}
SPLITS = ("train", "heldout")


def template(family: str, name: str, **params):
    def register(build):
        TEMPLATES[family][name] = Template(name, {k: tuple(v) for k, v in params.items()}, build)
        return build
    return register


def task_key(template_name: str, params: dict) -> str:
    """A task's identity: its template and parameters (never its seeded data)."""
    return f"{template_name} {json.dumps(params, sort_keys=True)}"


@functools.cache
def _space(family: str) -> dict[str, dict[str, list[tuple[str, dict]]]]:
    """split -> template name -> [(key, params)], in a fixed order."""
    space: dict[str, dict[str, list]] = {split: {} for split in SPLITS}
    for t in TEMPLATES[family].values():
        for values in itertools.product(*t.params.values()):
            params = dict(zip(t.params, values))
            key = task_key(t.name, params)
            space[split_of(key)].setdefault(t.name, []).append((key, params))
    return space


def task_keys(family: str, split: str | None = None) -> list[str]:
    """The keys of a family's tasks (`sqlite` or `git`): all of them, or those of the split `train` or `heldout`."""
    if family not in TEMPLATES or split not in (None, *SPLITS):
        raise ValueError(f"no tasks {family!r}/{split!r}: families are {', '.join(TEMPLATES)}, "
                         f"splits {', '.join(SPLITS)}")
    return [key for s in ([split] if split else SPLITS) for tasks in _space(family)[s].values() for key, _ in tasks]


def build_task(family: str, key: str, rng: random.Random, scratch: Path) -> Task:
    """The task of this key, its data seeded from `rng` in `scratch`."""
    name, _, params = key.partition(" ")
    t, params = TEMPLATES[family].get(name), json.loads(params or "null")
    if t is None or not isinstance(params, dict) or params.keys() != t.params.keys() or any(
            v not in t.params[k] for k, v in params.items()):
        raise ValueError(f"{key!r} is not a {family} task")
    task = t.build(rng, scratch, params)
    task.key = key
    return task


def draw_key(family: str, split: str, rng: random.Random) -> str:
    """A template uniformly (so the large ones do not crowd out the rest), then one of its tasks in the split."""
    by_template = _space(family)[split]
    key, _ = rng.choice(by_template[rng.choice(sorted(by_template))])
    return key


def draw_task(family: str, split: str, rng: random.Random, scratch: Path) -> Task:
    """What `reset(seed)` of `mcp:<family>-<split>` plays: the key and then the data, both from `rng`."""
    return build_task(family, draw_key(family, split, rng), rng, scratch)


def number_is(expected: float) -> Callable[[str | None], bool]:
    def check(answer):
        m = re.search(r"-?\d+(?:\.\d+)?", (answer or "").replace(",", ""))
        return m is not None and abs(float(m.group()) - expected) < 0.005
    return check


def name_is(expected: str) -> Callable[[str | None], bool]:
    return lambda answer: answer is not None and answer.strip().strip(".'\"").strip().lower() == expected.lower()


# ---- sqlite: a seeded shop (customers, products, orders)

SHOP_SCHEMA = (
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL)",
    "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, price REAL NOT NULL)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), "
    "product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL, ordered_on TEXT NOT NULL)",
)
SHOP = "In the SQLite database of a shop (tables customers, products and orders), "
CITIES = ["London", "Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Austin"]
CATALOGUE = {"kitchen": ["kettle", "teapot", "skillet", "whisk"], "garden": ["trowel", "hose", "planter", "rake"],
             "office": ["stapler", "notebook", "marker", "desk lamp"], "toys": ["puzzle", "kite", "yo-yo", "robot"],
             "books": ["atlas", "novel", "cookbook", "diary"]}
NEW_PRODUCTS = {"kitchen": ["ladle", "sieve", "mug", "colander"],
                "garden": ["shears", "sprinkler", "wheelbarrow", "seed tray"],
                "office": ["binder", "eraser", "stamp", "paper clip"],
                "toys": ["marbles", "frisbee", "spinning top", "kazoo"],
                "books": ["almanac", "journal", "thesaurus", "comic"]}
CATEGORY_OF = {p: c for catalogue in (CATALOGUE, NEW_PRODUCTS) for c, ps in catalogue.items() for p in ps}
DAYS = [f"2024-03-{d:02d}" for d in range(3, 31, 3)]  # cut-off dates; orders fall in March 2024
PRICES = [5, 8, 12, 15, 20, 30, 50, 75]  # whole amounts; seeded prices never are, so no price sits on a cut-off
NEW_ORDER_DAY = "2024-04-01"
EXTRA_COLUMNS = ["rating INTEGER", "city TEXT", "created_on TEXT", "price REAL", "note TEXT"]


@dataclass
class Shop:
    customers: list[tuple[int, str, str]]  # id, name, city
    products: list[tuple[int, str, str, int]]  # id, name, category, price in cents
    orders: list[tuple[int, int, int, int, str]]  # id, customer_id, product_id, quantity, ordered_on

    def customer(self, name: str) -> int:
        return next(i for i, n, _ in self.customers if n == name)

    def add_order(self, customer_id: int, product_id: int, quantity: int, day: str) -> None:
        self.orders.append((len(self.orders) + 1, customer_id, product_id, quantity, day))


def seeded_shop(rng: random.Random, products: tuple[str, ...] = ()) -> Shop:
    """Eight customers (ids shuffled, so a name's id must be looked up), two to four products of each category
    (and `products`), distinct prices with cents, and thirty orders in March 2024, numbered by date."""
    names = rng.sample(NAMES, len(NAMES))
    customers = [(i, n, rng.choice(CITIES)) for i, n in enumerate(names, start=1)]
    chosen = [p for c, ps in CATALOGUE.items() for p in rng.sample(ps, rng.randint(2, 4))]
    chosen += [p for p in products if p not in chosen]
    rng.shuffle(chosen)
    cents = rng.sample([c for c in range(150, 10000) if c % 100], len(chosen))
    items = [(i, p, CATEGORY_OF[p], c) for i, (p, c) in enumerate(zip(chosen, cents), start=1)]
    picks = sorted((f"2024-03-{rng.randint(1, 31):02d}", rng.randint(1, len(customers)), rng.randint(1, len(items)),
                    rng.randint(1, 5)) for _ in range(30))
    orders = [(i, c, p, q, day) for i, (day, c, p, q) in enumerate(picks, start=1)]
    return Shop(customers, items, orders)


def write_shop(shop: Shop, scratch: Path) -> Path:
    db = scratch / "shop.db"
    db.unlink(missing_ok=True)
    conn = sqlite3.connect(db)
    try:
        with conn:
            for statement in SHOP_SCHEMA:
                conn.execute(statement)
            conn.executemany("INSERT INTO customers VALUES (?, ?, ?)", shop.customers)
            conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)",
                             [(i, n, c, p / 100) for i, n, c, p in shop.products])
            conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", shop.orders)
    finally:
        conn.close()
    return db


def products_now(db: Path) -> list[tuple]:
    """The products table as (id, name, category, price in cents): REAL prices compared as whole cents."""
    rows = query(db, "SELECT id, name, category, price FROM products ORDER BY id")
    return [(i, n, c, round(p * 100)) for i, n, c, p in rows]


def orders_now(db: Path) -> list[tuple]:
    return query(db, "SELECT id, customer_id, product_id, quantity, ordered_on FROM orders ORDER BY id")


def rows_added(before: list[tuple], now: list[tuple]) -> list[tuple] | None:
    """The rows (without their id) added to a table whose old rows are all unchanged; None if any changed."""
    old = {r[0]: r for r in before}
    if [r for r in now if r[0] in old] != before:
        return None
    return [r[1:] for r in now if r[0] not in old]


def sqlite_question(prompt: str, sql: str, answer: str, check: Callable) -> Task:
    return Task(prompt=SHOP + prompt, solution=[call("read_query", query=sql), answer_of(answer)], check=check)


@template("sqlite", "orders-after", customer=NAMES, after=DAYS)
def orders_after(rng, scratch, p):
    shop = seeded_shop(rng)
    write_shop(shop, scratch)
    cid = shop.customer(p["customer"])
    n = sum(1 for _, c, _, _, day in shop.orders if c == cid and day > p["after"])
    sql = (f"SELECT COUNT(*) AS n FROM orders o JOIN customers c ON c.id = o.customer_id "
           f"WHERE c.name = '{p['customer']}' AND o.ordered_on > '{p['after']}'")
    return sqlite_question(f"how many orders did the customer {p['customer']} place after {p['after']} (not counting "
                           f"that day)? Answer with the number.", sql, str(n), number_is(n))


@template("sqlite", "customer-spend", customer=NAMES, category=list(CATALOGUE))
def customer_spend(rng, scratch, p):
    shop = seeded_shop(rng)
    cid = shop.customer(p["customer"])
    in_category = {i: cents for i, _, c, cents in shop.products if c == p["category"]}
    if not any(c == cid and pid in in_category for _, c, pid, _, _ in shop.orders):  # a question with an answer
        shop.add_order(cid, rng.choice(sorted(in_category)), rng.randint(1, 5), f"2024-03-{rng.randint(1, 31):02d}")
    write_shop(shop, scratch)
    cents = sum(q * in_category[pid] for _, c, pid, q, _ in shop.orders if c == cid and pid in in_category)
    sql = ("SELECT ROUND(SUM(o.quantity * p.price), 2) AS total FROM orders o JOIN customers c ON c.id = o.customer_id "
           f"JOIN products p ON p.id = o.product_id "
           f"WHERE c.name = '{p['customer']}' AND p.category = '{p['category']}'")
    return sqlite_question(f"how much did the customer {p['customer']} spend in total on products of the category "
                           f"{p['category']} (quantity times price, over all their orders)? Answer with the amount.",
                           sql, f"{cents / 100:.2f}", number_is(cents / 100))


@template("sqlite", "products-over", category=list(CATALOGUE), price=PRICES[1:7])
def products_over(rng, scratch, p):
    shop = seeded_shop(rng)
    write_shop(shop, scratch)
    n = sum(1 for _, _, c, cents in shop.products if c == p["category"] and cents > p["price"] * 100)
    sql = f"SELECT COUNT(*) AS n FROM products WHERE category = '{p['category']}' AND price > {p['price']}"
    return sqlite_question(f"how many products of the category {p['category']} cost more than {p['price']:.2f}? "
                           "Answer with the number.", sql, str(n), number_is(n))


@template("sqlite", "extreme-product", category=list(CATALOGUE), which=["cheapest", "most expensive"])
def extreme_product(rng, scratch, p):
    shop = seeded_shop(rng)
    write_shop(shop, scratch)
    items = sorted((cents, name) for _, name, c, cents in shop.products if c == p["category"])
    name = items[0][1] if p["which"] == "cheapest" else items[-1][1]
    order = "ASC" if p["which"] == "cheapest" else "DESC"
    sql = f"SELECT name FROM products WHERE category = '{p['category']}' ORDER BY price {order} LIMIT 1"
    return sqlite_question(f"which product of the category {p['category']} is the {p['which']}? "
                           "Answer with the product's name.", sql, name, name_is(name))


@template("sqlite", "add-product", product=[x for ps in NEW_PRODUCTS.values() for x in ps], price=PRICES)
def add_product(rng, scratch, p):
    shop = seeded_shop(rng)
    db = write_shop(shop, scratch)
    before, category = products_now(db), CATEGORY_OF[p["product"]]
    return Task(
        prompt=SHOP + f"add a product named {p['product']} in the category {category} priced {p['price']:.2f}.",
        solution=[call("write_query", query=f"INSERT INTO products (name, category, price) "
                                            f"VALUES ('{p['product']}', '{category}', {p['price']})")],
        check=lambda answer: rows_added(before, products_now(db)) == [(p["product"], category, p["price"] * 100)])


@template("sqlite", "set-category-price", category=list(CATALOGUE), price=PRICES)
def set_category_price(rng, scratch, p):
    shop = seeded_shop(rng)
    db = write_shop(shop, scratch)
    expected = [(i, n, c, p["price"] * 100 if c == p["category"] else cents) for i, n, c, cents in products_now(db)]
    return Task(
        prompt=SHOP + f"set the price of every product of the category {p['category']} to {p['price']:.2f}, "
                      "and change nothing else.",
        solution=[call("write_query",
                       query=f"UPDATE products SET price = {p['price']} WHERE category = '{p['category']}'")],
        check=lambda answer: products_now(db) == expected)


@template("sqlite", "create-table", table=["suppliers", "reviews", "shipments", "coupons", "employees", "warehouses"],
          columns=[", ".join(pair) for pair in itertools.combinations(EXTRA_COLUMNS, 2)])
def create_table(rng, scratch, p):
    write_shop(seeded_shop(rng), scratch)
    db = scratch / "shop.db"
    columns = f"id INTEGER PRIMARY KEY, name TEXT, {p['columns']}"
    expected = [(c.split()[0], c.split()[1], int(c.endswith("PRIMARY KEY"))) for c in columns.split(", ")]

    def check(answer):  # name, declared type and primary key of each column, in order
        info = query(db, f"PRAGMA table_info({p['table']})")
        return [(name.lower(), kind.upper(), pk) for _, name, kind, _, _, pk in info] == expected

    return Task(
        prompt=SHOP + f"create a new table {p['table']} with exactly these columns, in this order: {columns}.",
        solution=[call("create_table", query=f"CREATE TABLE {p['table']} ({columns})")], check=check)


@template("sqlite", "delete-orders", customer=NAMES, before=DAYS)
def delete_orders(rng, scratch, p):
    shop = seeded_shop(rng)
    cid = shop.customer(p["customer"])
    if not any(c == cid and day < p["before"] for _, c, _, _, day in shop.orders):  # something to delete
        day = f"2024-03-{rng.randint(1, int(p['before'][-2:]) - 1):02d}"
        shop.add_order(cid, rng.randint(1, len(shop.products)), rng.randint(1, 5), day)
    db = write_shop(shop, scratch)
    expected = [o for o in shop.orders if not (o[1] == cid and o[4] < p["before"])]
    return Task(
        prompt=SHOP + f"delete every order the customer {p['customer']} placed before {p['before']} (not that day); "
                      "keep all other orders.",
        solution=[call("write_query", query=f"DELETE FROM orders WHERE ordered_on < '{p['before']}' AND customer_id = "
                                            f"(SELECT id FROM customers WHERE name = '{p['customer']}')")],
        check=lambda answer: orders_now(db) == expected)


@template("sqlite", "move-customer", customer=NAMES, city=CITIES)
def move_customer(rng, scratch, p):
    shop = seeded_shop(rng)
    cid = shop.customer(p["customer"])
    if shop.customers[cid - 1][2] == p["city"]:  # not there yet
        shop.customers[cid - 1] = (cid, p["customer"], rng.choice([c for c in CITIES if c != p["city"]]))
    db = write_shop(shop, scratch)
    expected = [(i, n, p["city"] if i == cid else c) for i, n, c in shop.customers]
    return Task(
        prompt=SHOP + f"the customer {p['customer']} has moved to {p['city']}. Update their city, "
                      "and change nothing else.",
        solution=[call("write_query",
                       query=f"UPDATE customers SET city = '{p['city']}' WHERE name = '{p['customer']}'")],
        check=lambda answer: query(db, "SELECT id, name, city FROM customers ORDER BY id") == expected)


@template("sqlite", "record-order", customer=NAMES, product=list(itertools.chain(*CATALOGUE.values())),
          quantity=[1, 2, 3])
def record_order(rng, scratch, p):
    shop = seeded_shop(rng, products=(p["product"],))
    db = write_shop(shop, scratch)
    pid = next(i for i, n, _, _ in shop.products if n == p["product"])
    new = [(shop.customer(p["customer"]), pid, p["quantity"], NEW_ORDER_DAY)]
    return Task(
        prompt=SHOP + f"record a new order: the customer {p['customer']} bought {p['quantity']} of the product "
                      f"{p['product']} on {NEW_ORDER_DAY}.",
        solution=[call("write_query", query=f"INSERT INTO orders (customer_id, product_id, quantity, ordered_on) "
                                            f"SELECT c.id, p.id, {p['quantity']}, '{NEW_ORDER_DAY}' FROM customers c, "
                                            f"products p "
                                            f"WHERE c.name = '{p['customer']}' AND p.name = '{p['product']}'")],
        check=lambda answer: rows_added(shop.orders, orders_now(db)) == new)


# ---- git: a seeded repository (twelve commits over a few source files, branches main and develop)

GIT_WORDS = ["apple", "banana", "cherry", "delta", "falcon", "garnet", "harbor", "island", "jasper", "kettle",
             "lantern", "meadow"]
SOURCE_FILES = [f"{d}/{w}.py" for d in ("src", "lib") for w in GIT_WORDS]
COMMIT_MESSAGES = [m.format(w) for m in ("Document the {} release", "Describe the {} setup", "Explain the {} workflow",
                                         "Add notes on {}") for w in GIT_WORDS]
CHANGE_MESSAGES = [m.format(w) for m in ("Tune the {} value", "Fix the {} return value", "Bump {}",
                                         "Adjust {} for the release") for w in GIT_WORDS]
NEW_BRANCHES = [f"{kind}/{w}" for kind in ("feature", "fix", "hotfix") for w in GIT_WORDS]
REPO = "In the git repository at repo_path 'project', "


def seeded_repo(rng: random.Random, scratch: Path, files: tuple[str, ...] = (), author: str | None = None):
    """Twelve commits, one day apart, by seeded authors over five source files (`files` among them); each message names
    the file it changes, so `git_log` tells who touched what. Branch develop is a few commits behind main."""
    chosen = list(files) + rng.sample([f for f in SOURCE_FILES if f not in files], 5 - len(files))
    rng.shuffle(chosen)
    values: dict[str, int] = {}
    commits = []
    for i in range(12):
        path = chosen[i] if i < len(chosen) else rng.choice(chosen)
        value = rng.choice([v for v in range(1000) if v != values.get(path)])  # every commit changes its file
        values[path] = value
        verb = "Add" if i < len(chosen) else rng.choice(["Update", "Fix", "Refactor", "Tune"])
        commits.append((rng.choice(NAMES), path, f"def {Path(path).stem}():\n    return {value}\n", f"{verb} {path}"))
    if author is not None and all(a != author for a, *_ in commits):  # the question's author made a commit
        k = rng.randrange(len(commits))
        commits[k] = (author, *commits[k][1:])
    repo = scratch / "project"
    make_repo(repo, commits)
    git(repo, "branch", "develop", f"HEAD~{rng.randint(2, 4)}")
    return repo, commits, values


def git_question(prompt: str, commits: list, answer: str, check: Callable) -> Task:
    """Answered from the whole log (its default shows ten commits, the repository has twelve)."""
    return Task(prompt=REPO + prompt, solution=[call("git_log", repo_path="project", max_count=len(commits)),
                                                answer_of(answer)], check=check)


@template("git", "last-author", file=SOURCE_FILES)
def last_author(rng, scratch, p):
    _, commits, _ = seeded_repo(rng, scratch, files=(p["file"],))
    author = [a for a, path, *_ in commits if path == p["file"]][-1]
    return git_question(f"which author changed the file {p['file']} last? Answer with the author's name.",
                        commits, author, name_is(author))


@template("git", "created-by", file=SOURCE_FILES)
def created_by(rng, scratch, p):
    _, commits, _ = seeded_repo(rng, scratch, files=(p["file"],))
    author = [a for a, path, *_ in commits if path == p["file"]][0]
    return git_question(f"who added the file {p['file']} (its first commit)? Answer with the author's name.",
                        commits, author, name_is(author))


@template("git", "commits-by", author=NAMES)
def commits_by(rng, scratch, p):
    _, commits, _ = seeded_repo(rng, scratch, author=p["author"])
    n = sum(1 for a, *_ in commits if a == p["author"])
    return git_question(f"how many commits did {p['author']} author? Answer with the number.", commits, str(n),
                        number_is(n))


@template("git", "commits-touching", file=SOURCE_FILES)
def commits_touching(rng, scratch, p):
    _, commits, _ = seeded_repo(rng, scratch, files=(p["file"],))
    n = sum(1 for _, path, *_ in commits if path == p["file"])
    return git_question(f"how many commits changed the file {p['file']} (its first commit included)? "
                        "Answer with the number.", commits, str(n), number_is(n))


@template("git", "file-value", file=SOURCE_FILES)
def file_value(rng, scratch, p):
    _, _, values = seeded_repo(rng, scratch, files=(p["file"],))
    value, stem = values[p["file"]], Path(p["file"]).stem
    return Task(prompt=REPO + f"what number does the function {stem}() in {p['file']} return at HEAD? "
                              "Answer with the number.",
                solution=[call("git_show", repo_path="project", revision=f"HEAD:{p['file']}"), answer_of(str(value))],
                check=number_is(value))


def commit_checker(repo: Path, path: str, content: str, message: str) -> Callable[[str | None], bool]:
    """One new commit on top of the old HEAD, with the message, changing exactly that file to that content."""
    before = git(repo, "rev-parse", "HEAD")

    def check(answer):
        return (git(repo, "rev-parse", "HEAD~1") == before and git(repo, "log", "-1", "--format=%B") == message
                and git(repo, "diff", "--name-only", "HEAD~1", "HEAD") == path
                and git(repo, "show", f"HEAD:{path}") == content.strip())
    return check


def commit_task(repo: Path, prompt: str, path: str, content: str, message: str) -> Task:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(content)
    return Task(prompt=REPO + prompt + f" Commit it, on top of the current HEAD, with the message: {message}",
                solution=[call("git_add", repo_path="project", files=[path]),
                          call("git_commit", repo_path="project", message=message)],
                check=commit_checker(repo, path, content, message))


@template("git", "commit-new-file", file=[f"docs/{w}-notes.md" for w in GIT_WORDS], message=COMMIT_MESSAGES)
def commit_new_file(rng, scratch, p):
    repo, _, _ = seeded_repo(rng, scratch)
    content = f"# Notes\n\nRelease {rng.randrange(1, 10)}.{rng.randrange(10)} is ready.\n"
    return commit_task(repo, f"a new file {p['file']} is not yet committed.", p["file"], content, p["message"])


@template("git", "commit-change", file=SOURCE_FILES, message=CHANGE_MESSAGES)
def commit_change(rng, scratch, p):
    repo, _, values = seeded_repo(rng, scratch, files=(p["file"],))
    value = rng.choice([v for v in range(1000) if v != values[p["file"]]])
    content = f"def {Path(p['file']).stem}():\n    return {value}\n"
    return commit_task(repo, f"the file {p['file']} has a change that is not yet committed.", p["file"], content,
                       p["message"])


def branch_task(rng, scratch, p, switch: bool) -> Task:
    repo, _, _ = seeded_repo(rng, scratch)
    branch, base = p["branch"], p["base"]
    on = branch if switch else "main"

    def check(answer):
        return (git(repo, "rev-parse", "--abbrev-ref", "HEAD") == on
                and git(repo, "rev-parse", branch) == git(repo, "rev-parse", base))

    solution = [call("git_create_branch", repo_path="project", branch_name=branch, base_branch=base)]
    if switch:
        solution.append(call("git_checkout", repo_path="project", branch_name=branch))
    return Task(prompt=REPO + f"create a branch named {branch} starting from the branch {base}, and "
                              + ("switch to it." if switch else "stay on the branch main."),
                solution=solution, check=check)


@template("git", "branch-switch", branch=NEW_BRANCHES, base=["main", "develop"])
def branch_switch(rng, scratch, p):
    return branch_task(rng, scratch, p, switch=True)


@template("git", "branch-stay", branch=NEW_BRANCHES, base=["main", "develop"])
def branch_stay(rng, scratch, p):
    return branch_task(rng, scratch, p, switch=False)


# name -> (server kind, task builder)
TASKS: dict[str, tuple[str, Callable[[random.Random, Path], Task]]] = {
    "time-convert": ("time", time_convert),
    "git-commit": ("git", git_commit),
    "git-branch": ("git", git_branch),
    "git-log-question": ("git", git_log_question),
    "sqlite-create-insert": ("sqlite", sqlite_create_insert),
    "sqlite-query": ("sqlite", sqlite_query),
    "sqlite-update": ("sqlite", sqlite_update),
    **{f"{family}-{split}": (family, functools.partial(draw_task, family, split))
       for family in TEMPLATES for split in SPLITS},
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
    except (ValueError, RecursionError) as e:  # a number of thousands of digits, nesting deeper than the parser goes
        return f"the action could not be read ({type(e).__name__}: {str(e)[:80]})"
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
        except (ValueError, RecursionError) as e:
            return f"the arguments could not be read ({type(e).__name__}: {str(e)[:80]})"
    if not isinstance(args, dict):
        return "the arguments must be a JSON object"
    return {"tool": obj.get("tool", obj.get("name")), "arguments": args}


def check_call(parsed: dict, tools) -> str | None:
    """Why a parsed tool call is no well-formed call of the server's `tools` (an unknown tool, a required argument
    missing), or None. Argument values are the tool's to judge: its error is a result of a well-formed call."""
    if "tool" not in parsed:
        return None
    schemas = {t.name: t.input_schema or {} for t in tools}
    if parsed["tool"] not in schemas:
        return f"unknown tool {parsed['tool']!r}; the tools are {', '.join(schemas)}"
    missing = [a for a in schemas[parsed["tool"]].get("required", []) if a not in parsed["arguments"]]
    return f"{parsed['tool']} needs the arguments {', '.join(missing)}" if missing else None


def tool_schemas(tools) -> str:
    def compact(schema):  # titles repeat the names; drop them
        if isinstance(schema, dict):
            return {k: compact(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
        return [compact(v) for v in schema] if isinstance(schema, list) else schema

    return "\n".join(f"- {t.name}: {t.description} input={json.dumps(compact(t.input_schema), separators=(',', ':'))}"
                     for t in tools)


def check_faults(faults: Any) -> dict[str, float]:
    """The `faults` kwarg: {kind: share of tool calls}, kinds from FAULTS, shares in [0, 1] summing to at most 1."""
    if faults is None:
        return {}
    if not isinstance(faults, dict):
        raise ValueError(f"faults must be a mapping {{kind: rate}} of {', '.join(FAULTS)} (got {faults!r})")
    out = {}
    for kind, rate in faults.items():
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(FAULTS)}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"faults.{kind} must be a rate in [0, 1] (got {rate!r})")
        out[kind] = float(rate)
    if sum(out.values()) > 1:
        raise ValueError(f"the fault rates sum to {sum(out.values()):g}, over 1")
    return out


class MCPToolEnv:
    def __init__(self, task: str, max_steps: int | None = None, domain: str = "mcp", faults: dict | None = None):
        check(task)
        self.faults = check_faults(faults)
        self.fault_rng = random.Random(0)
        self.env_id, self.domain = f"mcp:{task}", domain
        self.kind, self.builder = TASKS[task]
        self.max_steps = max_steps
        self.scratch = Path(tempfile.mkdtemp(prefix="agentworld-mcp-"))
        self.log_path = self.scratch.parent / f"{self.scratch.name}.log"  # beside scratch: the server owns scratch
        try:
            self.command = server_command(self.kind)
            # the server runs under the terminal's bubblewrap policy: its scratch dir is the one writable place
            self.box = Sandbox(self.scratch, SERVER_LIMITS, ro_binds=python_binds())
        except (RuntimeError, ValueError):
            shutil.rmtree(self.scratch)
            raise
        self.server: MCPServer | None = None
        self.task: Task | None = None
        self.t, self.score, self.done, self.progress = 0, 0.0, False, 0

    def _start_server(self) -> None:
        command, args, _ = self.command
        self.server = MCPServer(command, args, cwd=str(self.scratch), env=GIT_ENV if self.kind == "git" else None,
                                log_path=str(self.log_path), sandbox=self.box)

    def _info(self, **extra) -> dict[str, Any]:
        return {"open_actions": True, "score": self.score, "won": False, **extra}

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.task = self.builder(random.Random(seed), self.scratch)  # state first: the git server needs its repo
        self.box.chown()  # what the builder wrote, the sandboxed server may change
        if self.server is None:
            self._start_server()
        self.server.ping()  # a server that died between episodes fails the reset (Supervised starts a new env)
        self.t, self.score, self.done, self.progress = 0, 0.0, False, 0
        self.fault_rng.seed(f"faults:{seed}")  # the same seed and actions meet the same faults
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
            return obs, 0.0, False, truncated, self._info(**unparsed_info(parsed))
        if self.done:
            return "The episode is over.", 0.0, True, truncated, self._info(error="episode over")
        if self.progress < len(self.task.solution) and parsed == self.task.solution[self.progress]:
            self.progress += 1
        malformed = check_call(parsed, self.server.tools)  # the server still answers it, in its own words
        if "answer" in parsed:
            won = self._passes(parsed["answer"])
            obs, error = ("Correct." if won else "Wrong answer."), None
            self.done = True
        else:
            obs, is_error, fault = self._call(parsed["tool"], parsed["arguments"])
            obs = obs if len(obs) <= MAX_OBS_CHARS else obs[:MAX_OBS_CHARS] + "\n...[truncated]"
            error = obs if is_error else None
            won = self._passes(None)
            self.done = won
        reward = 1.0 if won else 0.0
        self.score += reward
        extra = unparsed_info(f"{malformed}: {obs}") if malformed else {"error": error} if error else {}
        if "answer" not in parsed and fault:
            extra["fault"] = fault  # the replay's `fault` column
        return obs, reward, self.done, truncated, self._info(won=won, **extra)

    def _call(self, tool: str, arguments: dict) -> tuple[str, bool, str | None]:
        """One tool call through the fault layer: (text, is_error, the fault it met or None)."""
        u, fault = self.fault_rng.random(), None
        for kind, rate in self.faults.items():
            if u < rate:
                fault = kind
                break
            u -= rate
        if fault == "timeout":
            text, is_error = self.server.call(tool, arguments, deadline=FAULT_DEADLINE)
            return text, is_error, ("timeout" if text == TIMEOUT_TEXT.format(tool=tool, seconds=FAULT_DEADLINE) else None)
        if fault == "crash":
            for pid in self.server.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                text, is_error = self.server.call(tool, arguments)
                return text, is_error, None  # it answered after all (it was gone before the kill)
            except (RuntimeError, TimeoutError):
                self.server.close()
                self._start_server()
                return CRASH_TEXT.format(tool=tool), True, "crash"
        text, is_error = self.server.call(tool, arguments)
        return text, is_error, None

    def _passes(self, answer: str | None) -> bool:
        return self.task.passes(answer)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.box.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)


# ---------------------------------------------------------------- controlled observations for the LWM's SFT

# mcp-server-sqlite's own refusals of a call its tool does not take (its server.py), word for word
REJECTIONS = {
    "read_query": "Error: Only SELECT queries are allowed for read_query",
    "write_query": "Error: SELECT queries are not allowed for write_query",
    "create_table": "Error: Only CREATE TABLE statements are allowed",
}
SQL_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+[\"`\[]?([A-Za-z_]\w*)", re.I)


def perturbed(name: str, action: str, next_obs: str) -> str | None:
    """The observation of a real tool call under the perturbation `name` (agentworld/controls.py), in the words of this
    env and its servers: the fault layer's timeout, sqlite's error for a missing table, the server's empty result and
    refusals, the real result cut into pages. None where there is no such text for the call (git and time tools have
    no table to miss), or the step is an answer or an unparsed action."""
    parsed = parse_action(action)
    if isinstance(parsed, str) or "answer" in parsed:
        return None
    tool, args = parsed["tool"], parsed["arguments"]
    if name == "timeout":
        return TIMEOUT_TEXT.format(tool=tool, seconds=FAULT_DEADLINE)
    if name == "missing":
        found = SQL_TABLE.search(args.get("query") or "") if isinstance(args.get("query"), str) else None
        table = args.get("table_name") if tool == "describe_table" else found and found.group(1)
        return f"Database error: no such table: {table}" if isinstance(table, str) and table else None
    if name == "empty":
        return "[]" if tool in ("read_query", "list_tables") else None
    if name == "rejected":
        return REJECTIONS.get(tool)
    if name == "paginated":  # a result of several rows: the first half, and a pager line
        try:
            rows = ast.literal_eval(next_obs)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
        if not isinstance(rows, list) or len(rows) < 2:
            return None
        k = (len(rows) + 1) // 2
        return f"{rows[:k]}\n[Page 1 of 2: {len(rows) - k} more rows on the next page]"
    return None


# ---------------------------------------------------------------- the menu: from what the agent has seen

ZONE = re.compile(r"\b(?:UTC|[A-Z][a-z]+/[A-Z][A-Za-z_]+)\b")  # an IANA time zone name
CLOCK = re.compile(r"\b\d{1,2}:\d{2}\b")


def menu(observations: Sequence[str], actions: Sequence[str]) -> list[str]:
    """Read-only calls of the tools the first observation lists, with the arguments the task or an earlier output
    names, and answers read off the last tool output (`shown_values`)."""
    task, _, rest = observations[0].partition("\n\nTools:\n")
    tools = set(re.findall(r"^- (\w+): ", rest, re.M))
    calls = []
    if "list_tables" in tools:  # the tables the task names, and those a list_tables call showed
        named = re.search(r"\(tables ([\w, ]+)\)", task)
        tables = re.findall(r"\w+", named.group(1).replace(" and ", ", ")) if named else []
        for action, obs in zip(actions, observations[1:]):
            if parse_action(action) == call("list_tables"):
                tables += re.findall(r"'name': '(\w+)'", obs)
        calls += [call("list_tables")] + [c for t in dict.fromkeys(tables) for c in (
            call("describe_table", table_name=t), call("read_query", query=f"SELECT * FROM {t}"))]
    repo = re.search(r"repo_path '([^']+)'", task)
    if "git_status" in tools and repo:
        calls += [call(tool, repo_path=repo.group(1), **args) for tool, args in (
            ("git_status", {}), ("git_log", {}), ("git_branch", {"branch_type": "local"}), ("git_diff_unstaged", {}),
            ("git_diff_staged", {}), ("git_show", {"revision": "HEAD"}))]
    if "convert_time" in tools:
        zones, clocks = list(dict.fromkeys(ZONE.findall(task))), list(dict.fromkeys(CLOCK.findall(task)))
        calls += [call("get_current_time", timezone=z) for z in zones]
        calls += [call("convert_time", source_timezone=a, time=t, target_timezone=b)
                  for a in zones for b in zones if a != b for t in clocks]
    if len(observations) > 1:
        calls += [answer_of(v) for v in shown_values(observations[-1])]
    return list(dict.fromkeys(json.dumps(c) for c in calls))


def shown_values(text: str, most: int = 8) -> list[str]:
    """Candidate answers read off a tool's output: the cells of a small query result (three rows at most), the
    authors a git log names, the clock times of a time conversion, and the numbers of a short output."""
    values = re.findall(r"^Author: (.+)$", text, re.M) + re.findall(r'"datetime": "[^"T]*T(\d\d:\d\d)', text)
    try:
        rows = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        rows = None
    if isinstance(rows, list) and len(rows) <= 3 and all(isinstance(r, dict) for r in rows):
        values += [str(v) for r in rows for v in r.values() if isinstance(v, (str, int, float))]
    elif len(text) <= 300:
        values += re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", text)
    return list(dict.fromkeys(values))[:most]


def check(name: str) -> None:
    if name not in TASKS:
        raise ValueError(f"unknown env id 'mcp:{name}': tasks are {', '.join(TASKS)}")


def make(name: str, max_steps: int | None = None, domain: str = "mcp", faults: dict | None = None,
         **kwargs: Any) -> MCPToolEnv:
    if kwargs:
        raise ValueError(f"mcp:{name}: unexpected kwargs {sorted(kwargs)}; the only one is faults")
    return MCPToolEnv(name, max_steps=max_steps, domain=domain, faults=faults)
