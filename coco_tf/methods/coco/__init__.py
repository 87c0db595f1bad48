"""CoCo (paper §4): ``model.py`` and its four mechanisms, one file each.

========================  ===============================================  ========
file                      what                                             paper
========================  ===============================================  ========
``vq_prompt_codebook``    personalised soft-prompt pool, selection, L_Q    eq. 2-4
``model.py``              ``h_f = [h_prompt ; h_text]`` through the LLM    eq. 3
``decoupling``            prompt-queried cross-attention, L_ortho          eq. 5-6
``alignment``             fusing ``h_pure`` into ``h_RS``                  eq. 7
``contradiction``         the decision M and the gradient mask             eq. 8-9
``model.py``              LoRA on the decoder (``coco_tf.llm.lora_dense``) eq. 10
``model.py``              the total loss                                   eq. 11
========================  ===============================================  ========
"""
