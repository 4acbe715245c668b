"""Run-directory locks: a SIGKILLed run's orphaned loader workers must not make the same command start afresh."""

import subprocess
import sys
import textwrap
import time

from mlgcn_lt.training import rundirs

# Takes the lock, forks a child that keeps the inherited lock for a while (as DataLoader workers do), and dies at
# once: the lock's recorded owner is dead while the lock is still held.
ORPHAN = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from mlgcn_lt.training import rundirs
    assert rundirs._try_lock(Path(sys.argv[1]))
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)  # let the caller see the parent exit
        time.sleep(float(sys.argv[2]))
        os._exit(0)
    print("locked", flush=True)
    os._exit(0)
    """
)


def _hold(run_dir, seconds: float) -> None:
    out = subprocess.run([sys.executable, "-c", ORPHAN, str(run_dir), str(seconds)], capture_output=True, text=True)
    assert out.stdout.strip() == "locked", out.stderr


def test_lock_held_only_by_orphans_of_a_dead_run_is_waited_for(tmp_path):
    run = tmp_path / "run"
    _hold(run, 1.5)
    start = time.monotonic()
    assert rundirs._try_lock(run)  # before the fix: False, and the command started a new directory
    assert time.monotonic() - start > 0.5  # it waited for the orphan to let go
    rundirs._HELD.pop(str(run.resolve())).close()


def test_lock_of_a_live_run_is_refused_at_once(tmp_path):
    run = tmp_path / "run"
    code = "import sys, time; from pathlib import Path; from mlgcn_lt.training import rundirs\n"
    code += "assert rundirs._try_lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        start = time.monotonic()
        assert not rundirs._try_lock(run)
        assert time.monotonic() - start < 5
    finally:
        proc.kill()
        proc.wait()
