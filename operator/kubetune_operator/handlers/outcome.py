"""What one reconcile decided; the controller (controller.py) writes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune_operator.status import Event


@dataclass
class Outcome:
    """A merge patch of ``.status`` (None: unchanged), events to post, and when to look again
    without any event (None: only on events and the slow resync)."""

    status: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
