"""Live tracking: every metrics row, as it arrives, to TensorBoard event files and optionally MLflow.
metrics.parquet stays the canonical record; these are for watching a run (or many) while it goes."""

from __future__ import annotations

import math
import os
from pathlib import Path

from agentworld.metrics import KINDS, TIME

FLUSH_S = 5  # seconds between writes of the TensorBoard event files


def _scalars(row: dict) -> dict[str, float]:
    """The row's measures, as its kind declares them (agentworld/metrics.py); keys, flags, the row's time
    and missing values are no scalars. A row of an undeclared kind: every number but its time."""
    kind = KINDS.get(row.get("kind"))
    out = {}
    for k, v in row.items():
        measured = k in kind.measures if kind else k != TIME
        if measured and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


class Tracker:
    """Writes rows to `<run_dir>/tensorboard` and, if enabled, to an MLflow run named after the run."""

    def __init__(self, run_dir, tracking, config: dict, t0: float):
        self.t0, self._steps, self.tb, self.mlflow = t0, {}, None, None
        if tracking.tensorboard:
            from tensorboardX import SummaryWriter

            # tensorboardX writes from a background thread; a short flush interval keeps the files live
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), flush_secs=FLUSH_S)
        if tracking.mlflow:
            import mlflow

            # MLflow 3 refuses the plain-file store unless asked; a local file store is what we want here
            # (no server, no database), beside the runs.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = tracking.mlflow_uri or (Path(config["run"]["output_dir"]) / "mlruns").resolve().as_uri()
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(tracking.mlflow_experiment)
            self.mlflow = mlflow
            self.run = mlflow.start_run(run_name=config["run"]["name"])
            mlflow.log_params(_flat(config))

    def _step(self, row: dict) -> int:
        """The row's own counter where it has one, else a per-(kind, arm) count (pool decisions)."""
        kind = KINDS.get(row.get("kind"))
        key = kind.x if kind and kind.x != TIME else None  # a kind drawn against time has no counter of its own
        if key and isinstance(row.get(key), (int, float)) and math.isfinite(row[key]):
            return int(row[key])
        k = (row.get("kind"), row.get("arm"))
        self._steps[k] = self._steps.get(k, -1) + 1
        return self._steps[k]

    def log(self, rows: list[dict]) -> None:
        for row in rows:
            prefix = "/".join(str(row[k]) for k in ("kind", "arm", "stage") if row.get(k) is not None)
            step, scalars = self._step(row), _scalars(row)
            wall = self.t0 + row.get("wall_time", 0.0)
            if self.tb is not None:
                for k, v in scalars.items():
                    self.tb.add_scalar(f"{prefix}/{k}", v, step, walltime=wall)
            if self.mlflow is not None:
                # MLflow keys allow only [\w.\-/ ]; one call per row keeps the file store small
                self.mlflow.log_metrics({f"{prefix}/{k}": v for k, v in scalars.items()}, step=step,
                                        timestamp=int(wall * 1000))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config as MLflow params (dotted keys, values cut to MLflow's 6000-character limit)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out
