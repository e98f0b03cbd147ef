"""Shutting down the py4j JVMs behind the Java envs (TextWorldExpress, ScienceWorld)."""

from __future__ import annotations

import subprocess


def stop_gateway(gateway) -> None:
    """Shut a py4j gateway and wait for its JVM to exit (killing it after 5 s)."""
    proc = gateway.java_process
    try:
        gateway.shutdown()
    except Exception:  # the JVM is already gone
        pass
    try:
        if proc.poll() is None:  # py4j's JVM exits on a newline on its stdin
            proc.stdin.write(b"\n")
            proc.stdin.flush()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
