"""Methods compared over fine-tuning seeds (easytune_lab.analysis.comparison): rows, summaries, paired verdicts."""

import math

import pytest

from easytune_lab.analysis.comparison import METRICS, SEEDS, collect, paired, select_arms, summarise
from easytune_lab.stats import t_quantile


def fake_rows(values: dict[str, list[float]], metric: str = "mm_dist") -> list[dict]:
    """Rows with one metric set per arm and seed (``Base`` gets one run)."""
    arms = {name: (None if name == "Base" else name.lower()) for name in values}
    evals = {}

    def finetune(method, seed):
        return f"{method}-{seed}"

    def evaluate(run):
        name, _, seed = str(run).rpartition("-")
        arm = "Base" if run == "base" else next(a for a, m in arms.items() if m == name)
        value = values[arm][0] if run == "base" else values[arm][int(seed)]
        return {metric: {"mean": value}}

    rows = collect("mld", arms, [0, 1, 2], finetune=finetune, base=lambda: "base", evaluate=evaluate,
                   training=lambda run: {"optimizer_steps": 10}, name=str)
    return rows


def test_collect_runs_every_seed_of_every_method_and_the_base_once():
    rows = fake_rows({"Base": [20.0], "EasyTune-step": [19.0, 19.5, 18.5], "DRaFT": [19.0, 19.1, 18.9]})
    assert [(r["method"], r["finetune_seed"]) for r in rows] == [("Base", None), ("EasyTune-step", 0), ("EasyTune-step", 1),
                                                        ("EasyTune-step", 2), ("DRaFT", 0), ("DRaFT", 1), ("DRaFT", 2)]
    assert rows[0]["optimizer_steps"] is None and rows[1]["optimizer_steps"] == 10
    with pytest.raises(ValueError, match="seeds"):
        collect("mld", {"A": "a"}, [], finetune=None, base=None, evaluate=None, training=None)


def test_summary_is_the_mean_and_t_interval_over_seeds():
    rows = fake_rows({"Base": [20.0], "EasyTune-step": [19.0, 19.5, 18.5]})
    summary = {r["method"]: r for r in summarise(rows)}
    easy = summary["EasyTune-step"]
    assert easy["seeds"] == 3 and easy["mm_dist"] == pytest.approx(19.0)
    assert easy["mm_dist_ci95"] == pytest.approx(t_quantile(2) * 0.5 / math.sqrt(3))
    assert summary["Base"]["seeds"] == 1 and summary["Base"]["mm_dist_ci95"] is None


def test_paired_verdicts_follow_the_interval_and_the_metric_direction():
    rows = fake_rows({"Base": [20.0], "EasyTune-step": [19.0, 19.1, 18.9], "DRaFT": [19.0, 19.0, 19.1]})
    result = {(r["other"], r["metric"]): r for r in paired(rows, "EasyTune-step")}
    base = result[("Base", "mm_dist")]        # −1.0, −0.9, −1.1: lower MM-Dist is better
    assert base["difference"] == pytest.approx(-1.0) and base["verdict"] == "better" and base["seeds"] == 3
    draft = result[("DRaFT", "mm_dist")]      # 0, 0.1, −0.2: the interval holds 0
    assert draft["difference"] == pytest.approx(-0.1 / 3) and draft["verdict"] == "no difference measured"
    assert draft["lo"] < 0 < draft["hi"]
    assert all(m in METRICS for _, m in result)


def test_paired_skips_metrics_without_a_direction_and_one_seed_gives_no_verdict():
    rows = fake_rows({"Base": [1.0], "EasyTune-step": [2.0, 2.0, 2.0]}, metric="diversity")
    assert paired(rows, "EasyTune-step") == []
    one = [r for r in fake_rows({"Base": [20.0], "EasyTune-step": [19.0, 19.5, 18.5], "DRaFT": [19.0, 19.4, 18.7]})
           if r["finetune_seed"] in (None, 0)]
    assert {r["verdict"] for r in paired(one, "EasyTune-step")} == {"one seed: no interval"}


def test_every_profile_compares_at_least_three_seeds_except_smoke():
    assert all(n >= 3 for profile, n in SEEDS.items() if profile != "smoke") and SEEDS["smoke"] >= 2


def test_rows_keep_their_finetune_seed_through_the_table_writer(tmp_path):
    import pandas as pd

    from easytune_lab.viz.plots import write_table

    rows = fake_rows({"Base": [20.0], "EasyTune-step": [19.0, 19.5, 18.5]})
    path = write_table(pd.DataFrame(rows), tmp_path / "per_seed.csv", "smoke", 7, allow_nonfinite=True)
    table = pd.read_csv(path)
    assert list(table.seed.unique()) == [7]                      # the notebook's seed, named by the writer
    assert table.finetune_seed.fillna(-1).tolist() == [-1, 0, 1, 2]


def test_select_arms_keeps_the_base_and_the_reference_and_refuses_unknown_methods():
    arms = {"Base": None, "DRaFT": "draft", "AlignProp": "alignprop", "EasyTune-step": "easytune"}
    assert select_arms(arms, "") == arms
    assert select_arms(arms, " draft ,") == {"Base": None, "DRaFT": "draft", "EasyTune-step": "easytune"}
    assert list(select_arms(arms, "alignprop,draft")) == ["Base", "DRaFT", "AlignProp", "EasyTune-step"]
    with pytest.raises(ValueError, match="^methods: unknown method 'dpo' \\(choose from draft, alignprop, easytune\\)$"):
        select_arms(arms, "draft,dpo")
