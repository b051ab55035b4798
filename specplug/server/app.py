"""The FastAPI application: protocol routers, errors as one-line JSON, health, metrics, admin; and ``run``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from specplug.config import ConfigWatcher, load_config
from specplug.errors import ConfigError, SpecplugError
from specplug.server import openai_api, tgi_api
from specplug.server.protocol import ApiError, bearer_matches
from specplug.server.state import API_KEY_ENV, Server

logger = logging.getLogger("specplug.server")
ADMIN_TOKEN_ENV = "SPECPLUG_ADMIN_TOKEN"
WATCH_SECONDS = 1.0


def create_app(server: Server) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.worker.start()
        tasks = [asyncio.create_task(_watch(server))] if server.config_path else []
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.create_task(_reload(server)))
        yield
        for task in tasks:
            task.cancel()
        server.worker.stop()

    app = FastAPI(title="specplug", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.include_router(openai_api.router)
    app.include_router(tgi_api.router)
    app.add_middleware(BodyLimit, server=server)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        alive = server.worker.thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "engine stopped"}, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/admin/config")
    async def show_config(request: Request) -> dict:
        _authorize(request)
        return {"default_strategy": server.default_strategy, "strategies": list(server.strategies),
                "source": server.config.source}

    @app.post("/admin/config")
    async def change_config(request: Request) -> dict:
        """Body: config keys to change, e.g. {"serve": {"default_strategy": "none"}}."""
        _authorize(request)
        overrides = await _json_mapping(request)
        try:
            await asyncio.to_thread(server.apply, overrides)
        except SpecplugError as exc:
            raise ApiError(str(exc), status=400) from None
        return {"default_strategy": server.default_strategy, "strategies": list(server.strategies)}

    return app


def _authorize(request: Request) -> None:
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        raise ApiError(f"the admin endpoint is off: start the server with {ADMIN_TOKEN_ENV} set", status=403)
    if not bearer_matches(request, token):
        raise ApiError("missing or wrong admin token: send 'Authorization: Bearer <token>'", status=401)


class BodyLimit:
    """Refuses a request body over ``serve.max_request_bytes`` with 413: at once when its Content-Length says
    so, else as soon as that many bytes have arrived (before anything parses or tokenizes it)."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.server.config.serve.max_request_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            return await _error(scope["path"], 413, _too_large(int(declared), limit))(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:  # re-raised by FastAPI's body reader, answered by the HTTPException handler
                raise HTTPException(413, _too_large(seen, limit))
            return message

        return await self.app(scope, counted, send)


def _too_large(size: int, limit: int) -> str:
    return (f"the request body has {'more than ' if size <= limit else ''}{size} bytes; this server takes at most "
            f"{limit} (serve.max_request_bytes): send a shorter prompt")


async def _json_mapping(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError("the body is not valid JSON: send a JSON object of config keys") from None
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object of config keys, e.g. {\"serve\": {\"default_strategy\": "
                       "\"none\"}}")
    return body


async def _reload(server: Server) -> None:
    with contextlib.suppress(SpecplugError):  # refused: counted and logged by the server; the old one serves
        await asyncio.to_thread(server.reload)


async def _watch(server: Server) -> None:
    watcher = ConfigWatcher(server.config_path)
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        if watcher.changed():
            await _reload(server)


# ---- errors ---------------------------------------------------------------------------------------
def _error(path: str, status: int, message: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error shape under /v1, TGI's elsewhere (where a client mistake is a 422, as in TGI)."""
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                            status_code=status)
    if path.startswith("/admin/"):
        return JSONResponse({"error": message}, status_code=status)
    return JSONResponse({"error": message, "error_type": "validation" if status < 500 else "generation"},
                        status_code=422 if status == 400 else status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON: " + str(first.get("ctx", {}).get("error", first.get("msg"))), None
    if first.get("type") == "extra_forbidden":
        return f"unknown field '{where}': this server does not take it (check its spelling)", where
    if first.get("type") == "missing":
        return f"field '{where}' is required", where
    if not where:  # the body as a whole: not a JSON object (or not sent as JSON)
        return "the body must be a JSON object, sent with Content-Type: application/json", None
    return f"field '{where}': {first.get('msg')}", where


def _http_message(request: Request, exc: HTTPException) -> str:
    """One line for what Starlette and FastAPI raise themselves (body parsing, routing)."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return (f"the body is not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset {cause.start}): "
                "send JSON encoded as UTF-8")
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply to read: send a JSON object of request fields"
    if exc.status_code == 400:
        return f"the body could not be read as JSON ({type(cause).__name__}): send a JSON object"
    if exc.status_code == 404:
        return f"no route {request.url.path}: see docs/serving.md for this server's routes"
    if exc.status_code == 405:
        return f"{request.url.path} does not take {request.method} requests"
    return str(exc.detail)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(request.url.path, exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return _error(request.url.path, 400, message, param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(request.url.path, exc.status_code, _http_message(request, exc))

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError):
        return _error(request.url.path, 400, str(exc))

    @app.exception_handler(SpecplugError)
    async def engine_error(request: Request, exc: SpecplugError):
        return _error(request.url.path, 500, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logger.exception("specplug: unexpected error")
        return _error(request.url.path, 500, f"internal error ({type(exc).__name__}); the server logged the details")


def warn_if_exposed(server: Server, host: str) -> None:
    """A warning when the server listens beyond this machine with no API key on its inference routes."""
    if server.api_key is None and not _loopback(host):
        logger.warning("specplug: warning: %s is reachable from other machines and no API key is set: anyone who "
                       "can reach it can generate; set serve.api_key or %s", host, API_KEY_ENV)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def run(config_path: str | None, overrides: list[str], host: str, port: int) -> None:
    # uvicorn drains on SIGTERM, then re-raises it to whatever handled it before: a clean exit, not a kill
    signal.signal(signal.SIGTERM, _exit_cleanly)
    config = load_config(config_path, overrides)
    server = Server(config, config_path, overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("specplug: serving %s on http://%s:%d (strategies: %s; default %s)", server.model_name, host, port,
                ", ".join(server.strategies), server.default_strategy)
    warn_if_exposed(server, host)
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=int(config.serve.drain_timeout_s) or None)
