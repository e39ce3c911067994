"""The ONNX int8 export of a model (`onnx_model`) as an encoder, and which export a model's vectors may come from:
search and the disentangler encode with it on the CPU in place of PyTorch where it was made from the very model
they read."""

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

ONNX_MODEL = "onnx_model"  # the asset whose `latest` is the int8 export encoded with on CPU
CONFIG_FILE = "threadembed_onnx.json"
FLOAT_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"


class OnnxEncoder:
    """`encode` of an exported model with onnxruntime on the CPU (the subset of `SentenceTransformer.encode` that
    search, the benchmark's caches and the chat features call)."""

    def __init__(self, folder: Path, file_name: str = INT8_FILE, threads: int = 0):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.config = json.loads((self.folder / CONFIG_FILE).read_text())
        self.file_name = file_name
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.folder / file_name), options, providers=["CPUExecutionProvider"])

    def get_embedding_dimension(self) -> int:
        return self.config["dimension"]

    @property
    def max_seq_length(self) -> int:
        return self.config["max_seq_length"]

    @property
    def key(self) -> str:
        """Identity for embedding caches: the graph file and when it was written."""
        graph = (self.folder / self.file_name).resolve()
        return f"onnx:{graph}@{graph.stat().st_mtime_ns}"

    def encode(self, texts: list[str] | str, batch_size: int = 64, **_) -> np.ndarray:
        """Embeddings of `texts` (float32 rows, one per text), in batches of texts of similar token counts (each
        batch padded to its longest)."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        out = np.zeros((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        if not texts:
            return out
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        for rows in token_count_batches(tokens["input_ids"], batch_size):
            batch = self.tokenizer.pad({name: [tokens[name][i] for i in rows] for name in tokens}, return_tensors="np")
            feeds = {name: batch[name].astype(np.int64) for name in self.config["inputs"]}
            hidden = self.session.run(None, feeds)[0]
            out[rows] = self._pool(hidden, batch["attention_mask"])
        return out[0] if single else out

    def _pool(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.config["pooling"] == "cls":
            pooled = tokens[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self.config["normalize"]:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled


def token_count_batches(input_ids: Sequence[Sequence[int]], batch_size: int) -> Iterator[np.ndarray]:
    """Row numbers of texts in batches of similar token counts, shortest first, from each text's token ids: each
    batch is padded to its longest text, so few pad tokens are encoded."""
    order = np.argsort([len(ids) for ids in input_ids], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def exported_from(folder: Path | None) -> str | None:
    """The model an export was made from (its resolved path), or None where `folder` holds no export."""
    if folder is None or not (Path(folder) / CONFIG_FILE).exists():
        return None
    return json.loads((Path(folder) / CONFIG_FILE).read_text()).get("source_model")


def same_model(a: str, b: str) -> bool:
    """Whether two model paths name the same folder on disk."""
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def export_of(model_path: str, onnx: Path | None) -> Path | None:
    """`onnx` (an export folder, resolved) where it was exported from the model at `model_path`, else None."""
    exported = exported_from(onnx)
    return Path(onnx).resolve() if exported and same_model(exported, model_path) else None
