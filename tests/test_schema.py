"""The table contracts: one schema per table, and errors that name column and row."""

import pyarrow as pa
import pytest

from openmind_curate import schema
from openmind_curate.schema import SchemaError, rows_to_table, validate


def _index_rows(n=3):
    return [
        dict(
            image_id=f"id{i}",
            dataset_id="ds1",
            subject="01",
            suffix="T1w",
            extension=".nii.gz",
            modality="T1w",
            is_derivative=False,
            root="/data/ds1",
            path=f"sub-01/anat/sub-01_run-{i}_T1w.nii.gz",
            size_bytes=100 + i,
            header_status="ok",
            shape=[10, 10, 10],
            spacing=[1.0, 1.0, 1.0],
            age=30.0,
        )
        for i in range(n)
    ]


def test_every_table_in_design_has_one_schema():
    assert set(schema.SCHEMAS) >= {"image_index", "ratings", "iqs", "manifest"}
    for name in ("image_id", "header_status", "derived_from", "anat_mask_path", "anon_mask_path"):
        assert name in schema.IMAGE_INDEX.names
    # The manifest is the index plus the IQS, with the index's own definitions.
    for field in schema.IMAGE_INDEX:
        assert schema.MANIFEST.field(field.name).equals(field)
    assert "iqs" in schema.MANIFEST.names


def test_valid_rows_pass_and_keep_schema_order():
    table = rows_to_table(_index_rows(), schema.IMAGE_INDEX)
    assert table.schema.names == schema.IMAGE_INDEX.names
    assert table.num_rows == 3
    assert table.column("sex").null_count == 3


def test_missing_column_is_named():
    table = rows_to_table(_index_rows(), schema.IMAGE_INDEX).drop(["header_status"])
    with pytest.raises(SchemaError, match="column 'header_status'.*missing"):
        validate(table, schema.IMAGE_INDEX)


def test_bad_label_names_column_and_row():
    rows = _index_rows()
    rows[2]["modality"] = "T1-weighted"
    with pytest.raises(SchemaError) as err:
        rows_to_table(rows, schema.IMAGE_INDEX)
    assert err.value.column == "modality" and err.value.row == 2
    assert "T1-weighted" in str(err.value) and "row 2" in str(err.value)


def test_null_in_required_column_names_row():
    table = rows_to_table(_index_rows(), schema.IMAGE_INDEX).to_pandas()
    table.loc[1, "dataset_id"] = None
    with pytest.raises(SchemaError) as err:
        validate(table, schema.IMAGE_INDEX)
    assert (err.value.column, err.value.row) == ("dataset_id", 1)


def test_wrong_type_names_column_and_row():
    df = rows_to_table(_index_rows(), schema.IMAGE_INDEX).to_pandas()
    df["size_bytes"] = df["size_bytes"].astype(object)
    df.loc[1, "size_bytes"] = "big"
    with pytest.raises(SchemaError) as err:
        validate(df, schema.IMAGE_INDEX)
    assert (err.value.column, err.value.row) == ("size_bytes", 1)


def test_range_rule_on_ratings():
    row = dict(
        image_id="a",
        rater_id="r1",
        kind="regular",
        version=1,
        submission_id="s1",
        noisiness=2,
        blurriness=6,
        artifact_level=None,
        fov_suboptimal=False,
        corrupted=False,
        created_at=pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py(),
    )
    with pytest.raises(SchemaError, match=r"'blurriness', row 0: value 6 is above 5"):
        rows_to_table([row], schema.RATINGS)
    row["blurriness"] = 5
    assert rows_to_table([row], schema.RATINGS).column("artifact_level").null_count == 1


def test_unknown_columns_rejected_unless_dropped():
    table = rows_to_table(_index_rows(), schema.IMAGE_INDEX)
    extra = table.append_column("surprise", pa.array([1, 2, 3]))
    with pytest.raises(SchemaError, match="'surprise'"):
        validate(extra, schema.IMAGE_INDEX)
    assert validate(extra, schema.IMAGE_INDEX, extra="drop").num_columns == table.num_columns


def test_every_stored_table_is_defined_here():
    from openmind_curate.manifest import openmind_csv
    from openmind_curate.train import store

    assert {"store_index", "openmind_csv"} <= set(schema.SCHEMAS)
    assert store.STORE_INDEX is schema.STORE_INDEX  # the training store reads the one definition
    assert openmind_csv.COLUMNS == tuple(schema.OPENMIND_CSV.names)
    for name in schema.ACQUISITION_COLUMNS:  # taken over from the CSV as they are
        assert schema.OPENMIND_CSV.field(name).type == schema.IMAGE_INDEX.field(name).type
    for name in schema.PATH_COLUMNS:  # stored relative to the table's folder (`paths`)
        assert schema.IMAGE_INDEX.field(name).type == pa.string()
        assert schema.MANIFEST.field(name).equals(schema.IMAGE_INDEX.field(name))


# --------------------------------------------------- user tables (tables.py)


def _write(path, text: str):
    path.write_text(text)
    return path


def test_user_tables_are_read_typed_and_checked(tmp_path):
    from openmind_curate import tables

    scores = pa.schema([schema.IMAGE_INDEX.field("image_id"), schema.IMAGE_INDEX.field("iqs")])
    csv = _write(tmp_path / "s.csv", "image_id,iqs,extra\n0042,2.5,x\n0043,,y\n")
    got = tables.read_table(csv, "IQS table", ("image_id",), schema=scores)
    assert got.column_names == ["image_id", "iqs"]  # typed by the schema: ids stay text
    assert got.to_pylist() == [{"image_id": "0042", "iqs": 2.5}, {"image_id": "0043", "iqs": None}]
    tsv = _write(tmp_path / "s.tsv", "image_id\tiqs\n0042\t2.5\n")
    assert tables.read_frame(tsv, "IQS table", schema=scores)["image_id"].tolist() == ["0042"]
    pq_path = tmp_path / "s.parquet"
    import pyarrow.parquet as pq

    pq.write_table(got, pq_path)
    assert tables.read_table(pq_path, "IQS table", ("image_id", "iqs")).num_rows == 2


def test_user_tables_keep_a_quoted_newline_anywhere_in_a_large_file(tmp_path):
    """A text cell over two lines (a rater's comment) is valid CSV wherever it
    stands; Arrow parses a file over 1 MB in blocks, so the reader says so."""
    from openmind_curate import tables

    rows = "".join(f'img-{i},"line one\nline two {i}"\n' for i in range(60_000))
    path = _write(tmp_path / "c.csv", "image_id,comment\n" + rows)
    got = tables.read_frame(path, "ratings file", ("image_id", "comment"))
    assert len(got) == 60_000 and got["comment"].iloc[-1] == "line one\nline two 59999"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("none.csv", None, "file not found (write it with `curate iqs`)"),
        ("folder", "dir", "a folder, not a file"),
        ("bad.parquet", "not parquet", "cannot read it as parquet"),
        ("bad.xlsx", "not parquet", "(give a .csv, .tsv or .parquet file)"),
        ("cols.csv", "image_id,score\na,2\n", "no column iqs (it has image_id, score)"),
        ("range.csv", "image_id,iqs\na,2\nb,7\n", "column 'iqs', row 1: value 7.0 is above 5"),
        ("text.csv", "image_id,iqs\na,good\n", "cannot read it as CSV"),
    ],
)
def test_user_table_problems_have_one_shape(tmp_path, name, content, problem):
    from openmind_curate import tables
    from openmind_curate.errors import InputError

    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    scores = pa.schema([schema.IMAGE_INDEX.field("image_id"), schema.IMAGE_INDEX.field("iqs")])
    with pytest.raises(InputError) as err:
        tables.read_table(
            path,
            "IQS table",
            ("image_id", "iqs"),
            schema=scores,
            hint="(write it with `curate iqs`)",
        )
    assert str(err.value).startswith(f"IQS table {path}: ")
    assert problem in str(err.value)
