"""FastAPI routes of the document QA app, the page it serves, and the command line that starts it.

API (errors are HTTP 4xx/5xx with a JSON body ``{"error": "..."}``):

    GET  /                          the page (plain HTML + vanilla JS)
    GET  /api/info                  compressor, limits
    GET  /api/documents             indexed documents
    POST /api/documents?filename=N  the file's bytes as the request body -> 202 {"job": {...}} at once;
                                    bad files are refused at once (4xx), the indexing runs in the job
    GET  /api/jobs/<id>             {"job": {"status": queued|running|done|failed, "stage",
                                    "progress": {"done", "total"}, "document" (when done), "error"}}
    POST /api/ask                   {"question": "...", "mode": "compressed"|"raw"} -> NDJSON stream:
                                    {"type": "sources", ...}, {"type": "token", "text"}..., {"type": "done", ...}
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from icae_rag import DEFAULT_KIND
from icae_rag.compressors import compressor_kinds
from icae_rag.errors import IcaeRagError, InvalidInputError

from .documents import UploadTooLargeError, format_bytes, read_limited
from .service import PreparedAnswer, QAService, Settings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
MAX_ASK_BYTES = 64 * 1024
DATA_DIR_ENV = "QA_APP_DATA_DIR"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(settings: Settings, *, compressor: Any = None, embed_model: Any = None) -> FastAPI:
    """The app over `settings.data_dir`; `compressor` / `embed_model` replace the defaults (tests use tiny ones)."""
    service = QAService(settings, compressor=compressor, embed_model=embed_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="icae-rag document QA", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(InvalidInputError)
    async def bad_input(request: Request, exc: InvalidInputError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=getattr(exc, "status", 400))

    @app.exception_handler(IcaeRagError)
    async def library_error(request: Request, exc: IcaeRagError) -> JSONResponse:
        logger.error("request failed: %s", exc)
        return JSONResponse({"error": str(exc)}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__}): see the server log"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        files = {"app.js": "text/javascript", "app.css": "text/css"}
        if name not in files:  # a fixed list: no path from the URL reaches the filesystem
            raise StarletteHTTPException(404, f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=files[name])

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/documents")
    def documents() -> dict[str, Any]:
        return {"documents": service.documents()}

    @app.post("/api/documents", status_code=202)
    async def upload(request: Request, filename: str = "") -> JSONResponse:
        limit = settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise UploadTooLargeError(f"the file is larger than the upload limit of {format_bytes(limit)}")
        data = await read_limited(request.stream(), limit)
        job = await run_in_threadpool(service.start_upload, filename, data)
        return JSONResponse({"job": job}, status_code=202, headers={"Location": f"/api/jobs/{job['id']}"})

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return {"job": service.job(job_id)}

    @app.post("/api/ask")
    async def ask(request: Request) -> StreamingResponse:
        start = time.perf_counter()
        try:
            body = json.loads(await read_limited(request.stream(), MAX_ASK_BYTES) or b"null")
        except UploadTooLargeError:
            raise InvalidInputError(f"the request is larger than {format_bytes(MAX_ASK_BYTES)}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidInputError('the request body must be JSON: {"question": "...", "mode": "compressed"}') from None
        if not isinstance(body, dict):
            raise InvalidInputError('the request body must be a JSON object: {"question": "...", "mode": "compressed"}')
        prepared = await run_in_threadpool(service.prepare_answer, body.get("question"),
                                           body.get("mode", "compressed"))
        return StreamingResponse(answer_events(prepared, start), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return app


def answer_events(prepared: PreparedAnswer, start: float) -> Iterator[bytes]:
    """NDJSON lines: the sources, each decoded piece, then latency and decoder positions (or an error)."""
    yield _line({"type": "sources", "mode": prepared.mode, "sources": prepared.sources,
                 "positions": prepared.positions, "context_positions": prepared.context_positions})
    first = None
    pieces = 0
    try:
        for piece in prepared.pieces:
            if first is None:
                first = time.perf_counter() - start
            pieces += 1
            yield _line({"type": "token", "text": piece})
    except Exception as e:  # the status line is sent already: report in the stream
        logger.exception("decoding failed")
        yield _line({"type": "error", "error": f"answering failed ({type(e).__name__}): {e}"})
        return
    yield _line({"type": "done", "mode": prepared.mode, "seconds": round(time.perf_counter() - start, 3),
                 "ttft": None if first is None else round(first, 3), "pieces": pieces,
                 "positions": prepared.positions, "context_positions": prepared.context_positions})


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")


def parse_args(argv: list[str] | None = None) -> tuple[Settings, str, int]:
    """Settings, host and port from the command line (the data dir also from $QA_APP_DATA_DIR)."""
    p = argparse.ArgumentParser(prog="python -m examples.qa_app", description="Document QA on compressed context.")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get(DATA_DIR_ENV, "qa_app_data")),
                   help=f"where documents, index and memories live (default ${DATA_DIR_ENV} or ./qa_app_data)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--compressor", choices=compressor_kinds(reads_text=False), default=DEFAULT_KIND)
    p.add_argument("--checkpoint", type=Path, default=None, help="trained compressor checkpoint directory")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="upload size limit in MB (default 10)")
    p.add_argument("--top-k", type=int, default=3, help="passages retrieved per question (default 3)")
    p.add_argument("--chunk-tokens", type=int, default=256, help="passage size when indexing (default 256)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length cap in tokens (default 64)")
    p.add_argument("--batch-window-ms", type=float, default=50.0,
                   help="how long a question waits for others to be answered with it (default 50)")
    p.add_argument("--max-batch", type=int, default=8, help="questions answered together at most (default 8)")
    p.add_argument("--store", help="memory store path or URI, e.g. one filled by `icae-rag index` (default: in --data-dir)")
    a = p.parse_args(argv)
    for flag, value in (("--max-upload-mb", a.max_upload_mb), ("--top-k", a.top_k),
                        ("--chunk-tokens", a.chunk_tokens), ("--max-new-tokens", a.max_new_tokens),
                        ("--max-batch", a.max_batch)):
        if value <= 0:
            p.error(f"{flag} must be positive")
    settings = Settings(data_dir=a.data_dir, compressor=a.compressor, checkpoint=a.checkpoint, device=a.device,
                        max_upload_bytes=int(a.max_upload_mb * 1024 * 1024), top_k=a.top_k,
                        chunk_tokens=a.chunk_tokens, chunk_overlap=min(32, a.chunk_tokens // 4),
                        max_new_tokens=a.max_new_tokens, store=a.store, batch_window_ms=max(0.0, a.batch_window_ms),
                        max_batch=a.max_batch)
    return settings, a.host, a.port


def main(argv: list[str] | None = None) -> None:
    """Load the models, then serve until Ctrl-C."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, host, port = parse_args(argv)
    if not _is_loopback(host):
        logger.warning("binding to %s: anyone who can reach this address can upload and read documents "
                       "(there is no authentication)", host)
    app = create_app(settings)
    logger.info("data directory: %s", app.state.service.data_dir)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
