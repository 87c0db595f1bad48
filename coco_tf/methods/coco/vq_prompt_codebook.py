"""``VQPromptCodebook``: the personalised soft-prompt pool of CoCo (paper §4.2.1, eq. 2-4).

The codebook ``Z = {z_1..z_K}`` (``[K, d_llm]``, K = 64 by default) lives in the
LLM's input-embedding space, next to ``num_shared_prompts`` shared prompts
``z_share`` (``[S, d_llm]``, S = 2). For a user representation ``e_u``
(``[B, d_llm]``, the projected backbone output) the layer

1. scores every codeword (eq. 2, docs/design.md §4 reading):
   ``selection="cosine"``: ``s_i = cos(e_u, z_i)``;
   ``selection="centered"`` (our remedy): ``s_i = cos(e_u − z̄, z_i − z̄)`` with ``z̄`` the
   codebook's mean — the codewords' shared component (the LLM-encoded prompt texts are
   nearly collinear) is removed before comparing, so that θ selects the few codewords a
   user is close to instead of all of them (with plain cosine every user ends at m = m_max);
   ``selection="softmax"``: ``s_i = softmax_i(cos(e_u, z_i))`` (the paper's literal
   eq. 2; over K = 64 a softmax admits at most ~2 prompts above θ = 0.45);
2. selects ``{z_i | s_i > θ}``, keeping at most ``m_max`` (the top-m by score),
   padded to ``m_max`` slots with a boolean mask; a user may select none;
3. builds ``h_prompt = [z_share, selected]`` (eq. 3) ``[B, S + m_max, d_llm]`` with
   mask ``[B, S + m_max]`` (shared slots always on);
4. returns the VQ loss (eq. 4, VQ-VAE reading): with ``z_k`` the codeword nearest
   to ``e_u`` by cosine, ``codebook = ‖sg(e_u) − z_k‖²`` (moves only the codebook)
   and ``commitment = ‖e_u − sg(z_k)‖²`` (moves only e_u), squared errors averaged
   over the d_llm dimensions and the batch; ``L_Q = codebook + commitment_cost · commitment``.

Usage term (our addition, ``coco.usage_weight``; 0 is the paper's loss): with the
soft assignment ``p_b = softmax(cos(e_u, z) / t)`` ``[B, K]`` and its batch mean
``p̄``, ``usage = log K − H(p̄)`` (0 when the batch spreads evenly over the K codewords,
``log K`` when every user sits on one). Without it the nearest-code histogram
collapses to one or two codewords within a few epochs (docs/results.md §7), so the
"personal" prompts are one global prompt. It is a gradient term, like the rest.

The codebook is trained by gradients only: nothing in ``call`` assigns to a
variable (an ``assign`` inside ``call`` is unsafe under asynchronous
parameter-server updates, docs/design.md §4 and §7). The hard selection passes no gradient to
``e_u``; ``e_u`` learns through the commitment term.

Initialisation (``coco.codebook_init``): ``initial_codebook`` /
``initial_shared`` arrays, normally the frozen base LLM's mean-pooled encodings
of ``coco_tf.llm.prompts.PROMPT_TEXTS`` / ``SHARED_PROMPT_TEXTS`` (see
``coco_tf.llm.assets``); ``None`` = random normal init.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

SELECTIONS = ("cosine", "softmax", "centered")

def codebook_usage(codes: tf.Tensor, mask: tf.Tensor, codebook_size: int):
    """Usage statistics of ``codes`` int ``[N]`` (entries with ``mask`` ``[N]``).

    Returns ``(perplexity, unused)``: ``exp(entropy)`` of the code histogram (1 =
    one code used, K = uniform) and the number of codewords never used.
    """
    weights = tf.cast(mask, tf.float32)
    counts = tf.math.unsorted_segment_sum(weights, tf.cast(codes, tf.int32), codebook_size)
    p = counts / tf.maximum(tf.reduce_sum(counts), 1.0)
    entropy = -tf.reduce_sum(tf.where(p > 0, p * tf.math.log(tf.maximum(p, 1e-12)), 0.0))
    unused = tf.reduce_sum(tf.cast(counts == 0, tf.float32))
    return tf.exp(entropy), unused


class VQPromptCodebook(keras.layers.Layer):
    """Vector-quantised soft-prompt selection (eq. 2-4).

    Args:
        codebook_size: int, K.
        embedding_dim: int, d_llm (the decoder's hidden size).
        num_shared_prompts: int, S shared prompts placed first.
        threshold: float, θ.
        max_prompts: int, m_max (capped at K).
        selection: ``"cosine"``, ``"centered"`` or ``"softmax"``.
        commitment_cost: float, weight of the commitment term (0.25).
        usage_temperature: float, t of the usage term's soft assignment.
        trainable_prompts: bool; False freezes codebook and shared prompts (the
            ``soft`` ablation: fixed structured prompts).
        initial_codebook: optional array ``[K, d_llm]``.
        initial_shared: optional array ``[S, d_llm]``.

    Call:
        e_u: float ``[B, d_llm]``.

    Returns a dict:
        ``prompts`` ``[B, S + m, d_llm]`` (unselected slots zero),
        ``prompt_mask`` bool ``[B, S + m]``, ``selected_indices`` int32 ``[B, m]``,
        ``selected_mask`` bool ``[B, m]``, ``num_selected`` int32 ``[B]``,
        ``scores`` ``[B, K]``, ``nearest`` int32 ``[B]``, and scalars
        ``codebook_loss``, ``commitment_loss``, ``vq_loss``, ``usage_loss``.

    Example:

    >>> layer = VQPromptCodebook(codebook_size=64, embedding_dim=64, max_prompts=8)
    >>> out = layer(tf.random.normal([4, 64]))
    >>> out["prompts"].shape, out["prompt_mask"].shape   # (4, 10, 64), (4, 10)
    >>> loss = out["vq_loss"]                              # scalar, eq. 4
    """

    def __init__(
        self,
        codebook_size: int = 64,
        embedding_dim: int = 64,
        num_shared_prompts: int = 2,
        threshold: float = 0.45,
        max_prompts: int = 32,
        selection: str = "cosine",
        commitment_cost: float = 0.25,
        usage_temperature: float = 0.1,
        trainable_prompts: bool = True,
        initial_codebook=None,
        initial_shared=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.codebook_size = int(codebook_size)
        self.embedding_dim = int(embedding_dim)
        self.num_shared_prompts = int(num_shared_prompts)
        self.threshold = float(threshold)
        self.max_prompts = int(max_prompts)
        self.selection = selection
        self.commitment_cost = float(commitment_cost)
        self.usage_temperature = float(usage_temperature)
        self.trainable_prompts = bool(trainable_prompts)
        self.initial_codebook = None if initial_codebook is None else np.asarray(initial_codebook, np.float32)
        self.initial_shared = None if initial_shared is None else np.asarray(initial_shared, np.float32)
        for name, arr, rows in (
            ("initial_codebook", self.initial_codebook, self.codebook_size),
            ("initial_shared", self.initial_shared, self.num_shared_prompts),
        ):
            if arr is not None and arr.shape != (rows, self.embedding_dim):
                raise ValueError(f"{name} must be [{rows}, {self.embedding_dim}], got {arr.shape}")
        self.num_slots = min(self.max_prompts, self.codebook_size)

    def _init(self, array):
        if array is None:
            return keras.initializers.RandomNormal(stddev=1.0)
        return keras.initializers.Constant(array)

    def build(self, input_shape):
        self.codebook = self.add_weight(
            name="codebook",
            shape=(self.codebook_size, self.embedding_dim),
            initializer=self._init(self.initial_codebook),
            trainable=self.trainable_prompts,
        )
        self.shared_prompts = self.add_weight(
            name="shared_prompts",
            shape=(self.num_shared_prompts, self.embedding_dim),
            initializer=self._init(self.initial_shared),
            trainable=self.trainable_prompts,
        )
        super().build(input_shape)

    def call(self, e_u):
        e_u = tf.convert_to_tensor(e_u)
        z = tf.cast(self.codebook, e_u.dtype)
        batch = tf.shape(e_u)[0]
        if self.selection == "centered":
            centre = tf.reduce_mean(z, axis=0, keepdims=True)  # [1, d]
            q, keys = e_u - centre, z - centre
        else:
            q, keys = e_u, z
        cos = tf.matmul(tf.math.l2_normalize(q, -1), tf.math.l2_normalize(keys, -1), transpose_b=True)  # [B, K]
        scores = tf.nn.softmax(cos, axis=-1) if self.selection == "softmax" else cos
        top_scores, top_idx = tf.math.top_k(tf.stop_gradient(scores), k=self.num_slots)  # [B, m]
        selected_mask = top_scores > self.threshold
        selected = tf.gather(z, top_idx) * tf.cast(selected_mask, z.dtype)[:, :, None]  # [B, m, d]
        shared = tf.tile(tf.cast(self.shared_prompts, e_u.dtype)[None], [batch, 1, 1])  # [B, S, d]
        prompts = tf.concat([shared, selected], axis=1)
        prompt_mask = tf.concat([tf.ones([batch, self.num_shared_prompts], tf.bool), selected_mask], axis=1)

        nearest = tf.argmax(cos, axis=-1, output_type=tf.int32)  # [B]
        z_k = tf.gather(z, nearest)
        codebook_loss = tf.reduce_mean(tf.square(tf.stop_gradient(e_u) - z_k))
        commitment_loss = tf.reduce_mean(tf.square(e_u - tf.stop_gradient(z_k)))
        soft = tf.nn.softmax(cos / self.usage_temperature, axis=-1)  # [B, K]
        mean_soft = tf.reduce_mean(soft, axis=0)
        usage_loss = tf.math.log(float(self.codebook_size)) + tf.reduce_sum(
            mean_soft * tf.math.log(tf.maximum(mean_soft, 1e-12)))
        return {
            "usage_loss": usage_loss,
            "prompts": prompts,
            "prompt_mask": prompt_mask,
            "selected_indices": top_idx,
            "selected_mask": selected_mask,
            "num_selected": tf.reduce_sum(tf.cast(selected_mask, tf.int32), axis=1),
            "scores": scores,
            "nearest": nearest,
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
            "vq_loss": codebook_loss + self.commitment_cost * commitment_loss,
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "codebook_size": self.codebook_size,
                "embedding_dim": self.embedding_dim,
                "num_shared_prompts": self.num_shared_prompts,
                "threshold": self.threshold,
                "max_prompts": self.max_prompts,
                "selection": self.selection,
                "commitment_cost": self.commitment_cost,
                "usage_temperature": self.usage_temperature,
                "trainable_prompts": self.trainable_prompts,
                "initial_codebook": None if self.initial_codebook is None else self.initial_codebook.tolist(),
                "initial_shared": None if self.initial_shared is None else self.initial_shared.tolist(),
            }
        )
        return config
