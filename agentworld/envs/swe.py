"""SWE: fix one bug in a real Python module, judged by its real test suite. The project is a copy of a
pure-Python stdlib module (`pkg/<name>.py`) with its CPython unit tests (`tests/test_<name>.py`); reset(seed)
plants a seeded AST mutation (a flipped comparison, an off-by-one, `and`/`or`...) that makes a test fail.

Actions (one per step):
  - a bash command, run in the sandbox with the project as cwd: `grep -n "def wrap" pkg/textwrap.py`,
    `sed -n 100,140p pkg/textwrap.py`, `python3 -m unittest`, `python3 -m unittest tests.test_textwrap.WrapTestCase`.
  - an edit: an exact, unique substring replace in one project file, written as
        edit pkg/textwrap.py
        <<<<<<< SEARCH
        old lines
        =======
        new lines
        >>>>>>> REPLACE
  - `submit`: restores the test files and runs the test suite. Reward 1 and won if every test passes; the
    episode ends either way.

With `split` (`train` or `heldout`) a mutation is in the split `split_of(f"{module}:{start}:{end}:{new}")`, and
reset(seed) tries the split's mutations (in a fixed shuffled order) from the (seed mod their number)-th on, cyclically,
and plants the first that makes a test fail. Without a split, the seed shuffles all of them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentworld.envs import sandbox
from agentworld.envs.base import retry_ast, split_of, unparsed_info
from agentworld.envs.sandbox import Limits, Sandbox

# Pure-Python stdlib modules whose CPython tests import nothing but the module and run in well under a second.
MODULES = ("textwrap", "shlex", "fnmatch", "colorsys")
# The sandbox's own stdlib copy of these is hidden, so the fix cannot be read off it. unittest itself
# imports textwrap and fnmatch, so theirs stay visible.
HIDDEN = ("shlex", "colorsys")
TEST_CMD = "python3 -m unittest -q"
# No .pyc files: an edit that keeps a file's size within the same second would leave a stale one in use.
# The sandbox has only python3, and agents often type python.
PRELUDE = 'export PYTHONDONTWRITEBYTECODE=1; python() { python3 "$@"; }\n'
VALIDATE_S = 3.0  # a mutation whose tests take longer than this loops forever; it is not used
OBS_CHARS = 2000
CACHE = Path(os.environ.get("AGENTWORLD_CACHE", Path.home() / ".cache" / "agentworld")) / "swe"
SEP = "=" * 70  # unittest's separator between failure reports
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Mutation:
    start: int  # character offsets into the module's source
    end: int
    new: str
    what: str

    def apply(self, source: str) -> str:
        return source[:self.start] + self.new + source[self.end:]

    def key(self, module: str) -> str:
        """What its split is a hash of."""
        return f"{module}:{self.start}:{self.end}:{self.new}"


def split_pool(module: str, candidates: list[Mutation], split: str) -> list[int]:
    """Indices of the split's mutations, in a fixed order shuffled by the module's name."""
    pool = [i for i, m in enumerate(candidates) if split_of(m.key(module)) == split]
    random.Random(module).shuffle(pool)
    if not pool:
        raise ValueError(f"swe:{module}: split={split!r} is empty: too few mutations ({len(candidates)}) "
                         "for a non-empty split")
    return pool


@functools.cache
def sandbox_python() -> tuple[str, Path]:
    """Version and stdlib dir of the python3 the sandbox runs (the system's: the sandbox mounts only /usr)."""
    exe = shutil.which("python3", path=sandbox.PATH)
    if exe is None:
        raise RuntimeError("the sandbox has no python3 (apt-get install python3)")
    code = "import sys, sysconfig; print(sysconfig.get_paths()['stdlib']); print(sys.version)"
    out = subprocess.run([exe, "-c", code], capture_output=True, text=True, check=True).stdout
    lib, version = out.split("\n", 1)
    return version.strip(), Path(lib)


class HidingSandbox(Sandbox):
    """A Sandbox with some files masked by /dev/null."""

    def __init__(self, hide: list[Path], **kwargs: Any):
        super().__init__(**kwargs)
        self.hide = [a for p in hide if p.exists() for a in ("--ro-bind", "/dev/null", str(p))]

    def argv(self, argv: list[str]) -> list[str]:
        full = super().argv(argv)
        i = full.index("--remount-ro")  # mounts go before the root is made read-only
        return full[:i] + self.hide + full[i:]


def stdlib_files(module: str) -> tuple[str, str]:
    """The module's source and its CPython test file, read from this interpreter's stdlib (system pythons
    often ship without the tests; the copy runs on the sandbox's python3)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    if not (lib / "test" / f"test_{module}.py").exists():
        raise RuntimeError(f"swe:{module} needs CPython's test suite, which this Python lacks ({lib}/test)")
    return (lib / f"{module}.py").read_text(), (lib / "test" / f"test_{module}.py").read_text()


def local_tests(module: str, test_source: str) -> str:
    """The test file importing the project's copy (`pkg.<module>`) instead of the stdlib's."""
    text = re.sub(rf"^import {module}$", f"from pkg import {module}", test_source, flags=re.M)
    return re.sub(rf"^from {module} import", f"from pkg.{module} import", text, flags=re.M)


def project(module: str, source: str, test_source: str) -> dict[str, str]:
    return {"pkg/__init__.py": "", f"pkg/{module}.py": source,
            "tests/__init__.py": "", f"tests/test_{module}.py": local_tests(module, test_source)}


# --- mutations: each replaces one small span of the real source --------------------------------------

COMPARE = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
           ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"),
           ast.IsNot: ("is not", "is"), ast.In: ("in", "not in"), ast.NotIn: ("not in", "in")}
ARITH = {ast.Add: ("+", "-"), ast.Sub: ("-", "+")}
BOOL = {ast.And: ("and", "or"), ast.Or: ("or", "and")}
# `not X` binds looser than these, so X needs no parentheses.
TIGHT = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Compare, ast.Constant)


def _op_pattern(op: str) -> str:
    return r"\s+".join(rf"\b{w}\b" for w in op.split()) if op[0].isalpha() else re.escape(op)


def parse(source: str) -> ast.Module:
    return retry_ast(ast.parse, source)


def mutations(source: str) -> list[Mutation]:
    """Every candidate mutation of `source`, in source order. Each changes one operator, constant or condition,
    so it changes the AST; should one not parse, the tests catch it as a module that fails to import."""
    lines = re.split(r"(?<=\n)", source)  # not splitlines(), which also splits at form feeds
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def at(lineno: int, col: int) -> int:  # ast columns count UTF-8 bytes
        return starts[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode(errors="ignore"))

    def begin(n: ast.AST) -> int:
        return at(n.lineno, n.col_offset)

    def finish(n: ast.AST) -> int:
        return at(n.end_lineno, n.end_col_offset)

    found: list[Mutation] = []

    def swap_in_gap(a: int, b: int, old: str, new: str, lineno: int) -> None:
        gap = source[a:b]
        hits = list(re.finditer(_op_pattern(old), gap))
        if len(hits) == 1 and "#" not in gap:
            h = hits[0]
            found.append(Mutation(a + h.start(), a + h.end(), new, f"line {lineno}: {old} -> {new}"))

    for node in ast.walk(parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands, operands[1:]):
                old, new = COMPARE[type(op)]
                swap_in_gap(finish(left), begin(right), old, new, node.lineno)
        elif isinstance(node, ast.BoolOp):
            old, new = BOOL[type(node.op)]
            for left, right in zip(node.values, node.values[1:]):
                swap_in_gap(finish(left), begin(right), old, new, right.lineno)
        elif isinstance(node, ast.BinOp) and type(node.op) in ARITH:
            swap_in_gap(finish(node.left), begin(node.right), *ARITH[type(node.op)], node.lineno)
        elif isinstance(node, ast.AugAssign) and type(node.op) in ARITH:
            old, new = ARITH[type(node.op)]
            swap_in_gap(finish(node.target), begin(node.value), old + "=", new + "=", node.lineno)
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            for v in (node.value + 1, node.value - 1) if node.value > 0 else (node.value + 1,):
                found.append(Mutation(begin(node), finish(node), str(v), f"line {node.lineno}: {node.value} -> {v}"))
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            new = str(not node.value)
            found.append(Mutation(begin(node), finish(node), new, f"line {node.lineno}: {node.value} -> {new}"))
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            test = node.test
            text = source[begin(test):finish(test)]
            new = f"not {text}" if isinstance(test, TIGHT) else f"not ({text})"
            found.append(Mutation(begin(test), finish(test), new, f"line {test.lineno}: condition negated"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            text = source[begin(node):finish(node)]
            found.append(Mutation(begin(node), finish(node), text[3:].lstrip(), f"line {node.lineno}: `not` dropped"))

    return sorted(set(found), key=lambda m: (m.start, m.end, m.new))


def revert_edit(path: str, source: str, m: Mutation) -> str:
    """The edit action that undoes `m`: the mutated lines (widened until unique) back to the originals."""
    mutated = m.apply(source)
    first = source.count("\n", 0, m.start)
    last_old = source.count("\n", 0, m.end)
    last_new = mutated.count("\n", 0, m.start + len(m.new))
    old_lines, new_lines = source.split("\n"), mutated.split("\n")
    lo, extra = first, 0
    while True:
        bad = "\n".join(new_lines[lo:last_new + 1 + extra])
        if mutated.count(bad) == 1 or (lo == 0 and last_new + extra >= len(new_lines) - 1):
            good = "\n".join(old_lines[lo:last_old + 1 + extra])
            return f"edit {path}\n<<<<<<< SEARCH\n{bad}\n=======\n{good}\n>>>>>>> REPLACE"
        lo, extra = max(lo - 1, 0), extra + 1


# --- the verdict cache: whether a mutation makes a test fail, per module version ---------------------

def _cache_file(module: str, source: str, tests: str) -> Path:
    key = hashlib.sha256(f"{sandbox_python()[0]}\0{source}\0{tests}".encode()).hexdigest()[:12]
    return CACHE / f"{module}-{key}.json"


def _load(path: Path) -> dict[str, bool]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _store(path: Path, key: str, verdict: bool) -> None:
    """Merge one verdict in; concurrent writers may drop each other's entries, which only costs a rerun."""
    verdicts = _load(path)
    verdicts[key] = verdict
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(verdicts, f)
    os.replace(tmp, path)


# --- observations ------------------------------------------------------------------------------------

def cap(text: str, limit: int = OBS_CHARS) -> str:
    """Keep the head and the tail (where test summaries are) of a long output."""
    text = text.replace("\r", "")
    if len(text) <= limit:
        return text
    half = limit // 2 - 20
    return f"{text[:half]}\n... [{len(text) - 2 * half} chars cut] ...\n{text[-half:]}"


def untimed(text: str) -> str:
    """unittest's "Ran 7 tests in 0.003s" without the time, so the same actions give the same observations."""
    return re.sub(r"^(Ran \d+ tests?) in [\d.]+s$", r"\1", text, flags=re.M)


def failed_tests(output: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in output.splitlines() if line.startswith(("FAIL: ", "ERROR: "))]


def failure_report(output: str, limit: int = 1400) -> str:
    """The failing tests' names, the first failure's traceback and unittest's summary line, within `limit`."""
    names = [n.split(" (")[-1].rstrip(")").split(".", 2)[-1] for n in failed_tests(output)]  # Class.test_x
    tail = output.strip().splitlines()[-3:]
    summary = " ".join(untimed(ln) for ln in tail if ln.startswith(("Ran ", "FAILED", "OK")))
    blocks = output.split(SEP)
    first = blocks[1].strip() if len(blocks) > 1 else output.strip()
    listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    head = f"{len(names)} failing: {listed}\n\n" if names else ""
    return f"{head}{cap(first, max(limit - len(head) - len(summary) - 2, 200))}\n\n{summary}".strip()


# --- the env -----------------------------------------------------------------------------------------

class SweEnv:
    def __init__(self, module: str, max_steps: int | None = None, domain: str = "swe", limits: Limits | None = None,
                 split: str | None = None):
        check(module)
        if split is not None and split not in SPLITS:
            raise ValueError(f"swe:{module}: split must be train or heldout, not {split!r}")
        self.env_id, self.domain, self.module = f"swe:{module}", domain, module
        self.max_steps, self.limits = max_steps, limits or Limits()
        self.source, self.test_source = stdlib_files(module)
        self.files = project(module, self.source, self.test_source)
        self.path = f"pkg/{module}.py"
        self.candidates = mutations(self.source)
        self.split, self.pool = split, split_pool(module, self.candidates, split) if split else None
        self.cache = _cache_file(module, self.source, self.test_source)
        lib = sandbox_python()[1]
        self.hide = [lib / f"{module}.py", *(lib / "__pycache__").glob(f"{module}.*.pyc")] if module in HIDDEN else []
        self.sandbox: Sandbox | None = None
        self.scratch: Path | None = None
        self.mutation: Mutation | None = None
        self.failing: list[str] = []
        self.traceback_lines: list[int] = []  # first lines of the windows around the traceback's frames in the module
        self.t, self.score, self.done = 0, 0.0, False

    def _write(self, rel: str, text: str) -> None:
        """Host-side writes happen only before the agent's first action, so no symlink of its making is followed."""
        p = self.scratch / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)  # an existing file keeps the sandbox uid as its owner

    def _sh(self, cmd: str, **kwargs: Any):
        return self.sandbox.run(PRELUDE + cmd, **kwargs)

    def _run_tests(self, timeout: float | None = None) -> tuple[bool, str, bool]:
        r = self._sh(TEST_CMD, timeout=timeout)
        return r.exit_code == 0 and not r.timed_out, r.output, r.timed_out

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.close()
        self.scratch = Path(tempfile.mkdtemp(prefix="agentworld-swe-"))
        for rel, text in self.files.items():
            self._write(rel, text)
        self.sandbox = HidingSandbox(self.hide, scratch=self.scratch, limits=self.limits)  # chowns them to its uid
        verdicts = _load(self.cache)
        for i in self._order(seed):
            m = self.candidates[i]
            key = f"{m.start}:{m.end}:{m.new}"
            if verdicts.get(key) is False:
                continue
            self._write(self.path, m.apply(self.source))
            passed, output, timed_out = self._run_tests(VALIDATE_S)
            breaks = not passed and not timed_out and bool(failed_tests(output)) and "_FailedTest" not in output
            if verdicts.get(key) is None:
                _store(self.cache, key, breaks)
            if breaks:
                self.mutation, self.failing = m, failed_tests(output)
                lines = re.findall(rf'File "/scratch/{self.path}", line (\d+)', output)
                self.traceback_lines = list(dict.fromkeys(max(int(x) - 15, 1) for x in reversed(lines)))
                break
        else:
            raise RuntimeError(f"{self.env_id}: no mutation of {self.path} makes a test fail")
        self.t, self.score, self.done = 0, 0.0, False
        return self._task(output), self._info(won=False)

    def _order(self, seed: int | None) -> list[int]:
        """The candidates reset tries, in turn: all, shuffled by the seed; with a split, the split's from the
        seed-th on, cyclically (seed None: from a random one)."""
        if self.pool is None:
            order = list(range(len(self.candidates)))
            random.Random(seed).shuffle(order)
            return order
        start = random.Random(seed).randrange(len(self.pool)) if seed is None else seed % len(self.pool)
        return self.pool[start:] + self.pool[:start]

    def _task(self, output: str) -> str:
        layout = "\n".join(f"  {rel} ({text.count(chr(10))} lines)" for rel, text in self.files.items())
        head = (f"Project (cwd): a copy of Python's `{self.module}` module with one bug in {self.path}, and its "
                f"real CPython tests.\n{layout}\n\n`{TEST_CMD}` fails:\n")
        tail = ("\n\nActions: a bash command; `edit PATH` then a <<<<<<< SEARCH / ======= / >>>>>>> REPLACE "
                "block (exact text); `submit` to run the tests and end.")
        return head + failure_report(output, OBS_CHARS - len(head) - len(tail)) + tail

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"admissible_actions": self.menu(), "open_actions": True, "score": self.score, **extra}

    def menu(self) -> list[str]:
        """Useful next actions: run and read the failing tests, page through the module (where the traceback
        points first), list its functions, submit."""
        tests, n = f"tests/test_{self.module}.py", self.source.count("\n")
        step = max(40, -(-n // 6))
        pages = [(a, a + 39) for a in self.traceback_lines[:2]] + [(a, a + 39) for a in range(1, n, step)]
        acts = [TEST_CMD, f"grep -n 'def \\|class ' {self.path}", *(f"sed -n {a},{b}p {self.path}" for a, b in pages)]
        for name in self.failing[:3]:
            test, _, where = name.partition(" (")
            acts.append(f"grep -n -A 25 'def {test}' {tests}")
            acts.append(f"python3 -m unittest {where.rstrip(')')}" if where else TEST_CMD)
        acts.append("submit")
        return list(dict.fromkeys(acts))

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.sandbox is None:
            raise RuntimeError(f"{self.env_id}: step() before reset()")
        self.t += 1
        truncated = self.max_steps is not None and self.t >= self.max_steps
        if self.done:
            err = "The episode is over (submitted); reset to start a new one."
            return err, 0.0, True, truncated, self._info(error=err, won=self.score > 0)
        if not isinstance(action, str) or not action.strip():
            err = f"Invalid action {action!r}: give a bash command, an `edit PATH` block, or `submit`."
            return err, 0.0, False, truncated, self._info(won=False, **unparsed_info(err))
        action = action.strip()
        if action.lower() == "submit":
            return self._submit(truncated)
        if action.split(None, 1)[0] == "edit":
            obs, err = self._edit(action)
            extra = unparsed_info(err) if err in self.MALFORMED_EDITS else {"error": err} if err else {}
            return obs, 0.0, False, truncated, self._info(won=False, **extra)
        r = self._sh(action)
        obs = untimed(r.output) if r.output.strip() else "(no output)"
        if r.timed_out:
            obs += f"\n[timed out after {self.limits.timeout_s:g} s]"
        elif r.exit_code:
            obs += f"\n[exit code {r.exit_code}]"
        return cap(obs), 0.0, False, truncated, self._info(won=False)

    def _submit(self, truncated: bool) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Grade with the pristine tests, so editing them cannot win."""
        pristine = {rel: text for rel, text in self.files.items() if rel != self.path}
        restore = self.sandbox.run(RESTORE_CMD, stdin=json.dumps(pristine))
        passed, output, _ = self._run_tests()
        passed = passed and restore.exit_code == 0
        self.done = True
        reward = 1.0 if passed else 0.0
        self.score += reward
        ran = [ln for ln in output.splitlines() if ln.startswith("Ran ")]
        obs = (f"All tests pass ({untimed(ran[0]) if ran else 'OK'}). Solved."
               if passed else "Submitted, but the tests fail:\n" + failure_report(output))
        return cap(obs), reward, True, truncated, self._info(won=passed)

    MALFORMED_EDITS = ("malformed edit", "empty search text")  # _edit's errors for an edit that is no edit block

    def _edit(self, action: str) -> tuple[str, str | None]:
        """Apply an exact, unique SEARCH/REPLACE inside the sandbox, so symlinks cannot reach the host."""
        header, _, body = action.partition("\n")
        parts = header.split()
        lines = body.replace("\r", "").split("\n")
        usage = ("Edit format: `edit PATH`, then the lines `<<<<<<< SEARCH`, the exact old text, `=======`, the new "
                 "text, `>>>>>>> REPLACE`.")
        if len(parts) != 2 or "<<<<<<< SEARCH" not in lines or "=======" not in lines or ">>>>>>> REPLACE" not in lines:
            return f"Malformed edit. {usage}", "malformed edit"
        i = lines.index("<<<<<<< SEARCH")
        j = lines.index("=======", i)
        k = lines.index(">>>>>>> REPLACE", j)
        old, new = "\n".join(lines[i + 1:j]), "\n".join(lines[j + 1:k])
        path = os.path.normpath(parts[1])
        if path.startswith("/scratch/"):
            path = path[len("/scratch/"):]
        if os.path.isabs(path) or path == ".." or path.startswith("../"):
            return f"Edit refused: {parts[1]} is outside the project.", "path outside the project"
        if not old:
            return f"The SEARCH text is empty. {usage}", "empty search text"
        r = self.sandbox.run(EDIT_SCRIPT_CMD, stdin=json.dumps({"path": path, "old": old, "new": new}))
        obs = r.output.strip() or "Edit failed."
        return cap(obs), (None if r.exit_code == 0 else obs.splitlines()[-1][:200])

    def oracle_action(self) -> str | None:
        """Revert the planted mutation, then submit."""
        if self.mutation is None or self.done:
            return None
        here = (self.scratch / self.path).resolve()
        try:
            current = here.read_text() if here.is_relative_to(self.scratch.resolve()) else ""
        except OSError:
            current = ""
        return "submit" if current == self.source else revert_edit(self.path, self.source, self.mutation)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


EDIT_SCRIPT = """
import json, os, sys
a = json.load(sys.stdin)
root = os.path.realpath('.')
p = os.path.realpath(a['path'])
if os.path.commonpath([root, p]) != root:
    sys.exit(f"Edit refused: {a['path']} is outside the project.")
try:
    text = open(p).read()
except (OSError, ValueError) as e:
    sys.exit(f"Cannot read {a['path']}: {e}.")
n = text.count(a['old'])
if n != 1:
    sys.exit(f"The SEARCH text occurs {n} times in {a['path']}; it must occur exactly once "
             f"(copy it exactly{', add context lines' if n else ''}).")
open(p, 'w').write(text.replace(a['old'], a['new']))
print(f"Edited {a['path']}: replaced {a['old'].count(chr(10)) + 1} line(s) with {a['new'].count(chr(10)) + 1}.")
"""
EDIT_SCRIPT_CMD = f"python3 -c {shlex.quote(EDIT_SCRIPT)}"
# Writes the pristine test files (JSON on stdin) over whatever the agent left, and drops stale bytecode.
WRITE_FILES = "import json, sys\nfor p, t in json.load(sys.stdin).items(): open(p, 'w').write(t)"
RESTORE_CMD = ("find . -name __pycache__ -prune -exec rm -rf {} + ; rm -rf tests pkg/__init__.py && mkdir -p tests pkg"
               f" && python3 -c {shlex.quote(WRITE_FILES)}")


def check(name: str) -> None:
    if name not in MODULES:
        raise ValueError(f"unknown env id 'swe:{name}': swe envs are {', '.join('swe:' + m for m in MODULES)}")


def make(name: str, max_steps: int | None = None, domain: str = "swe", **kwargs: Any) -> SweEnv:
    return SweEnv(name, max_steps=max_steps, domain=domain, **kwargs)
