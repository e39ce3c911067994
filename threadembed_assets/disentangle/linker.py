"""The online linker: for each message, in order, the candidate parent (itself for a new conversation) that a
LightGBM lambdarank model ranks first among the message's candidates, from the features of `disentangle.features`.
A bias on the "new conversation" candidate, tuned on dev for the conversation metrics, sets how readily it starts
one."""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
from sentence_transformers import SentenceTransformer
from sklearn.feature_extraction.text import TfidfVectorizer

from threadembed_assets.disentangle.corpus import Log
from threadembed_assets.disentangle.features import DEFAULT_WINDOW, FEATURES, Grid, log_features
from threadembed_assets.disentangle.metrics import score_logs

DISENTANGLER = "disentangler"  # the asset and its models/ folder
LINKER_FILE = "linker.joblib"
LINKER_CARD = "disentangler.json"
Encode = Callable[[Sequence[str]], np.ndarray]  # texts -> L2-normalised vectors


@dataclass
class LinkerParams:
    window: int = DEFAULT_WINDOW
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 50
    seed: int = 13


@dataclass
class Linker:
    """A fitted linker: the vocabulary's weights, the ranking model and the new-conversation bias."""

    params: LinkerParams
    vectorizer: TfidfVectorizer
    ranker: lgb.LGBMRanker | None = None
    new_bias: float = 0.0
    uses_dense: bool = False
    importances: dict[str, float] = field(default_factory=dict)

    def features(self, log: Log, encode: Encode | None) -> tuple[Grid, np.ndarray]:
        tfidf = self.vectorizer.transform(log.texts)
        dense = encode(log.texts) if (encode is not None and self.uses_dense) else None
        return log_features(log, self.params.window, tfidf, dense)

    def scores(self, log: Log, encode: Encode | None = None, chunk: int = 2000) -> tuple[Grid, np.ndarray]:
        """The ranking score of every candidate (lines x (window + 1)), -inf where there is none. Lines go through
        in chunks with the window before each, so features never take more memory than a chunk's."""
        window, n = self.params.window, len(log)
        grid, out = Grid.of(n, window), np.full((n, window + 1), -np.inf)
        for start in range(0, n, chunk):
            low, end = max(start - window, 0), min(start + chunk, n)
            part, values = self.features(log.slice(low, end), encode)
            rows = slice(start - low, end - low)
            mask = part.mask[rows]
            block = np.full(mask.shape, -np.inf)
            block[mask] = self.ranker.booster_.predict(values[rows][mask]) if mask.any() else []
            out[start:end] = block
        return grid, out

    def link(self, log: Log, encode: Encode | None = None) -> np.ndarray:
        """Each line's parent line (itself: a new conversation)."""
        grid, scores = self.scores(log, encode)
        return parents_from_scores(grid, scores, self.new_bias)


def conversation_roots(parents: np.ndarray) -> np.ndarray:
    """The first line of each line's conversation (parents always point back, so one pass in order suffices)."""
    roots = np.arange(len(parents))
    for line, parent in enumerate(parents):
        roots[line] = line if parent == line else roots[parent]
    return roots


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def parents_from_scores(grid: Grid, scores: np.ndarray, new_bias: float) -> np.ndarray:
    biased = scores.copy()
    biased[:, 0] += new_bias
    return grid.parent[np.arange(len(scores)), biased.argmax(axis=1)]


def training_rows(linker: Linker, logs: Sequence[Log], encode: Encode | None):
    """Feature rows, labels and query group sizes of every annotated line whose gold parent is a candidate."""
    rows, labels, groups = [], [], []
    for log in logs:
        grid, values = linker.features(log, encode)
        gold = np.zeros(grid.mask.shape, dtype=bool)
        for line in log.annotated():
            for parent in log.parents.get(line, ()):
                if line - parent <= linker.params.window:
                    gold[line, line - parent] = True
        keep = np.zeros(len(log), dtype=bool)
        keep[list(log.annotated())] = True
        keep &= gold.any(axis=1)
        mask = grid.mask & keep[:, None]
        rows.append(values[mask])
        labels.append(gold[mask].astype(int))
        groups.append(mask.sum(axis=1)[keep])
    return np.concatenate(rows), np.concatenate(labels), np.concatenate(groups)


def fit(train: Sequence[Log], encode: Encode | None = None, params: LinkerParams | None = None) -> Linker:
    """A linker fitted on annotated logs (`encode`: the model's vectors, or None for text and chat signals only)."""
    params = params or LinkerParams()
    vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, token_pattern=r"(?u)\b\w+\b")
    vectorizer.fit([t for log in train for t in log.texts])
    linker = Linker(params, vectorizer, uses_dense=encode is not None)
    x, y, groups = training_rows(linker, train, encode)
    linker.ranker = lgb.LGBMRanker(
        objective="lambdarank",
        n_estimators=params.n_estimators,
        learning_rate=params.learning_rate,
        num_leaves=params.num_leaves,
        min_child_samples=params.min_child_samples,
        lambdarank_truncation_level=5,
        random_state=params.seed,
        n_jobs=2,
        verbose=-1,
    )
    linker.ranker.fit(x, y, group=groups, feature_name=list(FEATURES))
    gains = linker.ranker.booster_.feature_importance("gain")
    linker.importances = {f: round(float(g / gains.sum()), 4) for f, g in zip(FEATURES, gains, strict=True)}
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
    model's encoder."""
    linker, card = load_linker(folder)
    encoder = card.get("encoder") if linker.uses_dense else None
    if not encoder:
        return linker, card, None
    if not Path(encoder).exists():
        raise FileNotFoundError(
            f"{folder}: the linker reads the similarity of {encoder}, which is gone; materialize disentangler again"
        )
    model = SentenceTransformer(encoder, device=device)
    return linker, card, lambda texts: unit_rows(model.encode(list(texts), batch_size=batch_size))
