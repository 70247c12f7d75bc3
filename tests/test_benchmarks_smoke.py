"""The benchmark suite runs end to end in smoke mode (tiny random encoder, a handful of steps on the
real GLUE files) and writes the JSON documents with every expected key. No timing assertions: the
numbers of a smoke run measure nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("MTKD_DATA_ROOT") or REPO.parent / "shared" / "data" / "glue")

RATIOS = {
    "train": [f"train_vs_trainer_{kind}_{w}" for w in ("sst2", "mrpc", "mtl") for kind in ("padded", "dynamic")],
    "distill": ["distill_offline_vs_live"],
    "inference": ["softtarget_gen_vs_padded_forward", "all_heads_one_pass_vs_per_task_models"],
    "efficiency": ["train_step_fraction_of_matmul_peak", "train_step_32x128_fraction_of_matmul_peak"],
}
CONTENDERS = {
    "train": ["sst2:mtkd", "sst2:trainer_padded", "sst2:trainer_dynamic", "mrpc:mtkd", "mrpc:trainer_dynamic",
              "mtl:mtkd", "mtl:trainer_dynamic"],
    "distill": ["offline_soft_targets", "live_teachers_x3"],
    "inference": ["mtkd_predict_logits_sorted", "hf_forward_b64_padded128", "all_heads_one_encoder_pass"],
    "efficiency": ["matmul_peak", "mtkd_mtl_train_step", "mtkd_train_step_32x128"],
}


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory) -> Path:
    needed = [DATA_ROOT / "SST-2" / "train.tsv", DATA_ROOT / "MRPC" / "train.tsv",
              DATA_ROOT / "MNLI" / "partial" / "powerfulpromptft_sample" / "train.json"]
    if not all(p.is_file() for p in needed):
        pytest.skip(f"GLUE data not found under {DATA_ROOT} (set MTKD_DATA_ROOT)")
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--smoke", "--out", str(out),
                           "--data-root", str(DATA_ROOT)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"run_all --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "## Summary" in proc.stdout
    return out


@pytest.mark.parametrize("name", list(RATIOS))
def test_benchmark_json(smoke_out, name):
    doc = json.loads((smoke_out / f"{name}.json").read_text())
    assert doc["benchmark"] == name and doc["mode"] == "smoke"
    for key in ("cpu", "logical_cpus", "torch_threads", "torch", "date"):
        assert doc["machine"][key] not in (None, "")
    for key in RATIOS[name]:
        assert _positive_finite(doc["ratios"][key]), (key, doc["ratios"].get(key))
        s = doc["ratio_stats"][key]
        assert s["min"] <= s["median"] <= s["max"]
    for c in CONTENDERS[name]:
        metric = "flop_per_s" if c == "matmul_peak" else "examples_per_s"
        s = doc["contenders"][c][metric]
        assert all(_positive_finite(s[k]) for k in ("median", "min", "max")), (c, s)
    assert doc["tables"] and all(t.strip() for t in doc["tables"])


def test_combined_json(smoke_out):
    doc = json.loads((smoke_out / "bench.json").read_text())
    assert doc["errors"] == {}
    expected = [k for keys in RATIOS.values() for k in keys]
    assert set(expected) <= set(doc["ratios"])
    assert all(_positive_finite(doc["ratios"][k]) for k in expected)
    assert _positive_finite(doc["peak_rss_mtl_mb"])
    assert set(doc["benchmarks"]) == set(RATIOS)
    assert doc["targets"]["train_step_fraction_of_matmul_peak"] == [">=", 0.6]


def test_training_contenders_saw_the_same_batches(smoke_out):
    doc = json.loads((smoke_out / "train.json").read_text())
    assert all(doc["settings"]["trainer_dynamic_same_batches_as_mtkd"].values())
    runs = doc["contenders"]["sst2:mtkd"]["runs"] + doc["contenders"]["sst2:trainer_dynamic"]["runs"]
    assert len({(r["examples"], r["tokens"]) for r in runs}) == 1


def test_bench_memory_smoke(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_memory.py"), "--n", "300", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "memory.json").read_text())
    assert doc["n_examples"] == 300 and doc["file_mb"] > 0
    assert [r["mode"] for r in doc["runs"]] == ["tokenise", "epoch"]
    for r in doc["runs"]:
        assert r["examples"] == 300 and r["tokens"] > 300 * 10
        assert _positive_finite(r["peak_rss_mb"]) and r["peak_rss_mb"] >= r["baseline_rss_mb"]
    assert doc["runs"][1]["batches"] == -(-300 // 32)
    assert "| tokenise | 300 |" in proc.stdout


def test_profile_step_smoke():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = REPO / ".pytest_cache" / "profile_step_smoke.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_step.py"), "--batch", "2", "--width", "8",
                           "--repeats", "1", "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("| forward |", "| backward |", "| clip |", "| optimizer |", "| total |", "aten::addmm",
                "| part | torch_dropout | mtkd_fast_dropout | no_dropout_reference |", "step-time ratio"):
        assert row in proc.stdout
    doc = json.loads(out.read_text())
    assert set(doc["median_ms"]) == {"torch_dropout", "mtkd_fast_dropout", "no_dropout_reference"}
    assert _positive_finite(doc["ratios"]["step_torch_dropout_over_fast_dropout"])
    # the baseline really runs PyTorch's dropout, the contender mtkd's
    assert any("bernoulli" in k for k in doc["forward_top_ops_ms"]["torch_dropout"])
    assert not any("bernoulli" in k for k in doc["forward_top_ops_ms"]["mtkd_fast_dropout"])


def test_bench_dropout_ops_smoke():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = REPO / ".pytest_cache" / "dropout_ops_smoke.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_dropout_ops.py"), "--batch", "2", "--width", "8",
                           "--heads", "2", "--hidden", "16", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tensor | contender | forward | backward | total |" in proc.stdout
    doc = json.loads(out.read_text())
    for op in ("attention", "hidden"):
        assert set(doc["median_ms"][op]) == {"torch", "mtkd", "compiled", "none"}
        assert all(_positive_finite(doc["median_ms"][op][c]["total"]) for c in doc["median_ms"][op])
        assert _positive_finite(doc["ratios"][f"{op}_compiled_over_mtkd"])
        assert _positive_finite(doc["ratios"][f"{op}_torch_over_mtkd"])


def test_estimate_gpu_time_counts_the_pipeline(tmp_path):
    """The GPU-time estimate counts every stage's training steps as the pipeline takes them (checked
    here on the CPU config: MTL = ceil(epochs x sum of the tasks' batches), single-task and fine-tune
    one run per task, teach = 4 candidates' MTL + top-k members' fine-tunes on the teacher tasks)."""
    if not (DATA_ROOT / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"GLUE data not found under {DATA_ROOT}")
    import math

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "gpu_estimate.json"
    config = REPO / "configs" / "glue-kd-cpu.yaml"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "estimate_gpu_time.py"), "--config", str(config),
                           "--host-steps", "2", "--data-root", str(DATA_ROOT), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| stage | training runs | steps |" in proc.stdout and "minutes (lower bound" in proc.stdout
    doc = json.loads(out.read_text())
    from mtkd.config import load_config
    from mtkd.task_data import TaskData

    cfg = load_config(config, [f"data.root={DATA_ROOT}", f"data.cache_dir={tmp_path / 'cache'}"])
    data = TaskData(cfg)
    batches = {t: math.ceil(len(data.train_set(t).indices) / cfg.mtl.batch_size) for t in data.train_tasks()}
    steps = {s["stage"]: s["train_steps"] for s in doc["stages"]}
    mtl = math.ceil(cfg.mtl.epochs * sum(batches.values()))
    assert steps["mtl"] == mtl
    assert steps["single_task"] == sum(math.ceil(cfg.mtl.epochs * b) for b in batches.values())
    assert steps["finetune"] == sum(math.ceil(cfg.finetune.epochs * b) for b in batches.values())
    teacher_ft = sum(math.ceil(cfg.finetune.epochs * batches[t]) for t in cfg.kd.teacher_tasks)
    assert steps["teach"] == 4 * mtl + cfg.kd.top_k * teacher_ft
    assert steps["distill"] == mtl + steps["finetune"]
    assert 0 < doc["total_min_lower"] <= doc["total_min"]
    assert doc["measured"]["forward_backward_kernels"] > 100


def test_bench_serve_smoke(tmp_path):
    """bench_serve --quick: `mtkd serve` on a tiny model in a subprocess, two short concurrency levels with
    bad inputs mixed in; zero 5xx, every good answer equal to MTModel.predict's, every bad one its 4xx."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--quick", "--seconds", "1",
                           "--clients", "1,4", "--requests", "24", "--bad-every", "4", "--data-root", str(DATA_ROOT),
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| clients | s | good | bad | req/s |" in proc.stdout
    doc = json.loads((tmp_path / "serve.json").read_text())
    assert doc["benchmark"] == "serve" and doc["ok"] is True
    s = doc["summary"]
    assert s["5xx"] == s["wrong_answers"] == s["wrong_status"] == s["transport_errors"] == 0 and s["server_alive_at_end"]
    assert [lv["clients"] for lv in doc["levels"]] == [1, 4]
    for lv in doc["levels"]:
        assert lv["good"] > 0 and lv["bad"] > 0 and _positive_finite(lv["requests_per_s"])
        assert lv["latency_ms"]["p50"] <= lv["latency_ms"]["p99"] and lv["server_batches"] >= 1
        assert _positive_finite(lv["rss_mb"]["start"]) and _positive_finite(lv["rss_mb"]["end"])
    assert _positive_finite(s["rss_mb_start"]) and _positive_finite(s["rss_mb_end"])


def _run_bench(script: str, tmp_path, tiny_encoder, *extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--encoder", str(tiny_encoder),
                           "--data-root", str(DATA_ROOT), "--out", str(tmp_path), *extra],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bench_serving_cost_smoke(tmp_path, tiny_encoder):
    """The student answers the four teacher tasks in one encoder pass; the ensembles need 3 x 4."""
    proc = _run_bench("bench_serving_cost.py", tmp_path, tiny_encoder)
    assert "| all 4 tasks per example |" in proc.stdout
    doc = json.loads((tmp_path / "serving_cost.json").read_text())
    assert doc["settings"]["requests"] == 16 and doc["parameters"]["ensembles"] == 12 * doc["parameters"]["student"]
    assert all(_positive_finite(v) for v in doc["examples_per_s"].values())
    assert doc["ratio_all_tasks"] > 1 and set(doc["ratio_per_task"]) == {"MNLI", "QQP", "RTE", "QNLI"}


def test_bench_threads_smoke(tmp_path, tiny_encoder):
    """Worker processes started alone and two at once with the thread counts asked for."""
    _run_bench("bench_threads.py", tmp_path, tiny_encoder)
    doc = json.loads((tmp_path / "threads.json").read_text())
    sc = doc["scenarios"]
    assert set(sc) == {"1 process, 1 thread", "2 processes, 1 thread each"}
    assert [r["threads"] for r in sc["1 process, 1 thread"]["runs"]] == [1]
    assert sc["2 processes, 1 thread each"]["runs"][0]["processes"] == 2
    assert all(_positive_finite(s["median_step_s"]) and _positive_finite(s["median_train_examples_per_s"]) for s in sc.values())


def test_bench_onnx_smoke(tmp_path):
    """benchmarks/bench_onnx.py --smoke: a tiny random 4-head model exported fp32 and int8, the three
    contenders timed (batch-1 latency, batch-32 throughput) and scored on capped real dev sets."""
    pytest.importorskip("onnxruntime")
    if not all((DATA_ROOT / t / "dev.tsv").is_file() for t in ("SST-2", "MRPC", "STS-B", "RTE")):
        pytest.skip(f"GLUE data not found under {DATA_ROOT}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_onnx.py"), "--smoke", "--out", str(tmp_path),
                           "--data-root", str(DATA_ROOT)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| contender | batch-1 p50 ms | batch-1 p99 ms | batch-32 examples/s |" in proc.stdout
    doc = json.loads((tmp_path / "onnx.json").read_text())
    assert doc["benchmark"] == "onnx" and doc["mode"] == "smoke" and doc["machine"]["cpu"] not in (None, "")
    assert set(doc["contenders"]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
    for c in doc["contenders"].values():
        lat = c["latency_b1_ms"]
        assert _positive_finite(lat["p50"]) and lat["p50"] <= lat["p99"] and lat["calls"] == 8
        assert _positive_finite(c["throughput_b32"]["examples_per_s"]["median"])
        assert set(c["dev"]) == {"SST-2", "MRPC", "STS-B", "RTE"}
    for key in ("int8_throughput_b32_vs_pytorch", "fp32_throughput_b32_vs_pytorch", "int8_latency_b1_p50_speedup_vs_pytorch"):
        assert _positive_finite(doc["ratios"][key]), key
    assert set(doc["int8_delta_points_per_task"]) == {"SST-2", "MRPC", "STS-B", "RTE"}
    assert all(math.isfinite(v) for v in doc["onnx_fp32_delta_points_per_task"].values())
    assert doc["exports"]["onnx_fp32"]["check"]["max_abs_diff_fp32"] <= 1e-4
    assert set(doc["met"]) == set(doc["targets"]) == {"int8_throughput_b32_vs_pytorch", "int8_max_points_lost_per_task"}
