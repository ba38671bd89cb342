"""`curate raters`, `curate ratings plan|export|import|agreement` on a crawled corpus."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.quality import ratings
from openmind_curate.quality.simulate import latent_scores, simulate

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def _ok(args):
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    return result.output


def test_plan_rate_export_import_agreement(corpus, private_index, tmp_path):
    _, truth = corpus
    work = private_index  # its ratings.sqlite lands beside it
    idx = ["--index", str(work)]
    tokens = {}
    for name in ("ana", "ben", "cho"):
        out = _ok(["raters", "add", name, *idx])
        tokens[name] = out.strip().splitlines()[-1]
    _ok(["raters", "add", "boss", "--admin", *idx])
    db = ratings.default_db(work)
    assert db.is_file() and db.parent == work.parent
    engine = ratings.connect(db)
    assert ratings.authenticate(engine, tokens["ben"]).rater_id == "ben"

    frame = store.read_frame(work)
    gold_id = frame.loc[frame["modality"] == "T2w", "image_id"].iloc[0]
    gold = tmp_path / "gold.csv"
    answers = dict(
        noisiness=1, blurriness=1, artifact_level=1, fov_suboptimal=False, corrupted=False
    )
    pd.DataFrame([dict(image_id=gold_id, **answers)]).to_csv(gold, index=False)
    out = _ok(
        [
            "ratings",
            "plan",
            *idx,
            "--per-group",
            "2",
            "--raters",
            "2",
            "--seed",
            "7",
            "--repeat-fraction",
            "0.2",
            "--gold",
            str(gold),
        ]
    )
    assert "Listed, not assigned" in out and "header_status is" in out
    plan = ratings.read_assignments(engine)
    assert set(plan["rater_id"]) == {"ana", "ben", "cho"}  # the admin is not a rater by default
    regular = plan[plan["kind"] == "regular"]
    assert (regular.groupby("image_id").size() == 2).all()
    ok_ids = set(frame.loc[frame["header_status"] == "ok", "image_id"])
    assert set(regular["image_id"]) <= ok_ids
    assert (plan.loc[plan["kind"] == "gold", "image_id"] == gold_id).sum() == 3
    again = _ok(
        [
            "ratings",
            "plan",
            *idx,
            "--per-group",
            "2",
            "--raters",
            "2",
            "--seed",
            "7",
            "--repeat-fraction",
            "0.2",
            "--gold",
            str(gold),
        ]
    )
    assert "0 new assignments" in again

    assert simulate(engine, truth, ["ana", "ben", "cho"]) == len(plan)
    out = _ok(["ratings", "agreement", *idx, "--out", str(tmp_path / "agree")])
    assert "Krippendorff" in out and (tmp_path / "agree" / "agreement_axes.csv").is_file()
    assert "Accuracy on gold items" in out
    assert "* on fewer than 5 items: read with care" in out  # one gold item per rater

    _ok(["ratings", "export", "--out", str(tmp_path / "all.parquet"), *idx, "--all-versions"])
    exported = pd.read_parquet(tmp_path / "all.parquet")
    assert len(exported) == len(plan)
    other = tmp_path / "other.sqlite"
    for name in ("ana", "ben", "cho"):
        _ok(["raters", "add", name, *idx, "--db", str(other)])
    out = _ok(["ratings", "import", str(tmp_path / "all.parquet"), *idx, "--db", str(other)])
    assert f"{len(plan)} ratings imported" in out

    bad = exported.head(3).copy()
    bad.loc[bad.index[0], "blurriness"] = 9
    bad.loc[bad.index[1], "rater_id"] = "mallory"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    before = len(ratings.read_ratings(engine))
    result = runner.invoke(app, ["ratings", "import", str(tmp_path / "bad.csv"), *idx], env=ENV)
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "blurriness: 9 is above 5" in result.output
    assert "'mallory' is not a known rater" in result.output
    assert len(ratings.read_ratings(engine)) == before

    _ok(["raters", "revoke", "ben", *idx])
    with pytest.raises(ratings.RatingsError, match="revoked"):
        ratings.authenticate(engine, tokens["ben"])
    listed = _ok(["raters", "list", *idx])
    assert "ben" in listed and "False" in listed


def test_clear_errors(private_index, tmp_path):
    work = private_index
    result = runner.invoke(app, ["rate", "--index", str(work)], env=ENV)
    assert result.exit_code == 2 and "no ratings database" in result.output
    _ok(["raters", "add", "solo", "--index", str(work)])
    result = runner.invoke(app, ["ratings", "plan", "--index", str(work)], env=ENV)
    assert result.exit_code == 2 and "needs 2 raters per image but only 1" in result.output
    result = runner.invoke(app, ["raters", "add", "solo", "--index", str(work)], env=ENV)
    assert result.exit_code == 2 and "already exists" in result.output
    gold = tmp_path / "gold.csv"
    gold.write_text(
        "image_id,noisiness,blurriness,artifact_level,fov_suboptimal,corrupted\n"
        "not-an-image,1,1,1,False,False\n"
    )
    _ok(["raters", "add", "duo", "--index", str(work)])
    result = runner.invoke(
        app, ["ratings", "plan", "--index", str(work), "--gold", str(gold)], env=ENV
    )
    assert result.exit_code == 2 and "'not-an-image' is not a unit of the index" in result.output
    engine = ratings.connect(ratings.default_db(work))
    assert ratings.read_assignments(engine).empty  # a bad gold file writes no plan


def test_simulated_scores_follow_the_truth(corpus):
    """The simulated raters' noiseless scores rise with each ladder's level."""
    _, truth = corpus
    images = truth[truth["kind"] == "image"]
    ladders = (
        ("noise", "noisiness"),
        ("blur", "blurriness"),
        ("ghost", "artifact_level"),
        ("gibbs", "artifact_level"),
        ("bias", "artifact_level"),
    )
    for ladder, axis in ladders:
        steps = images[images["ladder"] == ladder].sort_values("ladder_level")
        scores = [latent_scores(row)[axis] for _, row in steps.iterrows()]
        assert len(scores) >= 3 and scores == sorted(scores) and scores[-1] > scores[0], ladder


def test_demo_ratings_never_write_under_a_real_raters_name(corpus, private_index, tmp_path):
    """A user adds a rater and a plan in the demo's folder, then re-runs the demo."""
    from openmind_curate.cli.ratings import demo_ratings

    _, truth = corpus
    truth_path = tmp_path / "truth.parquet"
    truth.to_parquet(truth_path)
    idx = ["--index", str(private_index)]
    _ok(["raters", "add", "newbie", *idx])
    _ok(["ratings", "plan", "--raters", "1", *idx])
    engine = ratings.connect(ratings.default_db(private_index))
    assert len(ratings.read_assignments(engine, "newbie")) > 0
    demo_ratings(private_index, truth_path)
    done = ratings.read_ratings(engine)
    assert len(done) > 0 and set(done["rater_id"]) <= {f"simulated-{i}" for i in (1, 2, 3)}
    assert ratings.read_ratings(engine, rater_id="newbie").empty
