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
