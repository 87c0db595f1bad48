"""SavedModel export for TF Serving (``python -m coco_tf.export``).

``serving.py``: the served graph (:class:`ServingModule`: input hardening, eval
path, TFRS ``BruteForce`` index, signatures); ``exporter.py``: model
directory → ``<export_dir>/<version>/``; ``__main__.py``: the command line.
"""

from coco_tf.export.exporter import ExportError, export_saved_model, load_trained_model, next_version  # noqa: F401
from coco_tf.export.serving import ServingModule, harden_history  # noqa: F401
