"""Escape and abuse attempts against the sandbox, through the terminal env and through Sandbox.run. Each
test checks the attempt is contained and that the env or sandbox still works afterwards."""

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agentworld.envs import make_env
from agentworld.envs.sandbox import Limits, Sandbox, memory_cgroups


@pytest.fixture(scope="module")
def box():
    s = Sandbox(limits=Limits(timeout_s=5))
    yield s
    s.close()


@pytest.fixture(scope="module")
def term():
    env = make_env("terminal:count-lines", timeout=3)
    env.reset(seed=0)
    yield env
    env.close()


def sh(env, cmd: str) -> str:
    """Run `cmd`; on a slow machine a command may still be silent after the step, so wait for the prompt."""
    obs, reward, terminated, truncated, info = env.step(cmd)
    for _ in range(5):  # CI's busy cores have made a python3 start take over two steps
        if not env.busy:
            break
        obs = env.step("<Wait>")[0]
    assert not info.get("crashed"), obs
    return obs


def assert_alive(env) -> None:
    assert "alive-42" in sh(env, "echo alive-$((6*7))")  # the typed command shows $((6*7)), not 42


def assert_box_alive(box) -> None:
    r = box.run("echo alive-$((6*7))")
    assert (r.exit_code, r.output) == (0, "alive-42\n")


def host_latency_during(action, probe_every: float = 0.1) -> tuple[float, object]:
    """Run `action` while timing a trivial host subprocess over and over; the worst latency and its result."""
    worst, done, result = [0.0], threading.Event(), []

    def probe():
        while not done.is_set():
            t = time.monotonic()
            subprocess.run(["true"], check=True)
            worst[0] = max(worst[0], time.monotonic() - t)
            time.sleep(probe_every)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        result.append(action())
    finally:
        done.set()
        thread.join()
    return worst[0], result[0]


# ---------------------------------------------------------------------------------------------- network

def test_host_loopback_service_is_unreachable(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    r = box.run(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\"; "
                f"curl -sS -m 2 http://127.0.0.1:{port}/; echo code=$?", timeout=5)
    assert "ConnectionRefusedError" in r.output and "code=7" in r.output
    with pytest.raises(socket.timeout):
        server.accept()  # nothing reached the host's listener
    server.close()
    assert_box_alive(box)


def test_outside_ips_fail_fast(term):
    t = time.monotonic()
    obs = sh(term, "curl -sS -m 3 http://10.0.0.1/; echo curl=$?; python3 -c \"import socket; "
                   "socket.create_connection(('192.0.2.1', 80), timeout=3)\" 2>&1 | tail -1")
    assert "curl=7" in obs and "Network is unreachable" in obs
    assert time.monotonic() - t < 3  # no route at all, so no waiting for a timeout
    assert_alive(term)


def test_dns_lookups_fail(box):
    t = time.monotonic()
    r = box.run("getent hosts example.com; echo getent=$?; python3 -c \"import socket; "
                "socket.getaddrinfo('example.com', 80)\" 2>&1 | tail -1; cat /proc/net/dev | cut -d: -f1")
    assert "getent=2" in r.output and "gaierror" in r.output
    assert [line.strip() for line in r.output.splitlines()[-1:]] == ["lo"]  # the only interface
    assert time.monotonic() - t < 4
    assert_box_alive(box)


# ----------------------------------------------------------------------------------------- the file system

def test_system_dirs_are_read_only(term):
    probe = "agentworld-escape-probe"
    obs = sh(term, f"for d in /etc /usr /usr/bin / /root /var; do touch $d/{probe} 2>/dev/null; echo \"$d=$?\"; done")
    for d in ["/etc", "/usr", "/usr/bin", "/", "/root", "/var"]:
        assert f"{d}=1" in obs
        assert not os.path.exists(os.path.join(d, probe))
    assert_alive(term)


def test_tmp_is_private_to_the_sandbox(term):
    host_file = Path("/tmp/agentworld-host-only.txt")
    host_file.write_text("host\n")
    try:
        obs = sh(term, "cat /tmp/agentworld-host-only.txt; echo cat=$?; echo x > /tmp/agentworld-from-sandbox.txt; "
                       "echo write=$?")
        assert "cat=1" in obs and "write=0" in obs  # its own /tmp: writable, but not the host's
        assert not Path("/tmp/agentworld-from-sandbox.txt").exists()
    finally:
        host_file.unlink()
    assert_alive(term)


def test_host_home_repo_and_shadow_are_invisible(box):
    r = box.run("ls /root /home /work 2>&1; cat /etc/shadow; echo shadow=$?")
    assert r.output.count("No such file or directory") == 3
    assert "Permission denied" in r.output and "shadow=1" in r.output
    assert_box_alive(box)


def test_symlink_to_etc_cannot_be_written_through(term):
    obs = sh(term, "ln -s /etc etc-link && echo pwned > etc-link/agentworld-escape; echo write=$?")
    assert "write=1" in obs and "Read-only file system" in obs
    assert not Path("/etc/agentworld-escape").exists()
    sh(term, "rm etc-link")
    assert_alive(term)


def test_host_planted_symlink_points_nowhere(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host-secret-value\n")
    os.chmod(tmp_path, 0o755)
    box = Sandbox(limits=Limits(timeout_s=5))
    try:
        (box.scratch / "link").symlink_to(secret)
        (box.scratch / "rootlink").symlink_to("/root")
        r = box.run("cat link; ls rootlink/; echo > link; echo done")
        assert "host-secret-value" not in r.output and r.output.count("No such file or directory") == 3
        assert secret.read_text() == "host-secret-value\n"
        assert_box_alive(box)
    finally:
        box.close()


def test_checker_follows_no_symlink_and_no_fifo(term):
    """The host reads answer.txt; the sandbox may make it a link to a host file or a FIFO that never opens."""
    lines = sh(term, "wc -l < log.txt")
    n = lines.splitlines()[-2].strip()
    outside = Path(term.root) / "outside.txt"  # a host file the sandbox cannot see, holding the answer
    outside.write_text(n + "\n")
    obs, reward, terminated, *_ = term.step(f"ln -sf {outside} answer.txt")
    assert reward == 0 and not terminated
    t = time.monotonic()
    obs, reward, terminated, *_ = term.step("rm answer.txt; mkfifo answer.txt; ls -l answer.txt")
    assert reward == 0 and not terminated and obs.splitlines()[-2].startswith("p")
    assert time.monotonic() - t < 3
    sh(term, "rm answer.txt")
    assert_alive(term)


# --------------------------------------------------------------------------------------- environment, PIDs

def test_host_env_secrets_are_invisible(monkeypatch):
    monkeypatch.setenv("AGENTWORLD_TEST_SECRET", "hunter2-sk-live-000")
    env = make_env("terminal:sort-uniq", timeout=3)
    try:
        env.reset(seed=1)
        obs = sh(env, "env | grep -c SECRET; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c hunter2")
        assert "hunter2-sk" not in obs and obs.splitlines()[-3:-1] == ["0", "0"]
        assert_alive(env)
    finally:
        env.close()


def test_host_processes_are_invisible(box):
    me = os.getpid()
    r = box.run(f"ls /proc | grep -c '^[0-9]'; kill -0 {me}; cat /proc/{me}/cmdline; ps -e | grep -c pytest")
    assert "No such process" in r.output and "No such file or directory" in r.output
    count, *_, pytest_count = r.output.split()
    assert int(count) < 5 and pytest_count == "0"
    assert_box_alive(box)


def test_ptrace_of_a_host_process_fails(box):
    me = os.getpid()
    r = box.run(f"python3 -c \"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
                f"print('attach', libc.ptrace(16, {me}, 0, 0), os.strerror(ctypes.get_errno()))\"; "
                f"timeout 5 gdb -batch -p {me} 2>&1 | grep -ci 'no such process'")
    assert "attach -1 No such process" in r.output
    assert r.output.split()[-1] != "0"
    assert_box_alive(box)


def test_hostname_cannot_be_changed(box):
    before = socket.gethostname()
    r = box.run("hostname agentworld-pwned; echo rc=$?; hostname")
    assert "rc=1" in r.output and r.output.split()[-1] == "sandbox"
    assert socket.gethostname() == before
    assert_box_alive(box)


def test_mount_chroot_and_unshare_fail(term):
    obs = sh(term, "mount -t tmpfs none /scratch 2>/dev/null; echo mount=$?; chroot / true 2>/dev/null; "
                   "echo chroot=$?; unshare -r true 2>/dev/null; echo userns=$?; unshare -n true 2>/dev/null; echo netns=$?")
    for probe in ["mount=32", "chroot=125", "userns=1", "netns=1"]:
        assert probe in obs
    assert_alive(term)


def test_no_sys_no_devices_no_privilege(box):
    r = box.run("ls /sys; ls /dev; cat /dev/sda /dev/mem /dev/kmsg; echo h > /proc/sysrq-trigger; "
                "su -c id root < /dev/null; grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status")
    assert "cannot access '/sys'" in r.output
    assert {"sda", "mem", "kmsg"}.isdisjoint(r.output.split())
    assert "Authentication failure" in r.output
    assert "NoNewPrivs:\t1" in r.output and "CapEff:\t0000000000000000" in r.output
    assert_box_alive(box)


def test_no_controlling_tty_to_inject_into(box):
    """--new-session: a TIOCSTI into the caller's terminal needs /dev/tty, and there is none."""
    r = box.run("python3 -c \"import fcntl, os, termios; fd = os.open('/dev/tty', os.O_RDWR); "
                "fcntl.ioctl(fd, termios.TIOCSTI, b'x')\" 2>&1 | tail -1")
    assert "No such device or address" in r.output
    assert_box_alive(box)


def test_tty_injection_only_reaches_the_agents_own_shell(term):
    obs = sh(term, "python3 -c \"import fcntl, termios; [fcntl.ioctl(0, termios.TIOCSTI, bytes([c])) "
                   "for c in b'echo injected-$((1+1))\\n']\"")
    assert "injected-2" in obs  # it typed into its own pane, inside the sandbox
    assert_alive(term)


# ------------------------------------------------------------------------------------------- resources

def test_fork_bomb_is_contained(box):
    seen = []

    def sample():
        for _ in range(40):
            seen.append(len(box.pids()))
            time.sleep(0.05)

    def bomb():
        sampler = threading.Thread(target=sample)
        sampler.start()
        r = box.run(":(){ :|:& };:; sleep 10", timeout=3)
        sampler.join()
        return r

    worst, r = host_latency_during(bomb)
    assert r.timed_out and "Resource temporarily unavailable" in r.output
    assert max(seen) <= box.limits.nproc  # root would not be held to RLIMIT_NPROC; our uid is
    assert worst < 2.0, f"the host stalled {worst:.1f}s during the fork bomb"
    assert box.pids() == []  # every process of the bomb is gone
    assert_box_alive(box)


def test_fork_bomb_in_the_terminal_restarts_the_shell(term):
    """The bomb backgrounds itself, so the prompt may come back before it grows: a later step finds it."""
    def bomb_then_steps():
        obs = [sh(term, ":(){ :|:& };:")]
        while "A new shell was started" not in obs[-1] and len(obs) < 6:
            assert len(term.sandbox.pids()) <= term.limits.nproc
            obs.append(sh(term, "echo next"))
        return obs[-1]

    worst, obs = host_latency_during(bomb_then_steps)
    assert "A new shell was started" in obs
    assert worst < 2.0
    assert len(term.sandbox.pids()) < 10
    assert_alive(term)


def test_memory_bomb_is_stopped(term):
    obs = sh(term, "python3 -c \"b = [bytearray(64 * 2**20) for _ in range(64)]\" 2>&1 | tail -1")
    assert "MemoryError" in obs
    assert_alive(term)


def test_huge_output_is_capped(box, term):
    t = time.monotonic()
    r = box.run("yes | head -c 100M; echo finished >&2")
    assert r.truncated and len(r.output) == box.limits.max_output and r.exit_code == 0
    assert time.monotonic() - t < 5
    obs = term.step("yes | head -c 100M")[0]  # the screen is the cap; tmux takes seconds to render 100 MB
    assert len(obs) <= term.limits.max_output and obs.count("\n") <= term.rows + 1
    term.step("<C-c>")
    assert_alive(term)


def test_infinite_loop_is_killed_at_the_timeout(box):
    t = time.monotonic()
    r = box.run("while :; do :; done", timeout=1)
    assert r.timed_out and r.exit_code is None and time.monotonic() - t < 3
    assert box.pids() == []
    assert_box_alive(box)


def test_cpu_limit_kills_a_busy_loop():
    box = Sandbox(limits=Limits(cpu_seconds=1, timeout_s=20))
    try:
        t = time.monotonic()
        r = box.run("bash -c 'while :; do :; done'; echo rc=$?")
        assert "Killed" in r.output and "rc=137" in r.output and not r.timed_out
        assert time.monotonic() - t < 15  # 1 s of CPU, however loaded the machine
        assert_box_alive(box)
    finally:
        box.close()


def test_file_size_bomb_stops_at_the_limit():
    box = Sandbox(limits=Limits(fsize_mb=4))
    try:
        r = box.run("head -c 50M /dev/zero > big; echo size=$(stat -c %s big); head -c 50M /dev/zero > /tmp/big; "
                    "echo size=$(stat -c %s /tmp/big)")
        assert "File size limit exceeded" in r.output
        assert r.output.count(f"size={4 << 20}\n") == 2
        assert (box.scratch / "big").stat().st_size == 4 << 20
        assert_box_alive(box)
    finally:
        box.close()


def test_tmpfs_cannot_fill_the_hosts_ram(box):
    r = box.run("for i in 1 2 3; do head -c 40M /dev/zero > /tmp/f$i || echo full; done; echo x > /dev/evil; "
                "df -m /tmp | tail -1")
    assert "full" in r.output and "Read-only file system" in r.output
    assert int(r.output.split()[-5]) == box.limits.tmpfs_mb  # size of /tmp in MB
    assert_box_alive(box)


# -------------------------------------------------------------------------------- killing the supervisor

def test_killing_init_and_all_processes(box, term):
    r = box.run("kill -9 1; echo still-here")
    assert "still-here" in r.output  # the namespace's init ignores signals from inside
    obs = sh(term, "kill -9 1; kill -9 $PPID; echo after-$((2+3))")
    assert "after-5" in obs
    obs = sh(term, "kill -9 -1")
    assert "A new shell was started" in obs or "No such process" in obs
    assert_alive(term)


def test_the_hosts_bwrap_pid_is_out_of_reach(term):
    bwrap_pid = term.server.pid  # bwrap, as the host sees it
    obs = sh(term, f"kill -9 {bwrap_pid}; echo rc=$?")
    assert "No such process" in obs and term.server.poll() is None
    assert_alive(term)


def test_shell_exit_and_killed_tmux_server_restart_the_shell(term):
    assert "A new shell was started" in sh(term, "exit")
    assert_alive(term)
    assert "A new shell was started" in sh(term, "tmux -S /run/tmux/sock kill-server")
    assert_alive(term)


def test_tmux_hook_cannot_write_on_the_host(term):
    """The sandbox controls the tmux server, which can make a client write files: our clients run sandboxed."""
    target = Path(term.root) / "escaped.txt"
    obs = sh(term, f"tmux -S /run/tmux/sock set-buffer pwned \\; set-hook -g after-capture-pane 'save-buffer {target}'")
    assert not target.exists()
    assert_alive(term)  # the failing hook broke our capture: the shell was restarted, which dropped the hook
    assert not target.exists()


# -- the tool processes: MCP servers run under the same policy, their scratch dir the one writable place --------------

def mcp_call(env, tool: str, **arguments) -> str:
    obs, *_ = env.step(json.dumps({"tool": tool, "arguments": arguments}))
    return obs


@pytest.mark.parametrize("sql", ["VACUUM INTO '{path}'", "ATTACH DATABASE '{path}' AS x"])
def test_sqlite_server_cannot_write_host_files(sql, tmp_path):
    env = make_env("mcp:sqlite-train", max_steps=20)
    try:
        env.reset(seed=0)
        for target in (tmp_path / "x.db", Path("/tmp") / f"aw-escape-{os.getpid()}.db"):  # a host dir, the host's /tmp
            obs = mcp_call(env, "write_query", query=sql.format(path=target))
            if "ATTACH" in sql:  # a table in the attached file would be written there
                obs += mcp_call(env, "write_query", query="CREATE TABLE x.t (a)")
            assert not target.exists(), obs
        assert mcp_call(env, "list_tables").startswith("[")  # the server still works
    finally:
        env.close()


def test_git_servers_repository_config_and_hooks_run_only_inside(tmp_path):
    env = make_env("mcp:git-train", max_steps=20)
    fsmonitor, hook = tmp_path / "fsmonitor-ran", tmp_path / "hook-ran"
    try:
        env.reset(seed=0)
        repo = env.scratch / "project"
        with open(repo / ".git" / "config", "a") as f:  # what a hostile repository could carry
            f.write(f"[core]\n\tfsmonitor = \"touch {fsmonitor}; echo\"\n")
        (repo / ".git" / "hooks" / "pre-commit").write_text(f"#!/bin/sh\ntouch {hook}\n")
        (repo / ".git" / "hooks" / "pre-commit").chmod(0o755)
        env.box.chown()
        obs = mcp_call(env, "git_status", repo_path="project") + mcp_call(env, "git_add", repo_path="project",
                                                                           files=["README.md"])
        obs += mcp_call(env, "git_commit", repo_path="project", message="x")
        assert not fsmonitor.exists() and not hook.exists(), obs
        from agentworld.envs.mcp_tools import git
        git(repo, "status")  # our own checker's git, outside the sandbox, runs neither
        assert not fsmonitor.exists()
    finally:
        env.close()


def test_mcp_server_sees_only_its_python_read_only_and_no_network():
    import sys

    from agentworld.envs.mcp_tools import SERVER_LIMITS
    from agentworld.envs.sandbox import python_binds

    box = Sandbox(limits=SERVER_LIMITS, ro_binds=python_binds())
    venv = Path(sys.prefix).resolve()
    try:
        r = box.run(f"ls -A {venv.parent}; echo ==; ls /home 2>&1; echo ==; touch {venv}/x 2>&1; echo ==; "
                    f"{venv}/bin/python -c 'print(7 * 6)'; echo ==; tail -n +3 /proc/net/dev | cut -d: -f1")
        ls_parent, home, touch, python, net = [part.strip() for part in r.output.split("==")]
        assert ls_parent == venv.name  # beside the venv, nothing of the host's
        assert "No such file or directory" in home and "Read-only file system" in touch and python == "42"
        assert net == "lo"  # an empty network namespace
        assert not (venv / "x").exists()
    finally:
        box.close()


HOG = "python3 -c \"x = b'1' * (256 << 20); print('held', len(x) >> 20, 'MB')\""  # filled: resident, not just mapped


@pytest.mark.skipif(memory_cgroups() is None, reason="memory cgroups cannot be made here (not root, or no delegation)")
def test_the_rss_cap_stops_a_sandbox_that_outgrows_it_and_its_cgroup_goes_with_it():
    """RLIMIT_AS is off for a JVM or a browser (they reserve far more than they use): the memory cgroup caps what the
    sandbox's processes really hold. The same hog runs whole without the cap."""
    free = Sandbox(limits=Limits(memory_mb=1024, timeout_s=30))
    capped = Sandbox(limits=Limits(memory_mb=1024, timeout_s=30, rss_mb=96))
    try:
        assert "held 256 MB" in free.run(HOG).output
        cgroup = capped.cgroup
        assert cgroup is not None and cgroup.is_dir()
        r = capped.run(HOG)
        assert "held" not in r.output and r.exit_code != 0, r
        assert capped.run("echo alive").output.strip() == "alive"  # the sandbox itself goes on
    finally:
        free.close()
        capped.close()
    assert not cgroup.exists()
