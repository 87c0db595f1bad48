"""Data: readers (text format, raw Amazon 2014), the synthetic catalog, splits and tf.data pipelines."""
