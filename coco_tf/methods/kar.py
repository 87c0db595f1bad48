"""KAR baseline (Xi et al., "Towards Open-World Recommendation with Knowledge Augmentation
from LLMs"; what KAR is and how we read it: docs/design.md §6), on the same backbone, data and LLM
as CoCo.

KAR's three parts, as we build them for sequential retrieval (docs/design.md §6):

* **Frozen LLM, factorised prompting**: two fixed prompts (``KAR_PROMPT_TEXTS``:
  user-preference *reasoning* and item *factual* knowledge), encoded once by the
  base decoder (``[2, d_llm]``). No LoRA, no gradient into the LLM.
* **Pre-stored knowledge**: factual knowledge = the cached item text table rows
  of the history, mean-pooled (``[B, d_llm]``); reasoning knowledge = the frozen
  decoder run over ``[reasoning prompt ; h_text]`` and mean-pooled over the
  history positions (``[B, d_llm]``). Both are deterministic functions of the
  history through frozen weights — what KAR pre-computes offline; we compute
  them in the step (no gradient) so that every history prefix has its vector.
* **Hybrid-expert adaptor** (:class:`HybridExpertAdaptor`): shared experts plus
  experts dedicated to each knowledge type, mixed by a softmax gate per type,
  mapping each knowledge vector to the backbone's size ``d``; the augmented
  vectors are fused into the user vector: ``u = h_RS + Dense([r_aug, f_aug])``.

Objective: the same as CoCo's first two terms (``llm_augmented``): ``L_r(u)`` on
the next item of the newest position plus ``α·L_aux`` (all positions on h_RS).

Example:

>>> model = KARModel(num_items=150, item_text_table=assets.item_text_table,
...                  llm=assets.make_decoder(lora_rank=0), prompt_vectors=assets.kar_prompts,
...                  embedding_dim=32, max_len=12)
>>> user = model({"history": h})   # [B, 32]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from coco_tf.utils import masked_mean
from coco_tf.methods.llm_augmented import UserLevelRetrievalModel


class HybridExpertAdaptor(keras.layers.Layer):
    """KAR's hybrid-expert adaptor: shared + dedicated MLP experts, softmax-gated per knowledge type.

    For knowledge type j with vector ``k_j`` ``[B, d_in]``:
    ``out_j = Σ_e g_{j,e}(k_j) · E_e(k_j)`` over the shared experts and type j's
    dedicated experts, ``g_j = softmax(W_j k_j)``.

    Args:
        output_dim: int, d.
        num_types: int, knowledge types (2: reasoning, factual).
        num_shared_experts, num_dedicated_experts: experts per group.
        hidden_dim: int, expert MLP inner size (0 = 2·output_dim).

    Call:
        knowledge: list of ``num_types`` tensors ``[B, d_in]`` → list of ``[B, d]``.

    Example:

    >>> adaptor = HybridExpertAdaptor(output_dim=32)
    >>> r_aug, f_aug = adaptor([reasoning, factual])   # each [B, 32]
    """

    def __init__(self, output_dim: int, num_types: int = 2, num_shared_experts: int = 2,
                 num_dedicated_experts: int = 2, hidden_dim: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = int(output_dim)
        self.num_types = int(num_types)
        self.num_shared_experts = int(num_shared_experts)
        self.num_dedicated_experts = int(num_dedicated_experts)
        self.hidden_dim = int(hidden_dim)
        inner = self.hidden_dim or 2 * self.output_dim

        def expert(name):
            return keras.Sequential(
                [keras.layers.Dense(inner, activation="relu", name=f"{name}_inner"),
                 keras.layers.Dense(self.output_dim, name=f"{name}_output")],
                name=name,
            )

        self.shared_experts = [expert(f"shared_expert_{i}") for i in range(self.num_shared_experts)]
        self.dedicated_experts = [
            [expert(f"type_{j}_expert_{i}") for i in range(self.num_dedicated_experts)] for j in range(self.num_types)
        ]
        self.gates = [
            keras.layers.Dense(self.num_shared_experts + self.num_dedicated_experts, name=f"type_{j}_gate")
            for j in range(self.num_types)
        ]

    def call(self, knowledge, training=None):
        outputs = []
        for j, k in enumerate(knowledge):
            experts = self.shared_experts + self.dedicated_experts[j]
            stacked = tf.stack([e(k, training=training) for e in experts], axis=1)  # [B, E, d]
            gate = tf.nn.softmax(self.gates[j](k), axis=-1)  # [B, E]
            outputs.append(tf.reduce_sum(stacked * gate[:, :, None], axis=1))
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_dim": self.output_dim,
                "num_types": self.num_types,
                "num_shared_experts": self.num_shared_experts,
                "num_dedicated_experts": self.num_dedicated_experts,
                "hidden_dim": self.hidden_dim,
            }
        )
        return config


class KARModel(UserLevelRetrievalModel):
    """KAR: frozen-LLM knowledge + hybrid-expert adaptor, fused into the backbone's user vector.

    Args:
        num_items, backbone, embedding_dim, max_len, loss, temperature,
            backbone_kwargs: as :class:`SequentialRetrievalModel`.
        item_text_table: ``[num_items + 1, d_llm]`` (frozen, pre-stored factual knowledge).
        llm: a frozen ``QwenBackbone`` (no LoRA).
        prompt_vectors: ``[2, d_llm]`` the encoded factorised prompts (reasoning, factual); kept as
            the non-trainable variable ``kar_prompt_vectors`` (checkpointed, exported).
        alpha: weight of L_aux.
        zero_init: the fusion Dense starts at zero, so ``u == h_RS`` at initialisation (KAR's own
            reading: random init, ``coco.zero_init=false``).
    """

    def __init__(self, num_items: int, item_text_table, llm, prompt_vectors, alpha: float = 1.0,
                 zero_init: bool = True, **kwargs):
        super().__init__(num_items=num_items, item_text_table=item_text_table, alpha=alpha, zero_init=zero_init,
                         **kwargs)
        self.llm = llm
        self.llm.trainable = False
        prompts = np.asarray(prompt_vectors, np.float32)
        if prompts.shape != (2, self.text_dim):
            raise ValueError(f"prompt_vectors must be [2, {self.text_dim}], got {prompts.shape}")
        # A non-trainable variable, so that checkpoints (and the export) carry the encoded prompts.
        self.prompt_vectors = tf.Variable(prompts, trainable=False, name="kar_prompt_vectors")
        self.adaptor = HybridExpertAdaptor(self.embedding_dim, num_types=2, name="hybrid_expert_adaptor")
        # zero_init: u == h_RS at initialisation (the branch starts with nothing to add).
        self.fusion = keras.layers.Dense(self.embedding_dim, kernel_initializer="zeros" if self.zero_init
                                         else "glorot_uniform", name="knowledge_fusion")

    def knowledge(self, history):
        """``(reasoning [B, d_llm], factual [B, d_llm])`` — frozen, no gradient.

        One frozen decoder pass over ``2B`` rows: ``[reasoning prompt ; h_text]``
        and ``[factual prompt ; h_text]``, each mean-pooled over the history
        positions; the factual vector adds the pre-stored rows' own mean.
        """
        h_text, mask = self.history_text(history)
        batch = tf.shape(history)[0]
        prompts = tf.repeat(tf.convert_to_tensor(self.prompt_vectors)[:, None, :], batch, axis=0)  # [2B, 1, d_llm]
        text = tf.concat([h_text, h_text], axis=0)
        text_mask = tf.concat([mask, mask], axis=0)
        hidden, _ = self.decode_with_prefix(prompts, tf.ones([2 * batch, 1], tf.bool), text, text_mask, training=False)
        pooled = masked_mean(tf.cast(hidden[:, 1:], tf.float32), text_mask)  # [2B, d_llm]
        reasoning, factual = pooled[:batch], pooled[batch:] + masked_mean(h_text, mask)
        return tf.stop_gradient(reasoning), tf.stop_gradient(factual)

    def user_vector(self, history, h_rs, states, training=None, target_ids=None):
        reasoning, factual = self.knowledge(history)
        r_aug, f_aug = self.adaptor([reasoning, factual], training=training)
        user = h_rs + self.fusion(tf.concat([r_aug, f_aug], axis=-1))
        return user, reasoning, {}, {}
