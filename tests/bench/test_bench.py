"""The benchmark CLI runs end to end at a tiny setting and reports every key the issue asks for."""

from __future__ import annotations

import json

import torch

from mlgcn_lt.bench.__main__ import TARGETS, main


def test_bench_quick_prints_table_and_json(capsys):
    threads = torch.get_num_threads()
    try:
        assert main(["--quick", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    for key in TARGETS:
        assert result[key] > 0, key
    assert set(result["loader"]["samples_per_s_per_worker"]) == {"naive", "ours", "cache"}
    assert set(result["step"]["ms_per_step"]) == {"plain", "framework", "plain_4experts", "plain_1expert"}
    assert result["memory"]["plain"]["peak_mib"] > 0 and result["memory"]["checkpointing"]["peak_mib"] > 0
    assert "framework (Lightning Trainer + MLGCNModule)" in captured.err and "targets:" in captured.err
