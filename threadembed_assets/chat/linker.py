"""The online linker: for each message, in order, the candidate parent (itself for a new conversation) that a
LightGBM lambdarank model ranks first among the message's candidates, from the features of `chat.link_features`.
A bias on the "new conversation" candidate, tuned on dev for the conversation metrics, sets how readily it starts
one."""

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
from sentence_transformers import SentenceTransformer
from sklearn.feature_extraction.text import TfidfVectorizer

from threadembed_assets.chat.corpus import Log
from threadembed_assets.chat.encoders import OnnxEncoder
from threadembed_assets.chat.link_features import (
    CONVERSATION_FEATURES,
    DEFAULT_WINDOW,
    FEATURES,
    Grid,
    conversation_features,
    log_features,
)
from threadembed_assets.chat.link_metrics import score_logs

DISENTANGLER = "disentangler"  # the asset and its models/ folder
LINKER_FILE = "linker.joblib"
LINKER_CARD = "disentangler.json"
Encode = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised vectors
log = logging.getLogger(__name__)


@dataclass
class LinkerParams:
    window: int = DEFAULT_WINDOW
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 50
    # Share of messages (query groups, LightGBM's `bagging_by_query`) each boosting round learns from: at 0.5 each
    # round reads half the rows, and `make run`'s held-out channels link as with every message
    # (docs/pipeline/disentanglement.md)
    query_share: float = 0.5
    seed: int = 13
    conversation_pass: bool = True  # a second ranker that reads the conversations a first pass found


@dataclass
class Linker:
    """A fitted linker: the vocabulary's weights, the ranking model (and, with the conversation pass, the second
    ranking model that reads the first pass's conversations) and the new-conversation bias."""

    params: LinkerParams
    vectorizer: TfidfVectorizer
    ranker: lgb.LGBMRanker | None = None
    new_bias: float = 0.0
    uses_dense: bool = False
    importances: dict[str, float] = field(default_factory=dict)
    conversation_ranker: lgb.LGBMRanker | None = None

    def features(self, log: Log, encode: Encode | None) -> tuple[Grid, np.ndarray]:
        tfidf = self.vectorizer.transform(log.texts)
        dense = encode(log.texts) if (encode is not None and self.uses_dense) else None
        return log_features(log, self.params.window, tfidf, dense)

    def chunks(self, log: Log, encode: Encode | None, first: lgb.LGBMRanker | None = None, chunk: int = 2000):
        """(first line, end, candidate mask, feature rows) of each chunk of lines, with the window before each as
        context, so features never take more memory than a chunk's. With a `first` ranker, each line's conversation
        features (see `link_features.conversation_features`) follow from its links, which read no later line."""
        window, n = self.params.window, len(log)
        roots = np.arange(n)
        for start in range(0, n, chunk):
            low, end = max(start - window, 0), min(start + chunk, n)
            part, values = self.features(log.slice(low, end), encode)
            rows = slice(start - low, end - low)
            if first is not None:
                first_scores = _predict(first, part.mask[rows], values[rows])
                parents = low + parents_from_scores(Grid(part.parent[rows], part.mask[rows]), first_scores, 0.0)
                extend_roots(roots, parents, start)
                values = np.concatenate([values, conversation_features(part, roots[low:end] - low, values)], axis=-1)
            yield start, end, part.mask[rows], values[rows]

    def scores(self, log: Log, encode: Encode | None = None, chunk: int = 2000) -> tuple[Grid, np.ndarray]:
        """The ranking score of every candidate (lines x (window + 1)), -inf where there is none."""
        grid, out = Grid.of(len(log), self.params.window), np.full((len(log), self.params.window + 1), -np.inf)
        second = getattr(self, "conversation_ranker", None)
        first = self.ranker if second is not None else None
        for start, end, mask, values in self.chunks(log, encode, first, chunk):
            out[start:end] = _predict(second or self.ranker, mask, values)
        return grid, out

    def link(self, log: Log, encode: Encode | None = None) -> np.ndarray:
        """Each line's parent line (itself: a new conversation)."""
        grid, scores = self.scores(log, encode)
        return parents_from_scores(grid, scores, self.new_bias)


def extend_roots(roots: np.ndarray, parents: np.ndarray, start: int) -> None:
    """Set `roots[start:start + len(parents)]`, the first line of each line's conversation, from the lines' parents
    (line numbers of the whole log; parents always point back, so one pass in order suffices)."""
    for line, parent in enumerate(parents, start):
        roots[line] = line if parent == line else roots[parent]


def conversation_roots(parents: np.ndarray) -> np.ndarray:
    """The first line of each line's conversation."""
    roots = np.arange(len(parents))
    extend_roots(roots, parents, 0)
    return roots


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _predict(ranker: lgb.LGBMRanker, mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    block = np.full(mask.shape, -np.inf)
    block[mask] = ranker.booster_.predict(values[mask]) if mask.any() else []
    return block


def parents_from_scores(grid: Grid, scores: np.ndarray, new_bias: float) -> np.ndarray:
    biased = scores.copy()
    biased[:, 0] += new_bias
    return grid.parent[np.arange(len(scores)), biased.argmax(axis=1)]


def training_rows(linker: Linker, logs: Sequence[Log], encode: Encode | None, first: lgb.LGBMRanker | None = None):
    """Feature rows, labels and query group sizes of every annotated line whose gold parent is a candidate (with
    the conversation features of `first`'s links, where given)."""
    rows, labels, groups = [], [], []
    for log in logs:
        annotated = np.zeros(len(log), dtype=bool)
        annotated[list(log.annotated())] = True
        for start, end, mask, values in linker.chunks(log, encode, first):
            gold = np.zeros(mask.shape, dtype=bool)
            for line in range(max(start, log.first_annotated), end):
                for parent in log.parents.get(line, ()):
                    if line - parent <= linker.params.window:
                        gold[line - start, line - parent] = True
            keep = annotated[start:end] & gold.any(axis=1)
            kept = mask & keep[:, None]
            rows.append(values[kept])
            labels.append(gold[kept].astype(int))
            groups.append(kept.sum(axis=1)[keep])
    return np.concatenate(rows), np.concatenate(labels), np.concatenate(groups)


def _fit_ranker(x: np.ndarray, y: np.ndarray, groups: np.ndarray, params: LinkerParams, names: list[str]):
    ranker = lgb.LGBMRanker(
        objective="lambdarank",
        n_estimators=params.n_estimators,
        learning_rate=params.learning_rate,
        num_leaves=params.num_leaves,
        min_child_samples=params.min_child_samples,
        lambdarank_truncation_level=5,
        subsample=params.query_share,
        subsample_freq=1 if params.query_share < 1 else 0,
        bagging_by_query=True,
        random_state=params.seed,
        n_jobs=2,
        verbose=-1,
    )
    return ranker.fit(x, y, group=groups, feature_name=names)


def fit(train: Sequence[Log], encode: Encode | None = None, params: LinkerParams | None = None) -> Linker:
    """A linker fitted on annotated logs (`encode`: the model's vectors, or None for text and chat signals only).

    With the conversation pass, the second ranker learns from conversations that a first ranker fitted on the
    other half of the logs found (cross-fitted, so that they are as wrong as they will be on new logs)."""
    params = params or LinkerParams()
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, token_pattern=r"(?u)\b\w+\b")
    vectorizer.fit([t for log in train for t in log.texts])
    linker = Linker(params, vectorizer, uses_dense=encode is not None)
    linker.ranker = _fit_ranker(*training_rows(linker, train, encode), params, list(FEATURES))
    final, names = linker.ranker, list(FEATURES)
    if params.conversation_pass and len(train) >= 2:
        halves = (train[::2], train[1::2])
        firsts = [_fit_ranker(*training_rows(linker, half, encode), params, names) for half in halves]
        stacked = [training_rows(linker, halves[1 - k], encode, firsts[k]) for k in (0, 1)]
        names = names + list(CONVERSATION_FEATURES)
        x, y, groups = (np.concatenate(parts) for parts in zip(*stacked, strict=True))
        final = linker.conversation_ranker = _fit_ranker(x, y, groups, params, names)
    gains = final.booster_.feature_importance("gain")
    linker.importances = {f: round(float(g / gains.sum()), 4) for f, g in zip(names, gains, strict=True)}
    return linker


NEW_BIASES = tuple(np.round(np.arange(-1.5, 1.51, 0.25), 2))


def conversation_objective(scores: dict) -> float:
    """What the new-conversation bias is tuned for: the mean of the conversation metrics."""
    return (scores["vi"] + scores["one_to_one"] + scores["conversation_f"]) / 3


def tune_new_bias(linker: Linker, logs: Sequence[Log], encode: Encode | None = None) -> dict[float, dict]:
    """Sets `linker.new_bias` to the bias that scores best on `logs` for the conversation metrics; returns every
    bias tried with its scores."""
    scored = {log.name: linker.scores(log, encode) for log in logs}
    tried = {
        float(bias): score_logs(logs, {name: parents_from_scores(g, s, bias) for name, (g, s) in scored.items()})
        for bias in NEW_BIASES
    }
    linker.new_bias = max(tried, key=lambda bias: conversation_objective(tried[bias]))
    return tried


def save_linker(linker: Linker, folder: Path, card: dict) -> None:
    """The fitted linker (`linker.joblib`) and its card (`disentangler.json`: what it read, how it scores)."""
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(linker, folder / LINKER_FILE)
    (folder / LINKER_CARD).write_text(json.dumps(card, indent=1, default=float))


def load_linker(folder: Path) -> tuple[Linker, dict]:
    """A linker saved by `save_linker` and its card."""
    path = Path(folder) / LINKER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {LINKER_FILE} (not a disentangler folder)")
    return joblib.load(path), json.loads((Path(folder) / LINKER_CARD).read_text())


def load_published(folder: Path, device: str = "cpu", batch_size: int = 64) -> tuple[Linker, dict, Encode | None]:
    """A published disentangler ready to link: the linker, its card and, where it reads a model's similarity, that
    model's encoder (the ONNX int8 export it was fitted with, on the CPU, where the card names one)."""
    linker, card = load_linker(folder)
    encoder = card.get("encoder") if linker.uses_dense else None
    if not encoder:
        return linker, card, None
    if not Path(encoder).exists():
        raise FileNotFoundError(
            f"{folder}: the linker reads the similarity of {encoder}, which is gone; materialize disentangler again"
        )
    onnx = card.get("onnx")
    if onnx and device == "cpu" and Path(onnx).exists():
        model = OnnxEncoder(Path(onnx))
    else:
        if onnx:  # the same model's PyTorch weights give vectors within int8 rounding of the export's
            why = "is gone" if device == "cpu" else f"serves the CPU only, not {device}"
            log.warning("%s: its ONNX export %s %s; %s encodes instead", folder, onnx, why, encoder)
        model = SentenceTransformer(encoder, device=device)
    return linker, card, lambda texts: unit_rows(model.encode(list(texts), batch_size=batch_size))
