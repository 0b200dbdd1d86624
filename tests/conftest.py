import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from hwact.cli import main


@pytest.fixture
def cli():
    """Run the hwact CLI in-process; returns (exit_code, stdout, stderr)."""

    def run(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture
def cli_process():
    """Run the installed `hwact` console script in a subprocess (real exit codes, real stderr)."""

    def run(*args, cwd=None):
        exe = os.path.join(os.path.dirname(sys.executable), "hwact")
        done = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
        return done.returncode, done.stdout, done.stderr

    return run


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """400 real digits (labels kept), so training runs stay fast."""
    from hwact.train.data import load_dataset

    digits = load_dataset("digits")
    path = tmp_path_factory.mktemp("data") / "digits400.npz"
    np.savez(path, x=digits.x[:400].numpy(), y=digits.y[:400].numpy())
    return path
