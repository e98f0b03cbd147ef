"""Experiments as Ray Jobs: `agentworld submit` and `agentworld jobs status|logs|stop|fetch`, on the Ray Jobs SDK.

The job's entrypoint is `agentworld run` on the cluster. Its code comes in the job's runtime env: the
working dir (a checkout, uploaded by Ray) or, with `installed`, the package the cluster's image already
has (then only the config file is uploaded). Inside the job the driver joins the cluster through
$RAY_ADDRESS. When the run ends it copies its run dir to `run.storage`, where `fetch` finds it."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Never uploaded with a working dir: the local venv, local results, VCS data, caches (Ray caps its size).
EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache", "mlruns"]
RUN_KEY, STORAGE_KEY = "agentworld_run", "agentworld_storage"  # job metadata that `fetch` reads


class SubmitError(Exception):
    """A job could not be submitted, found or reached; one line for the user."""


def client(address: str | None):
    """A Jobs SDK client for the dashboard at `address` (None: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SubmitError(f"cannot reach the Ray dashboard at {address or '$RAY_ADDRESS'}: "
                          f"{str(e).splitlines()[0]}") from None


def job_request(config_path: str, overrides: list[str], *, working_dir: str = ".", installed: bool = False,
                storage: str | None = None) -> dict:
    """The Jobs SDK arguments of `agentworld run CONFIG`; the config is validated here, before any upload."""
    from agentworld.config import ConfigError, load_config

    if storage:
        overrides = [*overrides, f"run.storage={storage}"]
    cfg = load_config(config_path, overrides)
    if installed:  # the cluster has the package: upload only the config, under its own name
        staging = Path(tempfile.mkdtemp(prefix="agentworld-job-"))
        shutil.copy(config_path, staging / Path(config_path).name)
        runtime_env = {"working_dir": str(staging)}
        entry = ["agentworld", "run", Path(config_path).name]
    else:
        wd = Path(working_dir).resolve()
        try:
            rel = Path(config_path).resolve().relative_to(wd)
        except ValueError:
            raise ConfigError(config_path, None, f"the config must be inside the working dir {wd}") from None
        runtime_env = {"working_dir": str(wd), "excludes": EXCLUDES}
        # `python -m` puts the uploaded working dir first on sys.path, ahead of any installed copy
        entry = ["python", "-m", "agentworld", "run", rel.as_posix()]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", cfg.run.name)  # a submission id is also a path on the cluster
    return dict(entrypoint=shlex.join(entry + list(overrides)), runtime_env=runtime_env,
                submission_id=f"agentworld-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                metadata={RUN_KEY: cfg.run.name, STORAGE_KEY: cfg.run.storage or ""})


def submit(config_path: str, overrides: list[str], address: str | None, *, working_dir: str = ".",
           installed: bool = False, storage: str | None = None) -> str:
    """Submit `agentworld run CONFIG` as a Ray Job; returns its submission id."""
    request = job_request(config_path, overrides, working_dir=working_dir, installed=installed, storage=storage)
    try:
        return client(address).submit_job(**request)
    except RuntimeError as e:  # refused by the cluster, e.g. a working dir over Ray's upload limit
        raise SubmitError(f"the cluster refused the job: {str(e).splitlines()[0]}") from None
    finally:
        if installed:  # Ray has uploaded it by now
            shutil.rmtree(request["runtime_env"]["working_dir"], ignore_errors=True)


def wait(address: str | None, job_id: str, follow: bool = True, poll_s: float = 2.0) -> str:
    """Block until the job ends, streaming its logs to stdout if `follow`; returns its final status."""
    c = client(address)
    if follow:
        async def tail():
            async for chunk in c.tail_job_logs(job_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()

        try:
            asyncio.run(tail())
        except RuntimeError:  # the log stream dropped: fall back to polling
            pass
    while not (status := c.get_job_status(job_id)).is_terminal():
        time.sleep(poll_s)
    return str(status.value)


def info(address: str | None, job_id: str):
    try:
        return client(address).get_job_info(job_id)
    except RuntimeError as e:
        raise SubmitError(f"job {job_id}: {str(e).splitlines()[0]}") from None


def logs(address: str | None, job_id: str, follow: bool = False) -> None:
    """Print the job's logs so far, or follow them until it ends."""
    info(address, job_id)
    if follow:
        wait(address, job_id, follow=True)
    else:
        sys.stdout.write(client(address).get_job_logs(job_id))


def stop(address: str | None, job_id: str) -> bool:
    """Ask Ray to stop the job; True if it was running."""
    info(address, job_id)
    return client(address).stop_job(job_id)


def fetch(address: str | None, job_id: str, out: str) -> Path:
    """Copy the job's run dir from its storage to <out>/<run name>."""
    from agentworld.storage import download

    meta = info(address, job_id).metadata or {}
    if not meta.get(STORAGE_KEY):
        raise SubmitError(f"job {job_id} has no run.storage: its run dir stayed on the cluster "
                          f"(`ray rsync-down CLUSTER.yaml REMOTE_RUN_DIR .` copies it)")
    return download(meta[STORAGE_KEY], meta[RUN_KEY], out)
