"""The most expensive request a client can make of search: `POST /thread` with a message that names no channel and
no time, so that every conversation of the archive could be its thread.

    python bench/worst_request.py [--messages 20337]

The shipped ubuntu_irc sample (3,121 conversations) is indexed with the base model and a chat ranker fitted on the
tasks of its first 2,000 messages (its scores are not a result; it makes `thread_of` rank as a published ranker
does: the model's similarity to each candidate and to its best window, BM25 and the chat signals). Then
`{"message": {"text": "hi"}}` is asked three times through the HTTP app: the time of each answer, the texts the
model encoded for it and the number of candidates it ranked.
"""

import argparse
import gzip
import itertools
import json
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from threadembed_assets.benchmark.__main__ import tasks_from_file
from threadembed_assets.chat.ranker import fit_ranker, model_features
from threadembed_assets.chat.retrievers import EmbeddingCache, model_key
from threadembed_assets.evaluation.tasks import TaskConfig
from threadembed_assets.resources import ModelStore
from threadembed_assets.search.http import create_app
from threadembed_assets.search.index import ChatIndex
from threadembed_assets.training.train import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "threadembed_assets" / "sources" / "data" / "ubuntu_irc.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=None, help="index only the first N messages of the sample")
    args = parser.parse_args()
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as handle:
        messages = [json.loads(line) for line in itertools.islice(handle, args.messages)]
    models = ModelStore(root=tempfile.mkdtemp())
    base = models.base_model_path()
    with tempfile.TemporaryDirectory() as folder:
        fit_data = Path(folder) / "fit.jsonl"
        fit_data.write_text("".join(json.dumps(m) + "\n" for m in messages[:2000]))
        tasks = [t for t in tasks_from_file(fit_data, TaskConfig(held_out_platform="")) if "summary" not in t.name]
        cache = EmbeddingCache(Path(folder) / "cache.duckdb")
        model = load_model(base, "cpu")
        features = [model_features(model, model_key(base), task, cache, 64) for task in tasks]
        cache.close()
    ranker = fit_ranker(base, features, features, learners=("logistic",), log=lambda message: None)
    index = ChatIndex.from_messages(messages, model=base, ranker=ranker, tune=False, models=models, onnx=False)
    client = TestClient(create_app(["ubuntu_irc"], load=lambda source: index))
    print(f"archive: {len(index.docs)} conversations, {len(messages)} messages; ranker: {index.ranker is not None}")
    for attempt in range(1, 4):
        misses, started = index.cache.misses, time.perf_counter()
        answer = client.post("/thread", json={"message": {"text": "hi"}, "k": 10})
        seconds = time.perf_counter() - started
        body = answer.json()
        print(
            f"POST /thread {{'text': 'hi'}} #{attempt}: HTTP {answer.status_code}, {seconds:.2f} s, "
            f"{index.cache.misses - misses} texts encoded, {len(body.get('hits', []))} hits"
        )


if __name__ == "__main__":
    main()
