"""BIDS crawling: dataset discovery, file-name entities, modality groups,
sidecar inheritance, participants harmonization and the OpenNeuro fetch.

`crawl` builds the image index, with `entities` (file names), `modalities`
(the paper's groups), `datatypes` (the folders to index), `nifti` (headers
without the data), `sidecars` (the inheritance principle), `participants`
(harmonized metadata) and `summary`; `fetch` downloads from OpenNeuro. pybids
is the tests' reference, not the crawler: it is too slow at the paper's scale
(800 datasets, 114k images).
"""
