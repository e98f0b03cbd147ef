"""The SANDBOXED env families run whole in a sandbox behind a JSON proxy (agentworld/envs/remote.py): their browser,
JVMs and Python backends cannot reach the host's files, a crash of anything in the sandbox truncates the episode and
the env comes back, and a hostile child's replies are clean errors. Each escape is first shown to work against the
same env run unsandboxed (in this process), so the sandboxed assertion can fail."""

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path

import pytest

from agentworld.envs import make_env
from agentworld.envs import remote
from agentworld.envs.remote import PACKAGE, RemoteEnvError, SandboxedEnv
from agentworld.envs.sandbox import Limits, memory_cgroups, python_binds

if shutil.which("bwrap") is None:
    pytest.skip("needs bubblewrap", allow_module_level=True)

BROWSER = Path("/usr/lib/chromium/chromium").exists() and Path("/usr/bin/chromedriver").exists()


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def procs(env, name: str) -> list[int]:
    """Host pids of the env's sandboxed processes called `name` (java, chromium, python, ...)."""
    return [p for p in env.env.sandbox.pids() if comm(p) == name]


def running(box) -> list[int]:
    """The sandbox's processes but zombies (a process we killed with its parent waits for the host's init to reap it)."""
    out = []
    for pid in box.pids():
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(pid)
        except OSError:
            pass
    return out


def uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def mounts(pid: int) -> dict[str, tuple[str, str]]:
    """mount point -> (its options, its file system type), as the process sees its mounts."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out[fields[4]] = (fields[5], fields[fields.index("-") + 1])
    return out


def sees(pid: int, path: Path) -> bool:
    """Whether `path` exists in the process's view of the file system."""
    return (Path(f"/proc/{pid}/root") / str(path).lstrip("/")).exists()


def only_the_binds(pid: int) -> None:
    """The host's /root, /home, /work, the checkout's top directory and /tmp are not there: under them only the
    read-only Python binds; /tmp is a tmpfs of the sandbox's own."""
    seen = mounts(pid)
    tops = ("/root", "/home", "/work", "/" + PACKAGE.parts[1])  # CI checks out under /check
    host = {m: opts for m, (opts, _) in seen.items() if m.startswith(tops)}
    assert set(host) == {*python_binds(), str(PACKAGE)} and all(o.startswith("ro") for o in host.values())
    assert seen["/tmp"][1] == "tmpfs"


@pytest.mark.skipif(not BROWSER, reason="needs Debian's chromium and chromium-driver")
def test_the_browser_cannot_open_a_host_file(tmp_path):
    pytest.importorskip("miniwob")
    from agentworld.envs import miniwob_web

    secret = secrets.token_hex(8)
    (tmp_path / "secret.txt").write_text(secret)
    url = (tmp_path / "secret.txt").as_uri()
    bare = miniwob_web.make("click-test")  # unsandboxed: the attempt works
    try:
        bare.reset(seed=0)
        bare.browser.instance.driver.get(url)
        assert secret in bare.browser.instance.driver.page_source
    finally:
        bare.close()
    env = make_env("miniwob:click-test")
    try:
        env.reset(seed=0)
        driver = env.env.browser.instance.driver  # a Remote: each attribute and call goes to the sandbox
        driver.get(url)
        assert secret not in driver.page_source
        chromium = procs(env, "chromium")
        assert chromium and {uid(p) for p in chromium} == {env.env.sandbox.uid}
        only_the_binds(chromium[0])
        assert not sees(chromium[0], tmp_path / "secret.txt") and sees(os.getpid(), tmp_path / "secret.txt")
        assert env.reset(seed=0)[0].startswith("Task: ")  # the env itself is unharmed
    finally:
        env.close()


def test_the_jvm_runs_as_the_sandbox_uid_and_cannot_write_host_paths(tmp_path):
    pytest.importorskip("textworld_express")
    from agentworld.envs import textworld_express

    bare = textworld_express.make("coin")  # unsandboxed: a write through the JVM lands on the host
    try:
        bare._env._gateway.jvm.java.io.FileOutputStream(str(tmp_path / "bare")).close()
        assert (tmp_path / "bare").exists()
    finally:
        bare.close()
    env = make_env("twx:coin")
    try:
        env.reset(seed=0)
        [java] = procs(env, "java")
        assert uid(java) == env.env.sandbox.uid != 0
        only_the_binds(java)
        if memory_cgroups() is not None:  # the JVM is in the sandbox's memory cgroup, capped at remote.RSS_MB
            cgroup = env.env.sandbox.cgroup
            lines = Path(f"/proc/{java}/cgroup").read_text().splitlines()
            assert f"/{cgroup.name}" in [line.split(":", 2)[2] for line in lines]
            assert int((cgroup / memory_cgroups()[1]).read_text()) == remote.RSS_MB << 20
        assert not sees(java, tmp_path) and sees(os.getpid(), tmp_path)
        jvm = env.env._env._gateway.jvm  # py4j: Java classes by name, each use a request to the sandbox
        targets = [tmp_path / "escape", Path("/work/escape"), Path("/root/escape"), Path(sys.prefix) / "escape"]
        for target in targets:
            with pytest.raises(RemoteEnvError, match="FileNotFoundException"):
                jvm.java.io.FileOutputStream(str(target))
            assert not target.exists()
        jvm.java.io.FileOutputStream("/scratch/inside")  # the one writable place: the sandbox's scratch
        assert (env.env.sandbox.scratch / "inside").exists()
    finally:
        env.close()


def test_bfcl_backends_touch_only_the_sandbox_scratch():
    """bfcl_eval makes lock files under its project root (the venv, unsandboxed; the sandbox's scratch here); the
    backends' file system is in memory: a file the agent makes is on no disk."""
    pytest.importorskip("bfcl_eval")
    from bfcl_eval.constants.eval_config import LOCK_DIR

    if "BFCL_PROJECT_ROOT" not in os.environ:  # unsandboxed, its writes land in the venv
        assert LOCK_DIR.resolve().is_relative_to(Path(sys.prefix).resolve())
    env = make_env("bfcl:multi_turn_base_0")
    try:
        env.reset()
        box = env.env.sandbox
        [python] = procs(env, "python")
        assert uid(python) == box.uid != 0
        assert list((box.scratch / "bfcl" / ".file_locks").iterdir())
        for action in ["cd(folder='document')", "touch(file_name='escape.txt')",
                       "echo(content='x', file_name='escape.txt')", "ls()"]:
            obs = env.step(action)[0]
        assert "escape.txt" in obs
        assert not list(box.scratch.rglob("escape.txt"))
        assert not list(Path(f"/proc/{python}/root/tmp").rglob("escape.txt"))
    finally:
        env.close()


FAMILIES = [("bfcl:multi_turn_base_0", "bfcl_eval"), ("twx:coin", "textworld_express"),
            ("scienceworld:lifespan-longest-lived", "scienceworld"), ("miniwob:click-button", "miniwob"),
            ("alfworld:apple-in-fridge", "alfworld")]


@pytest.mark.parametrize("env_id,package", FAMILIES)
def test_a_killed_sandbox_truncates_the_episode_and_the_env_comes_back(env_id, package):
    pytest.importorskip(package)
    if package == "miniwob" and not BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver")
    env = make_env(env_id)
    try:
        env.reset(seed=0)
        action, old = env.oracle_action(), env.env.sandbox
        for pid in old.pids():  # the env's python, its JVM or browser, bwrap: all of it
            with contextlib.suppress(ProcessLookupError):  # a child may die with its parent first
                os.kill(pid, signal.SIGKILL)
        obs, reward, terminated, truncated, info = env.step(action)
        assert truncated and info["crashed"] and reward == 0.0 and env.crashes == 1
        assert env.env.sandbox is not old and not running(old)
        env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(env.oracle_action())
        assert obs and "crashed" not in info and env.crashes == 1
    finally:
        env.close()


# A child that answers the `make` request as a real one does, then the next request with `reply` (raw bytes).
HOSTILE = """
import os, sys
out = os.fdopen(1, "wb")
sys.stdin.buffer.readline()
out.write(b'{"ok": ["hostile:x", "d"]}\\n'); out.flush()
sys.stdin.buffer.readline()
out.write(REPLY); out.flush()
sys.stdin.buffer.readline()
"""
SMALL = Limits(cpu_seconds=30, memory_mb=1 << 27, nproc=64, timeout_s=3.0, max_output=1 << 20)


@pytest.mark.parametrize("reply,error", [  # the reply, as a Python expression run in the child
    ('b"not json\\n"', "not JSON"),
    ('b"[" * 100_000 + b"]" * 100_000 + b"\\n"', "not JSON"),  # too deep to parse
    ("b'{\"ok\": ' + b'9' * 5000 + b'}\\n'", "not JSON"),  # too many digits
    ('b"x" * (3 << 20)', "over 1048576 bytes"),  # no newline: the host stops reading at its cap
    ("b'{\"ok\": \"' + b'x' * (2 << 20) + b'\"}\\n'", "over 1048576 bytes"),
    ("""b'{"ok": ["obs", 0, false, false, {}]}\\n{"ok": 1}\\n'""", "more than one reply"),
    ("""b'{"ok": ["obs", "a lot", false, false, {}]}\\n'""", "malformed reply"),
    ("""b'{"ok": [1, 2]}\\n'""", "malformed reply"),
    ("""b'{"ok": 1, "error": 2}\\n'""", "malformed reply"),
    ("""b'{"error": ["ValueError"]}\\n'""", "malformed error"),
    ('b""', "sent no reply in 3 s"),  # silence
    ("""b'{"ok"'""", "sent no reply in 3 s"),  # a reply never finished
])
def test_a_hostile_childs_reply_is_a_clean_error(monkeypatch, reply, error):
    monkeypatch.setattr(remote, "CHILD", ["-I", "-c", HOSTILE.replace("REPLY", reply)])
    env = SandboxedEnv("hostile", "x", limits=SMALL)
    assert env.env_id == "hostile:x"
    with pytest.raises(RemoteEnvError, match=error):
        env.step("look")
    assert not running(env.sandbox)  # killed: the channel cannot be trusted any more
    with pytest.raises(RemoteEnvError, match=error):  # and later calls say why
        env.reset()
    env.close()


def test_a_childs_exception_is_raised_with_its_message_and_an_exit_is_an_error(monkeypatch):
    script = HOSTILE.replace("REPLY", repr(json.dumps({"error": ["KeyError", "no such room"]}).encode() + b"\n"))
    monkeypatch.setattr(remote, "CHILD", ["-I", "-c", script + "raise SystemExit(3)"])
    env = SandboxedEnv("hostile", "x", limits=SMALL)
    with pytest.raises(KeyError, match="no such room"):
        env.step("look")
    with pytest.raises(RemoteEnvError, match=r"exited \(exit code 3\)"):
        env.step("look")
    env.close()
    monkeypatch.setattr(remote, "CHILD", ["-I", "-c", "import sys; sys.stderr.write('it broke'); sys.exit(5)"])
    with pytest.raises(RemoteEnvError, match="exited.*it broke"):
        SandboxedEnv("hostile", "x", limits=SMALL)
