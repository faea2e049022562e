"""benchmarks/gpu_suite.py, the one GPU benchmark command, run on the CPU with its tiny preset:
every row and column is produced, from the same code that runs at full size on a GPU."""
import json

import pytest

from benchmarks import gpu_suite


@pytest.mark.slow
def test_the_gpu_suite_runs_every_row_with_the_tiny_preset(tmp_path, monkeypatch):
    monkeypatch.delenv("CLIPCORE_ASSETS_DIR", raising=False)  # random class names: no assets needed
    assert gpu_suite.main(["--preset", "tiny", "--device", "cpu", "--warmup", "0", "--steps", "1",
                           "--reference-steps", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_suite_tiny_cpu.json").read_text())
    rows = {r["row"]: r for r in results["rows"]}
    assert set(rows) == {label for label, *_ in gpu_suite.KDPL_ROWS} | {"SpectralGCD"}
    for row in rows.values():
        for key in ("now", "reference"):
            assert row[key]["images_per_s"] > 0 and row[key]["step_s"] > 0 and row[key]["mfu"] > 0
            assert row[key]["peak_memory_gib"] is None and row[key]["busy_fraction"] is None  # GPU only
    for label, *_ in gpu_suite.KDPL_ROWS:  # the KDPL optimisations save FLOPs (GCD's save memory and time)
        assert rows[label]["now"]["gflops_per_step"] < rows[label]["reference"]["gflops_per_step"]
    from benchmarks.bench_pipelines import FAMILIES, PIPELINES

    loaders = {(r["family"], r["pipeline"]): r for r in results["loaders"]}
    assert set(loaders) == {(f, p) for f in FAMILIES for p in PIPELINES}
    assert all(r["samples_per_s"] > 0 for r in loaders.values())
    table = (tmp_path / "gpu_suite_tiny_cpu.md").read_text()
    assert "| CoOp+KDPL-CA |" in table and "| SpectralGCD |" in table and "| SimGCD, 2 views | gpu |" in table


@pytest.mark.slow
def test_a_failing_row_is_reported_in_its_row_and_the_others_are_still_measured(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_kdpl

    monkeypatch.delenv("CLIPCORE_ASSETS_DIR", raising=False)
    build_learner = bench_kdpl.build_learner

    def out_of_memory_for_maple(name, *args, **kwargs):
        if name == "maple":
            raise RuntimeError("CUDA out of memory (simulated)")
        return build_learner(name, *args, **kwargs)

    monkeypatch.setattr(bench_kdpl, "build_learner", out_of_memory_for_maple)
    assert gpu_suite.main(["--preset", "tiny", "--device", "cpu", "--warmup", "0", "--steps", "1",
                           "--reference-steps", "1", "--out", str(tmp_path),
                           "--rows", "MaPLe+KDPL", "CoOp+KDPL"]) == 1
    assert "failed rows: MaPLe+KDPL; rerun them alone with --rows" in capsys.readouterr().err
    # A partial run writes beside the whole suite's results, not over them.
    stem = tmp_path / "gpu_suite_tiny_cpu_maple-kdpl_coop-kdpl"
    results = json.loads(stem.with_suffix(".json").read_text())
    rows = {r["row"]: r for r in results["rows"]}
    assert set(rows) == {"MaPLe+KDPL", "CoOp+KDPL"} and results["loaders"] == []
    assert rows["MaPLe+KDPL"] == {"row": "MaPLe+KDPL", "error": "RuntimeError: CUDA out of memory (simulated)"}
    assert rows["CoOp+KDPL"]["now"]["images_per_s"] > 0
    table = stem.with_suffix(".md").read_text()
    assert "| MaPLe+KDPL | failed: RuntimeError: CUDA out of memory (simulated) |" in table
