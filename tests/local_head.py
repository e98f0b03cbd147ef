"""A real Ray head for tests, started with `ray start --head --block` on 127.0.0.1, on free ports and its own
temp dir, so it can meet no other Ray instance on this machine.

It is stopped by its own pid, never with `ray stop`: `ray stop` kills every Ray process on the machine by
name, other users' clusters included. SIGTERM to `ray start --block` is Ray's own shutdown (what KubeRay
sends a head pod): it stops that node's processes. Anything left that runs from our unique temp dir
(a fake autoscaler node, say) is ours, and is killed by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# Ray resolves 127.0.0.1 to the machine's routable address unless told that this is a one-machine
# cluster; with this every process of the test's cluster, and every client of it, stays on loopback.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # the job's `python` is this venv's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(temp_dir: str) -> list[int]:
    """Pids of the processes whose command line names our temp dir."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(OSError):
                if temp_dir.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
    return pids


@contextlib.contextmanager
def ray_head(args: list[str], env: dict | None = None, port: int | None = None, timeout: float = 120):
    """Yield (gcs address, temp dir, log path) of a running head; `args` are extra `ray start` flags."""
    temp_dir = tempfile.mkdtemp(prefix="aw-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = port or free_port()
    log = Path(temp_dir) / "head.log"
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}", "--dashboard-agent-listen-port=0",
           "--disable-usage-stats", *args]
    with open(log, "w") as out:
        head = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **LOOPBACK_ENV, **(env or {})}, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", temp_dir, log
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        time.sleep(1)
        for pid in _ours(temp_dir):  # e.g. fake worker nodes whose launcher died with the head
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)  # sessions, logs and uploaded working dirs
