"""``easytune reproduce``: results kept per profile, notebook progress with an ETA."""

import json
import shutil
from pathlib import Path

import pytest

from easytune_lab.cli import main
from easytune_lab.commands.reproduce import expected_seconds, main_table_markdown, remaining_estimate, resolve_jobs
from easytune_lab.pipeline import SHARED_STAGES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_reproduction_leaves_quick_results_unchanged(tmp_path, monkeypatch):
    """A results folder holding the committed quick results; ``reproduce --profile smoke`` into it writes
    ``results/smoke/`` only, and every quick file keeps its bytes (none added, none removed)."""
    monkeypatch.setenv("EASYTUNE_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results" / "quick", results / "quick")

    def quick_files():
        return {str(p.relative_to(results)): p.read_bytes() for p in (results / "quick").rglob("*") if p.is_file()}

    before = quick_files()
    assert "quick/04_main_results/main_table.md" in before and "quick/notebooks.json" in before
    assert main(["reproduce", "--profile", "smoke", "--device", "cpu", "--results", str(results),
                 "--cache", str(ROOT / ".cache"), "--playbacks", "1"]) == 0
    assert quick_files() == before
    smoke = results / "smoke"
    records = json.loads((smoke / "notebooks.json").read_text())
    assert records["profile"] == "smoke" and all(r["status"] == "ok" for r in records["notebooks"])
    # --jobs 0 (auto): on a CPU with 2+ cores the shared runs and the notebooks ran 2+ at a time, one thread each
    jobs = resolve_jobs(0, "cpu", len(records["notebooks"]))
    assert records["jobs"] == jobs and records["threads_per_job"] == 1
    assert (set(records["shared_runs_seconds"]) == {*SHARED_STAGES, "all"}) == (jobs > 1)
    assert {r["notebook"] for r in records["notebooks"]} == {p.stem for p in (ROOT / "notebooks").glob("[0-9]*.ipynb")}
    assert all(r["results"].endswith(f"smoke/{r['notebook']}") for r in records["notebooks"])
    table = (smoke / "04_main_results" / "main_table.md").read_text().splitlines()
    assert table[0] == "Main table (profile smoke, seed 0)" and table[2].startswith("| backbone | method | seeds |")
    assert json.loads((smoke / "data" / "summary.json").read_text())["profile"] == "smoke"
    assert len(list((smoke / "playback").glob("*.html"))) == 1
    for png in smoke.rglob("*.png"):    # every figure written, none under another profile's folder
        assert png.stat().st_size > 1000


@pytest.mark.slow
def test_one_job_runs_the_notebooks_in_this_process_order(tmp_path, monkeypatch):
    """``--jobs 1``: no shared-run phase, the notebooks one after the other, the same records."""
    monkeypatch.setenv("EASYTUNE_THREADS", "1")
    results = tmp_path / "results"
    assert main(["reproduce", "--profile", "smoke", "--device", "cpu", "--results", str(results), "--cache",
                 str(ROOT / ".cache"), "--playbacks", "0", "--notebooks", "03,05", "--jobs", "1"]) == 0
    records = json.loads((results / "smoke" / "notebooks.json").read_text())
    assert records["jobs"] == 1 and "shared_runs_seconds" not in records
    assert [(r["notebook"], r["status"]) for r in records["notebooks"]] == [("03_memory", "ok"), ("05_spl", "ok")]


def test_eta_from_the_last_records():
    notebooks = [Path(f"{name}.ipynb") for name in ("00_a", "01_b", "02_c", "03_d")]
    previous = [{"notebook": "00_a", "seconds": 10.0}, {"notebook": "01_b", "seconds": 30.0},
                {"notebook": "03_d", "seconds": 60.0}, {"notebook": "99_gone", "seconds": 5}]
    expected = expected_seconds(notebooks, previous)
    assert expected == [10.0, 30.0, None, 60.0]
    # nothing run yet: the records as they are, the unknown notebook as the mean known one (100/3)
    assert remaining_estimate(expected, []) == pytest.approx(10 + 30 + 100 / 3 + 60)
    # the first notebook took twice its record: the rest is expected to take twice theirs too
    assert remaining_estimate(expected, [20.0]) == pytest.approx(2 * (30 + 100 / 3 + 60))
    # no records at all: the mean of the notebooks run so far; before any, unknown
    assert remaining_estimate([None] * 4, [8.0, 12.0]) == pytest.approx(20.0)
    assert remaining_estimate([None] * 4, []) is None
    assert remaining_estimate(expected, [10, 30, 40, 60]) == 0


def test_main_table_names_profile_and_seed(tmp_path):
    import pandas as pd

    csv = tmp_path / "main_table.csv"
    pd.DataFrame([{"profile": "quick", "seed": 0, "method": "Base", "r_precision_top1": 0.5}]).to_csv(csv, index=False)
    lines = main_table_markdown(csv).splitlines()
    assert lines[:3] == ["Main table (profile quick, seed 0)", "", "| method | top-1 |"]
