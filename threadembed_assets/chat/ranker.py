"""The chat ranker: a learned combination of the model's similarity, BM25 and the chat signals of
`chat.features`, one learner per task kind (thread in the archive and live, next message, next window), fitted on
train-split tasks and chosen on dev-split tasks.

Two learners are fitted per kind and the one with the better dev MRR@10 is kept: a logistic regression on
standardised features with missing-indicators (missing values are imputed to the feature's mean, so a query whose
candidates all lack a signal is ranked by the others), and gradient-boosted trees (scikit-learn's
`HistGradientBoostingClassifier`, which routes missing values itself). Each query's candidates count as much as
another's: a row weighs 1 / (number of candidates of its query). Where the train split holds several platforms, a
platform with enough train queries also gets learners of its own, kept where they beat the shared learner on that
platform's dev queries significantly (Slack channels whose conversations a disentangler cut by time may want time more
than IRC does).

On the next-message and next-window tasks, where "what comes next in time" is the rival, each query also asks its
channel's own history which of the two found the answers better before it (`history_gate`), so that a ranker fitted
on a busy channel does not fall below recency on a calm one.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from threadembed_assets.chat.features import FEATURES, candidate_pairs, pair_features
from threadembed_assets.chat.metrics import paired_test, per_query, ranks_of_relevant, verdict
from threadembed_assets.chat.retrievers import (
    CachedEncoder,
    best_window_scores,
    bm25_scores,
    dense_scores,
    line_windows,
    pooled_vectors,
    recency_scores,
)
from threadembed_assets.chat.task import Task, task_kind

CHAT_RANKER = "chat_ranker"  # the asset, its models/ folder, and its name as a model and retriever in scores
RANKED_KINDS = ("thread", "thread_live", "response_message", "response_window")
LEARNERS = ("logistic", "boosted")
RANKER_FILE = "ranker.joblib"
RANKER_CARD = "ranker.json"
# Kinds where "what comes next in time" is the rival to never fall below: the channel's own history says which to trust.
GATED_KINDS = ("response_message", "response_window")
GATE_HISTORY = 20  # the channel's latest answered queries the gate reads
GATE_LEAST = 5  # fewer than this: the ranker decides
UNGATED = "ungated"  # the ranker's scores without the gate, as a retriever name in the benchmark


@dataclass
class Features:
    """The candidate pairs of one task and their feature matrix."""

    task: Task
    qi: np.ndarray
    di: np.ndarray
    values: np.ndarray  # pairs x FEATURES

    def labels(self) -> np.ndarray:
        return (self.di == np.asarray(self.task.relevant)[self.qi]).astype(int)

    def weights(self) -> np.ndarray:
        counts = np.bincount(self.qi, minlength=len(self.task.queries))
        return 1.0 / counts[self.qi]

    def query_platforms(self) -> np.ndarray:
        """The platform of each query ("" where the task does not say)."""
        return np.array(self.task.query_platform or [""] * len(self.task.queries), dtype=object)

    def score_matrix(self, pair_scores: np.ndarray) -> np.ndarray:
        """A (queries x documents) matrix of the pair scores, -inf where a document is not a candidate."""
        matrix = np.full((len(self.task.queries), len(self.task.docs)), -np.inf)
        matrix[self.qi, self.di] = pair_scores
        return matrix

    def mrr(self, pair_scores: np.ndarray) -> np.ndarray:
        """Per-query MRR@10 of the pair scores."""
        ranks = ranks_of_relevant(self.score_matrix(pair_scores), np.asarray(self.task.relevant), self.task.allowed())
        return per_query(ranks)["mrr@10"]


def text_signals(
    model, key: str, task: Task, cache: CachedEncoder, batch_size: int, bm25: np.ndarray
) -> dict[str, np.ndarray]:
    """The (queries x documents) text signals of a task: the model's similarity to the whole document and to its
    best window (see `retrievers.windowed_scores`), documents and windows pooled from their messages' vectors
    (`retrievers.pooled_vectors`), and BM25."""
    queries = cache.encode(model, key, task.queries, batch_size)
    windows, owners = line_windows(task.docs)
    pooled = pooled_vectors(model, key, [*task.docs, *windows], cache, batch_size)
    docs, by_window = pooled[: len(task.docs)], dense_scores(queries, pooled[len(task.docs) :])
    return {
        "dense": dense_scores(queries, docs),
        "dense_window": best_window_scores(by_window, owners, len(task.docs)),
        "bm25": bm25,
    }


def task_features(task: Task, signals: dict[str, np.ndarray]) -> Features:
    """Features of every candidate pair of `task` from its text signals and its chat context."""
    qi, di = candidate_pairs(len(task.queries), len(task.docs), task.allowed())
    values = pair_features(task, qi, di, signals["dense"], signals["dense_window"], signals["bm25"])
    return Features(task, qi, di, values)


def model_features(
    model, key: str, task: Task, cache: CachedEncoder, batch_size: int, bm25: np.ndarray | None = None
) -> Features:
    """Features of every candidate pair of `task` with `model`'s similarity (BM25 computed here unless given)."""
    bm25 = bm25_scores(task) if bm25 is None else bm25
    return task_features(task, text_signals(model, key, task, cache, batch_size, bm25))


def _new_learner(name: str, seed: int):
    if name == "logistic":
        return Pipeline(
            [
                ("scale", StandardScaler()),
                (
                    "impute",
                    SimpleImputer(strategy="constant", fill_value=0.0, add_indicator=True, keep_empty_features=True),
                ),
                ("classify", LogisticRegression(C=1.0, max_iter=2000)),
            ]
        )
    if name == "boosted":
        return HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            l2_regularization=1.0,
            random_state=seed,
        )
    raise ValueError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")


def _stack(sets: list[Features], platform: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows, labels and weights of every pair (of queries of `platform` only, unless None)."""
    keep = [np.ones(len(s.qi), dtype=bool) if platform is None else s.query_platforms()[s.qi] == platform for s in sets]
    return (
        np.vstack([s.values[k] for s, k in zip(sets, keep, strict=True)]),
        np.concatenate([s.labels()[k] for s, k in zip(sets, keep, strict=True)]),
        np.concatenate([s.weights()[k] for s, k in zip(sets, keep, strict=True)]),
    )


@dataclass
class FittedLearner:
    """A fitted learner and the feature columns it reads (those with a known value in training: a feature that no
    training pair had, such as reply links on IRC, is not learned from)."""

    name: str
    estimator: object
    columns: list[int]

    def decision(self, values: np.ndarray) -> np.ndarray:
        return self.estimator.decision_function(values[:, self.columns]) if len(values) else np.zeros(0)

    def feature_names(self) -> list[str]:
        return [FEATURES[c] for c in self.columns]


def fit_learner(name: str, values: np.ndarray, labels: np.ndarray, weights: np.ndarray, seed: int) -> FittedLearner:
    """One learner fitted on the columns of `values` that have a known value."""
    columns = [c for c in range(values.shape[1]) if np.isfinite(values[:, c]).any()]
    estimator = _new_learner(name, seed).fit(values[:, columns], labels, **_weight_argument(name, weights))
    return FittedLearner(name, estimator, columns)


def query_mrr(learner: FittedLearner, sets: list[Features], platform: str | None = None) -> np.ndarray:
    """Per-query MRR@10 of every query of `sets` (of `platform` only, unless None) when `learner` ranks them."""
    values = [
        s.mrr(learner.decision(s.values))[slice(None) if platform is None else s.query_platforms() == platform]
        for s in sets
        if len(s.task.queries)
    ]
    return np.concatenate(values) if values else np.zeros(0)


def mean_mrr(learner: FittedLearner, sets: list[Features], platform: str | None = None) -> float:
    """MRR@10 over every query of `sets` (of `platform` only, unless None) when `learner` ranks their candidates."""
    values = query_mrr(learner, sets, platform)
    return float(values.mean()) if len(values) else 0.0


def permutation_importance(learner: FittedLearner, sets: list[Features], seed: int = 0) -> dict[str, float]:
    """Dev MRR@10 lost when one feature's values are shuffled across pairs (0 for a feature the learner ignores)."""
    base = mean_mrr(learner, sets)
    rng = np.random.default_rng(seed)
    lost = {}
    for column, name in enumerate(FEATURES):
        shuffled = []
        for s in sets:
            values = s.values.copy()
            values[:, column] = rng.permutation(values[:, column])
            shuffled.append(Features(s.task, s.qi, s.di, values))
        lost[name] = round(base - mean_mrr(learner, shuffled), 4)
    return lost


def logistic_weights(learner: FittedLearner) -> dict[str, float] | None:
    """The logistic regression's weight per standardised feature (and per missing-indicator), or None."""
    if learner.name != "logistic":
        return None
    names = learner.feature_names()
    impute = learner.estimator.named_steps["impute"]
    names += [f"{names[i]}_missing" for i in impute.indicator_.features_]
    coefficients = learner.estimator.named_steps["classify"].coef_[0]
    return {name: round(float(w), 4) for name, w in zip(names, coefficients, strict=True)}


@dataclass
class ChatRanker:
    """One fitted learner per task kind (`thread`), and per task kind and platform (`thread@slack`) where that
    platform's own train split beat the learner of every platform on its dev split; the model whose similarity it
    reads, and what was measured."""

    model_path: str
    learners: dict[str, FittedLearner]
    card: dict = field(default_factory=dict)  # per kind: learner, weights, importances, dev and train scores

    def ranks(self, kind: str) -> bool:
        return kind in self.learners

    def scores(self, features: Features) -> np.ndarray:
        """(queries x documents) ranker scores of a task's candidates (-inf elsewhere): each query is ranked by the
        learner of its platform where there is one, else by the learner of every platform."""
        kind = task_kind(features.task.name)
        decision = self.learners[kind].decision(features.values)
        platforms = features.query_platforms()[features.qi]
        for key, learner in self.learners.items():
            if key.startswith(f"{kind}@") and (rows := platforms == key.split("@", 1)[1]).any():
                decision[rows] = learner.decision(features.values[rows])
        return features.score_matrix(decision)

    def save(self, folder: Path) -> None:
        """`ranker.joblib` and `ranker.json` in `folder`; the model is also found relative to it, so a models
        folder that moves (a container's `/models`) keeps its ranker working."""
        folder.mkdir(parents=True, exist_ok=True)
        relative = os.path.relpath(Path(self.model_path).resolve(), folder.resolve())
        joblib.dump(
            {"model_path": self.model_path, "model_relative": relative, "learners": self.learners},
            folder / RANKER_FILE,
        )
        (folder / RANKER_CARD).write_text(
            json.dumps({"model_path": self.model_path, "features": FEATURES, **self.card}, indent=1)
        )

    @classmethod
    def load(cls, folder: str | Path) -> "ChatRanker":
        """A ranker saved by `save` (its `ranker.json` tells what it learned and scored)."""
        folder = Path(folder)
        stored = joblib.load(folder / RANKER_FILE)
        card = json.loads((folder / RANKER_CARD).read_text())
        if tuple(card.get("features", ())) != FEATURES:
            raise ValueError(f"{folder} was fitted on other features ({card.get('features')}); refit chat_ranker")
        model_path = stored["model_path"]
        if not Path(model_path).exists() and (folder / stored["model_relative"]).exists():
            model_path = str((folder / stored["model_relative"]).resolve())
        return cls(model_path, stored["learners"], {k: v for k, v in card.items() if k in RANKED_KINDS})


def is_gated(task: Task) -> bool:
    """Whether the channel-history gate reads `task`: a kind of `GATED_KINDS` with a time context."""
    return task_kind(task.name) in GATED_KINDS and task.has_time_context()


def gated(task: Task, scores: np.ndarray) -> np.ndarray:
    """A ranker's (queries x documents) `scores` of `task`, with recency's ranking in place of the ranker's for the
    queries whose channel's own history says recency finds the answer better (`history_gate`); `scores` itself where
    the gate does not read the task."""
    if not is_gated(task):
        return scores
    rival = np.where(np.isfinite(scores), recency_scores(task), -np.inf)
    return np.where(history_gate(task, scores, rival)[:, None], rival, scores)


def history_gate(
    task: Task, ranked: np.ndarray, rival: np.ndarray, last: int = GATE_HISTORY, least: int = GATE_LEAST
) -> np.ndarray:
    """Per query, whether `rival`'s ranking should replace `ranked`'s: where, over the latest `last` earlier queries
    of its channel whose answer had arrived by its moment (at least `least` of them), the rival ranked the answer
    better on average (MRR@10). Only answers that came before a query's moment count, as a live channel's history
    holds them: a channel that is one conversation at a time teaches recency, a busy one the ranker."""
    relevant = np.asarray(task.relevant)
    gain = (
        per_query(ranks_of_relevant(rival, relevant))["mrr@10"]
        - per_query(ranks_of_relevant(ranked, relevant))["mrr@10"]
    )
    arrived = np.array([max(task.doc_orders[doc], default=-1) for doc in relevant])
    use_rival = np.zeros(len(relevant), dtype=bool)
    channels = np.array([str(channel) for channel in task.query_channel], dtype=object)
    for channel in np.unique(channels):
        rows = np.flatnonzero(channels == channel)
        answered = rows[np.argsort(arrived[rows], kind="stable")]
        for row in rows:
            known = answered[arrived[answered] < task.query_order[row]][-last:]
            use_rival[row] = len(known) >= least and gain[known].mean() > 0
    return use_rival


def _fit_best(
    train_sets: list[Features], dev_sets: list[Features], learners: tuple[str, ...], seed: int, platform: str | None
) -> tuple[str, dict[str, tuple[FittedLearner, float | None]]] | None:
    """Every learner fitted on the pairs (of `platform`'s queries, unless None), and the name of the best on dev."""
    values, labels, weights = _stack(train_sets, platform)
    if not len(labels) or labels.min() == labels.max():
        return None
    fitted = {}
    for name in learners:
        learner = fit_learner(name, values, labels, weights, seed)
        fitted[name] = (learner, mean_mrr(learner, dev_sets, platform) if dev_sets else None)
    return max(fitted, key=lambda name: fitted[name][1] or 0.0), fitted


def _queries_of(sets: list[Features], platform: str) -> int:
    return sum(int((s.query_platforms() == platform).sum()) for s in sets)


def fit_ranker(
    model_path: str,
    train: list[Features],
    dev: list[Features],
    *,
    learners: tuple[str, ...] = LEARNERS,
    seed: int = 0,
    min_platform_queries: int = 100,
    log=print,
) -> ChatRanker:
    """Fit every learner per task kind on the `train` features and keep the one with the best dev MRR@10; where the
    train split holds several platforms, fit a platform's own learner too (with `min_platform_queries` train
    queries of it) and keep it where it beats the learner of every platform on that platform's dev queries,
    significantly (paired randomization test at 95%)."""
    chosen, card = {}, {}
    for kind in RANKED_KINDS:
        train_sets = [s for s in train if task_kind(s.task.name) == kind and len(s.qi)]
        dev_sets = [s for s in dev if task_kind(s.task.name) == kind and len(s.qi)]
        found = _fit_best(train_sets, dev_sets, learners, seed, None) if train_sets else None
        if found is None:
            continue
        best, fitted = found
        learner = chosen[kind] = fitted[best][0]
        card[kind] = {
            "learner": best,
            "dev_mrr@10": {name: _rounded(score) for name, (_, score) in fitted.items()},
            "train_mrr@10": round(mean_mrr(learner, train_sets), 4),
            "train_queries": sum(len(s.task.queries) for s in train_sets),
            "dev_queries": sum(len(s.task.queries) for s in dev_sets),
            "weights": logistic_weights(fitted["logistic"][0]) if "logistic" in fitted else None,
            "importance": permutation_importance(learner, dev_sets or train_sets, seed),
            "platforms": {},
        }
        log(
            f"chat_ranker {kind}: {best} (dev MRR@10 {card[kind]['dev_mrr@10']}), "
            f"{card[kind]['train_queries']} train queries"
        )
        platforms = sorted({p for s in train_sets for p in s.query_platforms()} - {""})
        for platform in platforms if len(platforms) > 1 else []:
            if _queries_of(train_sets, platform) < min_platform_queries or not _queries_of(dev_sets, platform):
                continue
            found = _fit_best(train_sets, dev_sets, learners, seed, platform)
            if found is None:
                continue
            own, own_fitted = found
            delta, p_value = paired_test(
                query_mrr(own_fitted[own][0], dev_sets, platform), query_mrr(learner, dev_sets, platform)
            )
            kept = verdict(delta, p_value) == "win"
            own_score, every_score = own_fitted[own][1] or 0.0, mean_mrr(learner, dev_sets, platform)
            if kept:
                chosen[f"{kind}@{platform}"] = own_fitted[own][0]
            card[kind]["platforms"][platform] = {
                "learner": own,
                "dev_mrr@10": round(own_score, 4),
                "dev_mrr@10_of_every_platform_learner": round(every_score, 4),
                "paired_p": round(p_value, 4),
                "kept": kept,
                "train_queries": _queries_of(train_sets, platform),
            }
            log(f"chat_ranker {kind}@{platform}: {own} dev MRR@10 {own_score:.4f} vs {every_score:.4f}; kept: {kept}")
    return ChatRanker(model_path, chosen, card)


def _weight_argument(name: str, weights: np.ndarray) -> dict:
    return {"classify__sample_weight": weights} if name == "logistic" else {"sample_weight": weights}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
