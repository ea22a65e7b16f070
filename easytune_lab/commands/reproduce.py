"""``easytune reproduce``: the main job behind ``make reproduce``.

1. Data: the profile's procedural dataset (cached in ``CACHE/data``, see :mod:`easytune_lab.pipeline`) or the user's
   ``--data`` directory, validated with the same checks as ``easytune data check``; a few offline HTML playbacks go to
   ``RESULTS/playback/`` and a summary to ``RESULTS/data/summary.json``.
2. Claims: every notebook under ``notebooks/`` runs with papermill (parameters ``profile``, ``device``, ``seed``,
   ``out_dir = RESULTS/<notebook>``, ``cache``); trained runs are shared through the run cache, so a second
   ``reproduce`` only re-executes the notebooks. Executed copies (with outputs) go to
   ``CACHE/executed/<profile>-seed<seed>/<notebook>.ipynb``, outside git; ``RESULTS/notebooks.json`` records each
   notebook's status and time. The main table (``RESULTS/04_main_results/main_table.csv``) is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError
from ..runtime import OutputPath, SEED, check_profile, integer
from ..io import write_json

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
MAIN_TABLE = Path("04_main_results") / "main_table.csv"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="the main job: data, checks, playbacks, and every claim notebook")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--results", type=OutputPath(directory=True), default=Path("results"), help="results directory (default results/)")
    p.add_argument("--cache", type=OutputPath(directory=True), default=Path(".cache"), help="cache of datasets and trained runs")
    p.add_argument("--data", type=Path, default=None,
                   help="an existing HumanML3D/KIT-format directory to use instead of the procedural dataset")
    p.add_argument("--playbacks", type=integer(0, 10000), default=3, help="number of HTML playbacks to write")
    p.add_argument("--notebooks", default="all",
                   help="comma-separated notebook names or number prefixes to run (e.g. 03,04), 'all' or 'none'")
    p.set_defaults(func=cmd_reproduce, lock="results")


def select_notebooks(spec: str, folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks named by ``spec``: ``all``, ``none``, or comma-separated stems / number prefixes."""
    available = sorted(folder.glob("[0-9]*.ipynb"))
    if spec == "none":
        return []
    if spec == "all":
        return available
    chosen = []
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        hits = [nb for nb in available if nb.stem == part or nb.stem.split("_")[0] == part]
        if not hits:
            names = ", ".join(nb.stem for nb in available)
            raise UserError(f"--notebooks: no notebook '{part}' in {folder} (have {names})")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it (records stay valid in any checkout)."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_notebooks(notebooks: list[Path], results: Path, cache: Path, profile: str, device: str, seed: int,
                  data: Path | None = None) -> list[dict]:
    """Execute each notebook with papermill; one record per notebook (status, seconds, executed copy)."""
    import papermill

    executed_dir = cache / "executed" / f"{profile}-seed{seed}"
    records = []
    for nb in notebooks:
        out_dir = (results / nb.stem).resolve()
        executed = executed_dir / nb.name
        executed.parent.mkdir(parents=True, exist_ok=True)
        params = {"profile": profile, "device": device, "seed": seed, "out_dir": str(out_dir),
                  "cache": str(cache.resolve())}
        if data is not None:
            params["data"] = str(Path(data).resolve())
        print(f"[notebook] {nb.stem} ...", flush=True)
        start = time.perf_counter()
        record = {"notebook": nb.stem, "executed": str(executed), "results": _shown(out_dir)}
        try:
            papermill.execute_notebook(str(nb), str(executed), parameters=params, cwd=str(nb.parent),
                                       progress_bar=False, kernel_name="python3")
            record["status"] = "ok"
        except papermill.PapermillExecutionError as exc:
            record["status"] = "failed"
            record["error"] = f"{exc.ename}: {exc.evalue}"[:500]
        record["seconds"] = round(time.perf_counter() - start, 1)
        print(f"[notebook] {nb.stem}: {record['status']} in {record['seconds']} s"
              + (f" ({record['error']})" if "error" in record else ""), flush=True)
        records.append(record)
    return records


def merge_records(path: Path, records: list[dict], profile: str, seed: int) -> list[dict]:
    """``records`` of this invocation, plus the records in ``path`` of notebooks it did not run (same profile and
    seed only), in notebook order: a re-run of some notebooks keeps the others' latest status."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    kept = {}
    if old.get("profile") == profile and old.get("seed") == seed:
        kept = {r["notebook"]: r for r in old.get("notebooks", []) if isinstance(r, dict) and "notebook" in r}
    kept.update({r["notebook"]: r for r in records})
    return [kept[name] for name in sorted(kept)]


MAIN_COLUMNS = {"method": "method", "r_precision_top1": "top-1", "r_precision_top2": "top-2",
                "r_precision_top3": "top-3", "fid": "FID", "mm_dist": "MM-Dist", "diversity": "Diversity",
                "oracle_accuracy": "oracle", "peak_memory_mib": "peak MiB", "train_seconds": "train s"}


def main_table_markdown(csv_path: Path) -> str:
    """The main table (``main_table.csv``) as a Markdown table, 3 decimals (peak memory and time: 1)."""
    import pandas as pd

    table = pd.read_csv(csv_path)
    cols = [c for c in MAIN_COLUMNS if c in table]
    lines = ["| " + " | ".join(MAIN_COLUMNS[c] for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table[cols].iterrows():
        cells = [str(row[c]) if c == "method" else f"{row[c]:.1f}" if c in ("peak_memory_mib", "train_seconds")
                 else f"{row[c]:.3f}" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_main_table(results: Path) -> None:
    """Print the main table and write it as Markdown beside the CSV (``main_table.md``, what the README shows)."""
    from ..io import write_text

    path = results / MAIN_TABLE
    if not path.is_file():
        print(f"[main table] {path} not written")
        return
    markdown = main_table_markdown(path)
    write_text(path.with_suffix(".md"), markdown)
    print(f"[main table] {path}")
    print(markdown, end="")


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset
    from ..data.humanml import read_motion
    from ..pipeline import workbench
    from ..viz.playback import write_motion_html

    check_profile(args.profile)
    notebooks = select_notebooks(args.notebooks)
    wb = workbench(args.profile, seed=args.seed, device=args.device, cache=args.cache, data=args.data,
                   progress=True)
    root = wb.data
    print(f"[data] {root}")

    report = check_dataset(root)
    if report.problems:
        for line in report.problems:
            print(line)
        raise UserError(f"{root}: dataset check found {len(report.problems)} problem(s)")
    print(report.summary())

    results = args.results
    test_ids = [line.strip() for line in (root / "test.txt").read_text().splitlines() if line.strip()]
    written = []
    for motion_id in test_ids[: args.playbacks]:
        features, captions = read_motion(root, motion_id)
        out = results / "playback" / f"{motion_id}.html"
        write_motion_html([features], [captions[0] if captions else motion_id], out, title=f"{root.name}/{motion_id}")
        written.append({"id": motion_id, "caption": captions[0] if captions else "", "html": str(out)})
        print(f"[playback] {out}")

    dataset_info = {}
    if (root / "dataset.json").is_file():
        dataset_info = json.loads((root / "dataset.json").read_text())
    write_json(results / "data" / "summary.json", {
        "dataset": str(root),
        "profile": args.profile,
        "generator": dataset_info,
        "check": report.as_dict() if hasattr(report, "as_dict") else {"problems": 0},
        "playbacks": written,
    })

    records = run_notebooks(notebooks, results, args.cache, args.profile, args.device, args.seed, args.data)
    if records:
        write_json(results / "notebooks.json", {"profile": args.profile, "seed": args.seed, "device": args.device,
                                                "notebooks": merge_records(results / "notebooks.json", records,
                                                                           args.profile, args.seed)})
    if any(r["notebook"] == MAIN_TABLE.parts[0] and r["status"] == "ok" for r in records):
        print_main_table(results)  # only a table this invocation wrote, never one left by another profile
    failed = [r["notebook"] for r in records if r["status"] != "ok"]
    if failed:
        raise UserError(f"{len(failed)} notebook(s) failed: {', '.join(failed)} "
                        f"(executed copies with the error under {args.cache / 'executed'})")
    return 0
