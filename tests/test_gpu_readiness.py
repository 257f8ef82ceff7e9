"""Paths a GPU run takes, checked on the CPU: the measured memory of a batch, bf16 autocast with a
stochastic purifier, batches of 10,000+ rows, the speed options, and the GPU reference-run script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchbench.registry import PurifierSpec
from benchbench.run.resources import MemoryModel, measure_peak
from benchbench.run.runner import RunConfig, _classify, build_context, network_memory, run

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def allocator_peak(fn) -> int:
    """Peak bytes live in torch's CPU allocator during ``fn()``, from its own allocation and free events
    (the profiler's memory trace: the CPU counterpart of ``torch.cuda.max_memory_allocated``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-trace-{os.getpid()}.json"
    prof.export_chrome_trace(str(path))
    try:
        events = json.loads(path.read_text())["traceEvents"]
    finally:
        path.unlink()
    live = peak = 0
    for _, nbytes in sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]"):
        live += nbytes
        peak = max(peak, live)
    return peak


def test_measure_peak_counts_what_is_alive_at_once():
    def fn():
        a = torch.empty(10_000_000, dtype=torch.uint8)
        b = torch.empty(5_000_000, dtype=torch.uint8)  # 15 MB live here
        del a
        c = torch.empty(2_000_000, dtype=torch.uint8)  # 7 MB
        return b, c

    _, peak = measure_peak(fn, CPU)
    assert peak == 15_000_000
    # and a view of an input is not an allocation
    x = torch.zeros(1_000_000)
    _, peak = measure_peak(lambda: x[::2].view(-1), CPU)
    assert peak == 0


def test_memory_model_fits_a_line_through_two_peaks():
    model = MemoryModel.fit((2, 8), (1_000 + 2 * 300, 1_000 + 8 * 300))
    assert (model.fixed, model.per_row) == (1_000, 300)
    assert model.need(1_000) == 1_000 + 300_000
    # a peak that does not grow: everything charged per row, never less than measured
    flat = MemoryModel.fit((2, 8), (800, 800))
    assert flat.need(8) >= 800


@pytest.mark.parametrize("spec, batch", [("ddpm", 256), ("densepure:k=3:steps=2", 120)])
def test_batch_memory_estimate_is_near_the_allocators_measured_peak(spec, batch):
    """The pre-run estimate, from calls on 2 and 8 copies, against the peak torch's CPU allocator reports
    for a real call at the run's batch size: within [0.85, 1.5]×. (The old estimate summed every layer's
    output and, for a voting purifier, counted its K votes twice.)"""
    config = RunConfig(purifiers=[PurifierSpec.parse(spec)], sigmas=(0.5,), n0=10, n=10, batch_size=batch,
                       num_images=1)
    ctx = build_context(config, CPU)
    label = config.purifiers[0].label
    model, step = network_memory(ctx, label, 0.5)
    x = ctx.test.images[ctx.indices[0]]
    noisy = x + 0.5 * torch.randn((batch, *x.shape), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        measured = allocator_peak(lambda: _classify(ctx, label, 0.5, noisy, [0] * batch, list(range(batch))))
    estimate = model.need(min(batch, step))
    assert 0.85 * measured <= estimate <= 1.5 * measured, (estimate, measured)


def _rows(run_dir: Path) -> pd.DataFrame:
    files = sorted(run_dir.glob("certify_*.tsv"))
    return pd.concat([pd.read_csv(f, sep="\t") for f in files]).sort_values(["purifier", "sigma", "idx"])


def test_bf16_with_a_stochastic_purifier_through_the_harness(tmp_path):
    """CPU autocast to bf16 with ``sde`` (per-copy step noise): the run completes, records its precision,
    does not depend on the batch size, and agrees with fp32 on the prediction of most images."""
    common = dict(purifiers=[PurifierSpec.parse("sde:steps=3")], sigmas=(0.5,), n0=8, n=24, alpha=0.1,
                  num_images=6, seed=3)
    bf16 = run(RunConfig(**common, precision="bf16", batch_size=64, out=str(tmp_path / "bf16")))
    again = run(RunConfig(**common, precision="bf16", batch_size=13, out=str(tmp_path / "bf16-b13")))
    fp32 = run(RunConfig(**common, batch_size=64, out=str(tmp_path / "fp32")))
    assert not bf16.failures
    config = json.loads((bf16.run_dir / "config.json").read_text())
    assert config["experiment"]["precision"] == "bf16"
    a, b, c = _rows(bf16.run_dir), _rows(again.run_dir), _rows(fp32.run_dir)
    assert len(a) == 6 and a["nfe"].eq(3).all() and a["n"].eq(24).all()
    cols = ["idx", "predict", "radius", "correct", "pa_lower"]
    # bf16 rounding may differ between batch shapes in the last bits; on these rows it does not flip a count
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))
    assert (a["predict"].to_numpy() == c["predict"].to_numpy()).mean() >= 5 / 6


def test_a_batch_of_more_than_10000_rows_gives_the_rows_of_small_batches(tmp_path):
    """70 images × (16 + 128) copies packed into one 10,080-row batch: accepted by the memory check and the
    same rows as batches of 100."""
    common = dict(purifiers=[PurifierSpec.parse("identity")], sigmas=(0.5,), n0=16, n=128, alpha=0.01,
                  num_images=70, skip=6)
    big = run(RunConfig(**common, batch_size=10_080, out=str(tmp_path / "big")))
    small = run(RunConfig(**common, batch_size=100, out=str(tmp_path / "small")))
    a, b = _rows(big.run_dir), _rows(small.run_dir)
    assert len(a) == 70
    cols = ["idx", "label", "predict", "radius", "correct", "pa_lower", "n"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))


def test_channels_last_changes_no_row_and_is_recorded(tmp_path):
    common = dict(purifiers=[PurifierSpec.parse("ddpm")], sigmas=(0.5,), n0=8, n=24, alpha=0.1, num_images=2)
    fast = run(RunConfig(**common, channels_last=True, out=str(tmp_path / "cl")))
    plain = run(RunConfig(**common, out=str(tmp_path / "plain")))
    env = json.loads((fast.run_dir / "config.json").read_text())["environment"]
    assert env["speed"] == {"channels_last": True, "compile": False}
    cols = ["idx", "predict", "radius", "pa_lower", "nfe"]
    pd.testing.assert_frame_equal(_rows(fast.run_dir)[cols].reset_index(drop=True),
                                  _rows(plain.run_dir)[cols].reset_index(drop=True))


def test_compiled_networks_still_count_nfe_and_give_the_same_rows(tmp_path, monkeypatch, tiny_ddpm):
    """--compile wraps each network's forward, not the module: the NFE hooks stay outside the compiled code.
    Compiled here with dynamo's eager backend (the tracing and the hooks are what is tested; inductor's
    code generation takes minutes on this CPU and is measured by benchmarks/throughput.py)."""
    import functools

    import benchbench.run.speed as speed

    monkeypatch.setattr(speed.torch, "compile", functools.partial(torch.compile, backend="eager"))
    common = dict(purifiers=[PurifierSpec.parse(f"ddpm:model={tiny_ddpm}")], sigmas=(0.5,), n0=4, n=12,
                  alpha=0.1, num_images=2)
    compiled = run(RunConfig(**common, compile=True, out=str(tmp_path / "compiled")))
    plain = run(RunConfig(**common, out=str(tmp_path / "plain")))
    a, b = _rows(compiled.run_dir), _rows(plain.run_dir)
    assert a["nfe"].eq(1).all()
    cols = ["idx", "predict", "radius", "pa_lower", "nfe"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))
    env = json.loads((compiled.run_dir / "config.json").read_text())["environment"]
    assert env["speed"] == {"channels_last": False, "compile": True}


def test_reference_gpu_script_runs_on_the_cpu_at_tiny_settings(tmp_path):
    """benchmarks/reference_gpu.sh end to end with DEVICE=cpu and tiny n: shards in parallel, merge, report
    (without quality and figures, which other tests cover); the merged run is the reference protocol's (all
    purifiers, σ 0.25 and 0.5, α 0.001) at the script's bf16."""
    out = tmp_path / "ref"
    env = {**os.environ, "DEVICE": "cpu", "IMAGES": "2", "N0": "4", "N": "8", "BATCH": "64", "SHARDS": "2",
           "ARTIFACTS": "0", "OUT": str(out), "BENCH": str(Path(sys.executable).parent / "bench")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "reference_gpu.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    experiment = json.loads((out / "config.json").read_text())["experiment"]
    assert experiment["precision"] == "bf16" and experiment["sigmas"] == [0.25, 0.5]
    assert (experiment["n0"], experiment["n"], experiment["alpha"]) == (4, 8, 0.001)
    labels = {p["label"] for p in experiment["purifiers"]}
    assert labels == {"identity", "cohen", "ddpm", "sde", "densepure", "pfode", "consistency", "consistency-ft"}
    rows = _rows(out)
    assert len(rows) == len(labels) * 2 * 2  # every purifier × σ × image, each once, from the two shards
    report = (out / "report.md").read_text()
    assert all(f"| {label}" in report for label in labels)
    assert "total" in proc.stdout and "| densepure" in proc.stdout


def test_throughput_bare_loop_runs_under_the_runs_precision():
    """benchmarks/throughput.py compares like with like: under --precision bf16 the bare loop's networks
    compute in bf16, as the harness's do."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    ctx = build_context(RunConfig(purifiers=[PurifierSpec.parse("ddpm")], sigmas=(0.5,), n0=2, n=4,
                                  precision="bf16", num_images=1), CPU)
    conv = next(m for m in ctx.purifiers["ddpm"].unet.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    handle = conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        throughput.bare_loop(ctx, "ddpm", ctx.indices[:1], 2, 4, 4)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}


def test_threads_sets_a_local_runs_torch_threads_and_records_them(tmp_path):
    before = torch.get_num_threads()
    try:
        result = run(RunConfig(purifiers=[PurifierSpec.parse("identity")], sigmas=(0.5,), n0=4, n=8, alpha=0.1,
                               num_images=1, threads=1, out=str(tmp_path / "run")))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    env = json.loads((result.run_dir / "config.json").read_text())["environment"]
    assert env["torch_threads"] == 1
