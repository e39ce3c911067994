"""The search HTTP API (FastAPI): `GET /search`, `POST /thread`, `POST /link`, `POST /next`, `GET /healthz`, OpenAPI at
`/docs`.

    make serve SOURCE=ubuntu_irc          # uvicorn on 127.0.0.1:8000
    python -m threadembed_assets.search.http --source ubuntu_irc --port 8000

Each source's `ChatIndex` is read from the warehouse and its stored `conversation_index` build. When the asset is
re-materialized (`current` points at a new build), the next request starts loading the new index in the background
and the old one keeps answering until it is ready: no request waits for, or is dropped by, a reload.

Every request has a bounded cost: the body, each field and the number of messages are capped (413 / 422), at most
`MAX_CONCURRENT` requests work at once (others wait up to `QUEUE_WAIT_S`, then get a 503), and one that works longer
than `REQUEST_TIMEOUT_S` is answered with a 503. A question that cannot be answered as asked is a 400 that says why;
a fault of the server is a 500 whose body holds only an error id, which the log repeats with the traceback; `/link`
before a disentangler is published is a 503 that says so.
"""

import argparse
import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from threadembed_assets.search.index import ChatIndex, Hit, NotPublished
from threadembed_assets.search.store import current_build
from threadembed_assets.sources.chat_jsonl import RequestError

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 20_000  # as the warehouse's oversize rule: a longer message is refused, not truncated
MAX_FIELD_CHARS = 256  # ids, channel, author, source, platform, timestamp
MAX_K = 100
MAX_PREFIX = 50  # messages of one /next prefix
MAX_CANDIDATES = 100  # candidates of one /next request
MAX_BODY_BYTES = 1024 * 1024
MAX_CONCURRENT = 4
QUEUE_WAIT_S = 10.0
REQUEST_TIMEOUT_S = 30.0
RELOAD_BACKOFF_S = (5.0, 300.0)  # first wait after a failed reload, and the longest; doubled each failure


def _field(**limits):
    return Field(default=None, max_length=MAX_FIELD_CHARS, **limits)


class Message(BaseModel):
    """A chat JSONL message; `text` is required, the rest helps (channel and time above all)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    message_id: str | None = _field()
    conversation_id: str | None = _field()
    channel: str | None = _field()
    timestamp: Annotated[str, Field(max_length=MAX_FIELD_CHARS)] | StrictFloat | StrictInt | None = None
    author: str | None = _field()
    reply_to: str | None = _field()
    source: str | None = _field()
    platform: str | None = _field()


class ThreadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: Message
    k: int = Field(default=10, ge=1, le=MAX_K)
    source: str | None = _field()


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: Message
    source: str | None = _field()


class NextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefix: list[Message] = Field(min_length=1, max_length=MAX_PREFIX)
    candidates: list[Message] = Field(min_length=1, max_length=MAX_CANDIDATES)
    k: int = Field(default=10, ge=1, le=MAX_K)
    source: str | None = _field()


class HitOut(BaseModel):
    conversation_id: str
    score: float
    source: str
    channel: str | None
    start: str | None
    end: str | None
    snippet: str


class SearchResponse(BaseModel):
    model: str
    hits: list[HitOut]


class ThreadResponse(SearchResponse):
    is_new: bool | None
    confidence: float | None


class LinkResponse(BaseModel):
    disentangler: str
    parent_id: str | None
    conversation_id: str | None
    confidence: float
    is_new: bool


class NextResponse(BaseModel):
    model: str
    message_ids: list[str]


class IndexHolder:
    """One source's index, swapped for a fresh one in the background when its stored build changes.

    The build is read before the index is loaded, so a build that lands during a load is seen as newer at the next
    request. A failed reload keeps the old index and waits (`RELOAD_BACKOFF_S`, doubling) before the next try."""

    def __init__(self, source: str, load: Callable[[str], ChatIndex], clock: Callable[[], float] = time.monotonic):
        self.source, self.load, self.clock = source, load, clock
        self.build = current_build(source)
        self.index = load(source)
        self.reloading = threading.Lock()
        self.reloader: threading.Thread | None = None
        self.reloads = self.failures = 0
        self.retry_at = 0.0

    def get(self) -> ChatIndex:
        """The index to answer with now; starts a reload when a newer build is on disk (and no backoff holds)."""
        build = current_build(self.source)
        if build != self.build and self.clock() >= self.retry_at and self.reloading.acquire(blocking=False):
            self.reloader = threading.Thread(target=self._reload, args=(build,), daemon=True)
            self.reloader.start()
        return self.index

    def _reload(self, build: Path | None) -> None:
        try:
            self.index, self.build = self.load(self.source), build
            self.reloads, self.failures, self.retry_at = self.reloads + 1, 0, 0.0
            log.info("search index of %s reloaded from %s", self.source, build)
        except Exception:  # keep serving the old index; try again after the backoff
            first, longest = RELOAD_BACKOFF_S
            wait = min(longest, first * 2**self.failures)
            self.failures += 1
            self.retry_at = self.clock() + wait
            log.exception(
                "reloading the search index of %s from %s failed; still serving the previous one, next try in %.0f s",
                self.source,
                build,
                wait,
            )
        finally:
            self.reloading.release()


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with a 413, whether it declares its length or
    arrives in chunks (it is read, at most `limit` bytes of it, before the app sees it)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(self.limit)(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> AsgiMessage:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(status_code=413, content={"detail": f"request body over {limit} bytes"})


class Bounded:
    """Runs each request's work in a worker thread, at most `slots` at once, within `timeout_s` (see the module)."""

    def __init__(self, slots: int = MAX_CONCURRENT, wait_s: float = QUEUE_WAIT_S, timeout_s: float = REQUEST_TIMEOUT_S):
        self.slots, self.wait_s, self.timeout_s = threading.BoundedSemaphore(slots), wait_s, timeout_s

    async def __call__(self, work: Callable[[], BaseModel]) -> BaseModel | JSONResponse:
        if not await run_in_threadpool(self.slots.acquire, True, self.wait_s):
            return _unavailable("the server is busy (every worker is answering another request); try again shortly")

        def guarded():
            try:
                return work()
            finally:  # the slot is held until the work ends, even when its client was answered by the timeout
                self.slots.release()

        try:
            return await asyncio.wait_for(run_in_threadpool(guarded), self.timeout_s)
        except TimeoutError:
            return _unavailable(
                f"the request took longer than {self.timeout_s:.0f} s (the server's limit) and was not waited for"
            )
        except HTTPException:
            raise
        except RequestError as exc:
            return JSONResponse(status_code=400, content={"detail": str(exc)})
        except NotPublished as exc:
            return _unavailable(str(exc))
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("request failed (error id %s)", error_id)
            return JSONResponse(status_code=500, content={"detail": "internal error", "error_id": error_id})


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": reason}, headers={"Retry-After": "1"})


def _hits(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(**hit.to_dict()) for hit in hits]


def create_app(
    sources: list[str], load: Callable[[str], ChatIndex] = ChatIndex.from_warehouse, bounded: "Bounded | None" = None
) -> FastAPI:
    """The app serving `sources` (the first is the default of a request that names none); `bounded` says how many
    requests work at once and for how long (default: `MAX_CONCURRENT`, `QUEUE_WAIT_S`, `REQUEST_TIMEOUT_S`)."""
    if not sources:
        raise ValueError("serve at least one source")
    app = FastAPI(title="ThreadEmbed search", version="1", description=__doc__.split("\n")[0])
    app.add_middleware(BodyLimit)
    holders = {source: IndexHolder(source, load) for source in sources}
    bounded = bounded or Bounded()

    def index_of(source: str | None) -> ChatIndex:
        name = source or sources[0]
        if name not in holders:
            raise HTTPException(404, f"unknown source {name!r}; this server serves {sorted(holders)}")
        return holders[name].get()

    @app.get("/healthz")
    def healthz() -> dict:
        return {
            "status": "ok",
            "sources": {
                name: {
                    "model": holder.index.model,
                    "conversations": len(holder.index.docs),
                    "ranker": holder.index.ranker is not None,
                    "disentangler": holder.index.disentangler.name if holder.index.disentangler else None,
                    "build": str(holder.build) if holder.build else None,
                    "reloads": holder.reloads,
                }
                for name, holder in holders.items()
            },
        }

    @app.get("/search", response_model=SearchResponse)
    async def search(
        q: str = Query(min_length=1, max_length=MAX_TEXT_CHARS, description="what to search for"),
        k: int = Query(default=10, ge=1, le=MAX_K),
        source: str | None = Query(default=None, max_length=MAX_FIELD_CHARS),
        channel: str | None = Query(default=None, max_length=MAX_FIELD_CHARS),
        since: str | None = Query(default=None, max_length=MAX_FIELD_CHARS, description="ISO-8601 or epoch seconds"),
        until: str | None = Query(default=None, max_length=MAX_FIELD_CHARS, description="ISO-8601 or epoch seconds"),
    ):
        index = index_of(source)

        def work() -> SearchResponse:
            hits = index.search(q, k=k, channel=channel, since=since, until=until)
            return SearchResponse(model=index.model, hits=_hits(hits))

        return await bounded(work)

    @app.post("/thread", response_model=ThreadResponse)
    async def thread(request: ThreadRequest):
        index = index_of(request.source)

        def work() -> ThreadResponse:
            found = index.thread_of(request.message.model_dump(exclude_none=True), k=request.k)
            return ThreadResponse(
                model=index.model, hits=_hits(found), is_new=found.is_new, confidence=found.confidence
            )

        return await bounded(work)

    @app.post("/link", response_model=LinkResponse)
    async def link(request: LinkRequest):
        index = index_of(request.source)

        def work() -> LinkResponse:
            found = index.link(request.message.model_dump(exclude_none=True))
            return LinkResponse(disentangler=index.disentangler.name, **found)

        return await bounded(work)

    @app.post("/next", response_model=NextResponse)
    async def next_message(request: NextRequest):
        index = index_of(request.source)

        def work() -> NextResponse:
            ranked = index.next_message(
                [m.model_dump(exclude_none=True) for m in request.prefix],
                [m.model_dump(exclude_none=True) for m in request.candidates],
                k=request.k,
            )
            return NextResponse(model=index.model, message_ids=ranked)

        return await bounded(work)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m threadembed_assets.search.http")
    parser.add_argument("--source", action="append", help="source partition to serve (repeatable; default chat_export)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(args.source or ["chat_export"]), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
