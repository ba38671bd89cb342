"""MkDocs hooks: generated pages, so that no reference is written by hand.

- `<!-- tables -->` in a page becomes the table reference: every Arrow schema
  defined in `openmind_curate/schema.py`, with each column's type, whether it
  may be null, its description and its value rules (the field metadata).
- `cli_reference` (beside this file) is put on the import path for
  mkdocs-click's `::: mkdocs-click` directive (the CLI reference).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pyarrow as pa

log = logging.getLogger("mkdocs.hooks.curate")

#: Where each table lives and who writes and reads it. A schema without a line
#: here falls back to the ``#:`` comment above it in schema.py; with neither it
#: is a build warning (an error under --strict), so no table goes undescribed.
TABLES = {
    "IMAGE_INDEX": (
        "The image index, `index/images.parquet`: one row per image. Written only "
        "through `openmind_curate.index` (crawl rows, DWI map rows, mask paths, IQS "
        "columns); read by every later stage. Columns marked *stage* are filled by a "
        "later stage and survive a re-crawl of an unchanged file."
    ),
    "RATINGS": (
        "One rating of one unit by one rater (the `ratings` table of the ratings "
        "database; also what `curate ratings export` writes and `curate ratings "
        "import` reads). Append-only: a correction is the next version."
    ),
    "IQS": (
        "The detailed Image Quality Score table `curate iqs --out` writes, one row "
        "per image (the index receives `iqs`, `iqs_image`, `iqs_predicted`)."
    ),
    "MANIFEST": (
        "A pre-training manifest (`curate build-manifest`): the image-index columns "
        "of the kept images plus their split. Paths are stored relative to the "
        "manifest's folder."
    ),
    "PROBLEMS": ("What the crawl could not read (`images.problems.parquet` beside the index)."),
    "METRICS": ("The automatic quality metrics, one row per image (`curate metrics --out`)."),
    "SYNTH_TRUTH": (
        "The generated corpus's truth table (`curate synth`: `OUT/truth/images.parquet`): "
        "every file with its generator parameters and the true answers."
    ),
}


def on_config(config, **kwargs):
    hooks = str(Path(__file__).resolve().parent)
    if hooks not in sys.path:
        sys.path.insert(0, hooks)
    return config


def _comments() -> dict[str, str]:
    """The ``#:`` comment above each ``NAME = pa.schema(`` in schema.py."""
    from openmind_curate import schema

    found, block = {}, []
    for line in Path(schema.__file__).read_text(encoding="utf-8").splitlines():
        if line.startswith("#:"):
            block.append(line[2:].strip())
            continue
        m = re.match(r"(\w+)\s*=\s*pa\.schema\(", line)
        if m and block:
            found[m.group(1)] = " ".join(block)
        block = []
    return found


def _schemas() -> list[tuple[str, pa.Schema]]:
    from openmind_curate import schema

    return [(name, value) for name, value in vars(schema).items() if isinstance(value, pa.Schema)]


def _rule(field: pa.Field) -> str:
    meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
    parts = []
    if "allowed" in meta:
        parts.append("one of " + ", ".join(f"`{v}`" for v in json.loads(meta["allowed"])))
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        parts.append(f"{json.loads(low)} to {json.loads(high)}")
    elif low is not None:
        parts.append(f">= {json.loads(low)}")
    elif high is not None:
        parts.append(f"<= {json.loads(high)}")
    if "stage" in meta:
        parts.append(f"*stage* ({meta['stage']})")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "&#124;").replace("\n", " ")


def schema_table(name: str, schema: pa.Schema, comments: dict[str, str]) -> str:
    lines = [f"## `{name}`", ""]
    about = TABLES.get(name) or comments.get(name)
    if about is None:
        log.warning(
            "schema.%s has no description: a '#:' comment above it in schema.py, "
            "or a line in docs/hooks/mkdocs_hooks.py TABLES",
            name,
        )
        about = ""
    lines += [about, ""]
    lines += ["| column | type | null | description | values |", "|---|---|---|---|---|"]
    for field in schema:
        doc = (field.metadata or {}).get(b"doc", b"").decode()
        lines.append(
            f"| `{field.name}` | `{_cell(str(field.type))}` | {'yes' if field.nullable else 'no'} "
            f"| {_cell(doc)} | {_cell(_rule(field))} |"
        )
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if "<!-- tables -->" not in markdown:
        return markdown
    comments = _comments()
    body = "\n".join(schema_table(name, schema, comments) for name, schema in _schemas())
    return markdown.replace("<!-- tables -->", body)


def _patch_mkdocs_click() -> None:
    """Typer help text escapes rich markup (`\\[default: ...]`) and some
    docstrings hold `<placeholders>`: show both as the terminal does."""
    try:
        from mkdocs_click import _docs
    except ImportError:  # the directive then fails loudly on its own
        return
    if getattr(_docs, "_curate_patched", False):
        return
    description, options = _docs._make_description, _docs._make_plain_options

    def make_description(ctx, remove_ascii_art=False):
        for line in description(ctx, remove_ascii_art):
            yield line.replace("\\[", "[").replace("<", "&lt;")

    def make_plain_options(ctx, show_hidden=False):
        for line in options(ctx, show_hidden=show_hidden):
            yield line.replace("\\[", "[")

    _docs._make_description, _docs._make_plain_options = make_description, make_plain_options
    _docs._curate_patched = True


_patch_mkdocs_click()
