"""Capture of uncertain/novel classifications, and the /admin/review API and labelling page.

  GET  /admin/review/          the labelling page (HTML; a browser sends the admin token as the
                               Basic-auth password)
  GET  /admin/review/queue     waiting inputs in labelling order (?model=&limit=&order=)
  POST /admin/review/label     {"model", "id", "label"} or {"model", "id", "skip": true}
All behind the admin token (admin.authorized); labels land in the fresh dataset.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import Field

from kubetune_trainer.serve.adapters import Target
from kubetune_trainer.serve.admin import authorized
from kubetune_trainer.serve.errors import InvalidRequestError, ModelNotFoundError, ServeError
from kubetune_trainer.serve.fresh import scrub_metadata
from kubetune_trainer.serve.inference import ClassifyRow
from kubetune_trainer.serve.review import ReviewItem, ReviewQueue, item_id
from kubetune_trainer.serve.review_page import PAGE
from kubetune_trainer.serve.schemas import ClassifyRequest, _Body
from kubetune_trainer.serve.selection import entropy, margin, novelty, top_two
from kubetune_trainer.serve.state import ServerState, all_states

router = APIRouter(prefix="/admin/review")
EMBEDDING_DECIMALS = 4


class ReviewDisabledError(ServeError):
    status = 404
    code = "review_disabled"


class LabelRequest(_Body):
    model: Annotated[str, Field(min_length=1, description="Adapter name of the queue.")]
    id: Annotated[str, Field(min_length=1, max_length=64, description="Item id from /admin/review/queue.")]
    label: Annotated[str | None, Field(description="The right label; omit with skip: true.")] = None
    skip: bool = False


@dataclass(frozen=True)
class Signal:
    """How sure the model was about one input (margin) and how unlike the reference it is (novelty)."""

    margin: float
    novelty: float | None

    def wire(self) -> dict[str, float | None]:
        return {
            "margin": round(self.margin, 6),
            "novelty": None if self.novelty is None else round(self.novelty, 6),
        }


def signals(s: ServerState, served: Target, rows: list[ClassifyRow]) -> list[Signal]:
    """Margin of every row; novelty where the version's reference sample and the embeddings exist."""
    sample = s.drift.reference_sample(*served.label_values) if s.drift is not None else None
    embedded = [r.embedding for r in rows if r.embedding is not None]
    far: list[float | None] = [None] * len(rows)
    if sample is not None and len(embedded) == len(rows):
        far = [float(v) for v in novelty(np.stack(embedded), sample)]
    return [Signal(margin(r.probabilities), n) for r, n in zip(rows, far, strict=True)]


async def capture(
    s: ServerState,
    body: ClassifyRequest,
    served: Target,
    labels: list[str],
    rows: list[ClassifyRow],
    found: list[Signal],
) -> None:
    """Queue the rows a person should look at (metadata scrubbed as for fresh data)."""
    queue = s.review
    if queue is None:
        return
    adapter, version = served.label_values
    if s.estimates is not None:
        flagged = [bool(queue.reasons(f.margin, f.novelty)) for f in found]
        s.estimates.observe_review(adapter, version, flagged)
    m = s.config.monitoring
    metadata = scrub_metadata(body.metadata, m.drop_fields, m.hash_fields, salt=adapter)
    items = [
        ReviewItem(
            id=item_id(row.text),
            text=row.text,
            adapter=adapter,
            version=version,
            guesses=top_two(row.probabilities, labels),
            margin=sig.margin,
            novelty=sig.novelty,
            reasons=reasons,
            queued_at=time.time(),
            metadata=metadata,
            embedding=None if row.embedding is None else np.round(row.embedding, EMBEDDING_DECIMALS).tolist(),
            entropy=round(entropy(row.probabilities), 6),
        )
        for row, sig in zip(rows, found, strict=True)
        if (reasons := queue.reasons(sig.margin, sig.novelty))
    ]
    if items:
        await asyncio.to_thread(queue.add, items)


def review_state(request: Request) -> ServerState:
    """Behind the admin token: the task that keeps a review queue (the classifier, at the top level or
    in tasks[]); the top-level task where none does (its _queue_and_labels says review is off)."""
    first = authorized(request)
    return next((t for t in all_states(request) if t.review is not None), first)


def served_labels(request: Request, s: ServerState) -> dict[str, list[str]]:
    """Each served adapter name and the labels a person may give its inputs: the loaded adapter's,
    or in front of an engine its active version's reference labels (engine_monitor.py)."""
    engine = request.app.state.kubetune_engine
    if engine is not None and engine.monitor is not None:
        return dict(engine.monitor.review_labels(engine.alias))
    out: dict[str, list[str]] = {}
    for a in s.registry.served():
        out.setdefault(a.name, list(a.labels or s.registry.labels))
    return out


def _queue_and_labels(
    request: Request, s: ServerState, model: str | None
) -> tuple[ReviewQueue, str, list[str]]:
    if s.review is None:
        raise ReviewDisabledError(
            "the review queue is off: it needs monitoring.freshDataUri and monitoring.review.enabled"
        )
    served = served_labels(request, s)
    names = sorted(served)
    name = model or (names[0] if names else None)
    if name is None or name not in served:
        raise ModelNotFoundError(f"model {model!r} is not served here (served: {', '.join(names)})", "model")
    return s.review, name, served[name]


@router.get("/queue")
async def review_queue(
    request: Request,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    order: Literal["entropy", "diverse", "uncertainty"] = "entropy",
) -> dict[str, Any]:
    s = review_state(request)
    queue, name, labels = _queue_and_labels(request, s, model)
    items = await asyncio.to_thread(queue.pending, name, order)
    return {
        "object": "list",
        "model": name,
        "labels": labels,
        "waiting": len(items),
        "order": order,
        "data": [i.public() for i in items[:limit]],
    }


@router.post("/label")
async def review_label(body: LabelRequest, request: Request) -> dict[str, Any]:
    s = review_state(request)
    queue, name, labels = _queue_and_labels(request, s, body.model)
    if body.skip == (body.label is not None):
        raise InvalidRequestError("give either label or skip: true", "label")
    if body.label is not None and body.label not in labels:
        raise InvalidRequestError(f"label {body.label!r} is not one of {', '.join(labels)}", "label")
    item = await asyncio.to_thread(queue.resolve, name, body.id, body.label)
    if item is None:
        raise InvalidRequestError(f"id {body.id!r} is not waiting in the {name} queue", "id")
    written = None
    if body.label is not None and s.fresh is not None:
        path = await asyncio.to_thread(s.fresh.append, name, item.text, body.label, item.metadata)
        written = path.name
    return {"object": "review.label", "id": item.id, "label": body.label, "freshFile": written}


@router.get("/", response_class=HTMLResponse)
async def review_page(request: Request) -> HTMLResponse:
    authorized(request)
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})
