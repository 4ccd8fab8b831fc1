"""Shared helpers: run the real ``thrifty`` command in a subprocess on a tiny model and corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from thrifty.train.data import stdlib_dir

# Keep the suite's runs out of the user's ledger and away from the user's price file: every
# command the tests start (in process or as a subprocess) records into a throwaway ledger.
_SCRATCH = Path(tempfile.mkdtemp(prefix="thrifty-tests-"))
os.environ["THRIFTY_LEDGER"] = str(_SCRATCH / "ledger.sqlite")
os.environ["XDG_CONFIG_HOME"] = str(_SCRATCH / "config")
os.environ.pop("THRIFTY_PRICES", None)

# Real text, small enough that a test run takes seconds: the standard library's json package.
SMALL_CORPUS = stdlib_dir() / "json"

TINY = [
    "--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=32",
    f"--data.corpus={SMALL_CORPUS}", "--train.batch_size=8", "--train.warmup_steps=2",
    "--run.log_interval=1", "--run.eval_interval=1000", "--run.eval_batches=2",
]


def thrifty(*args: str, timeout: float = 300, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would; returns the finished process. ``env`` adds to
    the environment (a ledger of the test's own, say)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "thrifty", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"thrifty {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def train_tiny(run_dir: Path, *extra: str, nproc: int = 1, **kw) -> subprocess.CompletedProcess:
    return thrifty("train", *TINY, f"--run.dir={run_dir}", "--nproc", str(nproc), *extra, **kw)


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def losses(run_dir: Path, event: str = "train", key: str = "loss") -> list[float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r[key] for r in map(json.loads, lines) if r["event"] == event]


def final_weights(run_dir: Path) -> dict:
    from thrifty.train import checkpoint

    latest = checkpoint.latest_valid(run_dir)
    assert latest is not None, f"no checkpoint in {run_dir}"
    return checkpoint.load_file(latest, "shared.pt")["weights"]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A non-zero exit with one clear line on stderr and no traceback."""
    assert proc.returncode != 0, proc.stdout
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("thrifty: error"), err[0]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in err[0], err[0]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
