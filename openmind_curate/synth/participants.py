"""participants.tsv / participants.json / sessions.tsv in the styles OpenNeuro
datasets really use, with the harmonized truth the crawler must recover.

Harmonized values (the image index's columns): age in years (ranges become the
midpoint, "89+" becomes 89), sex M/F/O, handedness R/L/A (an Edinburgh
laterality score >= 40 is R, <= -40 is L, otherwise A), weight in kg, BMI from
weight and height when absent, health_status "healthy" or "patient".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

STYLES = ("plain", "synonyms", "coded", "pediatric")


@dataclass
class Subject:
    """One participant: the truth and the raw cells written for it."""

    label: str
    age: float | None
    age_raw: str | None
    sex: str | None
    handedness: str | None
    weight: float | None
    bmi: float | None
    health_status: str | None
    raw: dict[str, str] = field(default_factory=dict)
    session_ages: dict[str, float] = field(default_factory=dict)


def _fmt(x: float) -> str:
    return f"{x:g}"


def make_subjects(style: str, labels: list[str], rng: np.random.Generator) -> list[Subject]:
    out = []
    for i, label in enumerate(labels):
        age = float(rng.integers(19, 80))
        sex = "F" if rng.random() < 0.5 else "M"
        hand = str(rng.choice(["R", "R", "R", "L", "A"]))
        patient = bool(rng.random() < 0.4)
        kg = round(float(rng.normal(72, 12)), 1)
        height_m = round(float(rng.normal(1.72, 0.09)), 2)
        health = "patient" if patient else "healthy"
        s = Subject(label, age, str(int(age)), sex, hand, None, None, None)
        # A missing value in every style, so n/a handling is always exercised.
        missing = i == len(labels) - 1 and len(labels) > 1
        if style == "plain":
            s.raw = {"age": str(int(age)), "sex": sex, "handedness": hand}
            if missing:
                s.raw["handedness"], s.handedness = "n/a", None
        elif style == "synonyms":
            s.weight, s.health_status = kg, health
            s.raw = {
                "Age": str(int(age)),
                "gender": {"F": "female", "M": "male"}[sex],
                "dominant_hand": {"R": "right", "L": "left", "A": "ambidextrous"}[hand],
                "group": "control" if not patient else "patient",
                "weight": _fmt(kg),
            }
            if missing:
                s.raw["weight"], s.weight = "n/a", None
        elif style == "coded":
            lo = int(age) - int(age) % 5
            s.age, s.age_raw = lo + 2.5, f"{lo}-{lo + 5}"
            if i == 0:
                s.age, s.age_raw = 89.0, "89+"
            score = {
                "R": int(rng.integers(50, 101)),
                "L": -int(rng.integers(50, 101)),
                "A": int(rng.integers(-30, 31)),
            }[hand]
            s.weight, s.health_status = kg, health
            s.raw = {
                "age_at_first_scan_years": s.age_raw,
                "sex": {"F": "2", "M": "1"}[sex],
                "handedness_score": str(score),
                "weight_kg": _fmt(kg),
                "height_cm": _fmt(round(height_m * 100, 1)),
                "diagnosis": "HC" if not patient else "MDD",
                "site": str(rng.choice(["siteA", "siteB"])),
            }
            s.bmi = kg / (round(height_m * 100, 1) / 100) ** 2  # from the cells as written
            if missing:
                s.raw["weight_kg"], s.weight, s.bmi = "n/a", None, None
        elif style == "pediatric":
            months = int(rng.integers(6, 200))
            lb = round(float(rng.uniform(20, 120)), 1)
            s.age, s.age_raw = months / 12.0, str(months)
            s.weight = lb * 0.45359237
            s.bmi = round(float(rng.normal(17, 2)), 1)
            s.sex = sex
            s.raw = {
                "age": str(months),
                "sex": sex.lower(),
                "handedness": hand,
                "weight": _fmt(lb),
                "bmi": _fmt(s.bmi),
            }
            if missing:
                s.raw["sex"], s.sex = "n/a", None
        else:
            raise ValueError(style)
        out.append(s)
    return out


def participants_tsv(subjects: list[Subject], bom: bool = False) -> str:
    cols = list(subjects[0].raw)
    lines = ["\t".join(["participant_id", *cols])]
    lines += ["\t".join([f"sub-{s.label}", *[s.raw[c] for c in cols]]) for s in subjects]
    return ("\ufeff" if bom else "") + "\n".join(lines) + "\n"


def participants_json(style: str) -> str | None:
    """The data dictionary some datasets ship; None where the style has none."""
    doc: dict[str, dict] = {}
    if style == "synonyms":
        doc = {
            "Age": {"Description": "age of the participant", "Units": "years"},
            "group": {"Levels": {"control": "healthy control", "patient": "patient"}},
            "weight": {"Description": "body weight", "Units": "kg"},
        }
    elif style == "coded":
        doc = {
            "age_at_first_scan_years": {"Description": "age bin", "Units": "years"},
            "sex": {"Levels": {"1": "male", "2": "female"}},
            "handedness_score": {"Description": "Edinburgh laterality quotient"},
            "diagnosis": {"Levels": {"HC": "healthy control", "MDD": "major depression"}},
        }
    elif style == "pediatric":
        doc = {
            "age": {"Description": "age at scan", "Units": "months"},
            "weight": {"Description": "body weight", "Units": "lb"},
        }
    return json.dumps(doc, indent=2) if doc else None


def sessions_tsv(subject: Subject, sessions: list[str], rng: np.random.Generator) -> str:
    """A sessions.tsv whose age (per session) wins over participants.tsv."""
    lines = ["session_id\tage\tacq_time"]
    base = subject.age or 30.0
    for k, ses in enumerate(sessions):
        age = round(base + k * float(rng.uniform(0.5, 2.0)), 1)
        subject.session_ages[ses] = age
        lines.append(f"ses-{ses}\t{age:g}\t2019-0{k + 1}-15T10:00:00")
    return "\n".join(lines) + "\n"
