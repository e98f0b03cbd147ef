"""Sandbox: run untrusted commands under bubblewrap, with no network, a read-only system, one writable
directory (`scratch`, mounted at /scratch) and rlimits. Each call is one `env -i setpriv prlimit bwrap`
command line; `argv` gives it to callers who start their own processes.

Why each layer:
- A fresh unprivileged host uid per sandbox (`setpriv`): the kernel ignores RLIMIT_NPROC for root, and a
  uid of our own keeps other sandboxes' processes out of our `nproc` budget. Inside, it is uid 1000.
- `prlimit`: CPU seconds, address space, process count, file size, open files, no core dumps.
- `bwrap`: every namespace unshared (an empty network namespace, its own PIDs and /proc, hostname, IPC),
  no nested user namespaces, a cleared environment, a new session (no TIOCSTI into our tty), killed with
  its parent; the root is a read-only tmpfs holding /usr and /etc read-only, /dev, a small /tmp and
  /dev/shm, and /scratch. The host's /root, /home, /tmp and /work are not there at all. The command is
  the namespace's init (--as-pid-1): bwrap's own init would outlive bwrap as a zombie for the host to reap.
Scratch and binds are chowned to the sandbox uid at creation; files the host adds later need `chown()`.
- `env -i`: bwrap's own init process shows its environment in /proc/1/environ, so it starts with none.
- A memory cgroup (`Limits.rss_mb`, where set): the resident memory of all the sandbox's processes together. RLIMIT_AS
  caps each process's address space, which JVMs and Chromium reserve far beyond what they use; the cgroup caps what
  they really hold, and the kernel's OOM killer ends a process in the sandbox, not elsewhere, when it is reached.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
INSIDE_UID = 1000  # what the sandboxed processes see; ls -l and id look the same in every sandbox
# bwrap's --die-with-parent follows the *thread* that started it: a sandbox started from a thread that then
# ends would die with it. So every sandbox is started from this one thread, which lives as long as we do.
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")


@dataclass
class Limits:
    cpu_seconds: int = 10
    memory_mb: int = 512  # address space per process (RLIMIT_AS)
    nproc: int = 64
    fsize_mb: int = 64
    timeout_s: float = 10.0
    max_output: int = 8192
    tmpfs_mb: int = 64  # each of /tmp and /dev/shm, which live in RAM
    nofile: int = 1024
    rss_mb: int | None = None  # resident memory of all its processes together (a memory cgroup); None: no cap


@dataclass
class RunResult:
    exit_code: int | None  # None when killed at the timeout
    output: str
    timed_out: bool
    truncated: bool


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), uid, uid, follow_symlinks=False)


def _check_reachable(path: Path) -> None:
    """bwrap runs as the sandbox uid, so it must be able to walk to the directories it mounts."""
    for parent in path.parents:
        if not os.stat(parent).st_mode & 0o001:
            raise ValueError(f"{path}: its parent {parent} is not searchable by other users (chmod o+x), "
                             "so the sandbox cannot mount it")


def _reachable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def python_binds() -> dict[str, Path]:
    """Read-only binds (sandbox path -> host path) that run this venv's Python inside a sandbox at the same paths: the
    venv and the Python install it was made from. An install the sandbox uid cannot reach (pyenv under a 0700 /root,
    say) is bound from a mirror of hard links in the venv, made once (a copy where hard links cannot cross devices)."""
    venv, base = Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()
    _check_reachable(venv)
    out = {str(venv): venv}
    if base != venv and not _reachable(base):
        python = base / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        stamp = hashlib.sha256(f"{base}:{os.stat(python).st_mtime_ns}".encode()).hexdigest()[:12]
        mirror = venv / ".sandbox-python" / stamp
        if not mirror.exists():
            mirror.parent.mkdir(mode=0o755, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=mirror.parent)) / "tree"
            if subprocess.run(["cp", "-al", str(base), str(tmp)], capture_output=True).returncode:
                shutil.rmtree(tmp, ignore_errors=True)
                subprocess.run(["cp", "-a", str(base), str(tmp)], check=True, capture_output=True)
            os.chmod(tmp.parent, 0o755)
            try:
                os.rename(tmp, mirror)  # atomic: a concurrent maker's mirror is as good as ours
            except OSError:
                pass
            shutil.rmtree(tmp.parent, ignore_errors=True)
        out[str(base)] = mirror
    elif base != venv:
        out[str(base)] = base
    return out


def _system_mounts() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):  # merged /usr
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


class Sandbox:
    """Owns a scratch dir and the processes it starts; `close()` kills them all and removes a temp scratch."""

    def __init__(self, scratch: str | Path | None = None, limits: Limits = Limits(),
                 binds: Mapping[str, str | Path] | None = None, ro_binds: Mapping[str, str | Path] | None = None,
                 env: Mapping[str, str] | None = None):
        """`binds` maps extra writable sandbox paths to host dirs (e.g. a control socket's dir), `ro_binds` read-only
        ones (e.g. `python_binds()`); `env` is added to the commands' environment."""
        if shutil.which("bwrap") is None:
            raise RuntimeError("bubblewrap is not installed: apt-get install bubblewrap")
        self.limits = limits
        self._temp = scratch is None
        self.scratch = Path(tempfile.mkdtemp(prefix="agentworld-sbx-") if scratch is None else scratch).resolve()
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.binds = {inside: Path(host).resolve() for inside, host in (binds or {}).items()}
        self.ro_binds = {inside: Path(host) for inside, host in (ro_binds or {}).items()}
        self.env = dict(env or {})
        # uids below 2**31 that no account uses; collisions between two live sandboxes are ~1e-9
        self.uid = (1 << 30) + secrets.randbelow(1 << 30)
        for d in [self.scratch, *self.binds.values()]:
            _check_reachable(d)
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self.cgroup = _memory_cgroup(f"agentworld-{self.uid}", limits.rss_mb) if limits.rss_mb else None
        self.chown()

    def chown(self) -> None:
        """Give the sandbox uid every file in scratch and the binds, so that it can write them."""
        for d in [self.scratch, *self.binds.values()]:
            _chown_tree(d, self.uid)

    def argv(self, argv: list[str]) -> list[str]:
        """The full command line that runs `argv` inside the sandbox."""
        lim, mb = self.limits, 1 << 20
        binds = [a for inside, host in self.binds.items() for a in ("--bind", str(host), inside)]
        binds += [a for inside, host in self.ro_binds.items() for a in ("--ro-bind", str(host), inside)]
        setenv = [a for k, v in self.env.items() for a in ("--setenv", k, v)]
        # the shell joins the cgroup, then becomes the command: everything the sandbox starts is in it
        join = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs")] if self.cgroup else []
        return [
            *join, "env", "-i", f"PATH={PATH}",
            "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--no-new-privs",
            "prlimit", f"--cpu={lim.cpu_seconds}", f"--as={lim.memory_mb * mb}", f"--nproc={lim.nproc}",
            f"--fsize={lim.fsize_mb * mb}", f"--nofile={lim.nofile}", "--core=0", "--",
            "bwrap", "--unshare-all", "--unshare-user", "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID),
            "--disable-userns", "--as-pid-1", "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--clearenv", "--setenv", "PATH", PATH, "--setenv", "HOME", "/scratch",
            "--setenv", "TERM", "xterm", "--setenv", "LANG", "C.UTF-8", *setenv,
            *_system_mounts(), "--proc", "/proc", "--dev", "/dev",
            "--size", str(lim.tmpfs_mb * mb), "--tmpfs", "/tmp",
            "--size", str(lim.tmpfs_mb * mb), "--tmpfs", "/dev/shm",
            "--bind", str(self.scratch), "/scratch", *binds,
            "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/scratch",
            "--", *argv,
        ]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start `argv` inside the sandbox in its own process group; `close()` kills it."""
        p = _SPAWNER.submit(subprocess.Popen, self.argv(argv), start_new_session=True, env={"PATH": PATH},
                            **kwargs).result()
        with self._lock:
            self._procs = [q for q in self._procs if q.poll() is None] + [p]
        return p

    def run(self, cmd: str, timeout: float | None = None, stdin: str | None = None) -> RunResult:
        """`bash -c cmd` inside; stdout and stderr merged and capped; everything killed at the timeout."""
        return self.call(["bash", "-c", cmd], timeout, stdin)

    def call(self, argv: list[str], timeout: float | None = None, stdin: str | None = None) -> RunResult:
        """`argv` inside, like `run` but with no shell in between."""
        timeout = self.limits.timeout_s if timeout is None else timeout
        p = self.popen(argv, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if stdin is not None:
            threading.Thread(target=_feed, args=(p.stdin, stdin.encode()), daemon=True).start()
        deadline = time.monotonic() + timeout
        out, truncated, timed_out = bytearray(), False, False
        fd = p.stdout.fileno()
        while True:  # drain to EOF even past the cap, so the command is not blocked on a full pipe
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                timed_out = True
                break
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            room = self.limits.max_output - len(out)
            truncated |= len(chunk) > room
            out += chunk[:max(room, 0)]
        try:
            code = p.wait(timeout=max(deadline - time.monotonic(), 0.05)) if not timed_out else None
        except subprocess.TimeoutExpired:  # output closed but bwrap still running
            code, timed_out = None, True
        _kill(p)
        p.stdout.close()
        return RunResult(code, out.decode("utf-8", "replace"), timed_out, truncated)

    def pids(self) -> list[int]:
        """Host pids of every process running as this sandbox's uid."""
        return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _uid_of(e.name) == self.uid]

    def kill_all(self) -> None:
        """Kill every process this sandbox started, and anything else running as its uid."""
        with self._lock:
            procs, self._procs = self._procs, []
        for p in procs:
            _kill(p)
        for _ in range(10):  # a fork bomb may fork between the scan and the kill
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:  # exited
                    continue
                try:  # the pidfd pins the process: check it is still ours, then kill that very process
                    if _uid_of(str(pid)) == self.uid:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.01)

    def close(self) -> None:
        self.kill_all()
        if self._temp:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self._temp = False
        if self.cgroup is not None:
            for _ in range(100):  # its processes are dead; the kernel lets the dir go once they have left it
                try:
                    self.cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            self.cgroup = None


_CGROUP_WARNED = False


def memory_cgroups() -> tuple[Path, str] | None:
    """(the dir new memory cgroups go in, the file that caps one), where this process may make them: cgroup v2 with
    the memory controller enabled at /sys/fs/cgroup, else v1's memory hierarchy; None where neither is writable (not
    root, or a container without a delegated cgroup)."""
    v2 = Path("/sys/fs/cgroup")
    try:
        if "memory" in (v2 / "cgroup.subtree_control").read_text().split() and os.access(v2, os.W_OK):
            return v2, "memory.max"
    except OSError:
        pass
    v1 = v2 / "memory"
    if (v1 / "memory.limit_in_bytes").exists() and os.access(v1, os.W_OK):
        return v1, "memory.limit_in_bytes"
    return None


def _memory_cgroup(name: str, rss_mb: int) -> Path | None:
    """A new memory cgroup capped at `rss_mb`, swap included where the kernel counts it; None, with one warning per
    process, where memory cgroups cannot be made here (the sandbox then has its rlimits only)."""
    global _CGROUP_WARNED
    where = memory_cgroups()
    try:
        if where is None:
            raise OSError("no writable memory cgroup hierarchy (cgroup v2 with the memory controller, or v1)")
        root, cap = where
        d = root / name
        d.mkdir()
        try:
            (d / cap).write_text(str(rss_mb << 20))
            for swap in ("memory.swap.max", "memory.memsw.limit_in_bytes"):  # v2: swap beside memory; v1: both
                if (d / swap).exists():
                    (d / swap).write_text("0" if swap == "memory.swap.max" else str(rss_mb << 20))
        except OSError:
            d.rmdir()
            raise
        return d
    except OSError as e:
        if not _CGROUP_WARNED:
            _CGROUP_WARNED = True
            print(f"agentworld: sandboxes run without their memory cap (Limits.rss_mb): {e}", file=sys.stderr)
        return None


def _uid_of(pid: str) -> int | None:
    """Real uid from /proc/PID/status (the /proc dir's owner is root for non-dumpable processes)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:  # exited meanwhile
        pass
    return None


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except OSError:  # the command exited without reading it all
        pass


def _kill(p: subprocess.Popen) -> None:
    """Kill the sandbox's init (bwrap's child), which ends its PID namespace; bwrap then reaps it and exits.
    Killing bwrap first would also work (--die-with-parent) but leaves the init a zombie for the host's init."""
    if p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            children = []
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=1)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
