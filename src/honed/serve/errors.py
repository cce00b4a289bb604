"""OpenAI-style errors (`{"error": {"message", "type", "code"}}`), the body-size limit and the API key.

Every failure a client can cause gets a 4xx answer in the shape OpenAI clients parse; anything
else is logged and answered with a 500 of the same shape, never a dropped connection.
"""

from __future__ import annotations

import hmac
import json
import logging

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered to the client with `status` and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict:
    """The JSON body of an error.

    >>> error_body("bad key", "invalid_request_error", "invalid_api_key")
    {'error': {'message': 'bad key', 'type': 'invalid_request_error', 'code': 'invalid_api_key', 'param': None}}
    """
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def install_error_handlers(app) -> None:
    """Answer APIError, validation errors, unknown routes and unexpected failures as OpenAI does."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return JSONResponse(error_body(err.message, err.type, err.code, err.param), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, err: RequestValidationError):
        return JSONResponse(validation_body(err.errors()), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return JSONResponse(error_body(str(err.detail), "invalid_request_error", code), status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request, err: Exception):
        log.exception("request to %s failed", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(err).__name__}: {err}", "server_error", "internal_error"), status_code=500)


def validation_body(errors: list[dict]) -> dict:
    """A 422 body naming the first wrong field, e.g. `messages.0.role: Input should be ...`."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error_body(f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}", "invalid_request_error", "invalid_value", where or None)


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def check_api_key(authorization: str | None, expected: str | None) -> None:
    """401 unless `Authorization: Bearer <expected>` (compared in constant time); open when no key is set.

    >>> check_api_key("Bearer s3cret", "s3cret")
    >>> check_api_key(None, None)
    >>> check_api_key("Bearer nope", "s3cret")
    Traceback (most recent call last):
    ...
    honed.serve.errors.APIError: Incorrect API key provided.
    """
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise APIError(401, "Missing API key: send the header 'Authorization: Bearer <key>'.", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets 413, whether announced (Content-Length) or streamed."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0
        limit = self.max_bytes

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise APIError(413, self._message(), code="request_too_large")
            return message

        await self.app(scope, counted_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than the server's limit of {self.max_bytes} bytes (--max-body-bytes)"

    async def _reject(self, send) -> None:
        payload = json.dumps(error_body(self._message(), "invalid_request_error", "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
