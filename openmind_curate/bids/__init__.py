"""BIDS crawling: dataset discovery, file-name entities, modality groups,
sidecar inheritance, participants harmonization and the OpenNeuro fetch.

Will hold `crawl` (-> the image index), `sidecars`, `participants`,
`modalities` and `fetch`. pybids is used as a reference in tests, not as the
crawler: it is too slow at the paper's scale (800 datasets, 114k images).
"""
