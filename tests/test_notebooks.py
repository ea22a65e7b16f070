"""The claim notebooks run with papermill parameters and write what they promise."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _params_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), f"{path.name}: first code cell is not tagged"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path.name}: has outputs"
    return "".join(code[0]["source"])


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_conventions(path):
    source = _params_cell(path)
    for line in ("seed: int = 0", 'device: str = "auto"', 'profile: str = "smoke"',
                 f'out_dir: str = "results/{path.stem}"'):
        assert line in source, f"{path.name}: parameters cell lacks {line!r}"
    last = json.loads(path.read_text())["cells"][-1]
    assert "assert " in "".join(last["source"]), f"{path.name}: does not end with an assertion cell"


def test_memory_notebook_with_parameters(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("EASYTUNE_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out_dir = tmp_path / "memory"
    papermill.execute_notebook(str(NOTEBOOKS / "03_memory.ipynb"), str(tmp_path / "executed.ipynb"),
                               parameters={"steps": 20, "methods": "easytune,draft,refl", "out_dir": str(out_dir),
                                           "device": "cpu"},
                               cwd=str(NOTEBOOKS), progress_bar=False, kernel_name="python3")
    result = json.loads((out_dir / "memory.json").read_text())
    assert result["steps"] == 20 and result["sweep"] == [5, 10, 20]
    assert result["methods"] == ["easytune", "draft", "refl"]
    rows = {(r["method"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {(m, t) for m in result["methods"] for t in (5, 10, 20)}
    # the claim, read back from the file: EasyTune flat in T, DRaFT-T growing with T
    assert rows[("easytune", 20)]["peak_bytes"] == pytest.approx(rows[("easytune", 5)]["peak_bytes"], rel=0.25)
    assert rows[("draft", 20)]["peak_bytes"] > 2 * rows[("draft", 5)]["peak_bytes"]
    assert rows[("draft", 20)]["graph_calls"] == 20 and rows[("easytune", 20)]["graph_calls"] == 20
    assert (out_dir / "memory.csv").is_file() and (out_dir / "memory.png").stat().st_size > 1000
