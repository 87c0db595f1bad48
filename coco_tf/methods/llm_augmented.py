"""Shared base of the LLM-augmented retrieval models (CoCo, KAR).

``UserLevelRetrievalModel`` extends :class:`SequentialRetrievalModel` (same
item table, backbone and retrieval task; nothing duplicated) with

* the frozen item text table ``[num_items + 1, d_llm]`` (a non-trainable
  variable filled from the cached array of ``coco_tf.llm.item_text_table``;
  row 0 zeros), read per history position as ``h_text``;
* the user-level objective: one prediction per user, the next item of the
  newest history position (the paper's setting: the LLM runs once per user, not
  once per position); with ``user_position="random"`` a training step instead
  draws one position per user and predicts from the prefix ending there;
* L_aux: the backbone's own training objective (``backbone.training_queries``:
  SASRec's next item at every position, BERT4Rec's cloze, PinnerFormer's future
  window; the base model's objective, normalised the same way), so that an augmented model is
  "base + LLM branch" and the backbone keeps the full training signal. The
  paper's L_aux is InfoNCE on h_RS; ours covers the user-level position too.

``branch_penalty`` (``coco.branch_penalty``, default 0: the paper has none) adds
``λ·mean_u ||user_u − h_RS,u||²`` to the loss: the branch's contribution pays for itself in ``L_r``
or shrinks back towards the backbone's ranking while it trains, not only through selection.

``rec_to_backbone=False`` (``coco.rec_to_backbone``) stops the user-level terms' gradient at
``h_RS``: the backbone then trains exactly as the base model does, and ``L_r`` (and the VQ
terms) train the LLM branch alone — the branch adds to a backbone it cannot disturb.

The loss is ``L_r + α·L_aux + extras`` with ``α = coco.alpha`` (default 1: the
backbone's objective at full weight; the paper's 0.2 made the backbone of our strong
full-softmax SASRec half as good as the base, docs/results.md §7). During a base
stage (``coco.base_epochs``) the trainer uses :meth:`base_loss_and_metrics` and ranks
by :meth:`base_user` instead: the LLM branch is not run. Why these readings: docs/design.md §5.

``text_score`` (``coco.text_score``; the paper has none): the user vector gains a query in the
frozen item text space, ``[user ; q_u]`` ``[B, d + d_llm]``, and every candidate its normalised text
row, ``[E_i ; t̂_i]`` (``coco_tf/methods/text_space.py``: why, and the equations). The backbone's
own objective and a base stage still rank ``h_RS`` against ``E`` alone.

Subclasses implement ``user_vector(history, h_rs, states, training, target_ids)``
returning ``(user [B, d], summary [B, d_s] or None, extra_losses: dict, metrics: dict)``
(``summary``: the LLM branch's output that the text-space query maps, CoCo's pooled ``h_pure``,
KAR's reasoning vector); both read the decoder through
:meth:`UserLevelRetrievalModel.decode_with_prefix` (a prompt prefix, then the history's text rows).

Example (a subclass; ``CoCoModel`` and ``KARModel`` are the two):

>>> loss, metrics = model.compute_loss_and_metrics({"history": h, "targets": t}, training=True)
>>> metrics["loss/rec"], metrics["loss/aux"], metrics["loss/total"]
"""

from __future__ import annotations

import tensorflow as tf

from coco_tf.backbones.base import last_valid_index
from coco_tf.methods.retrieval_model import SequentialRetrievalModel
from coco_tf.metrics.ranking import history_exclusion
from coco_tf.methods.text_space import TextSpaceQuery, normalized_rows


def random_prefix(history: tf.Tensor, seed=None):
    """``(prefix [B, T'], at [B])``: per row a position ``at`` drawn uniformly among its valid
    (non-zero) positions, and the history cut after it (``T' = max(at) + 1``; padding stays 0).
    An all-padding row gets ``at = 0``."""
    valid = history != 0
    rank = tf.cumsum(tf.cast(valid, tf.int32), axis=1)  # [B, T] 1-based rank of each valid position
    n = rank[:, -1]  # [B] valid positions per row
    draw = tf.cast(tf.floor(tf.random.uniform(tf.shape(n), seed=seed) * tf.cast(n, tf.float32)), tf.int32)
    draw = tf.minimum(draw, tf.maximum(n - 1, 0)) + 1  # [B] in 1..n
    at = last_valid_index(valid & (rank == draw[:, tf.newaxis]))  # the draw-th valid position
    width = tf.reduce_max(at) + 1
    keep = tf.range(width)[tf.newaxis, :] <= at[:, tf.newaxis]
    return tf.where(keep, history[:, :width], tf.zeros_like(history[:, :width])), at


class UserLevelRetrievalModel(SequentialRetrievalModel):
    """Base: backbone → h_RS → (subclass) → user vector, loss ``L_r + α·L_aux + extras``."""

    def __init__(self, num_items: int, item_text_table, alpha: float = 1.0, user_position: str = "last",
                 rec_to_backbone: bool = True, branch_penalty: float = 0.0, text_score: bool = False,
                 text_window: int = 3, text_decay: float = 0.5, text_summary: bool = True, zero_init: bool = True,
                 rec_excludes_history: bool = False, **kwargs):
        """``text_score``, ``text_window``, ``text_decay``: the text-space query
        (:class:`~coco_tf.methods.text_space.TextSpaceQuery`); ``text_summary``: it also maps the
        subclass's summary (``[B, d_llm]``) by ``W``; ``zero_init``: it starts at zero.
        ``rec_excludes_history`` (``eval.exclude_history``): ``L_r``'s full softmax leaves out the
        history's own items, as the evaluation ranks them (the text query's self-similarity lifts them,
        and an objective that counts them would hold its scale down for items never ranked)."""
        super().__init__(num_items=num_items, item_text_table=item_text_table, **kwargs)
        self.zero_init = bool(zero_init)
        self.rec_excludes_history = bool(rec_excludes_history)
        self.text_query = None
        if text_score:
            self.text_query = TextSpaceQuery(self.text_dim, self.text_dim if text_summary else 0,
                                             window=text_window, decay=text_decay,
                                             zero_init=self.zero_init, name="text_query")
        self.rec_to_backbone = bool(rec_to_backbone)
        self.branch_penalty = float(branch_penalty)
        if user_position not in ("last", "random"):
            raise ValueError(f"config key 'coco.user_position': must be one of last, random; got {user_position!r}")
        self.alpha = float(alpha)
        self.user_position = user_position

    # ---------------------------------------------------------------- pieces
    def history_text(self, history):
        """``h_text`` ``[B, T, d_llm]`` and its mask ``[B, T]`` (the frozen table's rows)."""
        return tf.stop_gradient(self.item_text(history)), history != 0

    def decode_with_prefix(self, prefix, prefix_mask, h_text, text_mask, training=None, position_ids=None):
        """The decoder ``self.llm`` over ``[prefix ; h_text]``: ``(hidden [B, P + T, d_llm], mask [B, P + T])``.

        ``prefix [B, P, d_llm]`` / ``prefix_mask [B, P]`` (bool): prompt embeddings (CoCo's selected
        soft prompts, KAR's fixed prompt); ``h_text [B, T, d_llm]`` / ``text_mask [B, T]``: the
        history's item text rows (:meth:`history_text`). ``position_ids`` ``[P + T]``: RoPE
        positions (``None``: ``0..P+T-1``).
        """
        mask = tf.concat([prefix_mask, text_mask], axis=1)  # [B, P + T]
        inputs = {}
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        inputs["inputs_embeds"] = tf.concat([prefix, tf.cast(h_text, prefix.dtype)], axis=1)
        inputs["padding_mask"] = tf.cast(mask, tf.int32)
        return self.llm(inputs, training=training), mask

    def user_vector(self, history, h_rs, states, training=None, target_ids=None):
        raise NotImplementedError

    # ------------------------------------------------------- text-space scoring
    def text_rows(self) -> tf.Tensor:
        """``[num_items + 1, d_llm]``: the frozen item text table, rows L2-normalised (``t̂``)."""
        if not self.item_text.built:
            self.item_text.build(None)
        return normalized_rows(tf.stop_gradient(tf.convert_to_tensor(self.item_text.embeddings)))

    def with_text_query(self, history, user, summary):
        """``[user ; q_u]`` ``[B, d + d_llm]`` with ``coco.text_score``, else ``user`` ``[B, d]``."""
        if self.text_query is None:
            return user
        rows = normalized_rows(tf.stop_gradient(self.item_text(history)))  # [B, T, d_llm]
        return tf.concat([user, tf.cast(self.text_query(history, rows, summary), user.dtype)], axis=-1)

    def candidate_table(self) -> tf.Tensor:
        """What a full user vector is ranked against: ``[E ; t̂]`` ``[num_items + 1, d + d_llm]`` with
        ``coco.text_score``, else :meth:`item_table` (serving indexes this)."""
        if self.text_query is None:
            return self.item_table()
        return tf.concat([self.item_table(), self.text_rows()], axis=-1)

    def _has_text_part(self, queries) -> bool:
        return self.text_query is not None and queries.shape[-1] == self.embedding_dim + self.text_dim

    def score_all(self, user: tf.Tensor) -> tf.Tensor:
        """``[B, num_items + 1]``: a full user vector against :meth:`candidate_table`; ``h_RS``
        (``[B, d]``, a base stage) against the id table alone."""
        table = self.candidate_table() if self._has_text_part(user) else self.item_table()
        return tf.matmul(user, table, transpose_b=True)

    def user_level_loss(self, user, target_ids, history):
        """``[B]`` ``L_r`` of ``user`` for ``target_ids`` ``[B]``: :meth:`retrieval_loss`, or with
        ``rec_excludes_history`` (full softmax) the softmax over the items outside ``history`` ``[B, T]``
        (and the target)."""
        if not (self.rec_excludes_history and self.task.loss == "full_softmax"):
            return self.retrieval_loss(user, target_ids)
        logits = self.score_all(user) / self.task.temperature  # [B, N + 1]
        num_cols = tf.shape(logits)[1]
        drop = history_exclusion(history, target_ids, num_cols) | (tf.range(num_cols) == 0)[None, :]  # + padding
        logits = tf.where(drop, tf.constant(-1e9, logits.dtype), logits)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(target_ids, tf.int32), logits=logits)

    def retrieval_loss(self, queries: tf.Tensor, target_ids: tf.Tensor) -> tf.Tensor:
        """As :meth:`SequentialRetrievalModel.retrieval_loss`; queries with a text part are scored
        against the candidates' text rows too."""
        if not self._has_text_part(queries):
            return super().retrieval_loss(queries, target_ids)
        if self.task.loss == "in_batch":
            text = tf.gather(self.text_rows(), target_ids)
            return self.task(queries, target_ids, candidates=tf.concat([self.candidate_embeddings(target_ids), text], -1))
        return self.task(queries, target_ids, self.candidate_table())

    def _encode(self, history, training):
        """``(states [B, T, d], h_RS [B, d])`` through the backbone's own ``user_states``."""
        return self.backbone.user_states(history, training=training)

    def call(self, features, training=None):
        history = features["history"] if isinstance(features, dict) else features
        states, h_rs = self._encode(history, training)
        user, summary, _, _ = self.user_vector(history, h_rs, states, training=training)
        return self.with_text_query(history, user, summary)

    def base_user(self, history, training=None):
        """``h_RS`` ``[B, d]``: the backbone's user vector alone (the base stage's ranking; with
        ``zero_init`` an untrained LLM branch gives ``call`` exactly this)."""
        return self._encode(history, training)[1]

    def base_loss_and_metrics(self, features, training=False):
        """The base stage's objective: the backbone's own, as the plain retrieval model trains it
        (same per-position loss and normaliser); the LLM branch is not run."""
        loss = self.normalized_loss(self.per_example_loss(features, training=training))
        return loss, {"loss/aux": loss, "loss/total": loss}

    def compute_loss_and_metrics(self, features, training=False):
        """``(total loss, {name: scalar})`` — every loss term and the model's telemetry."""
        history, targets = features["history"], features["targets"]
        states, h_rs = self._encode(history, training)
        # L_r's example per user: the whole history and its newest position, or a drawn prefix.
        seen, seen_states, seen_rs = history, states, h_rs
        if training and self.user_position == "random":
            seen, at = random_prefix(history)
            seen_states, seen_rs = self._encode(seen, training)
        else:
            at = last_valid_index(history != 0)
        target_ids = tf.gather(targets, at, batch_dims=1)  # [B] the next item of that position
        if not self.rec_to_backbone:  # the backbone learns from its own objective only
            seen_states, seen_rs = tf.stop_gradient(seen_states), tf.stop_gradient(seen_rs)
        user, summary, extra_losses, metrics = self.user_vector(seen, seen_rs, seen_states, training=training,
                                                                target_ids=target_ids)
        id_user = user
        user = self.with_text_query(seen, user, summary)

        weights = tf.cast(target_ids != 0, tf.float32)
        safe_ids = tf.where(target_ids != 0, target_ids, tf.ones_like(target_ids))
        l_r = tf.reduce_sum(self.user_level_loss(user, safe_ids, seen) * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)

        # The backbone's own objective (next item, cloze, future window...): the plain model's
        # loss, reusing the states.
        l_aux = self.normalized_loss(self.per_example_loss(features, training=training, states=states, user=h_rs))

        total = l_r + self.alpha * l_aux
        out = {"loss/rec": l_r, "loss/aux": l_aux}
        # What the branch adds to the backbone's vector: ||user - h_RS||^2 per user [B] (0 at a
        # zero-initialised start). Reported always; with branch_penalty it is also a loss term, so a
        # branch that does not lower L_r stays near zero while it trains (h_RS held fixed here).
        added = tf.reduce_sum(tf.square(id_user - tf.stop_gradient(seen_rs)), axis=-1)
        l_branch = tf.reduce_sum(added * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
        out["branch/sq_norm"] = l_branch
        if self.text_query is not None:  # a: the weight of the history's own text rows; ||q_u||
            out["text/history_scale"] = tf.convert_to_tensor(self.text_query.scale)
            out["text/query_norm"] = tf.reduce_mean(tf.norm(user[:, self.embedding_dim:], axis=-1))
        if self.branch_penalty:
            total = total + self.branch_penalty * l_branch
        for name, (weight, value) in extra_losses.items():
            total = total + weight * value
            out[f"loss/{name}"] = value
        out["loss/total"] = total
        out.update(metrics)
        return total, out
