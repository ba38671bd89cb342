"""What the generated corpus contains: datasets, subjects, images and the
degradations applied to each, decided up front from the seed.

Planning is separate from writing so that every image is a pure function of
its `ImageSpec` and can be generated in any order, in parallel, and resumed.
Four dataset profiles cycle when more datasets are asked for:

- ``anat``: T1w/T2w/FLAIR, every image pydeface-style defaced, top-level
  sidecars with a subject-level override, tissue labels as a derivative;
- ``sessions``: two sessions, T1w per session, a DWI series with top-level
  ``dwi.bval``/``dwi.bvec``, ``sessions.tsv`` ages, one face-blurred subject;
- ``rare``: PDw (oblique, int16 with scl_slope) with its ``defacemask``, deprecated
  ``T2star``, T2starw magnitude/phase parts, inplaneT2, MP2RAGE inversions
  and UNIT1, uint8 angio, a skull-stripped T1w, a BOM-prefixed participants.tsv;
- ``qc``: degradation ladders (noise, blur, ghosting, Gibbs, bias), corrupted
  files (truncated, NaN, all-zero, empty), a cropped field of view and a
  multi-shell DWI.

``SynthConfig.n_poor_datasets`` adds datasets of a fifth profile after the
cycle, so that asking for it changes nothing else in the corpus:

- ``poor``: an old, fast protocol (1.5 T, thick slices) in which every image
  is noisy, blurred and ghosted. IQS scores a dataset x modality group, so
  a whole dataset like this is what `build-manifest --iqs-max` drops, while
  the qc profile's ladders sit in one group with their clean rungs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from openmind_curate.ids import stable_int
from openmind_curate.synth.dwi import gradient_table
from openmind_curate.synth.participants import STYLES, Subject, make_subjects, sessions_tsv

PROFILES = ("anat", "sessions", "rare", "qc")
#: The profile of `SynthConfig.n_poor_datasets`, outside the cycle.
POOR = "poor"
_ENTITY_ORDER = (
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "echo",
    "inv",
    "mod",
    "part",
    "space",
    "desc",
)


@dataclass(frozen=True)
class SynthConfig:
    n_datasets: int = 4
    n_subjects: int = 2
    seed: int = 0
    voxel_scale: float = 1.6
    """Multiplies every anatomical protocol's voxel size. 1.0 gives real
    resolutions (1 mm T1w); the default keeps the test corpus small and fast."""
    dwi_spacing: float = 2.5
    dwi_directions: int = 12
    n_poor_datasets: int = 0
    """Datasets of the ``poor`` profile, after the `n_datasets` of the cycle."""


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to write one file and its truth row."""

    dataset_id: str
    subject: str
    session: str | None
    datatype: str
    entities: tuple[tuple[str, str], ...]
    suffix: str
    kind: str = "image"  # image | mask | label
    contrast: str = "T1w"
    modality: str | None = "T1w"
    flags: str | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    axcodes: str = "RAS"
    oblique_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    dtype: str = "int16"
    gain: float = 1000.0
    scl_slope: float = 1.0
    """NIfTI scl_slope: stored integers times this give the intensity."""
    noise_level: float = 0.02
    blur_fwhm_mm: float = 0.0
    ghost_amplitude: float = 0.0
    ghost_axis: int = 1
    gibbs_keep: float = 1.0
    gibbs_axis: int = 2
    bias_strength: float = 0.0
    deface: str | None = None
    skull_stripped: bool = False
    fov_crop: float = 0.0
    corruption: str | None = None
    ladder: str | None = None
    ladder_level: int | None = None
    dwi_shells: tuple[tuple[int, int], ...] = ()
    dwi_n_b0: int = 0
    dwi_snr: float = 25.0
    bval_path: str | None = None
    bvec_path: str | None = None
    sidecar: str = "{}"
    """The expected merged sidecar (BIDS inheritance) as JSON text."""
    subject_seed: int = 0

    @property
    def rel_path(self) -> str:
        """Path relative to the dataset root."""
        parts = [f"sub-{self.subject}"]
        parts += [f"{k}-{v}" for k, v in self._ordered()]
        name = "_".join(parts) + f"_{self.suffix}.nii.gz"
        folder = f"sub-{self.subject}" + (f"/ses-{self.session}" if self.session else "")
        if self.kind == "label":
            return f"derivatives/labels/{folder}/{self.datatype}/{name}"
        return f"{folder}/{self.datatype}/{name}"

    def _ordered(self) -> list[tuple[str, str]]:
        ents = dict(self.entities)
        if self.session:
            ents["ses"] = self.session
        return [(k, ents[k]) for k in _ENTITY_ORDER if k in ents]


@dataclass
class DatasetPlan:
    dataset_id: str
    profile: str
    style: str
    subjects: list[Subject]
    sessions: list[str]
    files: dict[str, str] = field(default_factory=dict)
    """Dataset-level text files (description, participants, sidecars, ...)."""
    images: list[ImageSpec] = field(default_factory=list)


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng([seed, stable_int(*parts)])


def _merge(*sidecars: dict[str, Any]) -> str:
    out: dict[str, Any] = {}
    for s in sidecars:
        out.update(s)
    return json.dumps(out, sort_keys=True)


def _description(name: str, derivative: bool = False) -> str:
    doc: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative" if derivative else "raw",
        "License": "CC0",
        "Authors": ["openmind-curate synth"],
    }
    if derivative:
        doc["GeneratedBy"] = [{"Name": "openmind-curate synth", "Version": "0.1.0"}]
    return json.dumps(doc, indent=2) + "\n"


_SIEMENS = {
    "Manufacturer": "Siemens",
    "ManufacturersModelName": "Prisma_fit",
    "MagneticFieldStrength": 3,
}
_GE = {
    "Manufacturer": "GE",
    "ManufacturersModelName": "DISCOVERY MR750",
    "MagneticFieldStrength": 3,
}
_PHILIPS = {
    "Manufacturer": "Philips",
    "ManufacturersModelName": "Achieva",
    "MagneticFieldStrength": 1.5,
}


def plan_corpus(cfg: SynthConfig) -> list[DatasetPlan]:
    """The whole corpus, deterministic for `cfg.seed`."""
    plans = []
    for d in range(cfg.n_datasets + cfg.n_poor_datasets):
        profile = PROFILES[d % len(PROFILES)] if d < cfg.n_datasets else POOR
        dataset_id = f"ds9{d + 1:05d}"
        rng = _rng(cfg.seed, dataset_id)
        labels = [f"{i + 1:02d}" for i in range(cfg.n_subjects)]
        style = STYLES[d % len(STYLES)]
        plan = DatasetPlan(
            dataset_id,
            profile,
            style,
            make_subjects(style, labels, rng),
            ["01", "02"] if profile == "sessions" else [],
        )
        _PLANNERS[profile](plan, cfg, rng)
        plan.files["dataset_description.json"] = _description(f"Synthetic {profile} {dataset_id}")
        plan.files["README"] = (
            f"Synthetic {profile} dataset generated by openmind-curate (seed {cfg.seed}).\n"
        )
        plan.files["CHANGES"] = "1.0.0 2026-01-01\n  - generated\n"
        plans.append(plan)
    return plans


def _spec(plan: DatasetPlan, cfg: SynthConfig, subject: Subject, **kw: Any) -> ImageSpec:
    sub_seed = stable_int(cfg.seed, plan.dataset_id, subject.label)
    spacing = kw.pop("spacing", (1.0, 1.0, 1.0))
    if kw.get("datatype", "anat") == "anat":
        spacing = tuple(round(s * cfg.voxel_scale, 4) for s in spacing)
    kw.setdefault("datatype", "anat")
    kw.setdefault("entities", ())
    kw.setdefault("session", None)
    return ImageSpec(plan.dataset_id, subject.label, spacing=spacing, subject_seed=sub_seed, **kw)


def _noise(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(0.01, 0.03)), 4)


def _plan_anat(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    t1 = {
        **_SIEMENS,
        "RepetitionTime": 2.3,
        "EchoTime": 0.00226,
        "FlipAngle": 8,
        "InversionTime": 0.9,
    }
    t2 = {**_SIEMENS, "RepetitionTime": 3.2, "EchoTime": 0.565}
    flair = {**_SIEMENS, "RepetitionTime": 5.0, "EchoTime": 0.386, "InversionTime": 1.8}
    for name, doc in (("T1w", t1), ("T2w", t2), ("FLAIR", flair)):
        plan.files[f"{name}.json"] = json.dumps(doc, indent=2)
    for i, s in enumerate(plan.subjects):
        t1_sub = {}
        if i == 1:  # a subject-level file overrides one inherited value
            t1_sub = {"EchoTime": 0.0025}
            plan.files[f"sub-{s.label}/anat/sub-{s.label}_T1w.json"] = json.dumps(t1_sub)
        common = dict(deface="zero", session=None)
        t1w = _spec(
            plan,
            cfg,
            s,
            suffix="T1w",
            contrast="T1w",
            modality="T1w",
            spacing=(1.0, 1.0, 1.0),
            axcodes="LAS",
            dtype="int16",
            noise_level=_noise(rng),
            bias_strength=round(float(rng.uniform(0, 0.25)), 3),
            sidecar=_merge(t1, t1_sub),
            **common,
        )
        plan.images += [
            t1w,
            replace(
                t1w,
                kind="label",
                suffix="dseg",
                entities=(("desc", "tissue"),),
                modality=None,
                sidecar="{}",
                deface=None,
                noise_level=0.0,
                dtype="uint8",
            ),
            _spec(
                plan,
                cfg,
                s,
                suffix="T2w",
                contrast="T2w",
                modality="T2w",
                spacing=(0.9, 0.9, 2.0),
                axcodes="RAS",
                dtype="int16",
                noise_level=_noise(rng),
                sidecar=_merge(t2),
                **common,
            ),
            _spec(
                plan,
                cfg,
                s,
                suffix="FLAIR",
                contrast="FLAIR",
                modality="FLAIR",
                spacing=(1.0, 1.0, 1.0),
                axcodes="PIR",
                dtype="uint16",
                noise_level=_noise(rng),
                sidecar=_merge(flair),
                **common,
            ),
        ]
    plan.files["derivatives/labels/dataset_description.json"] = _description(
        "Synthetic tissue labels", derivative=True
    )
    plan.files["derivatives/labels/desc-tissue_dseg.tsv"] = (
        "index\tname\tabbreviation\n0\tbackground\tBG\n1\tcerebrospinal fluid\tCSF\n"
        "2\tgrey matter\tGM\n3\twhite matter\tWM\n"
    )


def _dwi_files(shells: dict[int, int], n_b0: int, rng) -> tuple[str, str]:
    """bval and bvec file texts. The vectors are taken as written in the FSL
    convention; the writer derives the voxel-axis vectors it simulates with."""
    g = gradient_table(n_b0, shells, rng)
    bval = " ".join(f"{b:g}" for b in g.bvals) + "\n"
    bvec = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in g.bvecs.T) + "\n"
    return bval, bvec


def _plan_sessions(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    t1 = {**_GE, "RepetitionTime": 8.2, "EchoTime": 0.0032, "FlipAngle": 12}
    dwi = {
        **_GE,
        "RepetitionTime": 7.8,
        "EchoTime": 0.081,
        "PhaseEncodingDirection": "j-",
        "TotalReadoutTime": 0.052,
    }
    plan.files["T1w.json"] = json.dumps(t1, indent=2)
    plan.files["dwi.json"] = json.dumps(dwi, indent=2)
    shells = {1000: cfg.dwi_directions}
    plan.files["dwi.bval"], plan.files["dwi.bvec"] = _dwi_files(shells, 3, _rng(cfg.seed, "g1"))
    for i, s in enumerate(plan.subjects):
        plan.files[f"sub-{s.label}/sub-{s.label}_sessions.tsv"] = sessions_tsv(
            s, plan.sessions, rng
        )
        t1_sub = {}
        if i == 0:  # subject-level file, above the session folders
            t1_sub = {"EchoTime": 0.0029}
            plan.files[f"sub-{s.label}/sub-{s.label}_T1w.json"] = json.dumps(t1_sub)
        deface = "blur" if (i == len(plan.subjects) - 1 and len(plan.subjects) > 1) else None
        for ses in plan.sessions:
            plan.images.append(
                _spec(
                    plan,
                    cfg,
                    s,
                    session=ses,
                    suffix="T1w",
                    contrast="T1w",
                    modality="T1w",
                    spacing=(1.0, 1.0, 1.2),
                    axcodes="RAS",
                    dtype="uint16",
                    noise_level=_noise(rng),
                    deface=deface,
                    sidecar=_merge(t1, t1_sub),
                )
            )
        plan.images.append(
            _spec(
                plan,
                cfg,
                s,
                session=plan.sessions[0],
                datatype="dwi",
                suffix="dwi",
                contrast="b0",
                modality="DWI",
                spacing=(cfg.dwi_spacing,) * 3,
                axcodes="RAS",
                dtype="int16",
                dwi_shells=tuple(shells.items()),
                dwi_n_b0=3,
                noise_level=0.0,
                bval_path="dwi.bval",
                bvec_path="dwi.bvec",
                sidecar=_merge(dwi),
            )
        )


def _plan_rare(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    base = dict(_PHILIPS)
    for i, s in enumerate(plan.subjects):
        n = _noise(rng)
        pdw = _spec(
            plan,
            cfg,
            s,
            suffix="PDw",
            contrast="PDw",
            modality="PDw",
            spacing=(1.0, 1.0, 1.0),
            axcodes="LPS",
            oblique_deg=(12.0, 0.0, 4.0),
            dtype="int16",
            scl_slope=0.0005,
            gain=1.0,
            noise_level=n,
            deface="zero",
            sidecar=_merge(base, {"RepetitionTime": 2.5, "EchoTime": 0.03}),
        )
        gre = dict(spacing=(1.0, 1.0, 2.0), axcodes="RAS", dtype="int16", noise_level=n)
        gre_sc = _merge(base, {"RepetitionTime": 0.03, "EchoTime": 0.02})
        if i == 0:  # deprecated spelling
            t2s = [
                _spec(
                    plan,
                    cfg,
                    s,
                    suffix="T2star",
                    contrast="T2starw",
                    modality="T2starw",
                    sidecar=gre_sc,
                    **gre,
                )
            ]
        else:
            t2s = [
                _spec(
                    plan,
                    cfg,
                    s,
                    suffix="T2starw",
                    contrast="T2starw",
                    modality="T2starw",
                    entities=(("acq", "gre"), ("part", part)),
                    sidecar=gre_sc,
                    flags="phase" if part == "phase" else None,
                    **({**gre, "dtype": "float32", "gain": 1.0} if part == "phase" else gre),
                )
                for part in ("mag", "phase")
            ]
        mp2 = _merge(base, {"RepetitionTime": 5.0, "InversionTime": [0.7, 2.5]})
        mp2rage = dict(
            spacing=(1.2, 1.2, 1.2), axcodes="RAS", dtype="uint16", noise_level=n, sidecar=mp2
        )
        plan.images += [
            pdw,
            replace(
                pdw,
                kind="mask",
                suffix="defacemask",
                entities=(("mod", "PDw"),),
                modality=None,
                dtype="uint8",
                sidecar="{}",
            ),
            *t2s,
            _spec(
                plan,
                cfg,
                s,
                suffix="inplaneT2",
                contrast="inplaneT2",
                modality="inplaneT2",
                spacing=(0.9, 0.9, 4.0),
                axcodes="RAS",
                dtype="int16",
                noise_level=n,
                sidecar=_merge(base, {"RepetitionTime": 4.0}),
            ),
            _spec(
                plan,
                cfg,
                s,
                suffix="MP2RAGE",
                contrast="MP2RAGE_inv1",
                modality="MP2RAGE",
                entities=(("inv", "1"),),
                flags="inversion",
                **mp2rage,
            ),
            _spec(
                plan,
                cfg,
                s,
                suffix="MP2RAGE",
                contrast="MP2RAGE_inv2",
                modality="MP2RAGE",
                entities=(("inv", "2"),),
                flags="inversion",
                **mp2rage,
            ),
            _spec(plan, cfg, s, suffix="UNIT1", contrast="UNIT1", modality="UNIT1", **mp2rage),
            _spec(
                plan,
                cfg,
                s,
                suffix="angio",
                contrast="angio",
                modality="angio",
                spacing=(0.8, 0.8, 1.6),
                axcodes="RAS",
                dtype="uint8",
                gain=240.0,
                noise_level=n,
                sidecar=_merge(base, {"RepetitionTime": 0.022}),
            ),
            _spec(
                plan,
                cfg,
                s,
                suffix="T1w",
                contrast="T1w",
                modality="T1w",
                spacing=(1.0, 1.0, 1.0),
                axcodes="RAS",
                dtype="int16",
                noise_level=n,
                skull_stripped=i == 0,
                deface=None if i == 0 else "zero",
                sidecar=_merge(base, {"RepetitionTime": 8.1, "EchoTime": 0.0037}),
            ),
        ]
    _own_sidecars(plan, plan.images)


def _own_sidecars(plan: DatasetPlan, specs: list[ImageSpec]) -> None:
    """Write each image's sidecar next to it (datasets without top-level files)."""
    for spec in specs:
        if spec.kind == "image":
            plan.files[spec.rel_path.removesuffix(".nii.gz") + ".json"] = spec.sidecar


#: Degradation ladders in the qc profile: (name, field, levels).
LADDERS: tuple[tuple[str, str, tuple[float, ...]], ...] = (
    ("noise", "noise_level", (0.005, 0.02, 0.04, 0.07, 0.1)),
    ("blur", "blur_fwhm_mm", (0.0, 2.5, 4.0, 6.0, 8.0)),
    ("ghost", "ghost_amplitude", (0.0, 0.05, 0.1, 0.2, 0.3)),
    ("gibbs", "gibbs_keep", (1.0, 0.6, 0.35)),
    ("bias", "bias_strength", (0.0, 0.3, 0.6)),
)
CORRUPTIONS = ("truncated", "nan", "zeros", "empty")


def _plan_qc(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    t1 = {**_SIEMENS, "RepetitionTime": 2.4, "EchoTime": 0.0022}
    plan.files["T1w.json"] = json.dumps(t1, indent=2)
    subs = plan.subjects
    first, last = subs[0], subs[-1]
    t1w = dict(
        suffix="T1w",
        contrast="T1w",
        modality="T1w",
        spacing=(1.25, 1.25, 1.25),
        axcodes="RAS",
        dtype="int16",
        noise_level=0.01,
        sidecar=_merge(t1),
    )
    for name, attr, levels in LADDERS:
        for k, level in enumerate(levels):
            plan.images.append(
                _spec(
                    plan,
                    cfg,
                    first,
                    **{**t1w, attr: level},
                    entities=(("acq", name), ("run", str(k + 1))),
                    ladder=name,
                    ladder_level=k,
                )
            )
    for k, corruption in enumerate(CORRUPTIONS):
        dtype = "float32" if corruption == "nan" else "int16"  # NaN needs a float file
        plan.images.append(
            _spec(
                plan,
                cfg,
                last,
                **{**t1w, "dtype": dtype},
                entities=(("acq", "rpt"), ("run", str(k + 1))),
                corruption=corruption,
            )
        )
    plan.images.append(
        _spec(
            plan,
            cfg,
            last,
            **t1w,
            entities=(("acq", "rpt"), ("run", str(len(CORRUPTIONS) + 1))),
            fov_crop=0.18,
        )
    )
    for s in subs[1:-1] or []:
        plan.images.append(_spec(plan, cfg, s, **{**t1w, "noise_level": _noise(rng)}))
    # Multi-shell DWI with its gradient table next to the image (no inheritance).
    shells = {1000: cfg.dwi_directions, 2000: cfg.dwi_directions // 2}
    dwi_name = f"sub-{first.label}/dwi/sub-{first.label}_acq-multishell_dwi"
    plan.files[f"{dwi_name}.bval"], plan.files[f"{dwi_name}.bvec"] = _dwi_files(
        shells, 2, _rng(cfg.seed, "g2")
    )
    multishell = _spec(
        plan,
        cfg,
        first,
        datatype="dwi",
        suffix="dwi",
        contrast="b0",
        modality="DWI",
        entities=(("acq", "multishell"),),
        spacing=(cfg.dwi_spacing,) * 3,
        axcodes="LAS",
        dtype="int16",
        dwi_shells=tuple(shells.items()),
        dwi_n_b0=2,
        noise_level=0.0,
        bval_path=f"{dwi_name}.bval",
        bvec_path=f"{dwi_name}.bvec",
        sidecar=_merge(_SIEMENS, {"RepetitionTime": 9.0, "EchoTime": 0.09}),
    )
    plan.images.append(multishell)
    _own_sidecars(plan, [multishell])


def _plan_poor(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    """Every image degraded on every axis a rater scores: strong noise, blur
    (motion) and ghosting, each drawn per image, so the dataset's T1w and T2w
    groups score well above IQS 2.5 and the manifest filter drops them."""
    t1 = {**_PHILIPS, "RepetitionTime": 1.9, "EchoTime": 0.0035, "FlipAngle": 15}
    t2 = {**_PHILIPS, "RepetitionTime": 4.0, "EchoTime": 0.1}
    plan.files["T1w.json"] = json.dumps(t1, indent=2)
    plan.files["T2w.json"] = json.dumps(t2, indent=2)
    for s in plan.subjects:
        for suffix, doc, spacing in (("T1w", t1, (1.0, 1.0, 1.5)), ("T2w", t2, (1.0, 1.0, 2.0))):
            plan.images.append(
                _spec(
                    plan,
                    cfg,
                    s,
                    suffix=suffix,
                    contrast=suffix,
                    modality=suffix,
                    spacing=spacing,
                    axcodes="RAS",
                    dtype="int16",
                    noise_level=round(float(rng.uniform(0.06, 0.08)), 4),
                    blur_fwhm_mm=round(float(rng.uniform(4.0, 6.0)), 2),
                    ghost_amplitude=round(float(rng.uniform(0.1, 0.2)), 3),
                    deface="zero",
                    sidecar=_merge(doc),
                )
            )


_PLANNERS = {
    "anat": _plan_anat,
    "sessions": _plan_sessions,
    "rare": _plan_rare,
    "qc": _plan_qc,
    POOR: _plan_poor,
}
