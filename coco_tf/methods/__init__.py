"""Recommendation methods: a backbone plus (optionally) an LLM branch, each with its loss.

``retrieval_model.py`` is the plain two-tower model (``coco.method=base``), ``llm_augmented.py``
the shared base of the LLM-augmented methods (the user-level objective, the prompt-prefix
decoding), ``kar.py`` the KAR baseline, ``coco/`` CoCo (paper eq. 2-11) and ``factory.py``
builds the model of a config. A new method goes here, as a file or a sub-package.
"""
