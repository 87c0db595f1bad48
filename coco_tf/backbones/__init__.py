"""Query towers ("backbones"): a user's item history to user vectors, one file per backbone.

``base.py`` holds :class:`SequentialBackbone` (the interface and shared position helpers),
``registry.py`` looks a backbone up by ``model.backbone``; ``sasrec``, ``bert4rec``, ``fdsa``,
``s3rec`` and ``pinnerformer`` are the towers, ``sasrec_block`` and ``item_features`` their layers.
A new backbone goes here (``registry.py`` says how).
"""
