"""The prompt texts the frozen decoder encodes (``coco_tf.llm.assets``), one home for all of them.

* :data:`PROMPT_TEXTS`: CoCo's K codewords' initial texts (``coco.codebook_init=llm``, paper §4.2.1),
  cycled by :func:`prompt_texts` when K is larger;
* :data:`SHARED_PROMPT_TEXTS`: CoCo's S shared prompts ``z_share`` (eq. 3);
* :data:`KAR_PROMPT_TEXTS`: KAR's factorised prompts (reasoning, factual; docs/design.md §6).

Example:

>>> prompt_texts(3)
['focus on price sensitivity', 'focus on brand loyalty', 'focus on product quality']
"""

# Short "universal semantic prompts" (paper §4.2.1) whose LLM encodings initialise the
# K codewords. Order matters only for reproducibility.
PROMPT_TEXTS = (
    "focus on price sensitivity",
    "focus on brand loyalty",
    "focus on product quality",
    "focus on recent purchases",
    "focus on long term interests",
    "focus on repeat purchases",
    "focus on complementary items",
    "focus on substitute items",
    "focus on seasonal needs",
    "focus on gift shopping",
    "focus on new arrivals",
    "focus on best sellers",
    "focus on niche products",
    "focus on premium products",
    "focus on budget products",
    "focus on discounts and deals",
    "focus on product category",
    "focus on product size and volume",
    "focus on color and style",
    "focus on scent and fragrance",
    "focus on skin type",
    "focus on hair type",
    "focus on natural ingredients",
    "focus on organic products",
    "focus on health and wellness",
    "focus on beauty routine",
    "focus on daily essentials",
    "focus on luxury preferences",
    "focus on trend following",
    "focus on classic choices",
    "focus on functionality",
    "focus on aesthetics",
    "focus on durability",
    "focus on ease of use",
    "focus on packaging",
    "focus on reviews and ratings",
    "focus on popularity",
    "focus on diversity of interests",
    "focus on narrow interests",
    "focus on exploration of new brands",
    "focus on bundle purchases",
    "focus on refill and replacement",
    "focus on travel size items",
    "focus on professional use",
    "focus on hobby and leisure",
    "focus on children and family",
    "focus on men's products",
    "focus on women's products",
    "focus on age related needs",
    "focus on sensitive skin",
    "focus on fragrance free items",
    "focus on eco friendly products",
    "focus on cruelty free products",
    "focus on tools and accessories",
    "focus on sets and kits",
    "focus on sample sizes",
    "focus on holiday season",
    "focus on summer needs",
    "focus on winter needs",
    "focus on impulse buying",
    "focus on planned purchases",
    "focus on brand diversity",
    "focus on title keywords",
    "focus on the latest item",
)

SHARED_PROMPT_TEXTS = (
    "you are a recommender system that summarizes user interests",
    "the user has bought the following items",
)


def prompt_texts(count: int, base=PROMPT_TEXTS):
    """``count`` prompt texts: :data:`PROMPT_TEXTS` cycled with a variant number when K > 64."""
    out = []
    for i in range(count):
        text = base[i % len(base)]
        out.append(text if i < len(base) else f"{text} variant {i // len(base)}")
    return out


# KAR's factorisation prompting: user-preference reasoning and item factual knowledge.
KAR_PROMPT_TEXTS = (
    "analyze the user's preferences and the reasons behind them from the items below",
    "list the factual attributes of the following items",
)
