"""The rating plan: units, picks per group, K raters per unit, queues, repeats, gold."""

from __future__ import annotations

import pandas as pd
import pytest

from openmind_curate.preflight import InputError
from openmind_curate.quality import plan as P


def _row(image_id, dataset, modality, *, status="ok", derived_from=None, flags=None):
    return dict(
        image_id=image_id,
        dataset_id=dataset,
        modality=modality,
        header_status=status,
        derived_from=derived_from,
        flags=flags,
        path=f"{image_id}.nii.gz",
    )


@pytest.fixture
def index() -> pd.DataFrame:
    rows = [_row(f"t1-{i}", "dsA", "T1w") for i in range(5)]
    rows += [
        _row("t1-phase", "dsA", "T1w", flags="phase"),
        _row("t1-bad", "dsA", "T1w", status="corrupt"),
        _row("t2-0", "dsA", "T2w"),
        _row("t2-1", "dsB", "T2w"),
    ]
    rows += [_row("dwi-1", "dsB", "DWI"), _row("dwi-2", "dsB", "DWI"), _row("dwi-3", "dsB", "DWI")]
    for src in ("dwi-1", "dwi-2"):  # dwi-3 has no maps yet
        rows += [_row(f"{src}-{m}", "dsB", m, derived_from=src) for m in ("T2w", "FA", "MD")]
    return pd.DataFrame(rows)


def test_units_groups_and_listed_images(index):
    units, not_rated = P.units(index)
    by_id = units.set_index("image_id")
    # a DWI is one unit under its own id, in the DWI-derived group, never in T2w
    assert by_id.loc[["dwi-1", "dwi-2"], "group_name"].tolist() == [P.DWI_GROUP] * 2
    assert not any(i.endswith(("-FA", "-MD", "-T2w")) for i in units["image_id"])
    assert set(units.loc[units["group_name"] == "T2w", "image_id"]) == {"t2-0", "t2-1"}
    assert by_id.loc["t1-phase", "secondary"] and not by_id.loc["t1-0", "secondary"]
    reasons = not_rated.set_index("image_id")["reason"]
    assert reasons["t1-bad"] == "header_status is corrupt"
    assert "without derived maps" in reasons["dwi-3"]
    assert "t1-bad" not in by_id.index and "dwi-3" not in by_id.index


def test_unit_images_shows_the_three_maps_in_order(index):
    assert P.unit_images(index, "dwi-1")["image_id"].tolist() == [
        "dwi-1-FA",
        "dwi-1-MD",
        "dwi-1-T2w",
    ]
    assert P.unit_images(index, "t1-0")["image_id"].tolist() == ["t1-0"]


def test_picks_per_group_prefer_primary_images_and_are_seeded(index):
    units, _ = P.units(index)
    cfg = P.PlanConfig(per_group=2, seed=3)
    picked = P.pick_units(units, cfg)
    counts = picked.groupby(["dataset_id", "group_name"]).size().to_dict()
    assert counts == {
        ("dsA", "T1w"): 2,
        ("dsA", "T2w"): 1,
        ("dsB", "T2w"): 1,
        ("dsB", P.DWI_GROUP): 2,
    }
    assert "t1-phase" not in set(picked["image_id"])  # five primary T1w images to choose from
    assert picked.equals(P.pick_units(units, cfg))
    others = {
        tuple(sorted(P.pick_units(units, P.PlanConfig(seed=s))["image_id"])) for s in range(10)
    }
    assert len(others) > 1  # the seed matters
    # adding a dataset does not change another dataset's picks
    more = pd.concat([units, units.assign(dataset_id="dsC")])
    again = P.pick_units(more, cfg)
    assert set(again.loc[again["dataset_id"] == "dsA", "image_id"]) == set(
        picked.loc[picked["dataset_id"] == "dsA", "image_id"]
    )


def test_phase_part_picked_only_when_nothing_else(index):
    units, _ = P.units(index[index["image_id"].isin(["t1-phase", "t1-0"])])
    assert P.pick_units(units, P.PlanConfig(per_group=2))["image_id"].tolist()[-1] == "t1-phase"


def test_assignment_k_raters_balanced_and_shuffled(index):
    units, _ = P.units(index)
    picked = P.pick_units(units, P.PlanConfig(per_group=2))
    raters = ["r1", "r2", "r3"]
    plan = P.assign(picked, raters, P.PlanConfig(raters=2, seed=1))
    per_unit = plan.groupby("image_id")["rater_id"].agg(list)
    assert all(len(v) == 2 == len(set(v)) for v in per_unit)  # K distinct raters each
    loads = plan["rater_id"].value_counts()
    assert loads.max() - loads.min() <= 1 and loads.sum() == 2 * len(picked)
    for _, queue in plan.groupby("rater_id"):
        assert queue["position"].tolist() == list(range(len(queue)))
    orders = {
        tuple(
            P.assign(picked, raters, P.PlanConfig(raters=2, seed=s)).query("rater_id == 'r1'")[
                "image_id"
            ]
        )
        for s in range(6)
    }
    assert len(orders) > 1


def test_repeats_hidden_after_their_original_and_gold_for_everyone(index):
    units, _ = P.units(index)
    picked = P.pick_units(units, P.PlanConfig(per_group=2))
    gold = pd.DataFrame(dict(image_id=["t1-4"], dataset_id=["dsA"], group_name=["T1w"]))
    cfg = P.PlanConfig(raters=2, seed=2, repeat_fraction=0.5)
    plan = P.assign(picked, ["r1", "r2"], cfg, gold)
    for _, queue in plan.groupby("rater_id"):
        regular = queue[queue["kind"] == "regular"]
        repeats = queue[queue["kind"] == "repeat"]
        assert len(repeats) == round(0.5 * len(regular))
        first = regular.set_index("image_id")["position"]
        assert all(r.position > first[r.image_id] for r in repeats.itertuples())
        assert queue.loc[queue["kind"] == "gold", "image_id"].tolist() == ["t1-4"]


def test_too_few_raters_is_a_clear_error(index):
    units, _ = P.units(index)
    with pytest.raises(InputError, match="needs 2 raters per image but only 1"):
        P.assign(P.pick_units(units, P.PlanConfig()), ["solo"], P.PlanConfig(raters=2))


def test_plan_and_iqs_share_one_dwi_unit_rule(index):
    from openmind_curate.quality.iqs import units_of

    # dwi-4's only map has a bad header: a DWI unit, but nothing of it can be shown
    index = pd.concat(
        [
            index,
            pd.DataFrame(
                [
                    _row("dwi-4", "dsB", "DWI"),
                    _row("dwi-4-FA", "dsB", "FA", derived_from="dwi-4", status="corrupt"),
                ]
            ),
        ],
        ignore_index=True,
    )
    units, not_rated = P.units(index)
    rows = units_of(index).set_index("image_id")
    for unit in units.itertuples():  # a rated unit is its own unit, in the same kind of group
        assert rows.loc[unit.image_id, "unit_id"] == unit.image_id
        assert rows.loc[unit.image_id, "is_dwi_unit"] == (unit.group_name == P.DWI_GROUP)
    for m in index[index["derived_from"].notna()].itertuples():  # maps: their source's unit
        assert rows.loc[m.image_id, "unit_id"] == m.derived_from
        assert rows.loc[m.image_id, "group_key"] == f"{m.dataset_id}/{P.DWI_GROUP}"
    dwi_units = set(units.loc[units["group_name"] == P.DWI_GROUP, "image_id"])
    assert dwi_units == {"dwi-1", "dwi-2"}
    assert {"dwi-3", "dwi-4"} <= set(not_rated["image_id"])
    assert rows.loc["dwi-4", "is_dwi_unit"] and not rows.loc["dwi-3", "is_dwi_unit"]
    unit, is_dwi = P.unit_of(index)  # the rule itself, the one both go through
    assert list(unit[is_dwi].unique()) == ["dwi-1", "dwi-2", "dwi-4"]


def _many_units(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        dict(
            image_id=[f"u{i:03d}" for i in range(n)],
            dataset_id="dsA",
            group_name="T1w",
            secondary=False,
        )
    )


def _repeat_gaps(queue: pd.DataFrame) -> list[tuple[int, int]]:
    """(original position, repeat position) for each repeat of one rater's queue."""
    first = queue[queue["kind"] == "regular"].set_index("image_id")["position"]
    repeats = queue[queue["kind"] == "repeat"]
    return [(int(first[r.image_id]), int(r.position)) for r in repeats.itertuples()]


@pytest.mark.parametrize("with_gold", [False, True])
def test_repeats_come_at_least_ten_items_after_their_original_in_a_long_queue(with_gold):
    gold = _many_units(3).assign(image_id=["g1", "g2", "g3"]) if with_gold else None
    cfg = P.PlanConfig(raters=2, seed=7, repeat_fraction=0.3)
    plan = P.assign(_many_units(60), ["r1", "r2", "r3"], cfg, gold)
    assert P.MIN_REPEAT_GAP == 10
    for _, queue in plan.groupby("rater_id"):  # 40 regular items each
        assert queue["position"].tolist() == list(range(len(queue)))
        gaps = _repeat_gaps(queue)
        assert len(gaps) == 12  # 0.3 of 40
        assert all(rep - orig >= 10 for orig, rep in gaps), gaps
        assert len(set(queue.loc[queue["kind"] == "repeat", "image_id"])) == 12
        assert (queue["kind"] == "gold").sum() == (3 if with_gold else 0)
    again = P.assign(_many_units(60), ["r1", "r2", "r3"], cfg, gold)
    assert again.equals(plan)  # reproducible from the seed
    other = P.assign(_many_units(60), ["r1", "r2", "r3"], P.PlanConfig(2, 2, 8, 0.3), gold)
    assert not other.equals(plan)


def test_gold_items_never_bring_a_repeat_closer_than_ten():
    # many gold items in a queue just long enough: every repeat still has its gap
    gold = _many_units(8).assign(image_id=[f"g{i}" for i in range(8)])
    for seed in range(20):
        cfg = P.PlanConfig(raters=1, seed=seed, repeat_fraction=0.5)
        plan = P.assign(_many_units(12), ["r1"], cfg, gold)
        gaps = _repeat_gaps(plan)
        assert len(gaps) == 6
        kinds = plan["kind"].tolist()
        for orig, rep in gaps:  # a gap of 10, or at the tail: only repeats after it
            assert rep - orig >= 10 or set(kinds[rep:]) == {"repeat"}, (seed, gaps)
        assert sum(rep - orig >= 10 for orig, rep in gaps) >= 1


def test_in_a_short_queue_repeats_go_after_every_other_item():
    cfg = P.PlanConfig(raters=1, seed=3, repeat_fraction=0.5)
    plan = P.assign(_many_units(6), ["r1"], cfg)  # 6 items: no room for a gap of 10
    assert plan["kind"].tolist() == ["regular"] * 6 + ["repeat"] * 3
    for orig, rep in _repeat_gaps(plan):
        assert rep > orig and rep >= 6
    gold = _many_units(2).assign(image_id=["g1", "g2"])
    with_gold = P.assign(_many_units(6), ["r1"], cfg, gold)
    kinds = with_gold["kind"].tolist()
    assert kinds[-3:] == ["repeat"] * 3 and "repeat" not in kinds[:-3]
    assert sorted(kinds[:-3]) == ["gold"] * 2 + ["regular"] * 6


def test_a_queue_with_room_for_some_repeats_puts_only_the_rest_at_the_tail():
    cfg = P.PlanConfig(raters=1, seed=0, repeat_fraction=1.0)
    plan = P.assign(_many_units(14), ["r1"], cfg)  # 4 originals have room, 10 do not
    gaps = _repeat_gaps(plan)
    assert len(gaps) == 14
    roomy = [(o, r) for o, r in gaps if r - o >= 10]
    assert len(roomy) >= 4
    kinds = plan["kind"].tolist()
    last_regular = max(i for i, k in enumerate(kinds) if k == "regular")
    cramped = [(o, r) for o, r in gaps if r - o < 10]
    assert all(r > last_regular for _, r in cramped)
    assert all(k == "repeat" for k in kinds[last_regular + 1 :])
