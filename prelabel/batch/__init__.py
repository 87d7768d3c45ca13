"""The provider's Batch API: half the price of live requests, answered within 24 hours.

The parts an executor wires together, each usable alone: ``files`` writes the requests as input
files within the provider's limits (streamed), ``provider`` is the Files and Batches client over the
official SDK, ``reconcile`` decides from what the store recorded and what the provider lists what to
do next (so that a crash between any two steps never makes a second batch for a chunk), and
``results`` reads output and error lines, in any order, into answers and failures by ``custom_id``
(the request's cache key).
"""
from __future__ import annotations

from .files import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, BatchLine, InputFile, InputFileWriter, chat_line, embeddings_line, write_input_files

__all__ = ["CHAT_ENDPOINT", "EMBEDDINGS_ENDPOINT", "BatchLine", "InputFile", "InputFileWriter", "chat_line",
           "embeddings_line", "write_input_files"]
