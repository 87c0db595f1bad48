"""The in-memory dataset every reader produces.

Item ids are contiguous ``1..num_items``; id 0 is padding everywhere. Readers
whose files use other ids keep the mapping in ``item_external_ids`` so exports
can report the original ids.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import numpy as np

from coco_tf.data.errors import SkipReport


@dataclasses.dataclass
class SequenceDataset:
    """User interaction sequences plus the item catalog.

    Attributes:
      name: a label for logs and cache keys.
      sequences: one int64 array per user, item ids in time order.
      titles: ``num_items + 1`` strings; ``titles[0] == ""`` (padding).
      attributes: name -> int32 array ``[num_items + 1]`` of attribute-value ids
        (0 = unknown/padding), e.g. ``category``, ``brand``.
      attribute_vocab: name -> list of attribute-value strings (index 0 = "").
      item_fields: name -> ``num_items + 1`` strings of item metadata text beyond the
        title (``categories``: the full category path(s), ``>``-joined, several joined
        by `` | ``; ``brand``), where the data has them; index 0 = "". Read by the
        LLM item text template (``llm.item_text_template``).
      user_external_ids / item_external_ids: ids as in the source files.
      skipped: lines skipped while reading (``data.on_bad_line=skip``).
    """

    name: str
    sequences: List[np.ndarray]
    titles: List[str]
    attributes: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    attribute_vocab: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    item_fields: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    user_external_ids: Optional[List[str]] = None
    item_external_ids: Optional[List[str]] = None
    skipped: SkipReport = dataclasses.field(default_factory=SkipReport)

    @property
    def num_items(self) -> int:
        return len(self.titles) - 1

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def describe(self) -> str:
        lengths = np.array([len(s) for s in self.sequences]) if self.sequences else np.zeros(1)
        return (
            f"{self.name}: {self.num_users:,} users, {self.num_items:,} items, "
            f"{self.num_interactions:,} interactions, length {lengths.min()}..{lengths.max()} "
            f"(mean {lengths.mean():.1f})"
        )
