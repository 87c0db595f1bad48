"""``CoCoModel``: the paper's collaboration-contradiction framework on TFRS (§4, Algorithm 1).

One training example (one user; B users per batch; shapes for the tiny config)::

    history int64 [B, T] ──backbone.encode──► states [B, T, d] ──newest──► h_RS [B, d]
    h_RS ──proj (Dense)──► e_u [B, d_llm]
    e_u ──VQPromptCodebook (eq. 2-4)──► h_prompt [B, P, d_llm], prompt_mask [B, P]   P = S + m_max
    h_text = item_text_table[history]  [B, T, d_llm] (frozen, pre-stored, docs/design.md §4)
    h_f = [h_prompt ; h_text] (eq. 3) ──QwenBackbone + LoRA(q, v)──► h_mix [B, P + T, d_llm]
    h_pure = SemanticDecoupling(h_prompt, h_mix) (eq. 5)                [B, P, d_llm]
    h_aligned = SemanticBehavioralAlignment(h_RS, h_pure) (eq. 7)       [B, d]
    M = 1[cos(h_aligned, v_t) > cos(h_RS, v_t)] (eq. 8)                 [B]
    L = L_r(h_aligned) + α·L_aux(h_RS) + β·L_ortho + γ·L_Q [+ w·L_usage]  (eq. 11)

"The LLM branch can only add" (our readings, each a config switch; the paper's values kept;
docs/design.md §5 gives the reasons):

* ``coco.zero_init`` (default true): the alignment's last projection starts at zero,
  so an untrained CoCo ranks exactly as its backbone (``methods/coco/alignment.py``);
* ``coco.alpha`` = 1 (paper 0.2): ``L_aux`` is the backbone's full dense objective;
* ``coco.base_epochs`` / ``coco.init_from``: the backbone first trains alone (or comes
  from a trained base run) and the branch joins from there (``training/base.py``);
* ``coco.usage_weight`` (default 0.1; paper 0): a codebook usage term against collapse
  (``methods/coco/vq_prompt_codebook.py``).

Choices (the docs/design.md §4 readings, plus):

* **Training target**: user level, as in the paper — ``v_t`` is the next item of
  the newest history position, and ``L_r`` is the retrieval loss
  (``train.loss``: full softmax or in-batch InfoNCE) of ``h_aligned`` on it.
  ``L_aux`` is the backbone's own training objective (next item at *every* position for SASRec; see
  ``llm_augmented``): it includes the paper's ``L_aux`` (the user-level position
  on ``h_RS``) and keeps the base model's full training signal, so ``coco`` is
  ``base`` plus the LLM branch.
* **Gradient mask (eq. 9)** at the LLM-branch outputs (``h_mix`` and the prompt
  rows used as decoupling queries), not at ``h_aligned``: LoRA and the prompts
  learn only from M = 0 examples; the backbone and alignment learn from all.
  M needs ``h_aligned``, which needs ``h_mix``: the decoder runs once; the cheap
  decoupling + alignment run twice (once without gradient to decide M, once on the
  masked tensors, same forward values).
* **Serving**: ``call`` returns ``h_aligned`` (no target, no mask).

Ablations (``coco.ablation``): ``soft`` freezes the codebook and shared prompts at
their LLM-encoded prompt texts (fixed structured prompts, still selected per
user); ``dec`` replaces eq. 5 by the masked mean of ``h_mix`` for every slot (no
decoupling); ``con`` has no LoRA (frozen decoder, no contradiction elimination;
M is still measured, the prompts learn from all examples). ``fusion`` picks the
alignment variant (Table 7).

Telemetry (``compute_loss_and_metrics``): every loss term, ``coco/m1_fraction``
(share of M = 1), ``coco/mean_selected`` (mean m), ``coco/empty_selection``
(share of users selecting none), ``coco/codebook_perplexity`` (of the nearest-code
histogram), ``coco/codebook_unused`` (codewords selected by no user in the batch).

Example:

>>> assets = build_llm_assets(cfg, dataset)                 # coco_tf.llm.assets
>>> model = CoCoModel(num_items=150, item_text_table=assets.item_text_table,
...                   llm=assets.make_decoder(lora_rank=8), embedding_dim=32, max_len=12)
>>> loss, metrics = model.compute_loss_and_metrics({"history": h, "targets": t}, training=True)
>>> user = model({"history": h})                             # h_aligned [B, 32]
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from coco_tf.methods.coco.alignment import SemanticBehavioralAlignment
from coco_tf.methods.coco.contradiction import ContradictionGradientMask, contradiction_decision
from coco_tf.methods.coco.decoupling import SemanticDecoupling, orthogonality_loss
from coco_tf.methods.coco.vq_prompt_codebook import VQPromptCodebook, codebook_usage
from coco_tf.methods.llm_augmented import UserLevelRetrievalModel
from coco_tf.utils import masked_mean

ABLATIONS = ("none", "soft", "dec", "con")


class CoCoModel(UserLevelRetrievalModel):
    """CoCo on a sequential backbone.

    Args:
        num_items, backbone, embedding_dim, max_len, loss, temperature,
            backbone_kwargs: as :class:`SequentialRetrievalModel`.
        item_text_table: array ``[num_items + 1, d_llm]`` (frozen).
        llm: a ``QwenBackbone`` (with LoRA; frozen for ``ablation="con"``).
        codebook_size, num_shared_prompts, threshold, max_prompts, selection:
            the prompt codebook (``coco.*``).
        trim_prompt_slots: the loss path feeds the decoder only the first
            ``S + max_b m_b`` prompt slots of the batch (selected codewords are a
            prefix of the slots, so the rest are padding for every user), with
            the remaining tokens' RoPE positions unchanged: the same values at
            fewer tokens. Serving/evaluation always use all ``S + m_max`` slots
            (static shapes, so the export can compile with XLA).
        initial_codebook, initial_shared: optional init arrays (``None``: random).
        ablation: ``none | soft | dec | con``.
        fusion: ``attention | mlp | concat``.
        alpha, beta, gamma: eq. 11 weights (alpha: the backbone's own objective).
        usage_weight, usage_temperature: the codebook usage term (``VQPromptCodebook``; 0: none).
        zero_init: the alignment's last projection starts at zero (``h_aligned == h_RS`` at init).
        decoupling_heads: heads of the eq. 5 attention.
        decision_override: ``None`` (eq. 8) or a constant 0.0 / 1.0 for M (tests,
            diagnostics).
    """

    def __init__(
        self,
        num_items: int,
        item_text_table,
        llm,
        codebook_size: int = 64,
        num_shared_prompts: int = 2,
        threshold: float = 0.45,
        max_prompts: int = 32,
        selection: str = "cosine",
        trim_prompt_slots: bool = True,
        initial_codebook=None,
        initial_shared=None,
        ablation: str = "none",
        fusion: str = "attention",
        alpha: float = 1.0,
        beta: float = 0.15,
        gamma: float = 0.25,
        usage_weight: float = 0.0,
        usage_temperature: float = 0.1,
        zero_init: bool = True,
        decoupling_heads: int = 4,
        decision_override=None,
        **kwargs,
    ):
        super().__init__(num_items=num_items, item_text_table=item_text_table, alpha=alpha, zero_init=zero_init,
                         **kwargs)
        if ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
        if llm.hidden_dim != self.text_dim:
            raise ValueError(f"llm hidden_dim {llm.hidden_dim} != item text table width {self.text_dim}")
        self.ablation = ablation
        self.fusion = fusion
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.usage_weight = float(usage_weight)
        self.decision_override = None if decision_override is None else float(decision_override)
        self.trim_prompt_slots = bool(trim_prompt_slots)
        self.llm = llm
        if ablation == "con":
            self.llm.trainable = False
        self.proj = keras.layers.Dense(self.text_dim, name="user_projection")
        self.codebook = VQPromptCodebook(
            codebook_size=codebook_size,
            embedding_dim=self.text_dim,
            num_shared_prompts=num_shared_prompts,
            threshold=threshold,
            max_prompts=max_prompts,
            selection=selection,
            usage_temperature=usage_temperature,
            trainable_prompts=ablation != "soft",
            initial_codebook=initial_codebook,
            initial_shared=initial_shared,
            name="prompt_codebook",
        )
        heads = decoupling_heads if self.text_dim % decoupling_heads == 0 else 1
        self.decoupling = SemanticDecoupling(
            self.text_dim, num_heads=heads, mode="mean_pool" if ablation == "dec" else "cross_attention",
            name="decoupling",
        )
        self.alignment = SemanticBehavioralAlignment(self.embedding_dim, fusion=fusion, zero_init=zero_init,
                                                     name="alignment")
        self.gradient_mask = ContradictionGradientMask(name="contradiction_mask")

    def _align(self, h_rs, h_prompt, h_mix, mix_mask, prompt_mask, training):
        """``(h_aligned [B, d], summary [B, d_llm])``: eq. 5 then eq. 7; ``summary`` is the masked
        mean of ``h_pure`` over the selected prompt slots (the text-space query's ``s_u``)."""
        h_pure = self.decoupling(h_prompt, h_mix, mix_mask, training=training)
        summary = masked_mean(h_pure, prompt_mask)
        return self.alignment(h_rs, h_pure, prompt_mask, training=training), summary

    def llm_branch(self, history, h_rs, training=None, trim_prompts=False):
        """The prompt selection and the LLM pass (eq. 2-3) for ``h_RS [B, d]``.

        Returns the codebook's outputs (``sel``: prompts, masks, VQ losses, selection
        counts) plus ``h_mix [B, P + T, d_llm]`` and ``mix_mask [B, P + T]``.
        ``trim_prompts``: ``P = S + max_b m_b`` instead of ``S + m_max`` (see
        ``trim_prompt_slots``); ``prompts`` and ``prompt_mask`` are cut to match.
        """
        sel = self.codebook(self.proj(h_rs))  # e_u [B, d_llm] -> selected prompts
        h_prompt, prompt_mask = sel["prompts"], sel["prompt_mask"]
        h_text, text_mask = self.history_text(history)
        position_ids = None
        if trim_prompts:
            # Top-k order makes each user's selection a prefix of the m_max slots. The history keeps
            # positions S + m_max + t, so the decoder computes what it computes on every slot.
            slots = self.codebook.num_shared_prompts + tf.reduce_max(sel["num_selected"])
            position_ids = tf.concat([tf.range(slots), tf.shape(h_prompt)[1] + tf.range(tf.shape(h_text)[1])], axis=0)
            h_prompt, prompt_mask = h_prompt[:, :slots], prompt_mask[:, :slots]
        h_mix, mix_mask = self.decode_with_prefix(h_prompt, prompt_mask, h_text, text_mask, training=training,
                                                  position_ids=position_ids)  # eq. 3: [B, P + T, d_llm]
        return dict(sel, prompts=h_prompt, prompt_mask=prompt_mask, h_mix=tf.cast(h_mix, h_rs.dtype),
                    mix_mask=mix_mask)

    def user_vector(self, history, h_rs, states, training=None, target_ids=None):
        trim = self.trim_prompt_slots and target_ids is not None
        sel = self.llm_branch(history, h_rs, training=training, trim_prompts=trim)
        h_prompt, prompt_mask, h_mix, mix_mask = sel["prompts"], sel["prompt_mask"], sel["h_mix"], sel["mix_mask"]
        metrics, losses = {}, {}
        if target_ids is None:  # serving / evaluation
            h_aligned, summary = self._align(h_rs, h_prompt, h_mix, mix_mask, prompt_mask, training)
            return h_aligned, summary, losses, metrics

        if self.decision_override is not None:
            decision = tf.fill(tf.shape(h_rs)[:1], self.decision_override)
        else:
            probe, _ = self._align(
                h_rs, tf.stop_gradient(h_prompt), tf.stop_gradient(h_mix), mix_mask, prompt_mask, False
            )
            decision = contradiction_decision(probe, h_rs, self.candidate_embeddings(target_ids))
        if self.ablation != "con":
            h_mix = self.gradient_mask(h_mix, decision)
            h_prompt = self.gradient_mask(h_prompt, decision)
        h_aligned, summary = self._align(h_rs, h_prompt, h_mix, mix_mask, prompt_mask, training)

        losses["ortho"] = (self.beta, orthogonality_loss(self.codebook.codebook))
        losses["vq"] = (self.gamma, sel["vq_loss"])
        if self.usage_weight:
            losses["usage"] = (self.usage_weight, sel["usage_loss"])
        metrics["loss/vq_codebook"] = sel["codebook_loss"]
        metrics["loss/vq_commitment"] = sel["commitment_loss"]
        num_selected = tf.cast(sel["num_selected"], tf.float32)
        metrics["coco/m1_fraction"] = tf.reduce_mean(decision)
        metrics["coco/mean_selected"] = tf.reduce_mean(num_selected)
        metrics["coco/empty_selection"] = tf.reduce_mean(tf.cast(num_selected == 0, tf.float32))
        perplexity, _ = codebook_usage(sel["nearest"], tf.ones_like(sel["nearest"], tf.bool), self.codebook.codebook_size)
        _, unused = codebook_usage(
            tf.reshape(sel["selected_indices"], [-1]), tf.reshape(sel["selected_mask"], [-1]), self.codebook.codebook_size
        )
        metrics["coco/codebook_perplexity"] = perplexity
        metrics["coco/codebook_unused"] = unused
        return h_aligned, summary, losses, metrics
