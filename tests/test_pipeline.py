"""The run cache: reuse of complete runs, new runs for changed configurations, no half-written runs."""

import json

import pytest
import torch

from easytune_lab import pipeline
from easytune_lab.errors import UserError


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EASYTUNE_THREADS", "1")      # the reward stage sets torch's threads from it
    torch.set_num_threads(1)
    yield pipeline.workbench("smoke", seed=0, device="cpu", cache=tmp_path_factory.mktemp("cache"))
    mp.undo()


def _runs(wb, prefix):
    return sorted(p.name for p in (wb.cache / "runs").iterdir() if p.name.startswith(prefix))


def test_second_call_reuses_the_run(wb):
    first = wb.finetune("easytune", reward="plain", iterations=1)
    built = list(wb.built)
    mtime = (first / "weights.safetensors").stat().st_mtime_ns
    again = wb.finetune("easytune", reward="plain", iterations=1)
    assert again == first
    assert wb.built == built                       # nothing was trained the second time
    assert (first / "weights.safetensors").stat().st_mtime_ns == mtime
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["cache_key"]["config"]["iterations"] == 1 and manifest["finetune"]["iterations"] == 1
    assert first.name == f"finetune-easytune-{pipeline.config_hash(manifest['cache_key'])}"
    # a fresh workbench object on the same cache finds it too
    other = pipeline.workbench("smoke", seed=0, device="cpu", cache=wb.cache)
    assert other.finetune("easytune", reward="plain", iterations=1) == first and other.built == []


def test_changed_override_or_seed_gives_a_new_run(wb):
    one = wb.finetune("easytune", reward="plain", iterations=1)
    two = wb.finetune("easytune", reward="plain", iterations=2)
    assert one != two and two.name.startswith("finetune-easytune-")
    # the same resolved configuration asked for another way is the same run
    steps = wb.finetune_config("easytune").sample_steps
    assert wb.finetune("easytune", reward="plain", iterations=1, sample_steps=steps) == one
    assert json.loads((two / "metrics.json").read_text())["iterations"] == 2
    seed1 = pipeline.workbench("smoke", seed=1, device="cpu", cache=wb.cache)
    assert seed1.run_dir("reward", seed1._key("reward", noise_aware=False)) != wb.reward()
    # the parent's hash is part of the key: a different reward gives a different fine-tuning run
    assert wb.finetune("easytune", reward="spl", iterations=1) != one


def test_uniform_step_weights_reuse_the_unweighted_run(wb):
    """Weighted training with uniform weights is every step unweighted (all lr scales exactly 1): one cached run."""
    import dataclasses

    import numpy as np

    from easytune_lab.finetune.policy import make_policy

    uniform = wb.finetune_config("easytune", train_steps="weighted", weighting="uniform")
    assert dataclasses.asdict(uniform) == dataclasses.asdict(wb.finetune_config("easytune"))
    rng = np.random.default_rng(0)
    plans = make_policy("easytune", dataclasses.replace(uniform.policy, train_steps="weighted")).plan(20, rng)
    assert plans == make_policy("easytune", uniform.policy).plan(20, rng)
    assert wb.finetune_config("easytune", train_steps="weighted", weighting="late").policy.train_steps == "weighted"
    one = wb.finetune("easytune", reward="plain", iterations=1)
    assert wb.finetune("easytune", reward="plain", iterations=1, train_steps="weighted", weighting="uniform") == one


def test_interrupted_build_leaves_no_run(wb, monkeypatch):
    def interrupted(cfg, base, reward, data, out, device, **kw):
        out.mkdir(parents=True)
        (out / "manifest.json").write_text(json.dumps({"kind": "backbone", "status": "running"}))
        (out / "weights.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    before = _runs(wb, "finetune-draft")
    monkeypatch.setattr(pipeline, "run_finetune", interrupted)   # the name the workbench calls
    with pytest.raises(KeyboardInterrupt):
        wb.finetune("draft", reward="plain", iterations=1)
    assert _runs(wb, "finetune-draft") == before == []
    assert not [p for p in (wb.cache / "runs").iterdir() if ".tmp" in p.name]
    monkeypatch.undo()
    run = wb.finetune("draft", reward="plain", iterations=1)
    assert pipeline.is_complete(run)


def test_incomplete_run_is_rebuilt(wb):
    run = wb.reward()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert not pipeline.is_complete(run)
    n = len(wb.built)
    assert wb.reward() == run and pipeline.is_complete(run)
    assert len(wb.built) == n + 1


def test_user_data_identity_and_errors(tmp_path, wb):
    with pytest.raises(UserError, match="train.txt"):
        pipeline.workbench("smoke", device="cpu", cache=tmp_path, data=tmp_path)
    with pytest.raises(UserError, match="profile"):
        pipeline.workbench("huge", device="cpu", cache=tmp_path)
    with pytest.raises(UserError, match="backbone"):
        wb.backbone("gan")
    ident = pipeline.dataset_identity(wb.data)
    assert ident["kind"] == "procedural" and len(ident["digest"]) == 16


def test_stale_temporary_of_a_dead_build_is_removed(wb):
    key = wb.reward_key(noise_aware=False)
    final = wb.run_dir("reward", key)
    stale = final.parent / f".{final.name}.tmp-999999999"        # no such process
    stale.mkdir(parents=True)
    (stale / "weights.safetensors").write_bytes(b"half")
    manifest = json.loads((wb.reward() / "manifest.json").read_text())
    manifest["status"] = "running"                               # force a rebuild of this key
    (final / "manifest.json").write_text(json.dumps(manifest))
    assert wb.reward() == final and pipeline.is_complete(final)
    assert not stale.exists()


def test_reproduce_selects_notebooks():
    from easytune_lab.commands.reproduce import NOTEBOOK_DIR, select_notebooks

    names = [p.stem for p in select_notebooks("all")]
    assert names == sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9]*.ipynb")) and "03_memory" in names
    assert [p.stem for p in select_notebooks("04,03_memory,04")] == ["04_main_results", "03_memory"]
    assert select_notebooks("none") == []
    with pytest.raises(UserError, match="--notebooks: no notebook '99'"):
        select_notebooks("99")


def test_main_table_markdown_has_one_row_per_method(tmp_path):
    import pandas as pd

    from easytune_lab.commands.reproduce import main_table_markdown

    csv = tmp_path / "main_table.csv"
    pd.DataFrame([{"method": "Base", "r_precision_top1": 0.16712, "fid": 41.8581, "peak_memory_mib": 0.0,
                   "train_seconds": 0.0, "run": "x"},
                  {"method": "EasyTune-step", "r_precision_top1": 0.2, "fid": 39.0, "peak_memory_mib": 12.345,
                   "train_seconds": 90.26, "run": "y"}]).to_csv(csv, index=False)
    lines = main_table_markdown(csv).splitlines()
    assert lines[0] == "| method | top-1 | FID | peak MiB | train s |" and lines[1] == "|---|---|---|---|---|"
    assert lines[2:] == ["| Base | 0.167 | 41.858 | 0.0 | 0.0 |", "| EasyTune-step | 0.200 | 39.000 | 12.3 | 90.3 |"]


def test_main_table_markdown_gives_intervals_over_seeds(tmp_path):
    import pandas as pd

    from easytune_lab.commands.reproduce import main_table_markdown

    csv = tmp_path / "main_table.csv"
    pd.DataFrame([{"backbone": "mld", "method": "Base", "seeds": 1, "fid": 4.0, "fid_ci95": None},
                  {"backbone": "mld", "method": "EasyTune-step", "seeds": 3, "fid": 3.25, "fid_ci95": 0.5}]
                 ).to_csv(csv, index=False)
    lines = main_table_markdown(csv).splitlines()
    assert lines[0] == "| backbone | method | seeds | FID |"
    assert lines[2:] == ["| mld | Base | 1 | 4.000 |", "| mld | EasyTune-step | 3 | 3.250 ± 0.500 |"]


def test_notebook_records_of_a_partial_rerun_keep_the_others(tmp_path):
    from easytune_lab.commands.reproduce import merge_records

    path = tmp_path / "notebooks.json"
    assert merge_records(path, [{"notebook": "03_memory", "status": "ok"}], "quick", 0) == [
        {"notebook": "03_memory", "status": "ok"}]                     # no earlier file
    path.write_text(json.dumps({"profile": "quick", "seed": 0, "notebooks": [
        {"notebook": "01_noisy_similarity", "status": "failed"}, {"notebook": "04_main_results", "status": "ok"}]}))
    merged = merge_records(path, [{"notebook": "01_noisy_similarity", "status": "ok"}], "quick", 0)
    assert merged == [{"notebook": "01_noisy_similarity", "status": "ok"}, {"notebook": "04_main_results", "status": "ok"}]
    # records of another profile or seed are not mixed in
    assert merge_records(path, [{"notebook": "03_memory", "status": "ok"}], "smoke", 0) == [
        {"notebook": "03_memory", "status": "ok"}]
    assert len(merge_records(path, [{"notebook": "03_memory", "status": "ok"}], "quick", 1)) == 1


BUILD_ONE = """
import sys, time
from pathlib import Path
from easytune_lab import pipeline
from easytune_lab.runs import make_manifest, write_manifest

cache, counter = Path(sys.argv[1]), Path(sys.argv[2])
wb = pipeline.Workbench(profile="smoke", device="cpu", cache=cache, log=lambda line: print(line, flush=True))

def build(out):
    with open(counter, "a") as fh:
        fh.write("built\\n")
    time.sleep(2.0)                      # long enough for the other process to ask for the same run meanwhile
    out.mkdir()
    write_manifest(out, make_manifest("toy", {"n": 1}, seed=0, device="cpu"))

print("RUN", wb._build("toy", {"stage": "toy", "n": 1}, build), flush=True)
"""


def test_two_processes_asking_for_one_run_build_it_once(tmp_path):
    """Two notebooks of ``reproduce --jobs 2`` that need the same run: one builds it, the other waits on the
    build lock and reuses it (without the lock both would train it)."""
    import subprocess
    import sys
    import time

    counter = tmp_path / "builds.txt"
    script = tmp_path / "build_one.py"
    script.write_text(BUILD_ONE)
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(counter)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(0.3)
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert counter.read_text().splitlines() == ["built"], outputs
    runs = {line.split(" ", 1)[1] for out in outputs for line in out.splitlines() if line.startswith("RUN ")}
    assert len(runs) == 1 and pipeline.is_complete(next(iter(runs)))
    waited = [out for out in outputs if "[cache] waiting for toy-" in out]
    assert len(waited) == 1 and "built meanwhile by another process" in waited[0], outputs


def test_shared_stages_are_stages_the_workbench_builds(wb):
    """Every name of ``SHARED_STAGES`` resolves to a complete run, and an unknown one is a one-line error."""
    for name in pipeline.SHARED_STAGES:
        assert pipeline.is_complete(wb.stage(name)), name
    assert wb.stage("reward:spl") == wb.reward(spl=True)
    with pytest.raises(UserError, match="stage: unknown stage 'reward:bogus'"):
        wb.stage("reward:bogus")


def test_jobs_and_threads_per_job(monkeypatch):
    import os

    from easytune_lab.commands.reproduce import MAX_AUTO_JOBS, resolve_jobs, threads_per_job
    from easytune_lab.runtime import available_cores

    assert resolve_jobs(0, "cuda", 9) == 1
    assert resolve_jobs(0, "cpu", 9) == min(available_cores(), MAX_AUTO_JOBS)
    assert resolve_jobs(5, "cpu", 3) == 3 and resolve_jobs(0, "cpu", 0) == 1
    for name in ("EASYTUNE_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("easytune_lab.commands.reproduce.available_cores", lambda: 8)
    with threads_per_job(4) as threads:          # the children started here get 8 / 4 threads
        assert threads == 2
        assert os.environ["EASYTUNE_THREADS"] == "2" == os.environ["OMP_NUM_THREADS"]
    assert "EASYTUNE_THREADS" not in os.environ     # restored after the block
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with threads_per_job(4) as threads:          # what the user asked for wins
        assert threads == 3 and "EASYTUNE_THREADS" not in os.environ


def test_each_kernel_gets_its_own_ipc_sockets():
    """Two kernels started at once from one folder must not share socket files (jupyter_client's default is
    ``kernel-ipc`` in the working directory)."""
    import os
    import tempfile

    from easytune_lab.commands.reproduce import kernel_manager_class

    if os.name != "posix":
        pytest.skip("TCP kernels off POSIX")
    managers = [kernel_manager_class()() for _ in range(2)]
    assert all(m.transport == "ipc" for m in managers)
    assert managers[0].ip != managers[1].ip
    assert all(os.path.dirname(m.ip) == tempfile.gettempdir() for m in managers)
