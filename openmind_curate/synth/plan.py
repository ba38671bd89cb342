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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
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
    """What to generate: how many datasets and subjects, from which seed, at
    which resolution. A corpus is a pure function of this configuration."""

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
    """One image of `subject`. Its contrast and modality are its suffix unless
    `kw` names them; an anatomical image's spacing is scaled by `cfg.voxel_scale`."""
    sub_seed = stable_int(cfg.seed, plan.dataset_id, subject.label)
    spacing = kw.pop("spacing", (1.0, 1.0, 1.0))
    if kw.get("datatype", "anat") == "anat":
        spacing = tuple(round(s * cfg.voxel_scale, 4) for s in spacing)
    kw.setdefault("datatype", "anat")
    kw.setdefault("entities", ())
    kw.setdefault("session", None)
    kw.setdefault("contrast", kw["suffix"])
    kw.setdefault("modality", kw["suffix"])
    return ImageSpec(plan.dataset_id, subject.label, spacing=spacing, subject_seed=sub_seed, **kw)


def _noise(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(0.01, 0.03)), 4)


def _subject_sidecar(plan: DatasetPlan, path: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A subject-level sidecar at `path`, which overrides inherited values."""
    plan.files[path] = json.dumps(doc)
    return doc


def _dwi_files(shells: dict[int, int], n_b0: int, rng) -> tuple[str, str]:
    """bval and bvec file texts. The vectors are taken as written in the FSL
    convention; the writer derives the voxel-axis vectors it simulates with."""
    g = gradient_table(n_b0, shells, rng)
    bval = " ".join(f"{b:g}" for b in g.bvals) + "\n"
    bvec = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in g.bvecs.T) + "\n"
    return bval, bvec


def _dwi(image: Callable[..., ImageSpec], cfg: SynthConfig, **kw: Any) -> ImageSpec:
    """A DWI series on the configured isotropic grid; its noise comes from
    `ImageSpec.dwi_snr`, not `noise_level`. `kw` names its shells, b0 count and
    gradient files."""
    return image(
        datatype="dwi",
        suffix="dwi",
        contrast="b0",
        modality="DWI",
        spacing=(cfg.dwi_spacing,) * 3,
        noise_level=0.0,
        **kw,
    )


#: The anat profile's top-level sidecars (Siemens, 3 T), one per suffix.
_ANAT_SIDECARS = {
    "T1w": {
        **_SIEMENS,
        "RepetitionTime": 2.3,
        "EchoTime": 0.00226,
        "FlipAngle": 8,
        "InversionTime": 0.9,
    },
    "T2w": {**_SIEMENS, "RepetitionTime": 3.2, "EchoTime": 0.565},
    "FLAIR": {**_SIEMENS, "RepetitionTime": 5.0, "EchoTime": 0.386, "InversionTime": 1.8},
}


def _plan_anat(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    """T1w, T2w and FLAIR per subject, all defaced, under top-level sidecars
    that the second subject's T1w overrides; the T1w's tissue labels as a
    derivative."""
    for suffix, doc in _ANAT_SIDECARS.items():
        plan.files[f"{suffix}.json"] = json.dumps(doc, indent=2)
    for i, s in enumerate(plan.subjects):
        t1_sub = {}
        if i == 1:  # a subject-level file overrides one inherited value
            path = f"sub-{s.label}/anat/sub-{s.label}_T1w.json"
            t1_sub = _subject_sidecar(plan, path, {"EchoTime": 0.0025})
        plan.images += _anat_images(partial(_spec, plan, cfg, s, deface="zero"), rng, t1_sub)
    _tissue_label_files(plan)


def _anat_images(
    image: Callable[..., ImageSpec], rng: np.random.Generator, t1_sub: dict[str, Any]
) -> list[ImageSpec]:
    """A subject's T1w, its tissue labels, T2w and FLAIR. The draws from `rng`
    come in this order: T1w noise and bias, T2w noise, FLAIR noise."""
    t1w = image(
        suffix="T1w",
        axcodes="LAS",
        noise_level=_noise(rng),
        bias_strength=round(float(rng.uniform(0, 0.25)), 3),
        sidecar=_merge(_ANAT_SIDECARS["T1w"], t1_sub),
    )
    labels = _companion(t1w, "label", "dseg", ("desc", "tissue"), deface=None, noise_level=0.0)
    t2w = image(
        suffix="T2w",
        spacing=(0.9, 0.9, 2.0),
        noise_level=_noise(rng),
        sidecar=_merge(_ANAT_SIDECARS["T2w"]),
    )
    flair = image(
        suffix="FLAIR",
        axcodes="PIR",
        dtype="uint16",
        noise_level=_noise(rng),
        sidecar=_merge(_ANAT_SIDECARS["FLAIR"]),
    )
    return [t1w, labels, t2w, flair]


def _companion(
    image: ImageSpec, kind: str, suffix: str, entity: tuple[str, str], **kw: Any
) -> ImageSpec:
    """A uint8 file that belongs to `image` (its tissue labels, its defacing
    mask): on the same grid, with no modality and no sidecar of its own."""
    return replace(
        image,
        kind=kind,
        suffix=suffix,
        entities=(entity,),
        modality=None,
        dtype="uint8",
        sidecar="{}",
        **kw,
    )


def _tissue_label_files(plan: DatasetPlan) -> None:
    """The labels derivative's description and its tissue lookup table."""
    plan.files["derivatives/labels/dataset_description.json"] = _description(
        "Synthetic tissue labels", derivative=True
    )
    plan.files["derivatives/labels/desc-tissue_dseg.tsv"] = (
        "index\tname\tabbreviation\n0\tbackground\tBG\n1\tcerebrospinal fluid\tCSF\n"
        "2\tgrey matter\tGM\n3\twhite matter\tWM\n"
    )


def _plan_sessions(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    """A T1w per session and a DWI series in the first, with top-level sidecars
    and gradient files, per-subject session ages, and the last subject's faces
    blurred."""
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
            path = f"sub-{s.label}/sub-{s.label}_T1w.json"
            t1_sub = _subject_sidecar(plan, path, {"EchoTime": 0.0029})
        deface = "blur" if (i == len(plan.subjects) - 1 and len(plan.subjects) > 1) else None
        image = partial(_spec, plan, cfg, s)
        t1w = partial(
            image,
            suffix="T1w",
            spacing=(1.0, 1.0, 1.2),
            dtype="uint16",
            deface=deface,
            sidecar=_merge(t1, t1_sub),
        )
        plan.images += [t1w(session=ses, noise_level=_noise(rng)) for ses in plan.sessions]
        plan.images.append(
            _dwi(
                image,
                cfg,
                session=plan.sessions[0],
                dwi_shells=tuple(shells.items()),
                dwi_n_b0=3,
                bval_path="dwi.bval",
                bvec_path="dwi.bvec",
                sidecar=_merge(dwi),
            )
        )


#: Sidecar values of the rare profile's protocols (Philips, 1.5 T), by suffix.
_RARE_SIDECARS: dict[str, dict[str, Any]] = {
    "PDw": {"RepetitionTime": 2.5, "EchoTime": 0.03},
    "T2starw": {"RepetitionTime": 0.03, "EchoTime": 0.02},
    "inplaneT2": {"RepetitionTime": 4.0},
    "MP2RAGE": {"RepetitionTime": 5.0, "InversionTime": [0.7, 2.5]},
    "angio": {"RepetitionTime": 0.022},
    "T1w": {"RepetitionTime": 8.1, "EchoTime": 0.0037},
}


def _rare_sidecar(protocol: str) -> str:
    return _merge(_PHILIPS, _RARE_SIDECARS[protocol])


def _plan_rare(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    """Suffixes and storage a crawler rarely meets, one noise level per
    subject; the first subject has the deprecated spellings and the
    skull-stripped T1w. Every image carries its own sidecar."""
    for i, s in enumerate(plan.subjects):
        first = i == 0
        image = partial(_spec, plan, cfg, s, noise_level=_noise(rng))
        plan.images += [
            *_pdw_with_defacemask(image),
            *_t2star(image, deprecated=first),
            image(suffix="inplaneT2", spacing=(0.9, 0.9, 4.0), sidecar=_rare_sidecar("inplaneT2")),
            *_mp2rage(image),
            image(
                suffix="angio",
                spacing=(0.8, 0.8, 1.6),
                dtype="uint8",
                gain=240.0,
                sidecar=_rare_sidecar("angio"),
            ),
            image(
                suffix="T1w",
                skull_stripped=first,
                deface=None if first else "zero",
                sidecar=_rare_sidecar("T1w"),
            ),
        ]
    _own_sidecars(plan, plan.images)


def _pdw_with_defacemask(image: Callable[..., ImageSpec]) -> list[ImageSpec]:
    """An oblique LPS PDw stored as int16 with a scl_slope, and its defacing mask."""
    pdw = image(
        suffix="PDw",
        axcodes="LPS",
        oblique_deg=(12.0, 0.0, 4.0),
        scl_slope=0.0005,
        gain=1.0,
        deface="zero",
        sidecar=_rare_sidecar("PDw"),
    )
    return [pdw, _companion(pdw, "mask", "defacemask", ("mod", "PDw"))]


def _t2star(image: Callable[..., ImageSpec], deprecated: bool) -> list[ImageSpec]:
    """A T2*-weighted GRE: under the deprecated ``T2star`` suffix, or as
    magnitude and phase parts (the phase as float32)."""
    gre = partial(image, spacing=(1.0, 1.0, 2.0), sidecar=_rare_sidecar("T2starw"))
    if deprecated:
        return [gre(suffix="T2star", contrast="T2starw", modality="T2starw")]
    return [
        gre(suffix="T2starw", entities=(("acq", "gre"), ("part", "mag"))),
        gre(
            suffix="T2starw",
            entities=(("acq", "gre"), ("part", "phase")),
            flags="phase",
            dtype="float32",
            gain=1.0,
        ),
    ]


def _mp2rage(image: Callable[..., ImageSpec]) -> list[ImageSpec]:
    """MP2RAGE's two inversions and its UNIT1 map, one sidecar for all three."""
    mp2rage = partial(
        image, spacing=(1.2, 1.2, 1.2), dtype="uint16", sidecar=_rare_sidecar("MP2RAGE")
    )
    inversions = [
        mp2rage(
            suffix="MP2RAGE",
            contrast=f"MP2RAGE_inv{k}",
            entities=(("inv", str(k)),),
            flags="inversion",
        )
        for k in (1, 2)
    ]
    return [*inversions, mp2rage(suffix="UNIT1")]


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


def _acq_run(acq: str, run: int) -> tuple[tuple[str, str], ...]:
    return (("acq", acq), ("run", str(run)))


def _plan_qc(plan: DatasetPlan, cfg: SynthConfig, rng: np.random.Generator) -> None:
    """The first subject's degradation ladders and multi-shell DWI; the last
    subject's corrupted files and cropped field of view."""
    t1 = {**_SIEMENS, "RepetitionTime": 2.4, "EchoTime": 0.0022}
    plan.files["T1w.json"] = json.dumps(t1, indent=2)
    subs = plan.subjects
    first, last = subs[0], subs[-1]
    t1w = partial(
        _spec, plan, cfg, suffix="T1w", spacing=(1.25,) * 3, noise_level=0.01, sidecar=_merge(t1)
    )
    for name, attr, levels in LADDERS:
        for k, level in enumerate(levels):
            rung = {attr: level, "ladder": name, "ladder_level": k}
            plan.images.append(t1w(first, entities=_acq_run(name, k + 1), **rung))
    for k, corruption in enumerate(CORRUPTIONS):
        dtype = "float32" if corruption == "nan" else "int16"  # NaN needs a float file
        runs = _acq_run("rpt", k + 1)
        plan.images.append(t1w(last, entities=runs, dtype=dtype, corruption=corruption))
    plan.images.append(t1w(last, entities=_acq_run("rpt", len(CORRUPTIONS) + 1), fov_crop=0.18))
    for s in subs[1:-1] or []:
        plan.images.append(t1w(s, noise_level=_noise(rng)))
    # Multi-shell DWI with its gradient table next to the image (no inheritance).
    shells = {1000: cfg.dwi_directions, 2000: cfg.dwi_directions // 2}
    dwi_name = f"sub-{first.label}/dwi/sub-{first.label}_acq-multishell_dwi"
    plan.files[f"{dwi_name}.bval"], plan.files[f"{dwi_name}.bvec"] = _dwi_files(
        shells, 2, _rng(cfg.seed, "g2")
    )
    multishell = _dwi(
        partial(_spec, plan, cfg, first),
        cfg,
        entities=(("acq", "multishell"),),
        axcodes="LAS",
        dwi_shells=tuple(shells.items()),
        dwi_n_b0=2,
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
                    spacing=spacing,
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
