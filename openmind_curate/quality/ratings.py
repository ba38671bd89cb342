"""The ratings store: raters, their assignments and their ratings, in SQL.

SQLAlchemy over an embedded SQLite file (WAL mode, the default, beside the
index) or a PostgreSQL server that many raters share. Ratings are
append-only: a correction is a new row with the next version of the same
(rater, image, kind), and the latest version counts. Every save carries a
submission id, so a double-clicked save stores one rating. The ratings table's
columns are generated from `schema.RATINGS`, the one definition of the table.

Tokens: a rater signs in with a token ``<lookup>.<secret>``; the store keeps
the lookup in clear and a salted PBKDF2 hash of the secret, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from openmind_curate import __version__, schema, tables
from openmind_curate.preflight import InputError
from openmind_curate.schema import ITEM_KINDS, RATINGS

STORE_VERSION = 1
AXES = ("noisiness", "blurriness", "artifact_level")
FLAGS = ("fov_suboptimal", "corrupted")
_PBKDF2_ROUNDS = 120_000
_SAVE_ATTEMPTS = 50
_DUMMY_SALT = secrets.token_hex(16)  # for the hash of a sign-in with an unknown lookup key


class RatingsError(InputError):
    """A refused request (bad token, an image not in the plan, a bad file);
    the message says what and why, and nothing was written."""


def _sql_type(type_: pa.DataType) -> sa.types.TypeEngine:
    if pa.types.is_boolean(type_):
        return sa.Boolean()
    if pa.types.is_integer(type_):
        return sa.Integer()
    if pa.types.is_floating(type_):
        return sa.Float()
    if pa.types.is_timestamp(type_):
        return sa.DateTime(timezone=True)
    return sa.Text()


metadata = sa.MetaData()

raters = sa.Table(
    "raters",
    metadata,
    sa.Column("rater_id", sa.String(200), primary_key=True),
    sa.Column("token_lookup", sa.String(32), nullable=False, unique=True),
    sa.Column("token_salt", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.String(128), nullable=False),
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)

assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rater_id", sa.String(200), sa.ForeignKey("raters.rater_id"), nullable=False),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("dataset_id", sa.Text, nullable=False),
    sa.Column("group_name", sa.Text, nullable=False),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("rater_id", "image_id", "kind", name="one_assignment"),
)

gold = sa.Table(
    "gold",
    metadata,
    sa.Column("image_id", sa.String(64), primary_key=True),
    *[sa.Column(a, sa.Integer) for a in AXES],
    *[sa.Column(f, sa.Boolean) for f in FLAGS],
)

ratings = sa.Table(
    "ratings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *[sa.Column(f.name, _sql_type(f.type), nullable=f.nullable) for f in RATINGS],
    sa.UniqueConstraint("submission_id", name="one_save"),
    sa.UniqueConstraint("rater_id", "image_id", "kind", "version", name="one_version"),
)

store_meta = sa.Table(
    "store_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


# --- connecting ---------------------------------------------------------------------------


def default_db(index_path: str | os.PathLike[str]) -> Path:
    """The everyday database: a SQLite file beside the index."""
    return Path(index_path).resolve().parent / "ratings.sqlite"


def db_url(db: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL from a URL or a file path; ``postgresql://`` uses psycopg 3."""
    text = str(db)
    if "://" not in text:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def describe(db: str | os.PathLike[str]) -> str:
    """The database for messages, with any password hidden."""
    return sa.engine.make_url(db_url(db)).render_as_string(hide_password=True)


def connect(db: str | os.PathLike[str], *, create: bool = True) -> Engine:
    """An engine on `db`, with the tables made if `create`.

    SQLite runs in WAL mode with a busy timeout, and every transaction takes
    the write lock at BEGIN (``BEGIN IMMEDIATE``): the read-then-insert of a
    save can then never deadlock against another process's save.
    """
    url = db_url(db)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not create and not path.exists():
            raise RatingsError(
                f"{path}: no ratings database here (make one with `curate raters add`)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        _private_file(path)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        if create:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":  # many processes may create at once
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7235175)"))
                metadata.create_all(conn)
                _check_version(conn, describe(db))
    except OperationalError as exc:
        where = describe(db)
        raise RatingsError(f"{where}: cannot open the ratings database: {exc.orig}") from None
    return engine


def _private_file(path: Path) -> None:
    """Create a new SQLite file readable by its owner only (0600): it names the
    raters and holds their token hashes. An existing file keeps its mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise RatingsError(f"{path}: cannot create the ratings database: {exc.strerror}") from None


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN IMMEDIATE
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA busy_timeout=60000")
    dbapi_conn.execute("PRAGMA foreign_keys=ON")


def _check_version(conn: sa.Connection, where: str) -> None:
    row = conn.execute(sa.select(store_meta.c.value).where(store_meta.c.key == "version")).first()
    if row is None:  # the caller holds the write lock: nobody else is making it now
        conn.execute(sa.insert(store_meta).values(key="version", value=str(STORE_VERSION)))
    elif int(row.value) > STORE_VERSION:
        raise RatingsError(
            f"{where}: written by a newer openmind-curate (store version "
            f"{row.value}, this one reads {STORE_VERSION}); upgrade it"
        )


def now() -> datetime:
    return datetime.now(UTC)


# --- raters and tokens --------------------------------------------------------------------


@dataclass(frozen=True)
class Rater:
    rater_id: str
    is_admin: bool


def _hash(secret: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), bytes.fromhex(salt), _PBKDF2_ROUNDS).hex()


def add_rater(engine: Engine, name: str, *, admin: bool = False) -> str:
    """Register a rater and return their token, the only time it exists in clear."""
    name = name.strip()
    if not name or len(name) > 200 or any(c in name for c in "\n\r\t"):
        raise RatingsError(f"rater name {name!r}: use 1-200 printable characters")
    lookup, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(24), secrets.token_hex(16)
    row = dict(
        rater_id=name,
        token_lookup=lookup,
        token_salt=salt,
        token_hash=_hash(secret, salt),
        is_admin=admin,
        created_at=now(),
    )
    with engine.begin() as conn:
        old = conn.execute(sa.select(raters).where(raters.c.rater_id == name)).first()
        if old is not None and old.revoked_at is None:
            raise RatingsError(f"rater {name!r} already exists; revoke them first for a new token")
        if old is not None:  # a revoked rater gets a new token, their ratings stay theirs
            conn.execute(
                sa.update(raters).where(raters.c.rater_id == name).values(**row, revoked_at=None)
            )
        else:
            conn.execute(sa.insert(raters).values(**row))
    return f"{lookup}.{secret}"


def revoke_rater(engine: Engine, name: str) -> None:
    """End a rater's token. Their ratings stay; a new `add_rater` gives a new token."""
    with engine.begin() as conn:
        done = conn.execute(
            sa.update(raters)
            .where(raters.c.rater_id == name, raters.c.revoked_at.is_(None))
            .values(revoked_at=now())
        )
    if done.rowcount != 1:
        raise RatingsError(f"no active rater named {name!r}")


def list_raters(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        cols = [raters.c[c] for c in ("rater_id", "is_admin", "created_at", "revoked_at")]
        rows = conn.execute(sa.select(*cols).order_by(raters.c.rater_id)).all()
    return pd.DataFrame(rows, columns=[c.name for c in cols])


def authenticate(engine: Engine, token: str) -> Rater:
    """The rater a token belongs to; a forged, malformed or revoked token is refused."""
    lookup, _, secret = (token or "").strip().partition(".")
    if not lookup or not secret:
        raise RatingsError("that is not a rater token")
    with engine.connect() as conn:
        row = conn.execute(sa.select(raters).where(raters.c.token_lookup == lookup)).first()
    if row is None:  # hash anyway: an unknown lookup costs what a known one does
        hmac.compare_digest(_hash(secret, _DUMMY_SALT), _DUMMY_SALT)
        raise RatingsError("unknown token")
    if not hmac.compare_digest(_hash(secret, row.token_salt), row.token_hash):
        raise RatingsError("unknown token")
    if row.revoked_at is not None:
        raise RatingsError(f"the token of {row.rater_id!r} was revoked")
    return Rater(row.rater_id, bool(row.is_admin))


def _active(conn: sa.Connection, rater_id: str) -> None:
    row = conn.execute(sa.select(raters.c.revoked_at).where(raters.c.rater_id == rater_id)).first()
    if row is None:
        raise RatingsError(f"unknown rater {rater_id!r}")
    if row.revoked_at is not None:
        raise RatingsError(f"the token of {rater_id!r} was revoked")


# --- assignments ----------------------------------------------------------------------------


def add_assignments(engine: Engine, rows: pd.DataFrame, plan: str) -> int:
    """Append planned items to each rater's queue; items a rater already has are
    left as they are, so re-running a plan adds nothing twice. Returns the count added."""
    added = 0
    with engine.begin() as conn:
        for rater_id, items in rows.groupby("rater_id", sort=True):
            _active(conn, str(rater_id))
            have = {
                (r.image_id, r.kind)
                for r in conn.execute(
                    sa.select(assignments.c.image_id, assignments.c.kind).where(
                        assignments.c.rater_id == rater_id
                    )
                )
            }
            start = _max_position(conn, str(rater_id)) + 1
            new = [
                r
                for r in items.sort_values("position").itertuples()
                if (r.image_id, r.kind) not in have
            ]
            if new:
                conn.execute(
                    sa.insert(assignments),
                    [
                        dict(
                            rater_id=str(rater_id),
                            image_id=r.image_id,
                            kind=r.kind,
                            position=start + i,
                            dataset_id=r.dataset_id,
                            group_name=r.group_name,
                            plan=plan,
                            created_at=now(),
                        )
                        for i, r in enumerate(new)
                    ],
                )
            added += len(new)
    return added


def _max_position(conn: sa.Connection, rater_id: str) -> int:
    q = sa.select(sa.func.max(assignments.c.position)).where(assignments.c.rater_id == rater_id)
    return int(conn.execute(q).scalar() or 0)


def set_gold(engine: Engine, answers: pd.DataFrame) -> None:
    """Store the known answers of gold items (replacing earlier answers for the same image)."""
    cols = ["image_id", *AXES, *FLAGS]
    with engine.begin() as conn:
        for row in answers[cols].to_dict("records"):
            row = {k: (None if pd.isna(v) else v) for k, v in row.items()}
            conn.execute(sa.delete(gold).where(gold.c.image_id == row["image_id"]))
            conn.execute(sa.insert(gold).values(**row))


def read_gold(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(sa.select(gold)).all(), columns=gold.c.keys())


def read_assignments(engine: Engine, rater_id: str | None = None) -> pd.DataFrame:
    q = sa.select(assignments).order_by(assignments.c.rater_id, assignments.c.position)
    if rater_id is not None:
        q = q.where(assignments.c.rater_id == rater_id)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(q).all(), columns=assignments.c.keys())


def queue(engine: Engine, rater_id: str, *, done: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rater's items in queue order, each with its latest rating time (or NaT).

    The next item is the first without a rating, which is what makes the app
    resume exactly where the rater left off, on any machine. `done`: the
    rater's ratings, when the caller has just read them (one read fewer).
    """
    items = read_assignments(engine, rater_id)
    if done is None:
        done = read_ratings(engine, rater_id=rater_id)
    if done.empty:
        items["rated_at"] = pd.NaT
        return items
    last = done.groupby(["image_id", "kind"])["created_at"].max().rename("rated_at")
    return items.join(last, on=["image_id", "kind"])


def skip(engine: Engine, rater_id: str, image_id: str, kind: str) -> None:
    """Move an item to the end of the rater's queue (it comes back after the rest)."""
    with engine.begin() as conn:
        end = _max_position(conn, rater_id) + 1
        conn.execute(
            sa.update(assignments)
            .where(
                assignments.c.rater_id == rater_id,
                assignments.c.image_id == image_id,
                assignments.c.kind == kind,
            )
            .values(position=end)
        )


# --- ratings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    version: int
    duplicate: bool  # the same submission was saved before: nothing new was written


def new_submission_id() -> str:
    return uuid.uuid4().hex


def save_rating(engine: Engine, rating: dict[str, Any], *, planned: bool = True) -> Saved:
    """Append one rating, as the next version of the rater's (image, kind) item.

    `rating` holds the RATINGS columns but `version` (given here) and
    `created_at`/`app_version` (defaulted). The rater must be active and, if
    `planned`, the item must be in their queue. A submission id seen before
    returns the first save's version and writes nothing.
    """
    rating = {**rating, "version": 1}
    rating.setdefault("created_at", now())
    rating.setdefault("app_version", __version__)
    if not rating.get("submission_id"):
        raise RatingsError("a rating needs a submission_id")
    row = schema.rows_to_table([rating], RATINGS).to_pylist()[0]  # types and ranges
    sid = row["submission_id"]
    for _ in range(_SAVE_ATTEMPTS):
        try:
            with engine.begin() as conn:
                seen = conn.execute(
                    sa.select(ratings.c.version).where(ratings.c.submission_id == sid)
                ).first()
                if seen is not None:
                    return Saved(int(seen.version), duplicate=True)
                _active(conn, row["rater_id"])
                if planned:
                    _planned(conn, row)
                q = sa.select(sa.func.max(ratings.c.version)).where(
                    ratings.c.rater_id == row["rater_id"],
                    ratings.c.image_id == row["image_id"],
                    ratings.c.kind == row["kind"],
                )
                row["version"] = int(conn.execute(q).scalar() or 0) + 1
                conn.execute(sa.insert(ratings).values(**row))
            return Saved(row["version"], duplicate=False)
        except IntegrityError:
            continue  # a concurrent save took this version or this submission: look again
    raise RatingsError(
        f"could not save the rating of {row['image_id']} after "
        f"{_SAVE_ATTEMPTS} attempts (the database is too busy)"
    )


def _planned(conn: sa.Connection, row: dict[str, Any]) -> None:
    q = sa.select(assignments.c.id).where(
        assignments.c.rater_id == row["rater_id"],
        assignments.c.image_id == row["image_id"],
        assignments.c.kind == row["kind"],
    )
    if conn.execute(q).first() is None:
        raise RatingsError(
            f"image {row['image_id']} ({row['kind']}) is not in the plan of "
            f"rater {row['rater_id']!r}; nothing saved"
        )


def read_ratings(engine: Engine, *, rater_id: str | None = None) -> pd.DataFrame:
    """Every rating version, as a frame in the RATINGS schema."""
    q = sa.select(*[ratings.c[name] for name in RATINGS.names]).order_by(ratings.c.id)
    if rater_id is not None:
        q = q.where(ratings.c.rater_id == rater_id)
    with engine.connect() as conn:
        df = pd.DataFrame(conn.execute(q).all(), columns=RATINGS.names)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)  # SQLite returns naive UTC
    return schema.validate(df, RATINGS).to_pandas()


def latest(df: pd.DataFrame, kinds: Iterable[str] = ITEM_KINDS) -> pd.DataFrame:
    """The latest version of each (rater, image, kind): the ratings that count."""
    df = df[df["kind"].isin(list(kinds))]
    idx = df.groupby(["rater_id", "image_id", "kind"])["version"].idxmax()
    return df.loc[idx.sort_values()].reset_index(drop=True)


# --- import and export -------------------------------------------------------------------


def read_table_file(
    path: str | os.PathLike[str], what: str = "table", columns: Sequence[str] = ()
) -> pd.DataFrame:
    """A user's CSV, TSV or parquet file (a ratings import, a gold file) as a
    frame, through the one reader of user tables: a file that is missing,
    unreadable or without `columns` is an `InputError` naming it and the problem."""
    return tables.read_frame(path, what, columns)


def export_ratings(engine: Engine, path: str | os.PathLike[str], *, all_versions: bool) -> int:
    """Write the ratings (latest versions unless `all_versions`) to CSV or parquet, atomically."""
    from openmind_curate.atomic import atomic_path

    df = read_ratings(engine)
    if not all_versions:
        df = latest(df)
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".parquet":
            pq.write_table(schema.validate(df, RATINGS), tmp)
        else:
            df.to_csv(tmp, index=False)
    return len(df)


def _with_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """A file from another tool needs only image_id, rater_id and the answers:
    kind is regular, version 1, created_at the import time (also for empty
    cells), and the submission id is derived from the row's identity."""
    df = df.copy()
    if "kind" not in df.columns:
        df["kind"] = "regular"
    if "version" not in df.columns:
        df["version"] = 1
    if "submission_id" not in df.columns and {"rater_id", "image_id"} <= set(df.columns):
        # one id per (rater, image, kind, version), stable across re-imports of the file
        df["submission_id"] = [
            hashlib.sha1(f"import/{r}/{i}/{k}/{v}".encode()).hexdigest()
            for r, i, k, v in zip(
                df["rater_id"], df["image_id"], df["kind"], df["version"], strict=True
            )
        ]
    for field in RATINGS:
        if field.name not in df.columns and field.nullable:
            df[field.name] = None
    if "submission_id" in df.columns:
        df["submission_id"] = df["submission_id"].where(df["submission_id"].notna(), None)
    stamp = pd.Timestamp(now())
    if "created_at" not in df.columns:
        df["created_at"] = stamp
    empty = df["created_at"].isna()
    created = pd.to_datetime(df["created_at"], utc=True, errors="coerce").dt.as_unit("us")
    df["created_at"] = created.mask(empty, stamp)  # an unreadable time stays an error
    return df


def import_ratings(
    engine: Engine, df: pd.DataFrame, known_images: set[str], source: str = "the file"
) -> int:
    """Validate every row, then store them all in one transaction, or none.

    Rows keep their versions and submission ids, so importing an export
    again adds nothing; a row whose submission id exists is skipped.
    """
    df = _with_defaults(df)
    problems = [(r, c, m) for r, c, m in schema.row_problems(df, RATINGS)]
    with engine.connect() as conn:
        known_raters = {r for (r,) in conn.execute(sa.select(raters.c.rater_id))}
    if "image_id" in df.columns and "rater_id" in df.columns:
        for i, (image, rater) in enumerate(zip(df["image_id"], df["rater_id"], strict=True)):
            if isinstance(image, str) and image not in known_images:
                problems.append((i, "image_id", f"{image!r} is not in the index"))
            if isinstance(rater, str) and rater not in known_raters:
                problems.append((i, "rater_id", f"{rater!r} is not a known rater"))
    if problems:
        problems.sort(key=lambda p: p[0])
        lines = [f"  row {r + 2 if r >= 0 else '-'}: {c}: {m}" for r, c, m in problems[:50]]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        head = f"{source}: {len(problems)} problem(s), nothing imported (row 1 is the header):"
        raise RatingsError("\n".join([head, *lines]) + more)
    rows = schema.validate(df[list(RATINGS.names)], RATINGS).to_pylist()
    added = 0
    try:
        with engine.begin() as conn:
            seen = {s for (s,) in conn.execute(sa.select(ratings.c.submission_id))}
            for row in rows:
                if row["submission_id"] in seen:
                    continue
                conn.execute(sa.insert(ratings).values(**row))
                seen.add(row["submission_id"])
                added += 1
    except IntegrityError:
        raise RatingsError(
            f"{source}: rater {row['rater_id']!r} already has version {row['version']} of "
            f"{row['image_id']} ({row['kind']}) under another submission id; nothing imported"
        ) from None
    return added
