"""``ServingModule``: the served graph of a trained retrieval model (a ``tf.Module``).

Signatures (``history`` int64 ``[batch, T]``, 0 = padding, any T)::

    serving_default  history → item_ids int64 [batch, k0], scores float32 [batch, k0],
                               num_unknown_ids int32 [batch]
    top_<k>          the same with k items (one per k of ``export.top_k``)
    user_embedding   history → user_embedding float32 [batch, d], num_unknown_ids int32 [batch]

One request::

    history ──harden──► [batch, T'] (T' <= max_len) ──model (eval path)──► user [batch, d]
    user ──BruteForce index over items 1..N (TFRS)──► top-k scores, item ids

Input hardening (:func:`harden_history`): ids outside ``[1, num_items]``
(negative or unknown) become padding and are *counted* in ``num_unknown_ids``
(one extra output rather than a separate signature, so a client sees the count
with its ranking); an all-padding history is scored like any other (the
model's output for an empty history, a fixed cold-start ranking); a history
longer than ``max_len`` keeps its ``max_len`` most recent items (padding may
sit anywhere; valid items keep their order).

The model runs with ``training=False``: no dropout, and for CoCo the serving
path of ``CoCoModel.user_vector`` (no target, so no decision matrix M, no
gradient mask, no losses). LoRA is merged before tracing, so the LoRA factors
are never read. The index is TFRS's exact ``BruteForce`` (ScaNN has no build for
TensorFlow 2.21). The SavedModel holds exactly the variables the signatures read
(:meth:`ServingModule.serving_variables`; the exporter saves a bare ``tf.Module``
with those, not the Keras model): weights, the item table, the frozen item text
table and the index, all read-only at serving; no optimizer slots, no LoRA
factors, no step counters.

Why variables and not graph constants (``convert_variables_to_constants_v2``):
a frozen GraphDef is one protobuf, capped at 2 GiB (a Qwen3-0.6B decoder alone
is 2.4 GB in float32); and with oneDNN (TensorFlow's default CPU build) the
frozen graph's user vectors differed from the in-memory model by up to 6e-4
(tiny SASRec, this machine; 0 with ``TF_ENABLE_ONEDNN_OPTS=0``), above the
1e-5 export contract, while the variable graph matches to ~4e-7.

``export.jit_compile=true`` compiles the model part with XLA (the function
carries ``_XlaMustCompile``): on this 2-core CPU it cuts single-request latency
2-3x (``bench/bench_serving.py``). TensorFlow loads it as is; TF Serving runs it
only with ``--xla_cpu_compilation_enabled=true``. XLA compiles once per input
shape, so requests are padded to ``max_len`` (one compilation per batch size;
TF Serving's batching with ``allowed_batch_sizes`` bounds them).
"""

from __future__ import annotations

from typing import Dict, Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs

HISTORY_SPEC = tf.TensorSpec([None, None], tf.int64, name="history")


def harden_history(history: tf.Tensor, num_items: int, max_len: int):
    """Cleans a request: ``(history int64 [B, T'], num_unknown_ids int32 [B])``.

    Ids outside ``[0, num_items]`` become 0 and are counted; ``T > max_len``
    keeps the ``max_len`` newest valid items (right-aligned, order kept);
    ``T == 0`` becomes one padding column.
    """
    history = tf.convert_to_tensor(history, tf.int64)
    unknown = (history < 0) | (history > num_items)
    num_unknown = tf.reduce_sum(tf.cast(unknown, tf.int32), axis=1)
    history = tf.where(unknown, tf.zeros_like(history), history)
    t = tf.shape(history)[1]
    history = tf.pad(history, [[0, 0], [0, tf.maximum(1 - t, 0)]])

    def keep_recent():
        # Stable sort on validity: padding first, valid items in their order, newest last.
        order = tf.argsort(tf.cast(history != 0, tf.int32), axis=1, stable=True)
        return tf.gather(history, order, batch_dims=1)[:, -max_len:]

    history = tf.cond(t > max_len, keep_recent, lambda: history)
    return history, num_unknown


class ServingModule(tf.Module):
    """The serving signatures of a trained ``SequentialRetrievalModel`` (base, KAR or CoCo).

    Args:
        model: the trained model (LoRA already merged for CoCo; see
            ``coco_tf.export.exporter.load_trained_model``).
        top_k: the k of each top-k signature; the first one is ``serving_default``.
        max_len: longest history the model reads (``data.max_len``).
        jit_compile: run the model under XLA (``export.jit_compile``); requests are
            right-padded to ``max_len`` (the models ignore padding wherever it is).

    Example:

    >>> module = ServingModule(model, top_k=[10], max_len=50)
    >>> out = module.top_k_fn(10)(tf.constant([[3, 7, 0]], tf.int64))
    >>> out["item_ids"].shape, out["scores"].shape     # (1, 10), (1, 10)
    >>> signatures = module.signatures()                 # for tf.saved_model.save
    """

    def __init__(self, model, top_k: Sequence[int], max_len: int, jit_compile: bool = False, name: str = "serving"):
        super().__init__(name=name)
        self._model = model
        self.num_items = int(model.num_items)
        self.max_len = int(max_len)
        self.jit_compile = bool(jit_compile)
        tower = lambda history: model({"history": history}, training=False)  # noqa: E731
        # XLA compiles per input shape: with fixed T = max_len, once per batch size.
        self._user_tower = tf.function(tower, jit_compile=True) if self.jit_compile else tower
        self.top_k = [int(k) for k in top_k]
        if not self.top_k or any(k <= 0 or k > self.num_items for k in self.top_k):
            raise ValueError(
                f"config key 'export.top_k': every k must be in [1, {self.num_items}] (the catalog's item "
                f"count), got {self.top_k}"
            )
        # Items 1..N; row 0 (padding) is never a candidate.
        # CoCo / KAR with coco.text_score: [E ; t̂] (the user tower returns [h ; q_u]).
        table = model.candidate_table()
        self._index = tfrs.layers.factorized_top_k.BruteForce(k=max(self.top_k), name="item_index")
        self._index.index(table[1:], tf.range(1, self.num_items + 1, dtype=tf.int64))

    def user_embedding(self, history: tf.Tensor) -> Dict[str, tf.Tensor]:
        """``{"user_embedding": [B, d], "num_unknown_ids": int32 [B]}``."""
        clean, num_unknown = harden_history(history, self.num_items, self.max_len)
        if self.jit_compile:
            clean = tf.pad(clean, [[0, 0], [0, self.max_len - tf.shape(clean)[1]]])
        user = self._user_tower(clean)
        return {"user_embedding": tf.cast(user, tf.float32), "num_unknown_ids": num_unknown}

    def top_k_fn(self, k: int, user_fn=None):
        """A function ``history → {"item_ids" [B, k], "scores" [B, k], "num_unknown_ids" [B]}``.

        ``user_fn``: the user tower to call (default :meth:`user_embedding`).
        """
        user_fn = user_fn or self.user_embedding

        def serve(history):
            user = user_fn(history)
            scores, ids = self._index(user["user_embedding"], k=k)
            return {"item_ids": ids, "scores": scores, "num_unknown_ids": user["num_unknown_ids"]}

        return serve

    def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
        """``{signature name: concrete function of history}`` for ``tf.saved_model.save``.

        The user tower is one ``tf.function`` called by every signature (traced and
        stored once); each k adds a ``top_k`` over the index.
        """
        user_fn = tf.function(self.user_embedding, input_signature=[HISTORY_SPEC])
        top_k_signature = lambda k: self.top_k_fn(k, user_fn)  # noqa: E731
        fns = {"serving_default": top_k_signature(self.top_k[0])}
        for k in self.top_k:
            fns[f"top_{k}"] = top_k_signature(k)
        fns["user_embedding"] = lambda history: user_fn(history)
        return {name: tf.function(fn, input_signature=[HISTORY_SPEC]).get_concrete_function()
                for name, fn in fns.items()}

    @staticmethod
    def serving_variables(signatures) -> list:
        """The variables the signatures read (deduplicated): all a SavedModel must hold."""
        seen, out = set(), []
        for fn in signatures.values():
            for v in fn.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        return out
