"""The ratings store under concurrent raters, on SQLite and on PostgreSQL.

8 processes each write 200 ratings, once to one SQLite database and once to
PostgreSQL. All 1,600 are present on each, and none is duplicated. A
double-clicked save stores one rating.

Two processes share each of 4 raters and walk that rater's 100 images in the
same order, twice, so they race for the same (rater, image, kind) item all the
time: the versions of each item must still come out 1..4 with no gap and no
repeat. Every save is sent twice with one submission id (a double click); the
second must come back as a duplicate of the first, with its version.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import random
import time
import traceback
from collections import Counter

import pandas as pd
import pytest

from openmind_curate.quality import ratings as store

N_RATERS, N_IMAGES, PER_RATER = 4, 100, 2  # 8 processes, 100 images per rater
SAVES = 200  # per process: each of the rater's images twice
N_PROCS = N_RATERS * PER_RATER


def _plan(raters: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            dict(
                rater_id=r,
                image_id=f"img-{i:03d}",
                kind="regular",
                position=i + 1,
                dataset_id="ds000001",
                group_name="T1w",
            )
            for r in raters
            for i in range(N_IMAGES)
        ]
    )


def _rating(rater_id: str, image_id: str, proc: int, rng: random.Random) -> dict:
    return dict(
        image_id=image_id,
        rater_id=rater_id,
        kind="regular",
        submission_id=store.new_submission_id(),
        noisiness=rng.randint(1, 5),
        blurriness=rng.randint(1, 5),
        artifact_level=rng.randint(1, 5),
        fov_suboptimal=False,
        corrupted=False,
        comment=f"p{proc}",
        seconds_spent=1.5,
    )


def _rater_process(db: str, token: str, proc: int, barrier, results) -> None:
    """One rater's browser: sign in, then 200 saves, each clicked twice."""
    try:
        engine = store.connect(db, create=False)
        rater = store.authenticate(engine, token).rater_id
        order = [f"img-{i:03d}" for i in range(N_IMAGES)]
        random.Random(rater).shuffle(order)  # the same order for both processes of a rater
        rng = random.Random(proc)
        saved = []
        barrier.wait(timeout=120)  # everyone signed in: start together
        for image_id in order * (SAVES // N_IMAGES):
            rating = _rating(rater, image_id, proc, rng)
            first = store.save_rating(engine, rating)
            again = store.save_rating(engine, rating)  # the double click
            saved.append(
                (
                    rating["submission_id"],
                    image_id,
                    first.version,
                    first.duplicate,
                    again.version,
                    again.duplicate,
                )
            )
        engine.dispose()
        results.put((proc, rater, saved, None))
    except BaseException:
        barrier.abort()
        results.put((proc, None, None, traceback.format_exc()))


def _collect(procs, results, timeout: float = 300.0) -> list:
    """One result per process; a process that died without one (killed, or
    failed to start) fails the test at once, with its exit code."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < len(procs):
        try:
            out.append(results.get(timeout=1))
        except queue.Empty:
            dead = [p.exitcode for p in procs if not p.is_alive()]
            if len(dead) == len(procs) and results.empty():
                time.sleep(1)  # a result put just before exiting may still be in the pipe
                if results.empty():
                    pytest.fail(
                        f"{len(procs) - len(out)} process(es) ended without a result; "
                        f"exit codes {dead}"
                    )
            if time.monotonic() > deadline:
                pytest.fail(f"no result from {len(procs) - len(out)} process(es) in {timeout} s")
    return out


def _store_with_raters(db: str) -> dict[str, str]:
    engine = store.connect(db)
    raters = [f"rater-{k}" for k in range(N_RATERS)]
    tokens = {r: store.add_rater(engine, r) for r in raters}
    assert store.add_assignments(engine, _plan(raters), plan="concurrency") == N_RATERS * N_IMAGES
    engine.dispose()
    return tokens


@pytest.fixture(params=["sqlite", "postgres"])
def ratings_db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ratings.sqlite")
    return request.getfixturevalue("postgres_db_url")


@pytest.mark.slow
def test_eight_processes_race_and_double_click(ratings_db):
    tokens = _store_with_raters(ratings_db)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(N_PROCS), ctx.Queue()
    procs = [
        ctx.Process(
            target=_rater_process, args=(ratings_db, tokens[f"rater-{p // 2}"], p, barrier, results)
        )
        for p in range(N_PROCS)
    ]
    start = time.monotonic()
    for p in procs:
        p.start()
    try:
        out = _collect(procs, results)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    seconds = time.monotonic() - start
    errors = [f"process {proc}:\n{err}" for proc, _, _, err in out if err]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    # what each process was told
    told = {}
    for proc, rater, saved, _ in out:
        assert rater == f"rater-{proc // 2}"
        assert len(saved) == SAVES
        for sid, image_id, version, dup, again_version, again_dup in saved:
            assert not dup, f"process {proc}: a first save of {image_id} said duplicate"
            assert again_dup, f"process {proc}: the double click on {image_id} stored a second row"
            assert again_version == version
            told[sid] = (proc, rater, image_id, version)
    assert len(told) == N_PROCS * SAVES

    # what the database holds
    engine = store.connect(ratings_db, create=False)
    df = store.read_ratings(engine)
    engine.dispose()
    assert len(df) == N_PROCS * SAVES == 1600
    assert df["submission_id"].is_unique
    assert set(df["submission_id"]) == set(told)
    assert not df.duplicated(["rater_id", "image_id", "kind", "version"]).any()
    stored = {
        r.submission_id: (int(r.comment[1:]), r.rater_id, r.image_id, int(r.version))
        for r in df.itertuples()
    }
    assert stored == told  # each row is the one its process saved, with the version it was told
    assert Counter(proc for proc, *_ in stored.values()) == {p: SAVES for p in range(N_PROCS)}
    versions = df.groupby(["rater_id", "image_id", "kind"])["version"].apply(sorted)
    n = PER_RATER * SAVES // N_IMAGES
    assert len(versions) == N_RATERS * N_IMAGES
    gaps = versions[versions.map(lambda v: v != list(range(1, n + 1)))]
    assert gaps.empty, f"versions not 1..{n}:\n{gaps.head()}"
    # the race was real: the two processes of a rater took turns on the same items
    turns = df.sort_values("version").groupby(["rater_id", "image_id"])["comment"].agg(list)
    raced = turns.map(lambda who: sum(a != b for a, b in itertools.pairwise(who)) > 1).sum()
    assert raced > 0, "the processes of a rater never interleaved on an item: no race was tested"
    last = store.latest(df)
    assert len(last) == N_RATERS * N_IMAGES and (last["version"] == n).all()
    print(
        f"{store.describe(ratings_db)}: 8 processes, 3,200 saves in {seconds:.1f} s, "
        f"{raced} of {len(turns)} items saved in turns"
    )


def test_postgres_refuses_unplanned_and_revoked(postgres_db_url):
    engine = store.connect(postgres_db_url)
    token = store.add_rater(engine, "ana")
    store.add_assignments(engine, _plan(["ana"]).head(3), plan="p")
    rater = store.authenticate(engine, token).rater_id
    rng = random.Random(0)

    unplanned = _rating(rater, "img-050", 0, rng)
    with pytest.raises(
        store.RatingsError,
        match=r"img-050 \(regular\) is not in the plan of "
        r"rater 'ana'; nothing saved",
    ):
        store.save_rating(engine, unplanned)
    assert store.read_ratings(engine).empty

    assert store.save_rating(engine, _rating(rater, "img-000", 0, rng)) == store.Saved(1, False)
    store.revoke_rater(engine, "ana")
    with pytest.raises(store.RatingsError, match="the token of 'ana' was revoked"):
        store.authenticate(engine, token)
    with pytest.raises(store.RatingsError, match="the token of 'ana' was revoked"):
        store.save_rating(engine, _rating(rater, "img-001", 0, rng))
    after = store.read_ratings(engine)
    assert len(after) == 1 and after["image_id"].tolist() == ["img-000"]
    engine.dispose()


def _first_connect(db: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=120)
        store.connect(db).dispose()  # every process makes the tables, as `curate` does
        results.put(None)
    except BaseException:
        barrier.abort()
        results.put(traceback.format_exc())


def test_eight_processes_open_a_new_database_at_once(ratings_db):
    """Raters' apps starting together on an empty database all succeed (the tables
    are made under a lock, not eight times over)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(N_PROCS), ctx.Queue()
    procs = [
        ctx.Process(target=_first_connect, args=(ratings_db, barrier, results))
        for _ in range(N_PROCS)
    ]
    for p in procs:
        p.start()
    errors = [e for e in _collect(procs, results) if e]
    for p in procs:
        p.join(timeout=60)
    assert not errors, "\n".join(errors)
    engine = store.connect(ratings_db, create=False)
    assert store.list_raters(engine).empty and store.read_ratings(engine).empty
