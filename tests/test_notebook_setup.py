"""The notebooks' setup cell: easytune_lab.notebook's names and pipeline.notebook_setup."""

from __future__ import annotations

from pathlib import Path

import easytune_lab.notebook as notebook
from easytune_lab import pipeline
from easytune_lab.viz.plots import run_label


def test_notebook_setup_builds_the_workbench_and_labels_figures(monkeypatch):
    calls = []

    def fake_workbench(profile, **kwargs):
        calls.append((profile, kwargs))
        return "wb", Path("out")

    monkeypatch.setattr(pipeline, "notebook_workbench", fake_workbench)
    setup = pipeline.notebook_setup("03_memory", "quick", seed=4, device="cpu", cache="c", data="d")
    wb, out, figure_label = setup
    assert (wb, out) == ("wb", Path("out"))
    assert figure_label == run_label("quick", 4, "03_memory") == "03_memory · profile quick · seed 4"
    assert calls == [("quick", {"seed": 4, "device": "cpu", "cache": "c", "data": "d",
                                "out_dir": "results/{profile}/03_memory", "progress": True})]
    pipeline.notebook_setup("03_memory", "smoke", out_dir="elsewhere/{profile}", progress=False)
    assert calls[-1][1]["out_dir"] == "elsewhere/{profile}" and calls[-1][1]["progress"] is False


def test_star_import_gives_the_setup_cell_its_names():
    namespace: dict = {}
    exec("from easytune_lab.notebook import *", namespace)
    for name in ("json", "np", "pd", "torch", "write_json", "notebook_setup", "Series", "bar_chart", "line_plot",
                 "new_figure", "run_label", "show_figure", "write_table"):
        assert namespace[name] is getattr(notebook, name), name
    assert namespace["notebook_setup"] is pipeline.notebook_setup
