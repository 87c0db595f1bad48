"""Reader for the raw Amazon 2014 review release (McAuley et al.).

Files, for a category such as ``Beauty``:

* ``reviews_<Cat>_5.json.gz``: one JSON object per line with at least
  ``reviewerID``, ``asin`` and ``unixReviewTime``.
* ``meta_<Cat>.json.gz``: one *Python literal* per line (the 2014 release is not
  JSON: it uses single quotes), read with :func:`ast.literal_eval`; fields
  ``asin``, ``title``, ``categories`` (list of lists), ``brand``.

Processing, as in the S3-Rec/P5 preprocessing: iterative k-core filtering of
users and items, each user's reviews sorted by time (ties keep file order),
contiguous item ids ``1..N`` in order of first appearance, users in order of
first appearance. Items without a title keep an empty title, and the count is
reported in the skip report.
"""

from __future__ import annotations

import ast
import collections
import json
import os
from typing import Dict, List, Tuple

import numpy as np

from coco_tf.data.dataset import SequenceDataset
from coco_tf.data.errors import DataError, DecodeFailure, LineHandler, read_lines


def _read_reviews(path: str, handler: LineHandler) -> List[Tuple[str, str, int]]:
    rows = []
    for n, line in handler.good_lines(read_lines(path), path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            handler.bad(path, n, "not a JSON object", e.msg)
            continue
        if not isinstance(obj, dict):
            handler.bad(path, n, "not a JSON object")
            continue
        missing = [k for k in ("reviewerID", "asin", "unixReviewTime") if k not in obj]
        if missing:
            handler.bad(path, n, f"missing field(s) {', '.join(missing)}")
            continue
        try:
            ts = int(obj["unixReviewTime"])
        except (TypeError, ValueError):
            handler.bad(path, n, f"unixReviewTime {obj['unixReviewTime']!r} is not an integer")
            continue
        rows.append((str(obj["reviewerID"]), str(obj["asin"]), ts))
    return rows


def _read_meta(path: str, wanted: set, handler: LineHandler) -> Dict[str, dict]:
    meta = {}
    for n, line in read_lines(path):
        if isinstance(line, DecodeFailure):
            handler.bad(path, n, "not UTF-8", line)
            continue
        if not line.strip():
            continue
        # Cheap pre-filter: most meta lines are for items outside the k-core.
        start = line.find("'asin': '")
        if start >= 0:
            asin = line[start + 9 : line.find("'", start + 9)]
            if asin not in wanted:
                continue
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            try:
                obj = json.loads(line)  # some mirrors re-encoded the file as JSON
            except json.JSONDecodeError:
                handler.bad(path, n, "not a Python-literal or JSON object")
                continue
        if not isinstance(obj, dict) or "asin" not in obj:
            handler.bad(path, n, "record without an asin")
            continue
        if obj["asin"] in wanted:
            meta[obj["asin"]] = obj
    return meta


def k_core(rows: List[Tuple[str, str, int]], k: int) -> List[Tuple[str, str, int]]:
    """Iteratively drops users and items with fewer than ``k`` interactions."""
    while True:
        users = collections.Counter(r[0] for r in rows)
        items = collections.Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def read_amazon_raw(path: str, category: str, k: int = 5, on_bad_line: str = "error") -> SequenceDataset:
    handler = LineHandler(on_bad_line)
    reviews_path = os.path.join(path, f"reviews_{category}_5.json.gz")
    meta_path = os.path.join(path, f"meta_{category}.json.gz")
    rows = _read_reviews(reviews_path, handler)
    rows = k_core(rows, k)
    if not rows:
        raise DataError(reviews_path, f"no interactions survive {k}-core filtering")

    by_user: Dict[str, List[Tuple[int, int, str]]] = collections.OrderedDict()
    for order, (user, asin, ts) in enumerate(rows):
        by_user.setdefault(user, []).append((ts, order, asin))
    item_ids: Dict[str, int] = {}
    sequences = []
    for user, events in by_user.items():
        events.sort()
        seq = []
        for _, _, asin in events:
            seq.append(item_ids.setdefault(asin, len(item_ids) + 1))
        sequences.append(np.asarray(seq, dtype=np.int64))

    meta = _read_meta(meta_path, set(item_ids), handler)
    titles = [""] * (len(item_ids) + 1)
    brand_vocab, cat_vocab = {"": 0}, {"": 0}
    brand = np.zeros(len(titles), dtype=np.int32)
    cat = np.zeros(len(titles), dtype=np.int32)
    cat_paths, brands = [""] * len(titles), [""] * len(titles)
    for asin, i in item_ids.items():
        m = meta.get(asin)
        if m is None:
            handler.report.add(meta_path, None, "item has no metadata (empty title kept)")
            continue
        title = str(m.get("title", "") or "").strip()
        if not title:
            handler.report.add(meta_path, None, "item has no title (empty title kept)")
        titles[i] = title
        brand[i] = brand_vocab.setdefault(str(m.get("brand", "") or "").strip(), len(brand_vocab))
        brands[i] = str(m.get("brand", "") or "").strip()
        cats = m.get("categories") or [[]]
        cat_paths[i] = " | ".join(">".join(str(c).strip() for c in path) for path in cats if path)
        leaf = str(cats[0][-1]).strip() if cats and cats[0] else ""
        cat[i] = cat_vocab.setdefault(leaf, len(cat_vocab))

    return SequenceDataset(
        name=f"amazon-{category.lower()}",
        sequences=sequences,
        titles=titles,
        attributes={"category": cat, "brand": brand},
        attribute_vocab={"category": list(cat_vocab), "brand": list(brand_vocab)},
        item_fields={"categories": cat_paths, "brand": brands},
        user_external_ids=list(by_user),
        item_external_ids=[""] + list(item_ids),
        skipped=handler.report,
    )
