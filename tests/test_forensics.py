"""Claim forensics arithmetic: reach of one reward curve to another's final value, seed summaries, waterfall rows."""

import pytest

from easytune_lab.analysis.forensics import compare_pair, first_reach, summarise_pairs, waterfall_steps


def _curve(rewards, seconds_per_it=10.0, every=2):
    return [{"iteration": i * every, "seconds": i * every * seconds_per_it, "reward": r} for i, r in enumerate(rewards)]


def test_first_reach_and_never():
    curve = _curve([6.0, 6.5, 7.2, 7.0, 7.4])
    assert first_reach(curve, 7.1) == 4 and first_reach(curve, 7.1, "seconds") == 40.0
    assert first_reach(curve, 6.0) == 0          # reached at the start
    assert first_reach(curve, 8.0) is None
    with pytest.raises(ValueError):
        first_reach(curve, 7.0, "epochs")


def test_compare_pair_in_both_directions():
    a = _curve([6.0, 7.0, 7.5], seconds_per_it=5.0)
    b = _curve([6.0, 6.8, 7.2, 7.3], seconds_per_it=10.0)
    got = compare_pair(a, b)
    assert got["gap"] == pytest.approx(0.2)
    assert got["a_reaches_b_iteration"] == 4 and got["a_reaches_b_seconds"] == 20.0
    assert got["b_reaches_a_iteration"] is None


def test_summary_over_seeds_counts_reaches_and_gives_a_verdict():
    pairs = [compare_pair(_curve([6, 7 + d]), _curve([6, 7])) for d in (0.18, 0.2, 0.22)]
    s = summarise_pairs(pairs)
    assert s["seeds"] == 3 and s["gap"]["mean"] == pytest.approx(0.2) and s["gap_verdict"] == "better"
    assert s["b_reaches_a_iteration"] is None and s["b_reaches_a_iteration_reached"] == "0/3"
    assert s["a_reaches_b_iteration_reached"] == "3/3"
    mixed = summarise_pairs([compare_pair(_curve([6, 7 + d]), _curve([6, 7])) for d in (-0.2, 0.1, 0.2)])
    assert mixed["gap_verdict"] == "no difference measured"


def test_waterfall_changes_are_paired_by_seed():
    rows = waterfall_steps([("official", [-0.5, -0.4, -0.6]), ("clock", [-0.3, -0.2, -0.4]), ("lr", [-0.3, -0.1, -0.5])])
    assert [r["stage"] for r in rows] == ["official", "clock", "lr"] and "change" not in rows[0]
    assert rows[1]["change"]["mean"] == pytest.approx(0.2) and rows[1]["change"]["ci95"] == pytest.approx(0.0, abs=1e-12)
    assert rows[1]["change_verdict"] == "better"  # identical per-seed changes: a zero-width interval away from 0
    assert rows[2]["change_verdict"] == "no difference measured"


def test_waterfall_figure(tmp_path):
    from easytune_lab.viz.plots import waterfall

    rows = waterfall_steps([("official", [-0.5, -0.4, -0.6]), ("clock", [-0.3, -0.2, -0.4])])
    waterfall(rows, tmp_path / "w.png", title="t")
    assert (tmp_path / "w.png").stat().st_size > 1000


def test_the_stages_walk_from_official_to_fair_one_factor_at_a_time():
    """Stage 0 is the official preset; the last stage resolves, for every method and profile, to exactly the fair
    preset's configuration; every stage in between changes something for EasyTune or DRaFT."""
    import dataclasses

    from easytune_lab.analysis.forensics import STAGES, stage_options
    from easytune_lab.finetune.presets import preset
    from easytune_lab.finetune.train import finetune_config

    def resolved(i, method, profile, backbone=None):
        overrides, reward = stage_options(i, method, profile, backbone=backbone)
        cfg = finetune_config(method, profile, preset="official", backbone=backbone, **overrides)
        return dataclasses.replace(cfg, preset=""), reward

    for profile in ("smoke", "quick"):
        for method in ("easytune", "draft"):
            for backbone in (None, "mdm", "mld"):   # the fair end takes the lr tuned on the backbone
                first, reward0 = resolved(0, method, profile, backbone)
                official = finetune_config(method, profile, preset="official", backbone=backbone)
                assert first == dataclasses.replace(official, preset="")
                assert reward0 == "spl-official"
                last, reward = resolved(len(STAGES) - 1, method, profile, backbone)
                fair = finetune_config(method, profile, preset="fair", backbone=backbone)
                assert last == dataclasses.replace(fair, preset="")
                assert reward == preset("fair").reward
    for i in range(1, len(STAGES)):   # each factor moves at least one of the two methods' runs (at quick)
        before = [resolved(i - 1, m, "quick") for m in ("easytune", "draft")]
        after = [resolved(i, m, "quick") for m in ("easytune", "draft")]
        assert before != after, STAGES[i].name


def test_the_paper_table_names_its_source_and_matches_the_shared_copy():
    from pathlib import Path

    import pandas as pd

    from easytune_lab.reference import paper_table

    table = paper_table("table1")
    assert set(table.source) == {"paper (arXiv 2602.07967, HumanML3D, MLD)"}
    assert table.set_index("method").loc["EasyTune (step)", "mm_dist"] == 2.637
    shared = Path(__file__).resolve().parents[2] / "shared" / "paper" / "table1_humanml3d_mld.csv"
    if shared.is_file():                        # the packaged copy is the shared reference, number for number
        pd.testing.assert_frame_equal(table.drop(columns="source"), pd.read_csv(shared))
