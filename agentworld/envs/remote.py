"""Envs whose whole process tree runs in a sandbox (agentworld/envs/sandbox.py): BFCL's backends, the JVMs of
ScienceWorld and TextWorldExpress, MiniWoB's browser, ALFWorld's planner. The host holds a `SandboxedEnv`; the env
itself is built by its family's factory in `python -m agentworld.envs.remote` inside the sandbox, and the two speak
newline-delimited JSON over the child's stdin and stdout, one reply per request.

The child is untrusted: only JSON crosses back (unpickling what it sent would run its code on the host), each reply is
bounded in size and time, and a child that breaks the protocol, hangs or exits is killed, its call raising here, so
`Supervised` truncates the episode and builds a new env as it does for a crashed JVM or browser.

Requests: {"make": [prefix, name, max_steps, domain, kwargs]}, {"get": path} and {"call": path, "args", "kwargs"},
a path being attribute names from the env (["reset"], ["browser", "instance", "driver", "get"]). Replies:
{"ok": value}, {"ref": true} for a value that is not JSON (a method, a Java object: for a get, the host gets a `Remote`
of its path) and {"error": [type name, message]}."""

from __future__ import annotations

import functools
import json
import numbers
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any

from agentworld.envs.sandbox import Limits, Sandbox, python_binds

PACKAGE = Path(__file__).resolve().parents[1]  # agentworld/, bound read-only where the venv's editable install looks
# A whole env lives here for an actor's life: an hour of CPU per process (past it the process dies, and Supervised
# builds a new env), RLIMIT_AS off (128 TiB: JVMs and Chromium's V8 reserve far more address space than they use),
# threads and processes for a JVM or a browser, and room for Chromium's profile in /tmp and its shared memory. A call
# may take two minutes (a JVM's or a browser's worst case on a busy machine is seconds); a reply 1 MiB (the largest
# real ones are ~20 kB; parsed, a hostile MiB of `[{},{},...]` is ~26 MB here). What the processes of one env hold
# together is capped by a memory cgroup instead (RSS_MB; where this process may make cgroups: sandbox.memory_cgroups).
RSS_MB = 2048
LIMITS = Limits(cpu_seconds=3600, memory_mb=1 << 27, nproc=1024, fsize_mb=256, timeout_s=120.0,
                max_output=1 << 20, tmpfs_mb=512, nofile=4096, rss_mb=RSS_MB)
# bfcl_eval makes its lock files and result dirs under BFCL_PROJECT_ROOT, by default in the venv (read-only here)
ENV = {"BFCL_PROJECT_ROOT": "/scratch/bfcl"}
START_TIMEOUT = 300.0  # seconds to import the family and build the env (start a JVM or a browser) on a busy machine
MAX_ERROR = 4000  # characters of a child's exception message
# The child's Python command line (tests put a hostile one here): this very package first on its path, whether the venv
# holds it (a wheel) or points to a checkout (an editable install: it may name another checkout than this one)
CHILD = ["-I", "-c", f"import runpy, sys; sys.path.insert(0, {str(PACKAGE.parent)!r}); "
         "runpy.run_module('agentworld.envs.remote', run_name='__main__', alter_sys=True)"]
STDERR_TAIL = 2000  # bytes of the child's stderr kept for the error when it dies
# Exceptions the host raises as themselves (a ValueError for bad kwargs must stay one); others become RemoteEnvError
ERRORS = {e.__name__: e for e in (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
                                  NotImplementedError)}
OWN = frozenset({"sandbox", "_limits", "_lock", "_dead", "_proc", "_stderr", "_drain"})  # SandboxedEnv's, not the env's


class RemoteEnvError(RuntimeError):
    """The sandboxed env raised, or its process hung, died or broke the protocol."""


class Remote:
    """A value in the child that is not JSON (a method, a Java object), by its path from the env: getting an attribute
    or calling it is a request."""

    def __init__(self, env: SandboxedEnv, path: list[str]):
        self.__env, self.__path = env, path  # mangled: no name of the env's own is shadowed

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.__env._get([*self.__path, name])

    def __call__(self, *args, **kwargs):
        return self.__env._call(self.__path, list(args), kwargs)


class SandboxedEnv:
    """The env `factory(name, max_steps=..., domain=..., **kwargs)` of the family `prefix`, run in its own sandbox.
    reset, step and oracle_action are calls; any other attribute is fetched by name (a copy, for a JSON value)."""

    def __init__(self, prefix: str, name: str, max_steps: int | None = None, domain: str | None = None,
                 limits: Limits = LIMITS, **kwargs: Any):
        self._limits, self._lock, self._dead = limits, threading.Lock(), ""
        self.sandbox = Sandbox(None, limits, ro_binds={**python_binds(), str(PACKAGE): PACKAGE}, env=ENV)
        self._proc = self.sandbox.popen([sys.executable, *CHILD], bufsize=0,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.set_blocking(self._proc.stdin.fileno(), False)
        self._stderr = b""
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True, name=f"env-stderr:{prefix}")
        self._drain.start()
        try:
            self.env_id, self.domain = self._expect(
                self._request({"make": [prefix, name, max_steps, domain, kwargs]}, timeout=START_TIMEOUT), (str, str))
        except BaseException:
            self.close()
            raise

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        return self._expect(self._call(["reset"], [], {"seed": seed}), (str, dict))

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        return self._expect(self._call(["step"], [action], {}), (str, numbers.Real, bool, bool, dict))

    def oracle_action(self) -> str | None:
        action = self._call(["oracle_action"], [], {})
        if action is not None and not isinstance(action, str):
            self._fail(f"oracle_action sent a {type(action).__name__}, not a string")
        return action

    def __getattr__(self, name: str):  # actions, max_steps, seed, ... of the env
        if name.startswith("__") or name in OWN:  # one of ours, unset while __init__ runs
            raise AttributeError(name)
        return self._get([name])

    def close(self) -> None:
        """Kill everything in the sandbox: the env keeps nothing outside it worth a graceful shutdown."""
        self._dead = self._dead or "the env was closed"
        self.sandbox.close()
        for pipe in (self._proc.stdin, self._proc.stdout):
            pipe.close()

    # ---- protocol ---------------------------------------------------------------------------------------
    def _get(self, path: list[str]):
        return self._request({"get": path}, path)

    def _call(self, path: list[str], args: list, kwargs: dict):
        """The call's result; one that is not JSON (a Java object, say) stays in the sandbox: None here."""
        result = self._request({"call": path, "args": args, "kwargs": kwargs}, path)
        return None if isinstance(result, Remote) else result

    def _expect(self, value, types: tuple) -> tuple:
        if not (isinstance(value, list) and len(value) == len(types) and all(map(isinstance, value, types))):
            self._fail(f"sent a malformed reply {str(value)[:200]!r}: expected {', '.join(t.__name__ for t in types)}")
        return tuple(value)

    def _request(self, request: dict, path: list[str] | None = None, timeout: float | None = None):
        """Send one request and return the reply's value (a Remote of `path` for a ref); raise the child's exception."""
        timeout = self._limits.timeout_s if timeout is None else timeout
        with self._lock:
            if self._dead:
                raise RemoteEnvError(self._dead)
            deadline = time.monotonic() + timeout
            self._send(json.dumps(request, default=_plain).encode() + b"\n", deadline, timeout)
            line = self._receive(deadline, timeout)
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError) as e:
            self._fail(f"sent a reply that is not JSON ({type(e).__name__})")
        if not (isinstance(reply, dict) and len(reply) == 1 and reply.keys() <= {"ok", "ref", "error"}
                and (path is not None or "ref" not in reply)):
            self._fail(f"sent a malformed reply {line[:200]!r}")
        if "error" in reply:
            error = reply["error"]
            if not (isinstance(error, list) and len(error) == 2 and all(isinstance(s, str) for s in error)):
                self._fail(f"sent a malformed error {line[:200]!r}")
            kind, message = error[0][:100], error[1][:MAX_ERROR]
            raise ERRORS[kind](message) if kind in ERRORS else RemoteEnvError(f"{kind}: {message}")
        return Remote(self, path) if "ref" in reply else reply["ok"]

    def _send(self, data: bytes, deadline: float, timeout: float) -> None:
        fd, view = self._proc.stdin.fileno(), memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                self._fail(f"did not read its request in {timeout:g} s")
            try:
                view = view[os.write(fd, view):]
            except BrokenPipeError:
                self._fail("exited")

    def _receive(self, deadline: float, timeout: float) -> bytes:
        fd, buf, cap = self._proc.stdout.fileno(), bytearray(), self._limits.max_output
        while b"\n" not in buf:
            if len(buf) > cap:
                self._fail(f"sent a reply of over {cap} bytes")
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._fail(f"sent no reply in {timeout:g} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                try:
                    self._proc.wait(1)  # for its exit code
                except subprocess.TimeoutExpired:  # it closed its stdout but lives on
                    pass
                self._fail("exited")
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        if rest or len(line) > cap:
            self._fail("sent more than one reply" if rest else f"sent a reply of over {cap} bytes")
        return line

    def _fail(self, what: str):
        """The channel cannot be trusted any more: kill the child and raise, now and on every later call."""
        self.sandbox.close()
        self._drain.join(1)  # with every process dead, stderr is at its end: keep the child's last words
        code = self._proc.poll()
        tail = self._stderr.decode("utf-8", "replace").strip()[-500:]
        self._dead = (f"the sandboxed env process {what}" + (f" (exit code {code})" if code is not None else "")
                      + (f"; its stderr ends: {tail}" if tail else ""))
        raise RemoteEnvError(self._dead)

    def _drain_stderr(self) -> None:
        """Keep the tail of the child's stderr: what its libraries print, and its traceback if it dies."""
        fd = self._proc.stderr.fileno()
        while chunk := os.read(fd, 1 << 16):
            self._stderr = (self._stderr + chunk)[-STDERR_TAIL:]
        self._proc.stderr.close()


# ---- the child, in the sandbox ------------------------------------------------------------------------------
def _plain(value):
    """JSON for what json.dumps does not take as is (tuples are lists already): Java lists and maps, OmegaConf
    containers, numpy numbers."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (Sequence, Set)):
        return list(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(type(value).__name__)


def _reply(value) -> bytes:
    if not callable(value):
        try:
            return json.dumps({"ok": value}, default=_plain).encode()
        except (TypeError, ValueError, RecursionError):
            pass
    return b'{"ref": true}'


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what the env's libraries print goes to stderr, not into the replies
    env = None
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            if "make" in request:
                from agentworld.envs import _family

                prefix, name, max_steps, domain, kwargs = request["make"]
                env = _family(prefix)[0](name, max_steps=max_steps, domain=domain, **kwargs)
                reply = _reply([env.env_id, env.domain])
            else:
                target = functools.reduce(getattr, request["get"] if "get" in request else request["call"], env)
                reply = _reply(target(*request["args"], **request["kwargs"]) if "call" in request else target)
        except Exception as e:
            reply = json.dumps({"error": [type(e).__name__, str(e)[:MAX_ERROR]]}).encode()
        out.write(reply + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
