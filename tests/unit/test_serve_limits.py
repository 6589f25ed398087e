"""What one request may cost before any model work: the body limit (413 from Content-Length or counted
as a chunked body arrives), the character bound before tokenizing, text UTF-8 cannot encode, turns
between classification requests, and the request id on every error (500 included)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from kubetune_trainer.serve.app import RequestIdMiddleware
from kubetune_trainer.serve.batching import _Pending, take_turns
from kubetune_trainer.serve.errors import install_error_handlers
from kubetune_trainer.serve.inference import ClassifyRow
from kubetune_trainer.serve.limits import BodyLimitMiddleware, char_limit, chars_error
from kubetune_trainer.serve.schemas import ClassifyRequest, unencodable
from pydantic import ValidationError

LIMIT = 4096


def app_with_limits(counted: list[str]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, lambda: counted.append("handler"))
    app.add_middleware(BodyLimitMiddleware, limit=LIMIT, count=lambda: counted.append("body"))
    app.add_middleware(RequestIdMiddleware, count=lambda: counted.append("id"))

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/classify")
    async def classify(body: ClassifyRequest) -> dict[str, int]:
        return {"inputs": len(body.inputs)}

    @app.post("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    return app


@pytest.fixture
def client() -> Iterator[tuple[TestClient, list[str]]]:
    counted: list[str] = []
    with TestClient(app_with_limits(counted), raise_server_exceptions=False) as c:
        yield c, counted


def pieces(total: int, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"a" * min(size, total - start)


def test_bodies_up_to_the_limit_pass_whole(client: tuple[TestClient, list[str]]) -> None:
    c, counted = client
    assert c.post("/echo", content=b"a" * LIMIT).json() == {"bytes": LIMIT}
    assert c.post("/echo", content=pieces(LIMIT)).json() == {"bytes": LIMIT}  # chunked
    assert counted == []


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_past_the_limit_gets_413_with_an_id_and_is_counted(
    client: tuple[TestClient, list[str]], chunked: bool
) -> None:
    c, counted = client
    response = c.post("/echo", content=pieces(LIMIT + 1) if chunked else b"a" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json()["error"] == {
        "message": "request body: more than this server's maxBodyBytes 4096 bytes (0.00 MiB)",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert response.headers["x-request-id"] and counted == ["body"]


def test_unencodable_text_is_a_400_naming_where(client: tuple[TestClient, list[str]]) -> None:
    c, counted = client
    body = b'{"model": "m", "input": ["fine", "x\\ud800"], "metadata": {"k\\udc00": 1}}'
    response = c.post("/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.headers["x-request-id"]
    assert response.json()["error"]["message"] == (
        "input[1]: character 1 is U+D800, a lone surrogate; send valid Unicode text"
    )
    assert counted == ["handler"]


def test_a_500_carries_the_request_id_and_is_counted(client: tuple[TestClient, list[str]]) -> None:
    c, counted = client
    response = c.post("/boom", headers={"x-request-id": "abc-1"})
    assert response.status_code == 500 and "secret detail" not in response.text
    assert response.headers["x-request-id"] == "abc-1" and counted == ["handler"]
    assert c.post("/echo", headers={"x-request-id": "bad id!"}).status_code == 400
    assert counted == ["handler", "id"]


def test_unencodable_walks_keys_lists_and_nested_objects() -> None:
    assert unencodable({"a": [{"b": "ok"}], "c": "fine"}) is None
    assert unencodable({"messages": [{"content": [{"text": "\udfff"}]}]}) == (
        "messages[0].content[0].text: character 0 is U+DFFF, a lone surrogate; send valid Unicode text"
    )
    assert unencodable({"metadata": {"\ud800": 1}}).startswith("metadata key: character 0")  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="lone surrogate"):
        ClassifyRequest.model_validate({"model": "m", "input": "\ud800"})


def test_characters_are_bounded_per_allowed_token() -> None:
    assert char_limit(512) == 8192
    assert chars_error(8192, 512, "prompt") is None
    err = chars_error(8193, 512, "prompt")
    assert err is not None and err.status == 400 and err.code == "context_length_exceeded"
    assert err.message == (
        "prompt: 8193 characters, more than this server takes before tokenizing (8192: 16 per token of "
        "maxInputTokens 512)"
    )


def pending(rows: int, name: str) -> _Pending:
    """A classification request of `rows` inputs (take_turns never touches its future)."""
    return _Pending([ClassifyRow(None, f"{name}{i}") for i in range(rows)], False, None)  # type: ignore[arg-type]


def test_classification_requests_take_turns_and_cancelled_rows_take_no_place() -> None:
    big, small = pending(10, "big"), pending(2, "small")
    assert [r.text for r in take_turns([big, small], 4)] == ["big0", "small0", "big1", "small1"]
    assert [r.text for r in take_turns([big, small], 4)] == ["big2", "big3", "big4", "big5"]
    for row in big.rows[6:9]:
        row.finish_reason = "cancelled"  # admission.cancel_rows: the client left
    assert [r.text for r in take_turns([big, small], 4)] == ["big9"]
    assert (big.taken, small.taken) == (10, 2)
