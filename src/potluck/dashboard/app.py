"""The dashboard's Starlette application: the page, its JSON endpoints and the live stream.

Every endpoint only reads (GET)::

    /                                   the page (static/index.html)
    /static/...                         its script, styles and the vendored uPlot
    /api/runs                           the runs list: a summary of each run
    /api/runs/{id}                      one run: summary, config, every record, and the
                                        byte offset of metrics.jsonl they end at
    /api/runs/{id}/stream?offset=N      server-sent events from that offset on:
                                        ``record`` (one per committed round), ``reset``
                                        (the file was rewritten: fetch the run again),
                                        ``summary`` (status changes), ``problem``
    /api/runs/{id}/ledger               the ledger view (entries, the audit's verdict)
    /api/runs/{id}/ledger/{k}           entry k in full, contributions included

Errors answer JSON ``{"error": ...}``: 404 for an unknown run or entry, 422 for a
ledger line that is not an entry, 503 when too many live streams are open.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from potluck.core.errors import LedgerError, RunDirError, UnknownId
from potluck.core.layout import RunLayout
from potluck.dashboard.auth import TokenGate
from potluck.dashboard.ledger import LedgerViews, ledger_entry
from potluck.dashboard.runs import RunCatalog, privacy_budget, read_config, summary
from potluck.dashboard.tail import MetricsTail

STATIC = Path(__file__).parent / "static"
MAX_STREAMS = 32


@dataclass(frozen=True)
class Settings:
    """``sources``: run directories or folders of them; ``folders``: folders of runs even
    while they do not exist (see :class:`RunCatalog`). ``poll_seconds``: how often a live stream looks at ``metrics.jsonl`` (one stat);
    ``heartbeat_seconds``: how often an idle stream sends a comment (so proxies and the
    browser keep it open); ``summary_seconds``: how often it re-reads the run's status."""

    sources: Sequence[Path]
    token: str | None = None
    folders: Sequence[Path] = ()
    poll_seconds: float = 0.5
    heartbeat_seconds: float = 15.0
    summary_seconds: float = 5.0


class Dashboard:
    """The state the endpoints share: the catalog, the ledger views, the open streams."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = RunCatalog(settings.sources, settings.folders)
        self.ledgers = LedgerViews()
        self.audit_lock = anyio.Lock()  # one audit at a time: it hashes every checkpoint
        self.streams = 0


def create_app(settings: Settings) -> TokenGate:
    """The application, behind the token gate (see :mod:`potluck.dashboard.auth`)."""
    board = Dashboard(settings)

    def run_path(request: Request) -> Path:
        return board.catalog.find(str(request.path_params["run_id"]))

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def runs(request: Request) -> Response:
        listed = board.catalog.runs()
        return _json({"runs": [summary(run_id, path, board.catalog) for run_id, path in listed.items()],
                      "sources": [str(s) for s in (*settings.sources, *settings.folders)]})

    async def run(request: Request) -> Response:
        path = run_path(request)
        lines, offset = board.catalog.records(path)
        config, _ = read_config(path)
        return _json({"summary": summary(str(request.path_params["run_id"]), path, board.catalog),
                      "config": config, "privacy": privacy_budget(config), "offset": offset,
                      "records": [r.to_json() for r in lines.records]})

    async def stream(request: Request) -> Response:
        path = run_path(request)
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError:
            return _json({"error": "offset must be a whole number of bytes"}, 400)
        if board.streams >= MAX_STREAMS:
            return _json({"error": f"too many live streams are open ({MAX_STREAMS}); close a tab"}, 503)
        events = _events(board, request, str(request.path_params["run_id"]), path, offset)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def ledger(request: Request) -> Response:
        path = run_path(request)
        async with board.audit_lock:
            view = await anyio.to_thread.run_sync(board.ledgers.view, path)
        return _json(view)

    async def entry(request: Request) -> Response:
        path = run_path(request)
        return _json(await anyio.to_thread.run_sync(ledger_entry, path, int(request.path_params["index"])))

    app = Starlette(routes=[
        Route("/", index), Route("/api/runs", runs), Route("/api/runs/{run_id}", run),
        Route("/api/runs/{run_id}/stream", stream), Route("/api/runs/{run_id}/ledger", ledger),
        Route("/api/runs/{run_id}/ledger/{index:int}", entry),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], exception_handlers={UnknownId: _not_found, RunDirError: _not_found, LedgerError: _unprocessable})
    return TokenGate(app, settings.token)


async def _events(board: Dashboard, request: Request, run_id: str, path: Path, offset: int) -> AsyncIterator[str]:
    """The live stream of one run (see the module docstring); ends when the client goes."""
    settings = board.settings
    board.streams += 1
    try:
        tail = MetricsTail(RunLayout(path).metrics_file, offset=offset)
        yield ": potluck dashboard\n\n"
        last_beat = time.monotonic()
        last_summary = last_beat - settings.summary_seconds  # where the run stands, first
        sent_status = None
        while not await request.is_disconnected():
            read = tail.poll()
            now = time.monotonic()
            if read is not None:
                if read.reset:
                    yield _event("reset", {"offset": 0})
                for record in read.records:
                    yield _event("record", {**record.to_json(), "offset": tail.offset})
                for problem in read.problems:
                    yield _event("problem", {"message": problem})
                last_beat = now
            if read is not None or now - last_summary >= settings.summary_seconds:
                current = summary(run_id, path, board.catalog)
                if read is not None or current["status"] != sent_status:
                    yield _event("summary", current)
                    sent_status, last_beat = current["status"], now
                last_summary = now
            if now - last_beat >= settings.heartbeat_seconds:
                yield ": ping\n\n"
                last_beat = now
            await asyncio.sleep(settings.poll_seconds)
    finally:
        board.streams -= 1


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {_dumps(data)}\n\n"


def _dumps(data: Any) -> str:
    """JSON without NaN or infinities (which JSON lacks): they are written as null."""
    return json.dumps(_finite(data), separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(data: Any, status: int = 200) -> Response:
    return Response(_dumps(data), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


async def _not_found(request: Request, exc: Exception) -> Response:
    return _json({"error": str(exc)}, 404)


async def _unprocessable(request: Request, exc: Exception) -> Response:
    return _json({"error": str(exc)}, 422)
