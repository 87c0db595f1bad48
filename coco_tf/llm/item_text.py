"""Item text: what the decoder reads about each item, from ONE template.

``llm.item_text_template`` (default ``"{title}"``, today's titles-only text) is
rendered per item with the placeholders

* ``{title}``: the item title;
* ``{categories}``: the item's category path(s) (``Beauty>Makeup>Nails``; several
  joined by `` | ``), or its leaf category where the data keeps only that;
* ``{brand}``: the brand, where the data has one.

A field the item lacks renders as ``""``; separators left dangling at either end
(``" | "``, ``","``) are stripped, so ``"{title} | {categories}"`` gives just the
title for an item without categories. The same texts feed the item text table,
the word-piece vocabulary and decoder pretraining (``coco_tf.llm.pretrain``), so
a table and its decoder always read the same words. ``TITLE_TEMPLATE`` is what the
knowledge probes encode (``coco_tf.llm.probe``): category agreement on texts that
contain the category would be trivial.

Example::

    texts = item_texts(dataset, "{title} | {categories}")   # [num_items + 1], texts[0] == ""
    leaf = leaf_categories(dataset)                           # int32 [num_items + 1], 0 = unknown
"""

from __future__ import annotations

import string
from typing import List, Sequence

import numpy as np

PLACEHOLDERS = ("title", "categories", "brand")
TITLE_TEMPLATE = "{title}"
_DANGLING = " |,;/-"


def template_fields(template: str) -> List[str]:
    """Placeholder names in ``template``; raises ValueError for bad syntax or unknown names."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{template!r} is not a valid template ({e})") from None
    bad = [n for n in names if n not in PLACEHOLDERS]
    if bad:
        raise ValueError(
            f"{template!r} has unknown placeholder(s) {', '.join('{' + b + '}' for b in bad)}; "
            f"allowed: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    return names


def _field_values(catalog, name: str, n: int) -> List[str]:
    """``n`` strings of field ``name`` (titles, item_fields, else the attribute vocabulary)."""
    if name == "title":
        return list(catalog.titles)
    fields = getattr(catalog, "item_fields", None) or {}
    if name in fields:
        return ["" if v is None else str(v) for v in fields[name]]
    attribute = {"categories": "category", "brand": "brand"}[name]
    attrs, vocab = getattr(catalog, "attributes", {}) or {}, getattr(catalog, "attribute_vocab", {}) or {}
    if attribute in attrs and attribute in vocab:
        return [vocab[attribute][int(v)] for v in attrs[attribute]]
    return [""] * n


def item_texts(catalog, template: str = TITLE_TEMPLATE) -> List[str]:
    """``num_items + 1`` rendered texts (index 0 = ``""``, padding).

    Args:
        catalog: a ``SequenceDataset``, or a plain sequence of titles (index 0 = padding;
            then only ``{title}`` has values).
        template: the item text template (see the module docstring).
    """
    if isinstance(catalog, (list, tuple, np.ndarray)):
        titles = ["" if t is None else str(t) for t in catalog]

        class _Titles:  # a bare title list: no other fields
            pass

        catalog = _Titles()
        catalog.titles = titles
    n = len(catalog.titles)
    names = template_fields(template)
    if names == ["title"] and template == TITLE_TEMPLATE:
        return ["" if t is None else str(t) for t in catalog.titles]
    values = {name: _field_values(catalog, name, n) for name in set(names)}
    out = [""]
    for i in range(1, n):
        text = template.format(**{name: values[name][i].strip() for name in values})
        out.append(text.strip(_DANGLING))
    return out


def leaf_categories(catalog) -> np.ndarray:
    """int32 ``[num_items + 1]`` leaf-category ids (0 = unknown), from ``attributes["category"]``.

    All zeros when the catalog has no category attribute.
    """
    attrs = getattr(catalog, "attributes", {}) or {}
    n = len(catalog.titles)
    if "category" not in attrs:
        return np.zeros(n, np.int32)
    return np.asarray(attrs["category"], np.int32)


def check_texts(texts: Sequence[str], where: str) -> None:
    """Raises ValueError when no item has any text (an empty corpus)."""
    if not any(t.strip() for t in texts[1:]):
        raise ValueError(f"{where}: every item text is empty; nothing to encode or pretrain on")
