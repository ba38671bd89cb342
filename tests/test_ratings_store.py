"""The ratings store on SQLite: tokens, append-only versions, refusals, import/export.

(PostgreSQL and many writers at once: tests/test_ratings_concurrency.py.)
"""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from openmind_curate.errors import InputError
from openmind_curate.quality import ratings as R

HOSTILE = "<script>alert(1)</script>'; DROP TABLE ratings;-- ../../etc/passwd"


@pytest.fixture
def db(tmp_path):
    engine = R.connect(tmp_path / "ratings.sqlite")
    tokens = {name: R.add_rater(engine, name) for name in ("ann", "bob")}
    pairs = [(r, p, i) for r in ("ann", "bob") for p, i in enumerate(("img-a", "img-b"))]
    items = pd.DataFrame(pairs, columns=["rater_id", "position", "image_id"])
    items = items.assign(kind="regular", dataset_id="ds1", group_name="T1w")
    R.add_assignments(engine, items, plan="test")
    return engine, tokens, tmp_path / "ratings.sqlite"


def _rating(**kw):
    base = dict(
        image_id="img-a",
        rater_id="ann",
        kind="regular",
        noisiness=2,
        blurriness=3,
        artifact_level=1,
        fov_suboptimal=False,
        corrupted=False,
    )
    base.update(kw)
    base.setdefault("submission_id", R.new_submission_id())
    return base


def _count(engine) -> int:
    return len(R.read_ratings(engine))


def test_sqlite_is_in_wal_mode(db):
    _, _, path = db
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_token_stored_only_as_salted_hash(db):
    engine, tokens, path = db
    assert R.authenticate(engine, tokens["ann"]) == R.Rater("ann", False)
    dump = "\n".join(sqlite3.connect(path).iterdump())
    for token in tokens.values():
        assert token.split(".")[1] not in dump  # the secret is nowhere in the file
    # two raters never share a salt, so equal secrets would still hash differently
    salts = {row[0] for row in sqlite3.connect(path).execute("SELECT token_salt FROM raters")}
    assert len(salts) == 2


@pytest.mark.parametrize("forged", ["", "nodot", "x.y", "TOKEN-OF-ANN", "lookup.wrong-secret"])
def test_forged_tokens_refused(db, forged):
    engine, tokens, _ = db
    if forged == "TOKEN-OF-ANN":
        forged = tokens["ann"][:-1] + ("A" if tokens["ann"][-1] != "A" else "B")
    if forged == "lookup.wrong-secret":
        forged = tokens["ann"].split(".")[0] + ".wrong-secret"
    with pytest.raises(R.RatingsError, match="token"):
        R.authenticate(engine, forged)


def test_revoked_token_refused_and_cannot_save(db):
    engine, tokens, _ = db
    R.revoke_rater(engine, "ann")
    with pytest.raises(R.RatingsError, match="revoked"):
        R.authenticate(engine, tokens["ann"])
    with pytest.raises(R.RatingsError, match="revoked"):
        R.save_rating(engine, _rating())
    assert _count(engine) == 0
    new = R.add_rater(engine, "ann")  # a new token for the same rater
    assert new != tokens["ann"] and R.authenticate(engine, new).rater_id == "ann"


def test_double_save_is_one_rating_and_corrections_are_versions(db):
    engine, _, _ = db
    first = _rating(noisiness=2)
    assert R.save_rating(engine, first) == R.Saved(1, duplicate=False)
    assert R.save_rating(engine, first) == R.Saved(1, duplicate=True)  # the double click
    assert R.save_rating(engine, _rating(noisiness=4)) == R.Saved(2, duplicate=False)
    R.save_rating(engine, _rating(rater_id="bob", noisiness=5))
    every = R.read_ratings(engine)
    assert len(every) == 3  # append-only: version 1 is still there
    counted = R.latest(every).set_index("rater_id")
    assert counted.loc["ann", "noisiness"] == 4 and counted.loc["ann", "version"] == 2
    assert counted.loc["bob", "version"] == 1


def test_image_not_in_plan_refused(db):
    engine, _, _ = db
    with pytest.raises(R.RatingsError, match="img-zzz.*not in the plan of rater 'ann'"):
        R.save_rating(engine, _rating(image_id="img-zzz"))
    with pytest.raises(R.RatingsError, match="not in the plan"):
        R.save_rating(engine, _rating(kind="gold"))  # planned as regular, not as gold
    assert _count(engine) == 0


def test_out_of_range_score_refused(db):
    engine, _, _ = db
    with pytest.raises(ValueError, match="noisiness.*above 5"):
        R.save_rating(engine, _rating(noisiness=6))
    assert _count(engine) == 0


def test_hostile_comment_stored_verbatim(db):
    engine, _, _ = db
    R.save_rating(engine, _rating(comment=HOSTILE))
    assert R.read_ratings(engine)["comment"].tolist() == [HOSTILE]
    assert R.list_raters(engine)["rater_id"].tolist() == ["ann", "bob"]  # no table dropped


def test_export_import_roundtrip_csv_and_parquet(db, tmp_path):
    engine, _, _ = db
    R.save_rating(engine, _rating(comment=HOSTILE))
    R.save_rating(engine, _rating(noisiness=5, artifact_level=None))
    R.save_rating(engine, _rating(rater_id="bob", image_id="img-b"))
    for name in ("all.csv", "all.parquet"):
        assert R.export_ratings(engine, tmp_path / name, all_versions=True) == 3
        other = R.connect(tmp_path / f"other-{name}.sqlite")
        R.add_rater(other, "ann")
        R.add_rater(other, "bob")
        df = R.read_table_file(tmp_path / name)
        assert R.import_ratings(other, df, {"img-a", "img-b"}) == 3
        assert R.import_ratings(other, df, {"img-a", "img-b"}) == 0  # same submissions
        back = R.read_ratings(other).sort_values(["rater_id", "version"])
        want = R.read_ratings(engine).sort_values(["rater_id", "version"])
        cols = ["image_id", "rater_id", "version", "noisiness", "artifact_level", "comment"]
        pd.testing.assert_frame_equal(
            back[cols].reset_index(drop=True), want[cols].reset_index(drop=True)
        )
    assert R.export_ratings(engine, tmp_path / "latest.csv", all_versions=False) == 2


def test_bad_import_lists_every_bad_row_and_writes_nothing(db, tmp_path):
    engine, _, _ = db
    path = tmp_path / "bad.csv"
    pd.DataFrame(
        [
            dict(
                image_id="img-a",
                rater_id="ann",
                noisiness=2,
                blurriness=2,
                artifact_level=1,
                fov_suboptimal=False,
                corrupted=False,
                created_at="2026-01-01T00:00:00Z",
            ),
            dict(
                image_id="img-a",
                rater_id="eve",
                noisiness=7,
                blurriness=2,
                artifact_level=0,
                fov_suboptimal=False,
                corrupted=False,
                created_at="2026-01-01T00:00:00Z",
            ),
            dict(
                image_id="nowhere",
                rater_id="bob",
                noisiness=3,
                blurriness=2,
                artifact_level=1,
                fov_suboptimal=False,
                corrupted=False,
                created_at="2026-01-01T00:00:00Z",
            ),
        ]
    ).to_csv(path, index=False)
    with pytest.raises(R.RatingsError) as err:
        R.import_ratings(engine, R.read_table_file(path), {"img-a", "img-b"}, str(path))
    message = str(err.value)
    assert str(path) in message and "nothing imported" in message
    assert "row 3: noisiness: 7 is above 5" in message  # line 3 of the file
    assert "row 3: artifact_level: 0 is below 1" in message
    assert "row 3: rater_id: 'eve' is not a known rater" in message
    assert "row 4: image_id: 'nowhere' is not in the index" in message
    assert _count(engine) == 0  # the good first row was not written either


def test_unreadable_file_named(tmp_path):
    """The one message shape of a user's table: ``<what> <file>: <problem>``."""
    path = tmp_path / "ratings.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(InputError) as err:
        R.read_table_file(path, "ratings file")
    assert str(err.value).startswith(f"ratings file {path}: cannot read it as parquet (")
    with pytest.raises(InputError, match=r"gold file .*gold\.csv: no column corrupted"):
        (tmp_path / "gold.csv").write_text("image_id,noisiness\nimg-a,1\n")
        R.read_table_file(tmp_path / "gold.csv", "gold file", ["image_id", "corrupted"])


def test_a_comment_over_two_lines_survives_export_and_import(db, tmp_path):
    engine, _, _ = db
    comment = 'two lines,\nthe second "quoted"'
    R.save_rating(engine, _rating(comment=comment))
    path = tmp_path / "ratings.csv"
    assert R.export_ratings(engine, path, all_versions=True) == 1
    other = R.connect(tmp_path / "other.sqlite")
    R.add_rater(other, "ann")
    assert R.import_ratings(other, R.read_table_file(path), {"img-a"}) == 1
    assert R.read_ratings(other)["comment"].tolist() == [comment]


def test_queue_resumes_at_first_unrated_and_skip_moves_to_end(db):
    engine, _, _ = db
    assert R.queue(engine, "ann")["image_id"].tolist() == ["img-a", "img-b"]
    R.skip(engine, "ann", "img-a", "regular")
    assert R.queue(engine, "ann")["image_id"].tolist() == ["img-b", "img-a"]
    R.save_rating(engine, _rating(image_id="img-b"))
    q = R.queue(engine, "ann")
    assert q.loc[q["rated_at"].isna(), "image_id"].tolist() == ["img-a"]
    assert R.queue(engine, "bob")["rated_at"].isna().all()  # ann's rating is not bob's


def test_newer_store_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    R.connect(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE store_meta SET value='99' WHERE key='version'")
    with pytest.raises(R.RatingsError, match="newer openmind-curate"):
        R.connect(path)


def test_postgres_url_uses_psycopg():
    assert R.db_url("postgresql://u:pw@h:5/db") == "postgresql+psycopg://u:pw@h:5/db"
    assert "pw" not in R.describe("postgresql://u:pw@h:5/db")


def test_new_sqlite_file_is_private_and_an_old_one_keeps_its_mode(tmp_path):
    fresh = tmp_path / "new" / "ratings.sqlite"
    R.connect(fresh).dispose()
    assert fresh.stat().st_mode & 0o777 == 0o600
    old = tmp_path / "old.sqlite"
    R.connect(old).dispose()
    old.chmod(0o640)  # the lab chose to share it with its group
    R.connect(old).dispose()
    assert old.stat().st_mode & 0o777 == 0o640


def test_sign_in_hashes_once_for_known_and_unknown_lookup_keys(db, monkeypatch):
    engine, tokens, _ = db
    calls = []
    real = R._hash
    monkeypatch.setattr(R, "_hash", lambda *a: calls.append(a) or real(*a))
    lookup, _, secret = tokens["ann"].partition(".")
    attempts = [tokens["ann"], f"{lookup}.wrong-secret", f"{'0' * 16}.{secret}"]
    for token in attempts:
        try:
            R.authenticate(engine, token)
        except R.RatingsError:
            pass
    assert len(calls) == 3  # one PBKDF2 of the same rounds each, known key or not


def test_plain_csv_of_another_tool_imports_with_defaults(db, tmp_path):
    """image_id, rater_id and the five answers are enough (docs/guide/ratings.md)."""
    engine, _, _ = db
    path = tmp_path / "plain.csv"
    path.write_text(
        "image_id,rater_id,noisiness,blurriness,artifact_level,fov_suboptimal,corrupted\n"
        "img-a,ann,2,3,1,false,false\n"
        "img-b,bob,4,4,,true,false\n"
    )
    before = pd.Timestamp(R.now())
    assert R.import_ratings(engine, R.read_table_file(path), {"img-a", "img-b"}) == 2
    got = R.read_ratings(engine).sort_values("rater_id").reset_index(drop=True)
    assert list(got["kind"]) == ["regular", "regular"] and list(got["version"]) == [1, 1]
    assert list(got["noisiness"]) == [2, 4] and bool(got["fov_suboptimal"][1])
    assert (got["created_at"] >= before).all()  # the import time
    assert R.import_ratings(engine, R.read_table_file(path), {"img-a", "img-b"}) == 0
