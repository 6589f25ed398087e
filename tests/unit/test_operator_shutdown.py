"""A stop leaves no ERROR: the one asyncio complaint about a Kopf watch generator closed at exit is
a debug line; any other loop error still reaches asyncio's handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kubetune_operator.main import _quiet_watch_shutdown


async def infinite_watch() -> AsyncIterator[int]:  # named like Kopf's watch stream
    yield 1


async def something_else() -> AsyncIterator[int]:
    yield 1


class Loop:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.seen.append(context)


def test_only_the_kopf_watch_generator_at_exit_is_quieted() -> None:
    loop = Loop()
    error = RuntimeError("generator didn't stop after athrow()")
    for generator in (infinite_watch(), something_else()):
        context: dict[str, Any] = {"message": "an error occurred during closing of asynchronous generator"}
        context["exception"] = error
        _quiet_watch_shutdown(loop, {**context, "asyncgen": generator})  # type: ignore[arg-type]
    _quiet_watch_shutdown(loop, {"message": "Task exception was never retrieved"})  # type: ignore[arg-type]
    assert [c.get("asyncgen").__name__ if "asyncgen" in c else c["message"] for c in loop.seen] == [
        "something_else",
        "Task exception was never retrieved",
    ]
