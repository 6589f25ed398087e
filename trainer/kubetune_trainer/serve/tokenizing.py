"""Tokenizing requests off the event loop: a thread of its own with its own copy of the tokenizer.

The event loop must stay free for /healthz and for other clients while a long prompt is tokenized.
The model thread is not used for it (a request's tokenizing would delay every running decode step),
and the model thread's tokenizer is not shared: a fast tokenizer's truncation and padding settings are
mutable state inside one Rust object, and using it from two threads at once fails with "Already
borrowed" (huggingface/tokenizers#537).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kubetune_trainer.serve.adapters import AdapterRegistry

T = TypeVar("T")


class TokenizerThread:
    """`call(fn, *args)` runs fn(tokenizer, *args) on the tokenizing thread and awaits it."""

    def __init__(self, registry: AdapterRegistry) -> None:
        self.registry = registry
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubetune-tokenize")
        self._tokenizer: Any = None  # copied on first use: the base (and its tokenizer) loads later

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._tokenizer is None:
            self._tokenizer = copy.deepcopy(self.registry.tokenizer)
        return fn(self._tokenizer, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
