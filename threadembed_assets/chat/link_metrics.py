"""Conversation disentanglement metrics as Kummerfeld et al. (ACL 2019) define them, over a set of logs.

- Links: precision, recall and F over (line, parent) pairs of annotated lines, self-links (new conversations) and
  parents among the context lines included.
- Conversations are the connected components of the links, cut to the annotated lines of their log; over all logs
  together: 1 - variation of information / log2(n), one-to-one overlap (the share of lines in an optimal one-to-one
  matching of system and gold conversations), and exact-match precision, recall and F of conversations of more than
  one line.

All figures are percentages.
"""

from collections.abc import Iterable, Mapping

import numpy as np
from scipy.cluster.hierarchy import DisjointSet
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix

Links = Mapping[int, Iterable[int]]  # line -> its parents (itself for a new conversation)


def prf(matched: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = 100.0 * matched / predicted if predicted else 0.0
    recall = 100.0 * matched / gold if gold else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f


def conversations(links: Links, lines: range) -> np.ndarray:
    """A conversation label for each line of `lines`: the components of `links`, context lines included in the
    joining and left out of the result."""
    components = DisjointSet(lines)
    for child, parents in links.items():
        components.add(child)
        for parent in parents:
            components.add(parent)
            components.merge(child, parent)
    labels: dict[int, int] = {}
    out = np.empty(len(lines), dtype=np.int64)
    for k, line in enumerate(lines):
        out[k] = labels.setdefault(components[line], len(labels))
    return out


def _contingency(gold: np.ndarray, system: np.ndarray) -> np.ndarray:
    ones = np.ones(len(gold))
    return coo_matrix((ones, (gold, system)), shape=(gold.max() + 1, system.max() + 1)).toarray()


def scaled_vi(table: np.ndarray) -> float:
    """100 * (1 - VI / log2(n)) of a gold x system contingency table."""
    n = table.sum()
    if n <= 1:
        return 100.0
    rows = np.broadcast_to(table.sum(1, keepdims=True), table.shape)
    cols = np.broadcast_to(table.sum(0, keepdims=True), table.shape)
    nz = table > 0
    p = table[nz]
    vi = -(p * (np.log2(p / rows[nz]) + np.log2(p / cols[nz])))
    return 100.0 * (1 - vi.sum() / n / np.log2(n))


def one_to_one(table: np.ndarray) -> float:
    """100 * the lines covered by an optimal one-to-one matching of gold and system conversations / all lines."""
    rows, cols = linear_sum_assignment(table, maximize=True)
    return 100.0 * table[rows, cols].sum() / table.sum()


def exact_match(gold: np.ndarray, system: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F of system conversations (of more than one line) identical to a gold one."""

    def groups(labels: np.ndarray) -> set[tuple[int, ...]]:
        order = np.argsort(labels, kind="stable")
        cuts = np.flatnonzero(np.diff(labels[order])) + 1
        return {tuple(g) for g in np.split(order, cuts) if len(g) > 1}

    g, s = groups(gold), groups(system)
    return prf(len(g & s), len(s), len(g))


def score(gold: Mapping[str, Links], system: Mapping[str, Links], annotated: Mapping[str, range]) -> dict:
    """Every metric over the logs named in `annotated` (log -> its annotated lines)."""
    gold_links = {(log, c, p) for log, lines in annotated.items() for c in lines for p in gold[log].get(c, ())}
    system_links = {(log, c, p) for log, lines in annotated.items() for c in lines for p in system[log].get(c, ())}
    link_p, link_r, link_f = prf(len(gold_links & system_links), len(system_links), len(gold_links))
    gold_labels, system_labels, offset_g, offset_s = [], [], 0, 0
    for log, lines in annotated.items():
        g, s = conversations(gold[log], lines), conversations(system[log], lines)
        gold_labels.append(g + offset_g)
        system_labels.append(s + offset_s)
        offset_g, offset_s = offset_g + g.max() + 1, offset_s + s.max() + 1
    g, s = np.concatenate(gold_labels), np.concatenate(system_labels)
    table = _contingency(g, s)
    conv_p, conv_r, conv_f = exact_match(g, s)
    values = {
        "link_precision": link_p,
        "link_recall": link_r,
        "link_f": link_f,
        "vi": scaled_vi(table),
        "one_to_one": one_to_one(table),
        "conversation_precision": conv_p,
        "conversation_recall": conv_r,
        "conversation_f": conv_f,
    }
    return {name: float(value) for name, value in values.items()}


def score_logs(logs, predicted: Mapping[str, np.ndarray]) -> dict:
    """Every metric of one parent per line (`predicted[log.name]`) against the gold links of annotated `logs`."""
    system = {log.name: {int(i): (int(predicted[log.name][i]),) for i in log.annotated()} for log in logs}
    return score({log.name: log.parents for log in logs}, system, {log.name: log.annotated() for log in logs})


def line_hits(logs, predicted: Mapping[str, np.ndarray]) -> np.ndarray:
    """1 for each annotated line whose predicted parent is one of its gold parents, else 0 (logs in order): the
    per-line outcome that paired tests compare systems on."""
    return np.array(
        [float(int(predicted[log.name][i]) in log.parents.get(i, ())) for log in logs for i in log.annotated()]
    )
