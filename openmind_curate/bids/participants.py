"""participants.tsv / participants.json / sessions.tsv -> the index's
harmonized columns: age (years), sex (M/F/O), handedness (R/L/A), race,
weight (kg), bmi, health_status (healthy/patient), participant_extra (JSON).

Real datasets name and code these in many ways, so each role is found by a
list of synonyms, values go through the data dictionary's ``Levels`` and
``Units`` (or a unit in the column name), and normalization is explicit:

- age: ``20-25`` -> 22.5 (raw kept), ``89+``/``>89`` -> 89, months, weeks and
  days converted to years, outside 0-130 dropped with a problem;
- handedness: words, or an Edinburgh laterality score (>= 40 R, <= -40 L,
  else A; a -1..1 scale is read as -100..100);
- weight: lb and g converted to kg; height: cm, mm and inches to m (a bare
  number above 3 is taken as cm); BMI from weight and height when absent;
- health_status: "healthy" for control-like values, "patient" for
  diagnosis-like ones, else null (the raw value stays in participant_extra).

A session-level value (sessions.tsv) wins over the participant-level one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from openmind_curate.bids.sidecars import load_json

MISSING = frozenset({"", "n/a", "na", "nan", "none", "null", "-", "unknown", "?", "missing"})

ROLES: dict[str, tuple[str, ...]] = {
    "age": (
        "age",
        "age_years",
        "age_at_scan",
        "ageatscan",
        "age_at_first_scan_years",
        "age_at_first_scan",
        "age_yrs",
        "age_in_years",
        "age_months",
        "age_in_months",
        "age_at_mri",
        "scan_age",
        "subject_age",
        "age_at_baseline",
    ),
    "sex": ("sex", "gender", "biological_sex", "sex_at_birth", "sexe"),
    "handedness": (
        "handedness",
        "hand",
        "dominant_hand",
        "handedness_score",
        "edinburgh",
        "ehi",
        "handedness_ehi",
        "laterality",
        "handedness_edinburgh",
    ),
    "weight": (
        "weight",
        "weight_kg",
        "weight_lb",
        "weight_lbs",
        "body_weight",
        "mass",
        "weight_pounds",
    ),
    "height": ("height", "height_cm", "height_m", "height_in", "height_inches", "body_height"),
    "bmi": ("bmi", "body_mass_index"),
    "race": ("race", "ethnicity", "race_ethnicity", "ethnic_group"),
    "health_status": (
        "health_status",
        "diagnosis",
        "dx",
        "group",
        "condition",
        "clinical_group",
        "subject_group",
        "population",
        "patient",
        "status",
    ),
}

_HEALTHY = re.compile(
    r"control|healthy|\bhc\b|^hc|normal|ctrl|typical|^td$|^nc$|^hv$|volunteer|^none$"
)
_PATIENT = re.compile(
    r"patient|case|clinical|disorder|disease|mdd|adhd|asd|autis|schizo|depress|epilep|alzheim|"
    r"parkinson|stroke|tumou?r|lesion|\bms\b|mci|dementia|bipolar|ptsd|ocd|psychosis|injury"
)
_RANGE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:-|–|to)\s*(\d+(?:\.\d+)?)$")
_CAPPED = re.compile(r"^(?:>=?\s*)?(\d+(?:\.\d+)?)\s*\+?$")


@dataclass
class Person:
    age: float | None = None
    age_raw: str | None = None
    sex: str | None = None
    handedness: str | None = None
    race: str | None = None
    weight: float | None = None
    bmi: float | None = None
    health_status: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Table:
    columns: list[str]
    rows: list[dict[str, str]]


def _norm(name: str) -> str:
    return re.sub(r"[\s\-()]+", "_", name.strip().lower()).strip("_")


def read_tsv(path: str, problems: list[tuple[str, str]]) -> Table | None:
    """Read a TSV leniently: BOM, CRLF, non-UTF-8 and ragged rows are reported,
    not fatal. `problems` receives (kind, message)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        problems.append(("unreadable", f"cannot read: {exc.strerror or exc}"))
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        text = raw.decode("latin-1")
        problems.append(
            ("encoding", f"not UTF-8 ({exc.reason} at byte {exc.start}); read as Latin-1")
        )
    lines = [ln for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()]
    if not lines:
        problems.append(("bad_tsv", "empty table"))
        return None
    columns = [c.strip() for c in lines[0].split("\t")]
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) != len(columns):
            problems.append(
                ("bad_tsv", f"line {n} has {len(cells)} fields, the header has {len(columns)}")
            )
            cells = (cells + [""] * len(columns))[: len(columns)]
        rows.append(dict(zip(columns, cells, strict=True)))
    return Table(columns, rows)


def _roles(columns: list[str]) -> dict[str, str]:
    """role -> column, the first synonym present (then any ``age_*`` column)."""
    normed = {_norm(c): c for c in columns}
    found: dict[str, str] = {}
    for role, synonyms in ROLES.items():
        for syn in synonyms:
            if syn in normed:
                found[role] = normed[syn]
                break
    if "age" not in found:
        for n, c in normed.items():
            if re.match(r"^age(_|$)", n) and "group" not in n and "range" not in n:
                found["age"] = c
                break
    return found


def _level(value: str, spec: dict[str, Any]) -> str:
    levels = spec.get("Levels") if isinstance(spec, dict) else None
    if isinstance(levels, dict) and value in levels:
        lv = levels[value]
        if isinstance(lv, dict):
            lv = lv.get("Description") or lv.get("LongName") or value
        return str(lv)
    return value


def _unit(column: str, spec: dict[str, Any]) -> str:
    unit = spec.get("Units") if isinstance(spec, dict) else None
    text = (unit if isinstance(unit, str) else "") + " " + _norm(column).replace("_", " ")
    return text.lower()


def _number(value: str) -> float | None:
    try:
        x = float(value.replace(",", "."))
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def parse_age(value: str, unit: str) -> tuple[float | None, str | None]:
    """(years, problem)."""
    v = value.strip().lower().removesuffix("y").removesuffix("yrs").strip()
    m = _RANGE.match(v)
    if m:
        x = (float(m.group(1)) + float(m.group(2))) / 2
    else:
        m = _CAPPED.match(v)
        if not m:
            return None, f"unparseable age {value!r}"
        x = float(m.group(1))
    if re.search(r"\bmonths?\b|\bmo\b|\bmos\b", unit):
        x /= 12.0
    elif re.search(r"\bweeks?\b|\bwk", unit):
        x /= 52.1775
    elif re.search(r"\bdays?\b", unit):
        x /= 365.25
    if not 0 <= x <= 130:
        return None, f"implausible age {value!r} ({x:g} years)"
    return x, None


def parse_sex(value: str) -> str | None:
    v = value.strip().lower()
    if v in ("m", "male", "man", "boy", "males"):
        return "M"
    if v in ("f", "female", "woman", "girl", "females", "w"):
        return "F"
    if v in ("o", "other", "x", "nonbinary", "non-binary", "intersex", "diverse"):
        return "O"
    return None


def parse_handedness(value: str) -> str | None:
    v = value.strip().lower().replace("-handed", "").replace(" handed", "")
    if v in ("r", "right", "rh", "righthanded", "rechts", "d"):
        return "R"
    if v in ("l", "left", "lh", "lefthanded", "links", "g"):
        return "L"
    if v in ("a", "ambi", "ambidextrous", "both", "mixed", "b", "ambidexter"):
        return "A"
    x = _number(v)
    if x is None:
        return None
    if -1 <= x <= 1 and x != int(x):
        x *= 100
    return "R" if x >= 40 else "L" if x <= -40 else "A"


def parse_weight(value: str, unit: str) -> float | None:
    x = _number(value)
    if x is None:
        return None
    if re.search(r"\blbs?\b|pound", unit):
        x *= 0.45359237
    elif re.search(r"\bg\b|gram", unit) and "kg" not in unit:
        x /= 1000
    return x if 0.3 <= x <= 400 else None


def parse_height(value: str, unit: str) -> float | None:
    x = _number(value)
    if x is None:
        return None
    if re.search(r"\bcm\b|centi", unit):
        x /= 100
    elif re.search(r"\bmm\b", unit):
        x /= 1000
    elif re.search(r"\bin\b|inch", unit):
        x *= 0.0254
    elif x > 3:  # no unit: a bare 172 is centimetres
        x /= 100
    return x if 0.3 <= x <= 2.8 else None


def parse_health(value: str, column: str) -> str | None:
    v = value.strip().lower()
    if _HEALTHY.search(v):
        return "healthy"
    if _PATIENT.search(v) or _norm(column) in ("diagnosis", "dx", "patient"):
        return "patient"
    return None


def harmonize(
    row: dict[str, str], dictionary: dict[str, Any], roles: dict[str, str]
) -> tuple[Person, list[str]]:
    """One participants.tsv (or sessions.tsv) row -> Person, problems."""
    person, problems = Person(), []
    used = set(roles.values()) | {"participant_id", "session_id"}

    def cell(role: str) -> tuple[str, str, dict] | None:
        col = roles.get(role)
        if col is None:
            return None
        value = row.get(col, "")
        if value.strip().lower() in MISSING:
            return None
        spec = dictionary.get(col, {})
        return _level(value, spec), col, spec

    if got := cell("age"):
        value, col, spec = got
        person.age_raw = value
        person.age, problem = parse_age(value, _unit(col, spec))
        if problem:
            problems.append(f"{col}: {problem}")
    if got := cell("sex"):
        person.sex = parse_sex(got[0])
        if person.sex is None:
            problems.append(f"{got[1]}: cannot read sex {got[0]!r} (no Levels to decode it?)")
    if got := cell("handedness"):
        person.handedness = parse_handedness(got[0])
        if person.handedness is None:
            problems.append(f"{got[1]}: cannot read handedness {got[0]!r}")
    if got := cell("race"):
        person.race = got[0]
    if got := cell("weight"):
        person.weight = parse_weight(got[0], _unit(got[1], got[2]))
    height = None
    if got := cell("height"):
        height = parse_height(got[0], _unit(got[1], got[2]))
    if got := cell("bmi"):
        person.bmi = _number(got[0])
    if person.bmi is None and person.weight and height:
        person.bmi = person.weight / height**2
    if got := cell("health_status"):
        person.health_status = parse_health(got[0], got[1])
        person.extra[got[1]] = got[0]
    for col, value in row.items():
        if col not in used:
            person.extra[col] = None if value.strip().lower() in MISSING else value
    return person, problems


def overlay(base: Person, top: Person) -> Person:
    """`top`'s known values win (sessions.tsv over participants.tsv)."""
    merged = replace(base, extra={**base.extra, **top.extra})
    for name in ("age", "age_raw", "sex", "handedness", "race", "weight", "bmi", "health_status"):
        if getattr(top, name) is not None:
            setattr(merged, name, getattr(top, name))
    return merged


def label_of(value: str, prefix: str) -> str:
    return value.strip().removeprefix(prefix)


def read_people(
    tsv: str, json_path: str | None, id_column: str, prefix: str
) -> tuple[dict[str, Person], list[tuple[str, str, str]]]:
    """Harmonized people of one table keyed by label; problems as (file, kind, message)."""
    problems: list[tuple[str, str, str]] = []
    dictionary: dict[str, Any] = {}
    if json_path:
        doc, problem = load_json(json_path)
        dictionary = doc or {}
        if problem:
            problems.append((json_path, *problem))
    raw_problems: list[tuple[str, str]] = []
    table = read_tsv(tsv, raw_problems)
    problems += [(tsv, kind, msg) for kind, msg in raw_problems]
    if table is None:
        return {}, problems
    if id_column not in table.columns:
        problems.append((tsv, "bad_tsv", f"no {id_column} column (has {table.columns})"))
        return {}, problems
    roles = _roles(table.columns)
    people: dict[str, Person] = {}
    for row in table.rows:
        label = label_of(row[id_column], prefix)
        if label in people:
            problems.append(
                (
                    tsv,
                    "duplicate",
                    f"{row[id_column]} appears more than once; the first row is kept",
                )
            )
            continue
        person, msgs = harmonize(row, dictionary, roles)
        problems += [(tsv, "value", f"{row[id_column]}: {m}") for m in msgs]
        people[label] = person
    return people, problems


def extra_json(person: Person) -> str | None:
    return json.dumps(person.extra, sort_keys=True, ensure_ascii=False) if person.extra else None
