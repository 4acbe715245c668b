"""What importing the package does to the process before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import mlgcn_lt, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_passively_unless_the_user_chose(given, expected):
    """Spinning OpenMP threads starved loader workers on 2 cores: ``import mlgcn_lt`` sets the policy before
    anything imports torch (libgomp reads it when it loads), and leaves a user's own setting alone."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [expected, "False"]
