"""Shared fixtures: build ./run once, generate the random checkpoints once per session, export
them on demand (cached per variant and dtype). Generated files live in pytest's tmp dir.

For mutation checks (break a copy of the engine on purpose and watch the tests fail):
SEEK_RUN=/path/to/other/run skips `make` and uses that binary; SEEK_EXPORT=/path/to/export.py
uses another exporter."""
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

import gen_checkpoints  # noqa: E402

VARIANTS = sorted(gen_checkpoints.VARIANTS)


@pytest.fixture(scope="session")
def run_bin() -> str:
    """Path of ./run, built once with `make run` (or $SEEK_RUN as is)."""
    if os.environ.get("SEEK_RUN"):
        return os.path.abspath(os.environ["SEEK_RUN"])
    r = subprocess.run(["make", "-s", "all"], cwd=ROOT, capture_output=True, text=True)  # not the goal `run`: it talks
    if r.returncode != 0:
        pytest.fail(f"make run failed:\n{r.stdout}\n{r.stderr}")
    return os.path.join(ROOT, "run")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("seek"))


@pytest.fixture(scope="session")
def checkpoint(workdir):
    """checkpoint(variant, seed=0) -> HF directory, generated once."""
    made = {}

    def get(variant: str, seed: int = 0) -> str:
        if (variant, seed) not in made:
            made[(variant, seed)] = gen_checkpoints.write_checkpoint(
                variant, os.path.join(workdir, "hf", f"{variant}-s{seed}"), seed=seed)
        return made[(variant, seed)]
    return get


@pytest.fixture(scope="session")
def exported(workdir, checkpoint):
    """exported(variant, dtype, seed=0) -> path of `export.py <hf> <out> --dtype dtype`, run once."""
    made = {}

    def get(variant: str, dtype: str, seed: int = 0) -> str:
        key = (variant, dtype, seed)
        if key not in made:
            out = os.path.join(workdir, f"{variant}-s{seed}-{dtype}.bin")
            exporter = os.environ.get("SEEK_EXPORT") or os.path.join(ROOT, "export.py")
            cmd = [sys.executable, exporter, checkpoint(variant, seed), out, "--dtype", dtype]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0 or not os.path.exists(out):
                pytest.fail(f"{' '.join(cmd)} failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
            made[key] = out
        return made[key]
    return get
