"""openmind-curate: public brain MRI -> quality-scored SSL pre-training corpus.

The stages live in subpackages (docs/architecture.md follows one image through
them; the design is in docs/design/index.md). Each has a pure core (arrays and
tables in, arrays and tables out) and its I/O at the edge.
"""

__version__ = "0.1.0"
