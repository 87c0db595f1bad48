"""``CausalLM``: a ``QwenBackbone`` plus its LM head, for next-token cross-entropy.

The head is the tied input embedding (``logits = hidden @ E^T``) unless the
backbone's ``tie_word_embeddings`` is False, in which case a separate
``[hidden_dim, vocabulary_size]`` projection (``lm_head``, no bias) is created.
Converted / pretrained directories store the backbone only, so an untied head
starts random here and is not written out (``coco_tf.llm.convert`` drops it too).

Example::

    lm = CausalLM(QwenBackbone.from_preset("tiny"))
    nll, count = lm.token_nll(token_ids, padding_mask)   # sums over predicted tokens
    perplexity = exp(nll / count)
"""

import tensorflow as tf
import tf_keras as keras


class CausalLM(keras.Model):
    """Backbone + LM head.

    Args:
        backbone: a ``QwenBackbone`` (its variables are the LM's, shared).

    Call arguments:
        inputs: dict ``token_ids`` int ``[batch, seq]``, ``padding_mask`` ``[batch, seq]``.

    Returns:
        float32 logits ``[batch, seq, vocabulary_size]``.
    """

    def __init__(self, backbone, **kwargs):
        kwargs.setdefault("name", "causal_lm")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.lm_head = None
        if not backbone.tie_word_embeddings:
            self.lm_head = keras.layers.Dense(
                backbone.vocabulary_size,
                use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="lm_head",
            )
            self.lm_head.build(tf.TensorShape([None, None, backbone.hidden_dim]))
        self.built = True

    def call(self, inputs, training=None):
        hidden = self.backbone(inputs, training=training)
        hidden = tf.cast(hidden, tf.float32)
        if self.lm_head is not None:
            return self.lm_head(hidden)
        embeddings = tf.cast(self.backbone.token_embedding.embeddings, tf.float32)
        return tf.einsum("bsd,vd->bsv", hidden, embeddings)

    def token_nll(self, token_ids, padding_mask, training=False):
        """``(sum of next-token NLL, number of predicted tokens)``, float32 scalars.

        Position t predicts token t + 1 where both are real (``padding_mask`` 1);
        the first token of each text is context only.
        """
        token_ids = tf.convert_to_tensor(token_ids, tf.int32)
        padding_mask = tf.convert_to_tensor(padding_mask, tf.int32)
        logits = self({"token_ids": token_ids, "padding_mask": padding_mask}, training=training)
        targets = token_ids[:, 1:]
        weights = tf.cast(padding_mask[:, 1:], tf.float32)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits[:, :-1])
        return tf.reduce_sum(nll * weights), tf.reduce_sum(weights)
