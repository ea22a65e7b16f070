"""The claim notebooks run with papermill parameters, write what they promise and show it."""

import json
import re
import subprocess
import sys
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
                 f'out_dir: str = "results/{{profile}}/{path.stem}"'):
        assert line in source, f"{path.name}: parameters cell lacks {line!r}"
    last = json.loads(path.read_text())["cells"][-1]
    assert "assert " in "".join(last["source"]), f"{path.name}: does not end with an assertion cell"




def _code(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_figure_is_shown_and_every_table_names_its_run(path):
    """Each PNG a notebook writes goes through show_figure (label with profile and seed, inline display); each CSV
    of results through write_table (profile and seed columns). Read from the notebook's own source."""
    source = "\n".join(_code(path))
    pngs = re.findall(r'out / "([^"]+\.png)"', source)
    for png in pngs:
        assert re.search(r'show_figure\(\w+, out / "%s", figure_label\)' % re.escape(png), source), f"{path.name}: {png}"
    assert "savefig" not in source and "plt." not in source, f"{path.name}: a figure bypasses show_figure"
    for csv in re.findall(r'out / "([^"]+\.csv)"', source):
        if csv != "paper_reference_claims.csv":   # the paper's claims, not our numbers
            assert re.search(r'write_table\(\w+, out / "%s", profile, seed' % re.escape(csv), source), \
                f"{path.name}: {csv} is not written with write_table"
    # notebook_setup labels the figures with run_label(profile, seed, <notebook>) (tests/test_notebook_setup.py)
    assert f'wb, out, figure_label = notebook_setup("{path.stem}", profile, seed=seed,' in source
    # assigned once, never rebound by a loop or a later cell (a figure would name something else)
    assert len(re.findall(r"\bfigure_label\s*=[^=]|\bfigure_label\s*,[^\n]*=", source)) == 1, path.name
    assert not re.search(r"^\s*for\b[^\n]*\bfigure_label\b", source, re.M), path.name


def test_headline_command_shows_the_memory_figure(tmp_path):
    """The README's headline command (papermill CLI, notebook 03, -p steps 50) at the notebook's default profile
    (smoke): the executed notebook embeds the memory figure as image/png, and the files hold the claim."""
    pytest.importorskip("papermill")
    out_dir, executed = tmp_path / "memory", tmp_path / "out.ipynb"
    env = {**__import__("os").environ, "EASYTUNE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/03_memory.ipynb", str(executed),
                           "-p", "steps", "50", "-p", "out_dir", str(out_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = json.loads(executed.read_text())["cells"]
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1, [o.get("data", {}).keys() for c in cells for o in c.get("outputs", [])]
    assert not any("<Figure size" in "".join(o.get("data", {}).get("text/plain", ""))
                   for c in cells for o in c.get("outputs", []))
    result = json.loads((out_dir / "memory.json").read_text())
    assert (result["profile"], result["seed"], result["steps"], result["sweep"]) == ("smoke", 0, 50, [12, 25, 50])
    rows = {(r["method"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {(m, t) for m in result["methods"] for t in (12, 25, 50)}
    # the claim, read back from the file: EasyTune flat in T, DRaFT-T growing with T
    assert rows[("easytune", 50)]["peak_bytes"] == pytest.approx(rows[("easytune", 12)]["peak_bytes"], rel=0.25)
    assert rows[("draft", 50)]["peak_bytes"] > 2 * rows[("draft", 12)]["peak_bytes"]
    assert rows[("draft", 50)]["graph_calls"] == 50 and rows[("easytune", 50)]["graph_calls"] == 50
    table = (out_dir / "memory.csv").read_text().splitlines()
    assert table[0].startswith("profile,seed,") and table[1].startswith("smoke,0,")
    assert (out_dir / "memory.png").stat().st_size > 1000


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_with_its_type_and_help(path):
    """`papermill --help-notebook` (papermill.inspect_notebook) parses every line of the parameters cell: the names it
    finds are the cell's names, each with a type and a help comment."""
    papermill = pytest.importorskip("papermill")
    names = re.findall(r"^(\w+)\s*:", _params_cell(path), re.M)
    found = papermill.inspect_notebook(str(path))
    assert list(found) == names, path.name
    for name, spec in found.items():
        assert spec["inferred_type_name"] != "None" and spec["help"], (path.name, name, spec)
