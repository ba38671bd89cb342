"""The paper's IQS (appendix B.1): every rule against a hand-computed value,
then `curate iqs` on a crawled corpus (scores land in the index)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.quality import ratings
from openmind_curate.quality.iqs import compute_iqs, kept_table
from openmind_curate.schema import IQS, RATINGS, validate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _img(image_id, dataset="ds1", modality="T1w", derived_from=None):
    return dict(image_id=image_id, dataset_id=dataset, modality=modality, derived_from=derived_from)


def _index(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


_counter = iter(range(10**6))


def _r(image_id, rater, n, b, a=None, fov=False, corrupted=False, kind="regular", version=1):
    i = next(_counter)
    return dict(
        image_id=image_id,
        rater_id=rater,
        kind=kind,
        version=version,
        submission_id=f"s{i}",
        image_checksum=None,
        noisiness=n,
        blurriness=b,
        artifact_level=a,
        fov_suboptimal=fov,
        corrupted=corrupted,
        comment=None,
        seconds_spent=1.0,
        window_settings=None,
        app_version="test",
        created_at=T0 + timedelta(seconds=i),
    )


def _ratings(*rows) -> pd.DataFrame:
    return validate(pd.DataFrame(list(rows)), RATINGS).to_pandas()


def _row(result, image_id) -> pd.Series:
    return result.table.set_index("image_id").loc[image_id]


def test_axes_averaged_across_raters_then_over_axes():
    idx = _index(_img("a"))
    res = compute_iqs(idx, _ratings(_r("a", "r1", 1, 2, 3), _r("a", "r2", 2, 2, 4)))
    row = _row(res, "a")
    # noisiness (1+2)/2 = 1.5, blurriness 2, artifact (3+4)/2 = 3.5 -> (1.5+2+3.5)/3 = 7/3
    assert row["noisiness"] == 1.5 and row["blurriness"] == 2.0 and row["artifact_level"] == 3.5
    assert row["iqs_image"] == pytest.approx(7 / 3)
    assert row["iqs"] == pytest.approx(7 / 3) and row["n_raters"] == 2


def test_corrupted_by_one_rater_gives_5():
    idx = _index(_img("a"))
    res = compute_iqs(idx, _ratings(_r("a", "r1", 1, 1, 1), _r("a", "r2", 1, 1, 1, corrupted=True)))
    assert bool(_row(res, "a")["corrupted"]) and _row(res, "a")["iqs_image"] == 5.0


def test_aggregated_axis_at_5_gives_5_but_one_raters_5_does_not():
    idx = _index(_img("a"), _img("b"))
    res = compute_iqs(
        idx,
        _ratings(
            _r("a", "r1", 5, 1, 1),
            _r("a", "r2", 5, 2, 1),  # noisiness mean 5 -> IQS 5
            _r("b", "r1", 5, 1, 1),
            _r("b", "r2", 3, 1, 1),  # noisiness mean 4 -> (4+1+1)/3 = 2
        ),
    )
    assert _row(res, "a")["iqs_image"] == 5.0
    assert _row(res, "b")["noisiness"] == 4.0
    assert _row(res, "b")["iqs_image"] == pytest.approx(2.0)


def test_suboptimal_fov_adds_one_capped_at_5():
    idx = _index(_img("a"), _img("b"), _img("c"))
    res = compute_iqs(
        idx,
        _ratings(
            _r("a", "r1", 2, 2, 2, fov=True),
            _r("a", "r2", 2, 2, 2),  # 2 + 1 = 3 (worst FOV)
            _r("b", "r1", 4, 5, 4, fov=True),  # 13/3 + 1 = 5.33 -> capped 5
            _r("c", "r1", 1, 1, 1, fov=True, corrupted=True),  # 5 (corrupted) + 1 -> capped 5
        ),
    )
    assert _row(res, "a")["iqs_image"] == pytest.approx(3.0)
    assert bool(_row(res, "a")["fov_suboptimal"])
    assert _row(res, "b")["iqs_image"] == 5.0
    assert _row(res, "c")["iqs_image"] == 5.0


def test_group_mean_given_to_every_image_of_the_group():
    idx = _index(_img("a"), _img("b"), _img("c"), _img("d", modality="T2w"))
    res = compute_iqs(
        idx, _ratings(_r("a", "r1", 1, 1, 1), _r("b", "r1", 2, 3, 4), _r("d", "r1", 2, 2, 2))
    )
    # ds1/T1w: a = 1, b = 3 -> 2; c unrated gets 2 too; ds1/T2w: d alone -> 2
    assert [_row(res, i)["iqs"] for i in "abc"] == [2.0, 2.0, 2.0]
    assert math.isnan(_row(res, "c")["iqs_image"]) and _row(res, "c")["n_raters"] == 0
    assert _row(res, "c")["group_n_rated"] == 2
    assert _row(res, "d")["iqs"] == 2.0 and _row(res, "d")["group_key"] == "ds1/T2w"


def test_group_of_one_rated_image():
    idx = _index(_img("a", modality="FLAIR"), _img("b", modality="FLAIR"))
    res = compute_iqs(idx, _ratings(_r("a", "r1", 3, 2, 1), _r("a", "r2", 3, 4, 1)))
    # (3 + 3 + 1) / 3 = 7/3 for a, and so for the group
    assert _row(res, "b")["iqs"] == pytest.approx(7 / 3)
    assert _row(res, "b")["group_n_rated"] == 1


def test_mixed_raters_on_one_group():
    idx = _index(_img("a"), _img("b"))
    res = compute_iqs(
        idx,
        _ratings(
            _r("a", "r1", 1, 1, 1),
            _r("a", "r2", 3, 3, 3),  # a: 2
            _r("b", "r3", 4, 4, 4),
            _r("b", "r4", 2, 2, 2),  # b: 3
        ),
    )
    assert _row(res, "a")["iqs_image"] == 2.0 and _row(res, "b")["iqs_image"] == 3.0
    assert _row(res, "a")["iqs"] == 2.5 and _row(res, "b")["iqs"] == 2.5


def test_latest_version_counts():
    idx = _index(_img("a"))
    res = compute_iqs(
        idx, _ratings(_r("a", "r1", 5, 5, 5, version=1), _r("a", "r1", 1, 2, 3, version=2))
    )
    assert _row(res, "a")["iqs_image"] == 2.0 and _row(res, "a")["n_raters"] == 1


def test_repeat_and_gold_ratings_never_change_the_iqs():
    idx = _index(_img("a"), _img("g"))
    res = compute_iqs(
        idx,
        _ratings(
            _r("a", "r1", 2, 2, 2),
            _r("a", "r1", 5, 5, 5, corrupted=True, kind="repeat"),
            _r("g", "r1", 5, 5, 5, kind="gold"),
        ),
    )
    assert _row(res, "a")["iqs_image"] == 2.0 and _row(res, "a")["n_raters"] == 1
    assert _row(res, "a")["iqs"] == 2.0  # g is in the same group; its gold rating is not counted


def test_dwi_maps_share_the_dwi_score_and_are_not_pooled_with_acquired_t2w():
    idx = _index(
        _img("dwi1", modality="DWI"),
        _img("fa1", modality="FA", derived_from="dwi1"),
        _img("md1", modality="MD", derived_from="dwi1"),
        _img("b0_1", modality="T2w", derived_from="dwi1"),  # mean b0: modality T2w, same dataset
        _img("t2", modality="T2w"),  # the dataset's acquired T2w
    )
    res = compute_iqs(
        idx,
        _ratings(
            _r("dwi1", "r1", 2, 4, 5),
            _r("dwi1", "r2", 2, 2, 5),  # artifact 5 ignored: (2+3)/2
            _r("t2", "r1", 1, 1, 1),
        ),
    )
    for image in ("dwi1", "fa1", "md1", "b0_1"):
        row = _row(res, image)
        assert row["group_key"] == "ds1/DWI-derived"
        assert row["iqs_image"] == 2.5 and row["iqs"] == 2.5
        assert math.isnan(row["artifact_level"]) and row["n_raters"] == 2
    t2 = _row(res, "t2")
    assert t2["group_key"] == "ds1/T2w" and t2["iqs"] == 1.0 and t2["group_n_rated"] == 1
    groups = res.groups.set_index("group_key")
    assert groups.loc["ds1/DWI-derived", "n_rated"] == 1  # one unit, not three maps
    assert groups.loc["ds1/DWI-derived", "n_images"] == 4


def test_dwi_group_mean_counts_each_unit_once():
    idx = _index(
        _img("d1", modality="DWI"),
        _img("d1fa", modality="FA", derived_from="d1"),
        _img("d1md", modality="MD", derived_from="d1"),
        _img("d2", modality="DWI"),
        _img("d2fa", modality="FA", derived_from="d2"),
    )
    res = compute_iqs(idx, _ratings(_r("d1", "r1", 1, 1), _r("d2", "r1", 4, 4)))
    # units 1 and 4 -> 2.5 (weighting by maps would give (1*3 + 4*2)/5 = 2.2)
    assert _row(res, "d2fa")["iqs"] == 2.5


def test_unrated_group_is_null_and_warned():
    idx = _index(_img("a"), _img("b", dataset="ds2"))
    res = compute_iqs(idx, _ratings(_r("a", "r1", 1, 1, 1)))
    assert math.isnan(_row(res, "b")["iqs"]) and _row(res, "b")["group_n_rated"] == 0
    assert res.unrated_groups == ["ds2/T1w"]
    assert any("ds2/T1w" in w and "null" in w for w in res.warnings())


def test_ratings_outside_the_index_and_of_single_maps_are_ignored_with_a_warning():
    idx = _index(_img("a"), _img("d", modality="DWI"), _img("fa", modality="FA", derived_from="d"))
    res = compute_iqs(
        idx, _ratings(_r("a", "r1", 2, 2, 2), _r("ghost", "r1", 5, 5, 5), _r("fa", "r1", 5, 5))
    )
    assert res.unknown_ratings == ["ghost"] and res.not_units == ["fa"]
    assert _row(res, "a")["iqs"] == 2.0 and math.isnan(_row(res, "fa")["iqs"])
    text = " ".join(res.warnings())
    assert "ghost" in text and "not in the index" in text and "fa" in text


def test_table_validates_against_the_iqs_schema():
    idx = _index(
        _img("a"),
        _img("b", dataset="ds2"),
        _img("d", modality="DWI"),
        _img("fa", modality="FA", derived_from="d"),
    )
    res = compute_iqs(idx, _ratings(_r("a", "r1", 2, 2, 2), _r("d", "r1", 1, 3)))
    table = validate(res.table, IQS)
    assert table.num_rows == 4


def test_kept_table_thresholds():
    kept = kept_table(pd.Series([1.0, 1.5, 2.0, 3.0, None]))
    assert kept["kept"].tolist() == [2, 3, 4]  # <= 1.5, <= 2.5, <= 3; null is never kept


def test_a_score_at_the_threshold_is_kept_by_iqs_the_report_and_build_manifest():
    from fractions import Fraction

    from openmind_curate.manifest.filters import Filters, apply
    from openmind_curate.report.builders import iqs_threshold_table
    from openmind_curate.schema import IMAGE_INDEX, rows_to_table

    # Three raters. a: axes 1, 1, (3+3+4)/3 -> 16/9; b: 1, 4, (4+5+5)/3 -> 29/9.
    rows = [_r("a", r, 1, 1, art) for r, art in (("r1", 3), ("r2", 3), ("r3", 4))]
    rows += [_r("b", r, 1, 4, art) for r, art in (("r1", 4), ("r2", 5), ("r3", 5))]
    res = compute_iqs(_index(_img("a"), _img("b")), _ratings(*rows))
    scores = res.table["iqs"]
    assert (Fraction(16, 9) + Fraction(29, 9)) / 2 == Fraction(5, 2)  # on paper: exactly 2.5
    assert scores.iloc[0] == scores.iloc[1] > 2.5  # in float64: 2.5000000000000004
    # `curate iqs`'s table, the report's table and build-manifest's filter agree: both kept
    assert kept_table(scores, [2.5])["kept"].tolist() == [2]
    assert iqs_threshold_table(scores, [2.5])["images"].tolist() == [2, 0, 2]
    index = rows_to_table(
        [
            dict(
                image_id=i,
                dataset_id="ds1",
                suffix="T1w",
                extension=".nii.gz",
                modality="T1w",
                is_derivative=False,
                root="/data/ds1",
                path=f"{i}.nii.gz",
                size_bytes=1,
                header_status="ok",
                iqs=float(v),
            )
            for i, v in zip(res.table["image_id"], scores, strict=True)
        ],
        IMAGE_INDEX,
    )
    kept, steps = apply(index, Filters(iqs_max=2.5))
    assert kept.num_rows == 2 and steps[-1].detail["above_threshold"] == 0
    # and a threshold a real step below keeps neither, everywhere
    assert kept_table(scores, [2.4999])["kept"].tolist() == [0]
    assert iqs_threshold_table(scores, [2.4999])["images"].tolist() == [0, 0, 2]
    assert apply(index, Filters(iqs_max=2.4999))[0].num_rows == 0


# ---------------------------------------------------------------------- CLI

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def _ok(args):
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_writes_scores_into_the_index(private_index, tmp_path):
    work = private_index
    frame = store.read_frame(work)
    ok = frame[frame["header_status"] == "ok"]
    t1 = ok[ok["modality"] == "T1w"]
    ds = t1["dataset_id"].iloc[0]
    a, b = t1.loc[t1["dataset_id"] == ds, "image_id"].iloc[:2]
    engine = ratings.connect(ratings.default_db(work))
    for name in ("ana", "ben"):
        ratings.add_rater(engine, name)
    plan = pd.DataFrame(
        [
            dict(
                rater_id=r, image_id=i, kind="regular", position=p, dataset_id=ds, group_name="T1w"
            )
            for p, (r, i) in enumerate([("ana", a), ("ben", a), ("ana", b)])
        ]
    )
    ratings.add_assignments(engine, plan, plan="test")

    def save(rater, image, n, bl, art, **kw):
        ratings.save_rating(
            engine,
            dict(
                image_id=image,
                rater_id=rater,
                kind="regular",
                submission_id=ratings.new_submission_id(),
                noisiness=n,
                blurriness=bl,
                artifact_level=art,
                fov_suboptimal=False,
                corrupted=False,
                **kw,
            ),
        )

    save("ana", a, 1, 1, 1)
    save("ben", a, 3, 3, 3)  # a: 2
    save("ana", b, 4, 4, 4)  # b: 4 -> group (2 + 4) / 2 = 3
    out = tmp_path / "iqs.parquet"
    text = _ok(["iqs", "--index", str(work), "--out", str(out)])
    assert "unscored" in text and "null" in text  # every other group is unrated
    after = store.read_frame(work).set_index("image_id")
    assert after.loc[a, "iqs_image"] == 2.0 and after.loc[b, "iqs_image"] == 4.0
    group = after[(after["dataset_id"] == ds) & (after["modality"] == "T1w")]
    assert (group["iqs"] == 3.0).all()
    assert after.loc[after["dataset_id"] != ds, "iqs"].isna().all()
    assert after["iqs_predicted"].isna().all()  # no --model
    table = pq.read_table(out)
    validate(table, IQS)
    assert table.num_rows == len(after)

    # a correction (version 2) and a re-run overwrite the stale values. The
    # correction was made on a file that has changed since (the checksum stored
    # with it is not the file's); ben's second look at a saw the file as it is.
    from openmind_curate.quality.iqs import file_checksum

    save("ana", b, 2, 2, 2, image_checksum="0" * 64)
    save("ben", a, 3, 3, 3, image_checksum=file_checksum(frame, a))
    args = ["iqs", "--index", str(work), "--out", str(out)]
    assert "changed since" not in _ok(args)  # the files are read only with the flag
    text = _ok([*args, "--check-files"])
    (warning,) = [line for line in text.splitlines() if "changed since" in line]
    assert "1 unit(s) were rated on a file that has changed since" in warning
    assert b in warning and a not in warning
    after = store.read_frame(work).set_index("image_id")
    assert after.loc[b, "iqs_image"] == 2.0 and after.loc[a, "iqs"] == 2.0


def test_cli_bad_input_is_named(private_index, tmp_path):
    work = private_index
    engine = ratings.connect(ratings.default_db(work))
    result = runner.invoke(app, ["iqs", "--index", str(work)], env=ENV)
    assert result.exit_code == 2 and "no ratings yet" in result.output
    del engine
    result = runner.invoke(
        app, ["iqs", "--index", str(work), "--db", str(tmp_path / "none.sqlite")], env=ENV
    )
    assert result.exit_code == 2 and "no ratings database" in result.output


def test_cli_model_predicts_per_image_and_names_bad_metrics(private_index, tmp_path):
    work = private_index
    frame = store.read_frame(work)
    ok = frame[(frame["header_status"] == "ok") & frame["derived_from"].isna()]
    engine = ratings.connect(ratings.default_db(work))
    ratings.add_rater(engine, "ana")
    rng = np.random.default_rng(0)
    noise = pd.Series(rng.uniform(0, 1, len(ok)), index=ok["image_id"])
    metrics = pd.DataFrame(
        dict(
            image_id=ok["image_id"],
            dataset_id=ok["dataset_id"],
            noise_sigma=noise.to_numpy(),
            efc=rng.normal(size=len(ok)),
        )
    )
    for image in ok["image_id"].iloc[:: max(1, len(ok) // 30)]:  # ~30 units, many datasets
        score = int(round(1 + 3 * noise[image]))
        ratings.save_rating(
            engine,
            dict(
                image_id=image,
                rater_id="ana",
                kind="regular",
                submission_id=ratings.new_submission_id(),
                noisiness=score,
                blurriness=score,
                artifact_level=score,
                fov_suboptimal=False,
                corrupted=False,
            ),
            planned=False,
        )
    idx = ["iqs", "--index", str(work), "--model", "--out", str(tmp_path / "iqs.parquet")]
    result = runner.invoke(app, [*idx, "--metrics", str(tmp_path / "none.parquet")], env=ENV)
    assert result.exit_code == 2 and "none.parquet" in result.output
    bad = tmp_path / "bad.parquet"
    metrics.drop(columns="image_id").to_parquet(bad)
    result = runner.invoke(app, [*idx, "--metrics", str(bad)], env=ENV)
    assert result.exit_code == 2 and "bad.parquet" in result.output and "image_id" in result.output
    good = tmp_path / "metrics.parquet"
    metrics.to_parquet(good)
    text = _ok([*idx, "--metrics", str(good)])
    assert "Spearman" in text and "baseline" in text
    after = store.read_frame(work).set_index("image_id")
    predicted = after.loc[ok["image_id"], "iqs_predicted"]
    assert predicted.notna().all() and predicted.between(1, 5).all()
    assert after.loc[ok["image_id"], "iqs_image"].notna().sum() >= 10  # the paper's score stays

    few = tmp_path / "few.parquet"
    metrics.head(3).to_parquet(few)
    text = _ok([*idx, "--metrics", str(few)])
    assert "no per-image model" in text
    assert store.read_frame(work)["iqs_predicted"].isna().all()  # a stale prediction is cleared


def test_changed_files_flags_ratings_of_a_changed_file(tmp_path):
    import hashlib

    from openmind_curate.quality.iqs import changed_files

    for name, data in (("a.nii", b"aaa"), ("b.nii", b"bbb"), ("fa.nii", b"F"), ("md.nii", b"M")):
        (tmp_path / name).write_bytes(data)
    idx = _index(
        _img("a"),
        _img("b"),
        _img("d", modality="DWI"),
        _img("fa", modality="FA", derived_from="d"),
        _img("md", modality="MD", derived_from="d"),
    )
    idx["root"], idx["path"] = str(tmp_path), ["a.nii", "b.nii", "d.nii", "fa.nii", "md.nii"]
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    rows = [_r("a", "r1", 1, 1, 1), _r("b", "r1", 1, 1, 1), _r("d", "r1", 1, 1)]
    rows[0]["image_checksum"] = sha(b"aaa")  # unchanged
    rows[1]["image_checksum"] = sha(b"old bytes")  # the file changed after the rating
    rows[2]["image_checksum"] = sha(b"FM")  # a DWI unit: its maps' bytes, FA then MD
    assert changed_files(idx, _ratings(*rows)) == ["b"]


def test_cli_dwi_maps_in_a_real_index(private_index, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc

    from openmind_curate.ids import image_id
    from openmind_curate.schema import IMAGE_INDEX

    work = private_index
    table = store.read(work)
    dwi = table.filter(pc.equal(table["modality"], "DWI")).to_pylist()[0]
    maps = []
    for modality in ("FA", "MD", "T2w"):
        path = f"derivatives/dwi/{modality}.nii.gz"
        maps.append(
            {
                **dwi,
                "image_id": image_id(dwi["dataset_id"], path),
                "path": path,
                "modality": modality,
                "suffix": modality,
                "derived_from": dwi["image_id"],
            }
        )
    store.add_rows(work, pa.Table.from_pylist(maps, schema=IMAGE_INDEX))
    frame = store.read_frame(work)
    ds = dwi["dataset_id"]
    other = frame[
        (frame["dataset_id"] == ds)
        & frame["derived_from"].isna()
        & (frame["modality"] != "DWI")
        & (frame["header_status"] == "ok")
    ].iloc[0]
    engine = ratings.connect(ratings.default_db(work))
    ratings.add_rater(engine, "ana")
    for unit, score, artifact in ((dwi["image_id"], 2, 5), (other["image_id"], 4, 3)):
        ratings.save_rating(
            engine,
            dict(
                image_id=unit,
                rater_id="ana",
                kind="regular",
                submission_id=ratings.new_submission_id(),
                noisiness=score,
                blurriness=score,
                artifact_level=artifact,
                fov_suboptimal=False,
                corrupted=False,
            ),
            planned=False,
        )
    out = tmp_path / "iqs.parquet"
    _ok(["iqs", "--index", str(work), "--out", str(out)])
    after = store.read_frame(work).set_index("image_id")
    unit = [dwi["image_id"], *[m["image_id"] for m in maps]]
    assert (after.loc[unit, "iqs_image"] == 2.0).all()  # artifact 5 ignored for a DWI unit
    assert (after.loc[unit, "iqs"] == 2.0).all()
    detail = pq.read_table(out).to_pandas().set_index("image_id")
    assert (detail.loc[unit, "group_key"] == f"{ds}/DWI-derived").all()
    # the acquired image of the same dataset keeps its own group and score: (4 + 4 + 3) / 3
    assert detail.loc[other["image_id"], "group_key"] == f"{ds}/{other['modality']}"
    assert detail.loc[other["image_id"], "iqs"] == pytest.approx(11 / 3)
