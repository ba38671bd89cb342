"""The dataset report (`curate report`): one static HTML page with PNG figures.

It reports on the image index (not on a manifest, though a manifest can mark
the images it kept), the way the OpenMind paper describes its corpus:

- images per modality (Table 10): a table of images, datasets and subjects,
  and a bar chart;
- the cumulative number of images over datasets, largest first, with the
  number of datasets that hold 50/75/90% of the images (Figure 4);
- metadata availability and distributions (Figure 5): the fraction of images
  with each field known, the age/weight/BMI histograms and the sex,
  handedness, health status and race pies, each over the images where the
  value is known ("n = ... of N images with a known value");
- the IQS distribution and the images kept at each IQS threshold (Table 6),
  counted with the rule `curate iqs` and `build-manifest` use
  (`openmind_curate.quality.threshold.kept_at`);
- the top datasets by image count (Table 9);
- the automatic quality checks: the images `curate metrics` flagged, per
  problem code, and whether each is in the manifest (the codes that
  `build-manifest` drops, manifest.corruption.CORRUPT, come first).

Four modules: `builders` (the tables: pure, vectorized functions of the
index DataFrame, so a 113,921-row index takes seconds), `figures` (drawn with
matplotlib's object API, `Figure` + `FigureCanvasAgg`, never pyplot: no
global state, safe in threads) and `page` (the HTML, `write_report`);
`run` is the Python API behind `curate report`. Every
string that reaches the page is HTML-escaped (dataset names and metadata come
from user files), the page needs nothing outside its folder and runs no
script, and every file is written atomically.
"""

from openmind_curate.report.page import write_report

__all__ = ["write_report"]
