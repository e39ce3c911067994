"""Search a chat archive with the trained models: `ChatIndex` (Python), `python -m threadembed_assets.search` (CLI),
`threadembed_assets.search.http` (HTTP)."""

from threadembed_assets.search.index import ChatIndex, Hit, ThreadHits

__all__ = ["ChatIndex", "Hit", "ThreadHits"]
