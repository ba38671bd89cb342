"""Image quality: automatic metrics, human ratings and the Image Quality Score.

Automatic: `metrics` (no-reference metrics and corruption checks of one
image) and `run` (`curate metrics` over an index). Human ratings: `plan`
(who rates which unit, in which order), `ratings` (the SQL store),
`rating_flow`, `viewer` and `rater_session` (the rater app's logic, the
volumes it sends the browser, its sessions and sign-in throttle),
`agreement` (inter-rater statistics), `display` (the progress and agreement
tables with readable names and units), `simulate` (simulated raters for the
demo) and `rating_stage` (the Python API behind `curate raters`, `curate
ratings` and `curate rate`). The score: `iqs` (the paper's rules),
`iqs_model` (a per-image score predicted from the metrics), `threshold` (the
one "kept at IQS <= t" rule) and `iqs_stage` (the Python API behind `curate
iqs`).
"""
