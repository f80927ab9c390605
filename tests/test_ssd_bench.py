"""`specdec bench` reports SSD's metrics for an async run on CPU (hit rate, build and wait ms, per-phase
ms, the share of rounds that built a tree), runs several modes in one table, and labels SIMULATED runs."""
import argparse

import pytest

from specdec.benchmark.report import print_report
from specdec.benchmark.run import bench
from specdec.commands import bench as bench_cmd

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = "synthetic:llama-tiny"


def args(*argv):
    p = argparse.ArgumentParser()
    bench_cmd.add_parser(p.add_subparsers())
    a = p.parse_args(["bench", "--device", "cpu", "--k", "3", "--f", "2", "--output_len", "12", "--numseqs", "2",
                      "--max-model-len", "256", "--dtype", "float32", *argv])
    return a


def test_async_bench_reports_ssd_metrics(capsys):
    rep = bench(args("--target", TINY, "--draft", TINY, "--modes", "sync,async", "--tree-policy", "always"))
    sync, ssd = rep["runs"]
    assert sync["name"] == "sync" and ssd["name"] == "async" and sync["outputs"] == ssd["outputs"]
    assert ssd["cache_hit_rate"] > 0.5 and ssd["avg_build_ms"] > 0 and ssd["tree_share"] == 1.0
    assert ssd["round_ms"] > 0 and ssd["avg_verify_ms"] > 0 and ssd["avg_wait_ms"] >= 0 and ssd["host_ms"] >= 0
    print_report(rep)
    out = capsys.readouterr().out
    assert "build ms" in out and "wait ms" in out and "SIMULATED" not in out


def test_simulated_runs_are_labelled(capsys):
    rep = bench(args("--target", TINY, "--draft", "synthetic:llama-tiny-draft", "--modes", "ar,async",
                     "--simulate-acceptance", "0.7", "--simulate-hit", "0.8", "--sweep", "acceptance=0.5,0.9"))
    ar, a5, a9 = rep["runs"]
    assert ar["simulated"] is None and a5["simulated"]["acceptance"] == 0.5 and a9["simulated"]["acceptance"] == 0.9
    assert a9["acceptance"] > a5["acceptance"]
    print_report(rep)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("async")]
    assert len(lines) == 2 and all("SIMULATED A=" in ln for ln in lines)
    assert out.count("SIMULATED") >= 4


def test_k_sweep_builds_the_engine_for_its_largest_k():
    """--modes ar,sync --sweep k=2,6 with --k 3: one AR row, and the K=6 row drafts 6 tokens per round (the engine is built with K=6); a draft equal
    to its target accepts every draft, so tau = K + 1 in each row (was capped at the engine's K=3 before)."""
    rep = bench(args("--target", TINY, "--draft", TINY, "--modes", "ar,sync", "--sweep", "k=2,6", "--output_len", "22"))
    ar, k2, k6 = rep["runs"]                        # one AR row: K means nothing there
    assert ar["name"] == "ar" and ar["outputs"] == k2["outputs"]
    assert k2["k"] == 2 and k6["k"] == 6 and k2["outputs"] == k6["outputs"]
    assert k2["tokens_per_round"] == pytest.approx(3.0, abs=0.35) and k6["tokens_per_round"] > 5.0
