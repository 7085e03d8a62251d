"""Run a function every few seconds in a background thread while a block runs."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def every(seconds: float, fn: Callable[[], None], final: bool = True) -> Iterator[None]:
    """Call ``fn`` every ``seconds`` while the block runs, and once more after it (``final``),
    so nothing written at the very end is missed."""
    stop = threading.Event()

    def loop():
        while not stop.wait(seconds):
            fn()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if final:
            fn()
