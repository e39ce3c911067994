"""The search HTTP API (FastAPI): `GET /search`, `POST /thread`, `POST /next`, `GET /healthz`, OpenAPI at `/docs`.

    make serve SOURCE=ubuntu_irc          # uvicorn on 127.0.0.1:8000
    python -m threadembed_assets.search.http --source ubuntu_irc --port 8000

Each source's `ChatIndex` is read from the warehouse and its stored `conversation_index` build. When the asset is
re-materialized (`current` points at a new build), the next request starts loading the new index in the background
and the old one keeps answering until it is ready: no request waits for, or is dropped by, a reload.
"""

import argparse
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from threadembed_assets.search.index import ChatIndex, Hit
from threadembed_assets.search.store import current_build

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 20_000  # as the warehouse's oversize rule: a longer message is refused, not truncated
MAX_K = 100
MAX_MESSAGES = 200  # prefix or candidates of one /next request


class Message(BaseModel):
    """A chat JSONL message; `text` is required, the rest helps (channel and time above all)."""

    model_config = ConfigDict(extra="allow")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    message_id: str | None = None
    conversation_id: str | None = None
    channel: str | None = None
    timestamp: str | float | None = None
    author: str | None = None
    reply_to: str | None = None
    source: str | None = None
    platform: str | None = None


class ThreadRequest(BaseModel):
    message: Message
    k: int = Field(default=10, ge=1, le=MAX_K)
    source: str | None = None


class NextRequest(BaseModel):
    prefix: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    candidates: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    k: int = Field(default=10, ge=1, le=MAX_K)
    source: str | None = None


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


class NextResponse(BaseModel):
    model: str
    message_ids: list[str]


class IndexHolder:
    """One source's index, swapped for a fresh one in the background when its stored build changes."""

    def __init__(self, source: str, load: Callable[[str], ChatIndex]):
        self.source, self.load = source, load
        self.index = load(source)
        self.build = current_build(source)
        self.reloading = threading.Lock()
        self.reloads = 0

    def get(self) -> ChatIndex:
        """The index to answer with now; starts a reload when a newer build is on disk."""
        build = current_build(self.source)
        if build != self.build and self.reloading.acquire(blocking=False):
            threading.Thread(target=self._reload, args=(build,), daemon=True).start()
        return self.index

    def _reload(self, build: Path | None) -> None:
        try:
            self.index, self.build = self.load(self.source), build
            self.reloads += 1
            log.info("search index of %s reloaded from %s", self.source, build)
        except Exception:  # keep serving the old index; the next request tries again
            log.exception("reloading the search index of %s failed; still serving the previous one", self.source)
        finally:
            self.reloading.release()


def _hits(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(**hit.to_dict()) for hit in hits]


def create_app(sources: list[str], load: Callable[[str], ChatIndex] = ChatIndex.from_warehouse) -> FastAPI:
    """The app serving `sources` (the first is the default of a request that names none)."""
    if not sources:
        raise ValueError("serve at least one source")
    app = FastAPI(title="ThreadEmbed search", version="1", description=__doc__.split("\n")[0])
    holders = {source: IndexHolder(source, load) for source in sources}

    def index_of(source: str | None) -> ChatIndex:
        name = source or sources[0]
        if name not in holders:
            raise HTTPException(404, f"unknown source {name!r}; this server serves {sorted(holders)}")
        return holders[name].get()

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.get("/healthz")
    def healthz() -> dict:
        return {
            "status": "ok",
            "sources": {
                name: {
                    "model": holder.index.model,
                    "conversations": len(holder.index.docs),
                    "ranker": holder.index.ranker is not None,
                    "build": str(holder.build) if holder.build else None,
                    "reloads": holder.reloads,
                }
                for name, holder in holders.items()
            },
        }

    @app.get("/search", response_model=SearchResponse)
    def search(
        q: str = Query(min_length=1, max_length=MAX_TEXT_CHARS, description="what to search for"),
        k: int = Query(default=10, ge=1, le=MAX_K),
        source: str | None = None,
        channel: str | None = None,
        since: str | None = Query(default=None, description="ISO-8601 or epoch seconds"),
        until: str | None = Query(default=None, description="ISO-8601 or epoch seconds"),
    ) -> SearchResponse:
        index = index_of(source)
        hits = index.search(q, k=k, channel=channel, since=since, until=until)
        return SearchResponse(model=index.model, hits=_hits(hits))

    @app.post("/thread", response_model=ThreadResponse)
    def thread(request: ThreadRequest) -> ThreadResponse:
        index = index_of(request.source)
        found = index.thread_of(request.message.model_dump(exclude_none=True), k=request.k)
        return ThreadResponse(model=index.model, hits=_hits(found), is_new=found.is_new, confidence=found.confidence)

    @app.post("/next", response_model=NextResponse)
    def next_message(request: NextRequest) -> NextResponse:
        index = index_of(request.source)
        ranked = index.next_message(
            [m.model_dump(exclude_none=True) for m in request.prefix],
            [m.model_dump(exclude_none=True) for m in request.candidates],
            k=request.k,
        )
        return NextResponse(model=index.model, message_ids=ranked)

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
