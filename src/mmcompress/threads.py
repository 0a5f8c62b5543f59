"""Thread-count control shared by the built-in models' training loops."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the body on one intra-op thread, then restore the previous count.

    Training the small built-in models this way makes the result independent of the machine's
    thread count (float reductions split across threads round differently), and on a busy
    machine thread hand-offs cost more than the tiny ops themselves.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
