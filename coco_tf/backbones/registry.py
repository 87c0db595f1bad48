"""Backbones by name (``model.backbone``), RecBole style.

A new backbone goes in ``coco_tf/backbones/<name>.py``, subclasses
:class:`coco_tf.backbones.base.SequentialBackbone` and registers itself::

    @register("mybackbone")
    class MyBackbone(SequentialBackbone): ...

and its module is listed in ``_MODULES`` below so that lookup by name imports it.
Its config keys go in ``ModelConfig`` (``coco_tf/config.py``, prefixed with the
backbone's name) and reach the constructor through the classmethod
``config_kwargs(cfg, attributes)``; the name goes in ``model.backbone``'s choices.
"""

from __future__ import annotations

import importlib
from typing import Dict, Type

_REGISTRY: Dict[str, type] = {}
_MODULES = {
    "sasrec": "coco_tf.backbones.sasrec",
    "bert4rec": "coco_tf.backbones.bert4rec",
    "fdsa": "coco_tf.backbones.fdsa",
    "s3rec": "coco_tf.backbones.s3rec",
    "pinnerformer": "coco_tf.backbones.pinnerformer",
}


def register(name: str):
    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.registered_name = name
        return cls

    return wrap


def get_backbone(name: str) -> Type:
    if name not in _REGISTRY and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise ValueError(
            f"config key 'model.backbone': unknown backbone {name!r}; allowed values: {', '.join(sorted(_MODULES))}"
        )
    return _REGISTRY[name]


def available() -> list:
    return sorted(_MODULES)
