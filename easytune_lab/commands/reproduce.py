"""``easytune reproduce``: the main job behind ``make reproduce``.

Everything goes below ``RESULTS/<profile>/`` (``results/quick/``, ``results/smoke/``, ...), so no profile can
overwrite another's results.

1. Data: the profile's procedural dataset (cached in ``CACHE/data``, see :mod:`easytune_lab.pipeline`) or the user's
   ``--data`` directory, validated with the same checks as ``easytune data check``; a few offline HTML playbacks go to
   ``RESULTS/<profile>/playback/`` and a summary to ``RESULTS/<profile>/data/summary.json``.
2. Claims: every notebook under ``notebooks/`` runs with papermill (parameters ``profile``, ``device``, ``seed``,
   ``out_dir = RESULTS/<profile>/<notebook>``, ``cache``); trained runs are shared through the run cache, so a second
   ``reproduce`` only re-executes the notebooks. Executed copies (with outputs, every figure inline) go to
   ``CACHE/executed/<profile>-seed<seed>/<notebook>.ipynb``, outside git; ``RESULTS/<profile>/notebooks.json``
   records each notebook's status and time. A progress bar counts the notebooks (i of n) with the elapsed time and an
   estimate of the rest from the last recorded times of the same profile. The main table
   (``RESULTS/<profile>/04_main_results/main_table.csv``) is printed at the end.
3. ``--jobs N`` (N > 1): the runs most notebooks share (:data:`easytune_lab.pipeline.SHARED_STAGES`) are built
   first, N at a time, then the notebooks run N at a time (longest first, by the last records), each process with
   cores / N torch threads. The run cache's build lock makes two notebooks that need the same run build it once.
   ``--jobs 0`` (the default, auto) is 1 on a GPU and min(cores, 4) on a CPU: small CPU models use a second thread
   poorly, so two one-thread processes do more per second than one two-thread process
   (``results/quick/bench/jobs.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ..data.check import check_dataset
from ..data.humanml import read_motion
from ..errors import UserError
from ..io import write_json, write_text
from ..pipeline import SHARED_STAGES, workbench
from ..runtime import OutputPath, SEED, available_cores, check_profile, default_threads, integer
from ..viz.playback import write_motion_html

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
MAIN_TABLE = Path("04_main_results") / "main_table.csv"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="the main job: data, checks, playbacks, and every claim notebook")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--results", type=OutputPath(directory=True), default=Path("results"), 
                   help="results root (default results/); this profile's results go to RESULTS/<profile>/")
    p.add_argument("--cache", type=OutputPath(directory=True), default=Path(".cache"), help="cache of datasets and trained runs")
    p.add_argument("--data", type=Path, default=None,
                   help="an existing HumanML3D/KIT-format directory to use instead of the procedural dataset")
    p.add_argument("--playbacks", type=integer(0, 10000), default=3, help="number of HTML playbacks to write")
    p.add_argument("--notebooks", default="all",
                   help="comma-separated notebook names or number prefixes to run (e.g. 03,04), 'all' or 'none'")
    p.add_argument("--jobs", type=integer(0, 256), default=0,
                   help="processes that build the shared runs and run the notebooks at once, each with cores/JOBS "
                        f"torch threads; 0 (default): auto, 1 on a GPU and min(cores, {MAX_AUTO_JOBS}) on a CPU")
    p.set_defaults(func=cmd_reproduce, lock="results")


#: ``--jobs 0`` (auto) on a CPU: at most this many processes (measured on 2 cores only,
#: ``results/quick/bench/jobs.json``).
MAX_AUTO_JOBS = 4


def resolve_jobs(jobs: int, device_type: str, tasks: int) -> int:
    """Processes to run ``tasks`` notebooks with: ``jobs``, or for 0 (auto) 1 on CUDA and min(available cores,
    :data:`MAX_AUTO_JOBS`) on a CPU; never more than ``tasks``."""
    if jobs == 0:
        jobs = 1 if device_type == "cuda" else min(available_cores(), MAX_AUTO_JOBS)
    return max(1, min(int(jobs), tasks))


@contextlib.contextmanager
def threads_per_job(jobs: int):
    """Give the processes started in the block cores / ``jobs`` torch threads (``EASYTUNE_THREADS`` and
    ``OMP_NUM_THREADS``), unless the user set them; yields the thread count."""
    if jobs <= 1 or any(os.environ.get(name, "").strip() for name in ("EASYTUNE_THREADS", "OMP_NUM_THREADS")):
        yield default_threads()
        return
    threads = max(1, available_cores() // jobs)
    saved = {name: os.environ.get(name) for name in ("EASYTUNE_THREADS", "OMP_NUM_THREADS")}
    os.environ.update({name: str(threads) for name in saved})
    try:
        yield threads
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


def kernel_manager_class():
    """The Jupyter kernel manager papermill runs notebooks with: local IPC sockets instead of TCP ports where the
    platform has them (the kernel then has no reason to warn that it is "running over TCP without encryption",
    and nothing listens on a network port); plain TCP elsewhere (Windows).

    Each kernel's sockets get their own path in the temporary directory: jupyter_client's default is
    ``kernel-ipc-N`` in the working directory, where two kernels started at once from the same folder (two
    notebooks of ``--jobs 2``) would bind the same files and read each other's messages."""
    from jupyter_client.manager import KernelManager
    from traitlets import CaselessStrEnum, default

    if os.name != "posix":
        return KernelManager

    class IPCKernelManager(KernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _unique_ipc_path(self) -> str:
            return os.path.join(tempfile.gettempdir(), f"easytune-kernel-{os.getpid()}-{uuid.uuid4().hex[:12]}")

    return IPCKernelManager


def execute_notebook(notebook: Path, executed: Path, parameters: dict, progress_bar: bool | dict = False) -> None:
    """Run ``notebook`` with papermill (kernel ``python3``, working directory: the notebook's folder) into
    ``executed``; raises ``papermill.PapermillExecutionError`` when a cell fails."""
    import papermill

    papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, cwd=str(Path(notebook).parent),
                               progress_bar=progress_bar, kernel_name="python3",
                               kernel_manager_class=kernel_manager_class())


def expected_seconds(notebooks: list[Path], previous: list[dict]) -> list[float | None]:
    """Each notebook's time in ``previous`` records (``notebooks.json`` of the same profile), None where unknown."""
    last = {r.get("notebook"): r.get("seconds") for r in previous if isinstance(r, dict)}
    return [float(last[nb.stem]) if isinstance(last.get(nb.stem), (int, float)) else None for nb in notebooks]


def remaining_estimate(expected: list[float | None], done: list[float]) -> float | None:
    """Seconds left: the recorded times of the notebooks not yet run, scaled by how this run compares with the
    records so far (unknown notebooks count as the mean known one); None when nothing is known."""
    known = [e for e in expected if e is not None]
    if not known:
        if not done:
            return None
        return sum(done) / len(done) * (len(expected) - len(done))
    fill = sum(known) / len(known)
    filled = [fill if e is None else e for e in expected]
    ran = filled[:len(done)]
    scale = sum(done) / sum(ran) if done and sum(ran) > 0 else 1.0
    return scale * sum(filled[len(done):])


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _run_one(nb: Path, executed: Path, params: dict, progress_bar: bool | dict, results_dir: str) -> dict:
    """Execute one notebook; its record (status, seconds, executed copy, results folder). Runs in a worker
    process under ``--jobs`` > 1, so it only returns data."""
    import papermill

    start = time.perf_counter()
    record = {"notebook": nb.stem, "executed": str(executed), "results": results_dir}
    try:
        execute_notebook(nb, executed, params, progress_bar=progress_bar)
        record["status"] = "ok"
    except papermill.PapermillExecutionError as exc:
        record["status"] = "failed"
        record["error"] = f"{exc.ename}: {exc.evalue}"[:500]
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def _build_stage(profile: str, seed: int, device: str, cache: str, data: str | None, name: str) -> tuple[str, float]:
    """Worker of :func:`build_shared_stages`: build (or find) one shared run; its name and seconds."""
    torch.set_num_threads(default_threads())
    start = time.perf_counter()
    workbench(profile, seed=seed, device=device, cache=cache, data=data).stage(name)
    return name, round(time.perf_counter() - start, 1)


def _pool(jobs: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent has torch's thread pools and tqdm's lock, which a forked child must not inherit
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def build_shared_stages(jobs: int, profile: str, seed: int, device: str, cache: Path, data: Path | None,
                        stages: tuple[str, ...] = SHARED_STAGES) -> dict[str, float]:
    """Build the runs most notebooks share, ``jobs`` at a time (a stage that starts from another waits for it on
    the run's build lock); seconds per stage (about 0 for one already cached)."""
    from tqdm.auto import tqdm

    seconds = {}
    bar = tqdm(total=len(stages), desc=f"shared runs ({jobs} at a time)", unit="run",
               bar_format="{desc}: {n_fmt}/{total_fmt} |{bar:20}| elapsed {elapsed}{postfix}")
    with _pool(jobs) as pool:
        futures = [pool.submit(_build_stage, profile, seed, device, str(cache.resolve()),
                               str(Path(data).resolve()) if data is not None else None, name) for name in stages]
        for future in as_completed(futures):
            name, took = future.result()
            seconds[name] = took
            bar.update(1)
            bar.write(f"[shared run] {name}: {took} s")
    bar.close()
    return {name: seconds[name] for name in stages}


def run_notebooks(notebooks: list[Path], results: Path, cache: Path, profile: str, device: str, seed: int,
                  data: Path | None = None, previous: list[dict] = (), jobs: int = 1) -> list[dict]:
    """Execute each notebook with papermill; one record per notebook (status, seconds, executed copy), in
    notebook order.

    ``results`` is this profile's folder (``RESULTS/<profile>``). A tqdm bar counts the notebooks with the elapsed
    time and an ETA from ``previous`` records (see :func:`remaining_estimate`; with ``jobs`` > 1 divided by the
    jobs); with one job papermill's own bar counts the cells of the notebook that is running. ``jobs`` > 1: that
    many worker processes, the longest notebooks (by ``previous``; those without a record first) first."""
    from tqdm.auto import tqdm

    executed_dir = cache / "executed" / f"{profile}-seed{seed}"
    expected = expected_seconds(notebooks, list(previous))
    known = [e for e in expected if e is not None]
    # longest first, and a notebook with no record before all: it may be the longest, and a long one started last
    # leaves the other workers idle at the end
    order = sorted(range(len(notebooks)), key=lambda i: -(expected[i] if expected[i] is not None else float("inf"))) \
        if jobs > 1 else list(range(len(notebooks)))
    records, done = {}, []
    bar = tqdm(total=len(notebooks), desc=f"reproduce {profile}", unit="notebook", position=0,
               bar_format="{desc}: {n_fmt}/{total_fmt} notebooks |{bar:20}| elapsed {elapsed}{postfix}")

    def job(i: int) -> tuple:
        nb = notebooks[i]
        out_dir = (results / nb.stem).resolve()
        executed = executed_dir / nb.name
        executed.parent.mkdir(parents=True, exist_ok=True)
        params = {"profile": profile, "device": device, "seed": seed, "out_dir": str(out_dir),
                  "cache": str(cache.resolve())}
        if data is not None:
            params["data"] = str(Path(data).resolve())
        if jobs == 1:
            bar.write(f"[notebook {i + 1}/{len(notebooks)}] {nb.stem} ...")
        progress = {"leave": False, "position": 1, "desc": nb.stem} if jobs == 1 else False
        return nb, executed, params, progress, _shown(out_dir)

    def finish(i: int, record: dict, running: list[str]) -> None:
        records[i] = record
        done.append(record["seconds"])
        bar.update(1)
        bar.write(f"[notebook {i + 1}/{len(notebooks)}] {record['notebook']}: {record['status']} in "
                  f"{record['seconds']} s" + (f" ({record['error']})" if "error" in record else ""))
        eta = remaining_estimate([expected[k] for k in order], [records[k]["seconds"] for k in order if k in records])
        bar.set_postfix_str((f"now {', '.join(running)}, " if running else "")
                            + f"ETA {_clock(eta / jobs if eta is not None else None)}")

    bar.set_postfix_str(f"ETA {_clock(remaining_estimate(expected, []) / jobs if known else None)}"
                        + (" (from the last records)" if known else ""))
    if jobs == 1:
        for i in order:
            bar.set_postfix_str(f"now {notebooks[i].stem}, ETA {_clock(remaining_estimate(expected, done))}"
                                + (" (from the last records)" if known else ""))
            finish(i, _run_one(*job(i)), [])
    else:
        bar.write(f"[notebooks] {jobs} at a time, longest first: {', '.join(notebooks[i].stem for i in order)}")
        with _pool(jobs) as pool:
            futures = {pool.submit(_run_one, *job(i)): i for i in order}
            for future in as_completed(futures):
                i = futures[future]
                records[i] = None
                # the workers take the queue in order: the running ones are the first unfinished ones
                finish(i, future.result(), [notebooks[k].stem for k in order if k not in records][:jobs])
    bar.set_postfix_str("done")
    bar.close()
    return [records[i] for i in range(len(notebooks))]


def _records(path: Path, profile: str, seed: int) -> list[dict]:
    """The per-notebook records in ``path`` (``notebooks.json``) if they are of ``profile`` and ``seed``, else []."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict) or old.get("profile") != profile or old.get("seed") != seed:
        return []
    return [r for r in old.get("notebooks", []) if isinstance(r, dict) and "notebook" in r]


def merge_records(path: Path, records: list[dict], profile: str, seed: int) -> list[dict]:
    """``records`` of this invocation, plus the records in ``path`` of notebooks it did not run (same profile and
    seed only), in notebook order: a re-run of some notebooks keeps the others' latest status."""
    kept = {r["notebook"]: r for r in _records(path, profile, seed)}
    kept.update({r["notebook"]: r for r in records})
    return [kept[name] for name in sorted(kept)]


MAIN_COLUMNS = {"backbone": "backbone", "method": "method", "seeds": "seeds", "r_precision_top1": "top-1",
                "r_precision_top2": "top-2", "r_precision_top3": "top-3", "fid": "FID", "mm_dist": "MM-Dist",
                "diversity": "Diversity", "oracle_accuracy": "oracle", "peak_memory_mib": "peak MiB",
                "train_seconds": "train s"}
_TEXT_COLUMNS = ("backbone", "method", "seeds")


def main_table_markdown(csv_path: Path) -> str:
    """The main table (``main_table.csv``) as a Markdown table, 3 decimals (peak memory and time: 1), a value with a
    ``<column>_ci95`` column as "mean ± half-width" (the 95 % interval over fine-tuning seeds), under a line naming
    its profile and seed (the CSV's ``profile``/``seed`` columns)."""
    import pandas as pd

    table = pd.read_csv(csv_path)
    cols = [c for c in MAIN_COLUMNS if c in table]
    named = [f"{key} {', '.join(str(v) for v in table[key].unique())}" for key in ("profile", "seed") if key in table]
    head = [f"Main table ({', '.join(named)})", ""] if named else []
    lines = head + ["| " + " | ".join(MAIN_COLUMNS[c] for c in cols) + " |", "|" + "---|" * len(cols)]

    def cell(row, c: str) -> str:
        if c in _TEXT_COLUMNS:
            return str(row[c])
        if pd.isna(row[c]):
            return ""
        digits = 1 if c in ("peak_memory_mib", "train_seconds") else 3
        text = f"{row[c]:.{digits}f}"
        half = row.get(c + "_ci95")
        return text if half is None or pd.isna(half) else f"{text} ± {half:.{digits}f}"

    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(row, c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def print_main_table(results: Path) -> None:
    """Print the main table and write it as Markdown beside the CSV (``main_table.md``, what the README shows)."""
    path = results / MAIN_TABLE
    if not path.is_file():
        print(f"[main table] {path} not written")
        return
    markdown = main_table_markdown(path)
    write_text(path.with_suffix(".md"), markdown)
    print(f"[main table] {path}")
    print(markdown, end="")


def cmd_reproduce(args: argparse.Namespace) -> int:
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

    results = args.results / args.profile
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

    previous = _records(results / "notebooks.json", args.profile, args.seed)
    jobs = resolve_jobs(args.jobs, wb.torch_device.type, len(notebooks))
    shared = {}
    with threads_per_job(jobs) as threads:
        if jobs > 1:
            print(f"[jobs] {jobs} processes with {threads} torch thread(s) each")
            if args.notebooks == "all":
                start = time.perf_counter()
                shared = build_shared_stages(jobs, args.profile, args.seed, args.device, args.cache, args.data)
                shared["all"] = round(time.perf_counter() - start, 1)
        records = run_notebooks(notebooks, results, args.cache, args.profile, args.device, args.seed, args.data,
                                previous=previous, jobs=jobs)
    if records:
        write_json(results / "notebooks.json", {"profile": args.profile, "seed": args.seed, "device": args.device,
                                                "jobs": jobs, "threads_per_job": threads,
                                                **({"shared_runs_seconds": shared} if shared else {}),
                                                "notebooks": merge_records(results / "notebooks.json", records,
                                                                           args.profile, args.seed)})
    if any(r["notebook"] == MAIN_TABLE.parts[0] and r["status"] == "ok" for r in records):
        print_main_table(results)  # only a table this invocation wrote, never one left by another profile
    failed = [r["notebook"] for r in records if r["status"] != "ok"]
    if failed:
        raise UserError(f"{len(failed)} notebook(s) failed: {', '.join(failed)} "
                        f"(executed copies with the error under {args.cache / 'executed'})")
    return 0
