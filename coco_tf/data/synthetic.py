"""The built-in synthetic catalog: the default dataset, deterministic by seed.

Items have attributes (category, brand, style, colour) and titles composed from
them ("Veloura Matte Crimson Lipstick 117"). Popularity is Zipf-like, so many
items are rare. A user has a taste (two brands and one style) and a sequence is
generated step by step:

* with probability ``p_sequential`` the next item is the current item's fixed
  *successor* (a collaborative, id-level pattern: "people who buy X buy Y
  next"); successors favour popular items;
* otherwise the next item is drawn from the user's taste: items of the user's
  brands and style are strongly preferred, with popularity only tempered
  (``popularity ** 0.3``), so rare items are bought too.

The taste is visible in the titles (brand and style words) but only weakly in
the ids of rare items, which are seen a few times in training: text carries
signal that ids alone do not, which is what an LLM-enhanced recommender should
exploit.

Example:

>>> ds = generate_synthetic(num_users=200, num_items=100, seed=1)
>>> ds.num_users, ds.num_items
(200, 100)
"""

from __future__ import annotations

import numpy as np

from coco_tf.data.dataset import SequenceDataset

CATEGORIES = [
    ("Makeup>Lips", "Lipstick"), ("Makeup>Eyes", "Eyeliner"), ("Makeup>Face", "Foundation"),
    ("Skin Care>Face", "Moisturizer"), ("Skin Care>Body", "Body Lotion"), ("Hair Care", "Shampoo"),
    ("Hair Care", "Conditioner"), ("Fragrance", "Eau de Parfum"), ("Nails", "Nail Polish"),
    ("Tools", "Brush Set"), ("Skin Care>Sun", "Sunscreen"), ("Bath", "Bath Bomb"),
]
BRAND_SYLLABLES = ["Vel", "Lum", "Ser", "Ar", "Cal", "Nov", "Bel", "Or", "Ky", "Dal", "Mir", "Es"]
BRAND_ENDINGS = ["oura", "ora", "ene", "is", "ia", "elle", "ana", "ique"]
STYLES = ["Matte", "Glossy", "Organic", "Vegan", "Luxe", "Sheer", "Waterproof", "Sensitive"]
COLOURS = ["Crimson", "Nude", "Coral", "Ivory", "Plum", "Rose", "Amber", "Onyx", "Pearl", "Sage"]


def generate_synthetic(
    num_users: int = 6000,
    num_items: int = 1500,
    min_len: int = 5,
    max_len: int = 30,
    seed: int = 7,
    num_brands: int = 24,
    p_sequential: float = 0.45,
) -> SequenceDataset:
    """Generates a catalog and user sequences. Same arguments, same output."""
    if num_items < 2 or num_users < 1:
        raise ValueError("synthetic catalog needs at least 2 items and 1 user")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    rng = np.random.default_rng(seed)
    n_cat = len(CATEGORIES)

    brand_names = []
    for b in range(num_brands):
        name = BRAND_SYLLABLES[b % len(BRAND_SYLLABLES)] + BRAND_ENDINGS[(b * 5 + b // 12) % len(BRAND_ENDINGS)]
        brand_names.append(name if name not in brand_names else f"{name} {b}")
    # Each brand sells in three categories.
    brand_cats = np.stack([rng.choice(n_cat, size=3, replace=False) for _ in range(num_brands)])

    # Items (index 0 is padding).
    brand = np.zeros(num_items + 1, np.int32)
    cat = np.zeros(num_items + 1, np.int32)
    style = np.zeros(num_items + 1, np.int32)
    colour = np.zeros(num_items + 1, np.int32)
    brand[1:] = rng.integers(0, num_brands, num_items)
    cat[1:] = brand_cats[brand[1:], rng.integers(0, 3, num_items)]
    style[1:] = rng.integers(0, len(STYLES), num_items)
    colour[1:] = rng.integers(0, len(COLOURS), num_items)
    titles = [""]
    for i in range(1, num_items + 1):
        noun = CATEGORIES[cat[i]][1]
        titles.append(f"{brand_names[brand[i]]} {STYLES[style[i]]} {COLOURS[colour[i]]} {noun} {100 + i}")

    popularity = np.zeros(num_items + 1)
    popularity[1:] = 1.0 / (rng.permutation(num_items) + 5.0) ** 1.1
    popularity /= popularity.sum()

    # Successor of each item: a popular item of the same category (id-level pattern).
    successor = np.zeros(num_items + 1, np.int64)
    for c in range(n_cat):
        members = np.flatnonzero(cat == c)
        members = members[members > 0]
        if len(members) == 0:
            continue
        p = popularity[members] / popularity[members].sum()
        successor[members] = rng.choice(members, size=len(members), p=p)
    lonely = successor == 0
    lonely[0] = False
    successor[lonely] = rng.integers(1, num_items + 1, lonely.sum())

    # Users: two preferred brands and one preferred style.
    user_brands = np.stack([rng.choice(num_brands, size=2, replace=False) for _ in range(num_users)])
    user_style = rng.integers(0, len(STYLES), num_users)
    lengths = rng.integers(min_len, max_len + 1, num_users)
    tempered = popularity ** 0.3
    tempered[0] = 0.0

    sequences = []
    chunk = max(1, min(num_users, 2_000_000 // (num_items + 1)))
    for start in range(0, num_users, chunk):
        stop = min(num_users, start + chunk)
        n = stop - start
        ub = user_brands[start:stop]
        likes_brand = (brand[None, :] == ub[:, :1]) | (brand[None, :] == ub[:, 1:2])
        pref = tempered[None, :] * np.where(likes_brand, 1.0, 0.02)
        pref = pref * np.where(style[None, :] == user_style[start:stop, None], 3.0, 1.0)
        cdf = np.cumsum(pref, axis=1)
        cdf /= cdf[:, -1:]
        seqs = np.zeros((n, max_len), np.int64)
        for t in range(max_len):
            r = rng.random(n)
            taste = np.minimum((cdf < r[:, None]).sum(axis=1), num_items)
            if t == 0:
                seqs[:, 0] = taste
                continue
            follow = rng.random(n) < p_sequential
            seqs[:, t] = np.where(follow, successor[seqs[:, t - 1]], taste)
        for row, length in zip(seqs, lengths[start:stop]):
            sequences.append(row[:length].copy())

    return SequenceDataset(
        name=f"synthetic-u{num_users}-i{num_items}-s{seed}",
        sequences=sequences,
        titles=titles,
        # Attribute ids are shifted by one so that 0 means padding / unknown.
        attributes={"category": _shift(cat), "brand": _shift(brand), "style": _shift(style)},
        attribute_vocab={
            "category": [""] + ["Synthetic>" + c[0] + ">" + c[1] for c in CATEGORIES],
            "brand": [""] + brand_names,
            "style": [""] + STYLES,
        },
        item_fields={
            "categories": [""] + [CATEGORIES[cat[i]][0] + ">" + CATEGORIES[cat[i]][1] for i in range(1, num_items + 1)],
            "brand": [""] + [brand_names[brand[i]] for i in range(1, num_items + 1)],
        },
        user_external_ids=[str(u + 1) for u in range(num_users)],
        item_external_ids=[""] + [str(i) for i in range(1, num_items + 1)],
    )


def _shift(values: np.ndarray) -> np.ndarray:
    out = values + 1
    out[0] = 0
    return out.astype(np.int32)
