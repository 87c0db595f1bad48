"""Reader for the text benchmark format (``sequences.txt`` + ``items.tsv``).

``sequences.txt``: one user per line, ``user_id item_id item_id ...`` in time
order, whitespace separated. ``items.tsv``: a header ``item_id<TAB>asin<TAB>
title<TAB>categories`` (``asin`` and ``categories`` optional), unquoted; the
``categories`` column holds ``>``-joined paths, several separated by `` | ``.

Example::

    1 1 2 3 4 5          # sequences.txt
    item_id\tasin\ttitle\tcategories
    1\tB004756YJA\tOPI Nail Lacquer\tBeauty>Makeup>Nails>Nail Polish
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np

from coco_tf.data.dataset import SequenceDataset
from coco_tf.data.errors import DataError, DecodeFailure, LineHandler, read_lines

SEQUENCES_FILE = "sequences.txt"
ITEMS_FILE = "items.tsv"


def read_items(path: str, handler: LineHandler) -> Tuple[Dict[str, int], List[str], List[str]]:
    """Returns (external id -> row order, titles, categories) in file order."""
    lines = read_lines(path)
    header_no, header = next(lines)
    if isinstance(header, DecodeFailure):
        raise DataError(path, f"header is not UTF-8 ({header})", header_no)
    columns = header.split("\t")
    if "item_id" not in columns or "title" not in columns:
        raise DataError(
            path, f"header must name the columns item_id and title (tab separated), got {header!r}", header_no
        )
    id_col, title_col = columns.index("item_id"), columns.index("title")
    cat_col = columns.index("categories") if "categories" in columns else None
    ids: Dict[str, int] = {}
    titles: List[str] = []
    categories: List[str] = []
    for n, line in handler.good_lines(lines, path):
        fields = line.split("\t")
        if len(fields) != len(columns):
            handler.bad(path, n, f"expected {len(columns)} tab-separated fields, got {len(fields)}")
            continue
        item = fields[id_col].strip()
        if not item.isdigit() or int(item) == 0:
            handler.bad(path, n, f"item_id {item!r} is not a positive integer")
            continue
        if item in ids:
            handler.bad(path, n, f"item_id {item} appears twice")
            continue
        ids[item] = len(titles)
        titles.append(fields[title_col].strip())
        categories.append(fields[cat_col].strip() if cat_col is not None else "")
    if not titles:
        raise DataError(path, "no items")
    return ids, titles, categories


def read_text_dataset(path: str, on_bad_line: str = "error") -> SequenceDataset:
    """Reads ``<path>/sequences.txt`` and ``<path>/items.tsv``.

    Item ids are remapped to ``1..num_items`` in ascending order of the file's
    ids (the identity for the Amazon Beauty file, whose ids are already 1..N).
    """
    handler = LineHandler(on_bad_line)
    seq_path = os.path.join(path, SEQUENCES_FILE)
    items_path = os.path.join(path, ITEMS_FILE)
    if not os.path.isdir(path):
        raise DataError(path, "dataset directory not found")
    ext_index, raw_titles, raw_categories = read_items(items_path, handler)

    ext_sorted = sorted(ext_index, key=int)
    remap = {ext: i + 1 for i, ext in enumerate(ext_sorted)}
    titles = [""] + [raw_titles[ext_index[ext]] for ext in ext_sorted]
    categories = [""] + [raw_categories[ext_index[ext]] for ext in ext_sorted]

    sequences: List[np.ndarray] = []
    users: List[str] = []
    seen_users = set()
    for n, line in handler.good_lines(read_lines(seq_path), seq_path):
        tokens = line.split()
        user, items = tokens[0], tokens[1:]
        if not items:
            handler.bad(seq_path, n, f"user {user} has no items")
            continue
        if user in seen_users:
            handler.bad(seq_path, n, f"user {user} appears twice")
            continue
        try:
            ids = [remap[t] for t in items]
        except KeyError as e:
            token = e.args[0]
            reason = (
                f"item id {token} is not in {ITEMS_FILE}"
                if token.isdigit()
                else f"item id {token!r} is not an integer"
            )
            handler.bad(seq_path, n, reason)
            continue
        seen_users.add(user)
        users.append(user)
        sequences.append(np.asarray(ids, dtype=np.int64))
    if not sequences:
        raise DataError(seq_path, "no user sequences")

    category, vocab = _leaf_categories(categories)
    return SequenceDataset(
        name=os.path.basename(os.path.normpath(path)),
        sequences=sequences,
        titles=titles,
        attributes={"category": category},
        attribute_vocab={"category": vocab},
        item_fields={"categories": categories},
        user_external_ids=users,
        item_external_ids=[""] + ext_sorted,
        skipped=handler.report,
    )


def _leaf_categories(categories: List[str]) -> Tuple[np.ndarray, List[str]]:
    """The most specific category of each item's first category path, as ids."""
    vocab = {"": 0}
    out = np.zeros(len(categories), dtype=np.int32)
    for i, cats in enumerate(categories):
        leaf = cats.split(" | ")[0].split(">")[-1].strip() if cats else ""
        out[i] = vocab.setdefault(leaf, len(vocab))
    return out, list(vocab)
