"""Keras 2 (tf_keras) layers of the training graph, one concept per file."""
