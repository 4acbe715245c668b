"""Run directories (mlgcn_lt/training/rundirs.py): a SIGKILLed run's orphaned loader workers must not make the same
command start afresh; a checkpoint write that fails partway (disk full, file-size limit) keeps the previous one."""

import errno
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mlgcn_lt.config import PROJECT_ROOT
from mlgcn_lt.training import rundirs
from mlgcn_lt.training.rundirs import AtomicCheckpointIO

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


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="disk full while writing checkpoint .*previous checkpoint is intact"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def _fail_partway(monkeypatch, code: int, after: int) -> list[int]:
    """Make atomic_write's file raise ``OSError(code)`` once ``after`` bytes were written; returns bytes written."""
    from mlgcn_lt.utils import io

    written = [0]
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if written[0] + len(data) > after:
                raise OSError(code, os.strerror(code))
            written[0] += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(io.os, "fdopen", lambda *a, **k: Failing(real_fdopen(*a, **k)))
    return written


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, "disk full"), (errno.EFBIG, "file-size limit reached")], ids=["enospc", "efbig"]
)
def test_checkpoint_write_failing_midway_keeps_the_previous_one(tmp_path, monkeypatch, code, reason):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    written = _fail_partway(monkeypatch, code, after=4096)
    with pytest.raises(OSError, match=f"{reason} while writing checkpoint .*previous checkpoint is intact") as info:
        io.save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)
    assert info.value.errno == code
    assert 0 < written[0] <= 4096  # the failure came partway through the file, not after a complete save
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_file_size_limit_while_checkpointing_in_a_real_process(tmp_path):
    """RLIMIT_FSIZE: the kernel refuses the write partway (EFBIG); torch wraps it as 'unexpected pos'."""
    code = f"""
import resource, torch
from mlgcn_lt.training.rundirs import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({{"step": 1}}, {str(tmp_path / "last.ckpt")!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    io.save_checkpoint({{"step": 2, "w": torch.zeros(1 << 20)}}, {str(tmp_path / "last.ckpt")!r})
except OSError as e:
    print("ERROR", type(e.__cause__).__name__, e)
"""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"ERROR RuntimeError [Errno {errno.EFBIG}] file-size limit reached while writing checkpoint" in proc.stdout
    assert "previous checkpoint is intact" in proc.stdout
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
