"""Text-format and raw-Amazon readers: good files and every kind of bad line."""

import gzip
import json

import numpy as np
import pytest

from coco_tf.data.amazon_raw import k_core, read_amazon_raw
from coco_tf.data.errors import DataError
from coco_tf.data.text_format import read_text_dataset

ITEMS = "item_id\tasin\ttitle\tcategories\n1\tA1\tRed Lipstick\tBeauty>Makeup>Lips\n2\tA2\tBlue \"Mascara\"\tBeauty>Makeup>Eyes | Beauty>Sale\n3\tA3\tShampoo\tBeauty>Hair\n"


def write(tmp_path, sequences, items=ITEMS):
    (tmp_path / "sequences.txt").write_bytes(sequences if isinstance(sequences, bytes) else sequences.encode())
    (tmp_path / "items.tsv").write_bytes(items if isinstance(items, bytes) else items.encode())
    return str(tmp_path)


def test_reads_good_files(tmp_path):
    ds = read_text_dataset(write(tmp_path, "u1 1 2 3\nu2 3 1\n"))
    assert ds.num_items == 3 and ds.num_users == 2
    np.testing.assert_array_equal(ds.sequences[0], [1, 2, 3])
    assert ds.titles == ["", "Red Lipstick", 'Blue "Mascara"', "Shampoo"]
    vocab = ds.attribute_vocab["category"]
    assert [vocab[c] for c in ds.attributes["category"]] == ["", "Lips", "Eyes", "Hair"]
    assert ds.skipped.total == 0


def test_non_contiguous_item_ids_are_remapped(tmp_path):
    items = "item_id\ttitle\n10\tA\n30\tC\n20\tB\n"
    ds = read_text_dataset(write(tmp_path, "u 30 10 20\n", items))
    np.testing.assert_array_equal(ds.sequences[0], [3, 1, 2])
    assert ds.item_external_ids == ["", "10", "20", "30"]
    assert ds.titles == ["", "A", "B", "C"]


@pytest.mark.parametrize(
    "sequences, message",
    [
        ("u1 1 2\nu2 1 x 3\n", "sequences.txt:2: item id 'x' is not an integer"),
        ("u1 1 2\nu2 1 9\n", "sequences.txt:2: item id 9 is not in items.tsv"),
        ("u1 1 2\n\nu2 1 3\n", "sequences.txt:2: empty line"),
        ("u1 1 2\nu2\n", "sequences.txt:2: user u2 has no items"),
        ("u1 1 2\nu1 3\n", "sequences.txt:2: user u1 appears twice"),
        (b"u1 1 2\nu2 1 \xff\xfe 3\n", "sequences.txt:2: not UTF-8"),
        ("", "sequences.txt: file is empty"),
    ],
)
def test_bad_sequence_lines_name_file_and_line(tmp_path, sequences, message):
    with pytest.raises(DataError) as e:
        read_text_dataset(write(tmp_path, sequences))
    assert message in str(e.value)


@pytest.mark.parametrize(
    "items, message",
    [
        ("item_id\ttitle\n1\tA\n2\n", "items.tsv:3: expected 2 tab-separated fields, got 1"),
        ("item_id\ttitle\n1\tA\nz\tB\n", "items.tsv:3: item_id 'z' is not a positive integer"),
        ("item_id\ttitle\n1\tA\n1\tB\n", "items.tsv:3: item_id 1 appears twice"),
        ("id\tname\n1\tA\n", "items.tsv:1: header must name the columns item_id and title"),
        ("", "items.tsv: file is empty"),
        (b"item_id\ttitle\n1\tA\n2\t\xc3(\n", "items.tsv:3: not UTF-8"),
    ],
)
def test_bad_item_lines_name_file_and_line(tmp_path, items, message):
    with pytest.raises(DataError) as e:
        read_text_dataset(write(tmp_path, "u 1\n", items))
    assert message in str(e.value)


def test_skip_mode_counts_and_reports(tmp_path):
    path = write(tmp_path, "u1 1 2 3\nu2 1 x\nu3 2 9\nu4 3 2 1\n")
    ds = read_text_dataset(path, on_bad_line="skip")
    assert ds.num_users == 2
    assert ds.skipped.total == 2
    summary = ds.skipped.summary()
    assert "is not an integer (lines 2)" in summary and "is not in items.tsv (lines 3)" in summary


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="dataset directory not found"):
        read_text_dataset(str(tmp_path / "nope"))


# ----------------------------------------------------------------- raw Amazon 2014


def write_raw(tmp_path, reviews, meta_lines):
    with gzip.open(tmp_path / "reviews_Toy_5.json.gz", "wt", encoding="utf-8") as fh:
        for r in reviews:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    with gzip.open(tmp_path / "meta_Toy.json.gz", "wt", encoding="utf-8") as fh:
        for m in meta_lines:
            fh.write(m + "\n")
    return str(tmp_path)


def review(user, asin, ts):
    return {"reviewerID": user, "asin": asin, "unixReviewTime": ts, "overall": 5.0}


def test_raw_amazon_k_core_chronological_and_python_literal_meta(tmp_path):
    reviews = []
    for u in ("U1", "U2", "U3"):
        for k, asin in enumerate(("B", "A", "C")):
            reviews.append(review(u, asin, 100 - 10 * k if u == "U1" else 10 * k))
    reviews.append(review("U4", "A", 5))  # U4 has one review: removed by 2-core
    reviews.append(review("U1", "D", 1))  # item D has one review: removed by 2-core
    meta = [
        "{'asin': 'A', 'title': \"Kid's Kite\", 'categories': [['Toys', 'Outdoor']], 'brand': 'Sky'}",
        "{'asin': 'B', 'title': 'Ball', 'categories': [['Toys', 'Balls']]}",
        "{'asin': 'C', 'categories': [['Toys']]}",
        "{'asin': 'Z', 'title': 'not in the core'}",
    ]
    ds = read_amazon_raw(write_raw(tmp_path, reviews, meta), "Toy", k=2)
    assert ds.num_users == 3 and ds.num_items == 3
    # U1 reviewed B@100, A@90, C@80 -> chronological C, A, B; ids by first appearance.
    np.testing.assert_array_equal(ds.sequences[0], [1, 2, 3])
    assert ds.item_external_ids == ["", "C", "A", "B"]
    assert ds.titles == ["", "", "Kid's Kite", "Ball"]
    assert ds.attribute_vocab["brand"][ds.attributes["brand"][2]] == "Sky"
    assert "no title" in ds.skipped.summary()  # C has no title: reported, not silent


def test_raw_amazon_bad_json_line(tmp_path):
    reviews = [json.dumps(review("U1", "A", 1)), "{not json", json.dumps(review("U1", "B", 2))]
    with pytest.raises(DataError, match=r"reviews_Toy_5.json.gz:2: not a JSON object"):
        read_amazon_raw(write_raw(tmp_path, reviews, []), "Toy", k=1)
    bad_ts = [json.dumps({"reviewerID": "U", "asin": "A", "unixReviewTime": "soon"})]
    with pytest.raises(DataError, match=r":1: unixReviewTime 'soon' is not an integer"):
        read_amazon_raw(write_raw(tmp_path, bad_ts, []), "Toy", k=1)
    missing = [json.dumps({"reviewerID": "U", "asin": "A"})]
    with pytest.raises(DataError, match=r":1: missing field\(s\) unixReviewTime"):
        read_amazon_raw(write_raw(tmp_path, missing, []), "Toy", k=1)


def test_k_core_is_iterative():
    rows = [("u1", "a", 0), ("u1", "b", 0), ("u2", "a", 0), ("u2", "b", 0), ("u3", "a", 0), ("u3", "c", 0)]
    # c has 1 interaction -> removed; then u3 has 1 -> removed; a and b keep 2.
    assert sorted(k_core(rows, 2)) == sorted(rows[:4])
