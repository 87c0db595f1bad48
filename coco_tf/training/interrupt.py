"""Ctrl-C at a safe point of the training loop.

A SIGINT that lands while TensorFlow writes a checkpoint can surface as a
``RuntimeError`` from inside TensorFlow instead of a ``KeyboardInterrupt``, and
the run then exits 1 with a traceback. While :func:`deferred` is active (the
``python -m coco_tf.train`` entry point), the first SIGINT only records the
request; the trainers call :func:`check` after every step (and the local trainer
also before writing a checkpoint), which raises ``KeyboardInterrupt`` there. A
second SIGINT raises at once, wherever the program is.

Example::

    with interrupt.deferred():
        for batch in dataset:
            step(batch)
            interrupt.check()     # KeyboardInterrupt here after a Ctrl-C
"""

import contextlib
import signal
import threading

_requested = threading.Event()


def check():
    """Raise ``KeyboardInterrupt`` if a SIGINT arrived since :func:`deferred` started."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred():
    """Defer the first SIGINT to the next :func:`check` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()

    _requested.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
