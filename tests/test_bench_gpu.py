"""`python -m bench.gpu --tiny`: the GPU benchmark's code, run on the CPU with tiny models."""

from __future__ import annotations

import pytest

from bench import gpu


def test_the_tiny_gpu_benchmark_measures_every_section(one_torch_thread: None) -> None:
    rows, table = gpu.run(tiny=True, out=None)
    assert {row.section for row in rows} == {"factual", "emotional", "caption", "pacl step",
                                             "cternet step", "kmeans"}
    assert [row.model for row in rows if row.section == "caption"] == list(gpu.TINY.captioners)
    for row in rows:
        assert row.rate > 0, row
        assert row.tflops is not None and row.tflops > 0, row
    for row in rows:
        if row.section in ("factual", "emotional", "caption"):
            assert row.vs_bare is not None and row.vs_bare > 0, row
    lines = table.splitlines()
    assert "vs bare" in lines[1] and "% peak" in lines[1] and len(lines) == 2 + len(rows)


def test_without_a_gpu_the_full_run_says_how_to_run_it_here() -> None:
    if gpu.torch.cuda.is_available():
        pytest.skip("a GPU is present: the full benchmark would run")
    with pytest.raises(SystemExit, match="--tiny"):
        gpu.run(tiny=False, out=None)
