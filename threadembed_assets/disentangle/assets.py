"""`disentangler`: the online linker fitted on every source with gold reply links, measured on channels it never saw
against "Previous" and silence cuts, published as `models/disentangler/latest`."""

import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg
import numpy as np
from dagster_duckdb import DuckDBResource
from pydantic import Field

from threadembed_assets.chat.corpus import Log, log_from_messages, read_split
from threadembed_assets.chat.encoders import ONNX_MODEL, OnnxEncoder, export_of
from threadembed_assets.chat.link_baselines import previous_parents, silence_parents
from threadembed_assets.chat.link_features import DEFAULT_WINDOW
from threadembed_assets.chat.link_metrics import line_hits, score_logs
from threadembed_assets.chat.linker import (
    DISENTANGLER,
    Encode,
    Linker,
    LinkerParams,
    conversation_objective,
    fit,
    save_linker,
    tune_new_bias,
    unit_rows,
)
from threadembed_assets.chat.metrics import paired_test, verdict
from threadembed_assets.chat.retrievers import model_key, shared_embeddings
from threadembed_assets.resources import ComputeResource, ModelStore
from threadembed_assets.training.assets import ranker_model, thread_model
from threadembed_assets.training.train import load_model
from threadembed_assets.versions import code_version
from threadembed_assets.warehouse.assets import messages
from threadembed_assets.warehouse.connection import connect

SILENCE_MINUTES = (2, 30)
DEV_LINE = ("link_f", "vi", "one_to_one", "conversation_f")  # the metrics a run's summary shows
METRICS = (
    "link_precision",
    "link_recall",
    "link_f",
    "vi",
    "one_to_one",
    "conversation_precision",
    "conversation_recall",
    "conversation_f",
)


class DisentanglerConfig(dg.Config):
    """Run config of `disentangler`."""

    window: int = Field(default=DEFAULT_WINDOW, description="Lines before a message that may be its parent.")
    dev_share: float = Field(default=0.15, description="Share of channels held out to report on.")
    tune_share: float = Field(
        default=0.15, description="Share of other channels held out to tune the new-conversation bias on."
    )
    dense: bool = Field(
        default=True, description="Read the similarity of the model the chat ranker reads (else text and chat only)."
    )
    n_estimators: int = Field(default=300, description="Boosting rounds of each lambdarank model.")
    learning_rate: float = Field(default=0.05, description="Learning rate of each lambdarank model.")
    onnx: bool = Field(
        default=True,
        description="On the CPU, encode with the published ONNX int8 export of that model (`onnx_model`) where it was "
        "exported from it: about 1.6x PyTorch's speed on chat messages, and links that tie PyTorch's on dev.",
    )
    corpus_dev: str = Field(
        default="",
        description="A folder of logs in the IRC disentanglement corpus's own format (`<stem>.raw.txt` and "
        "`<stem>.annotation.txt`, e.g. its dev split) to score on as well, beside the baselines.",
    )


def channel_share(source: str, channel: str) -> float:
    """A stable number in [0, 1) per channel, which decides its split."""
    return zlib.crc32(f"{source}/{channel}".encode()) / 2**32


def linked_logs(con) -> list[tuple[str, Log]]:
    """(source, log) of every channel of every source with reply links, in channel order. Lines before a channel's
    first labelled one (gold id or reply link) are context, as the corpus's first 1000 lines of each file are."""
    rows = con.execute(
        """
        SELECT source, coalesce(channel, ''), message_id, reply_to, author, epoch(ts), text,
            conversation_method IN ('gold', 'reply_chain')
        FROM messages
        WHERE source IN (SELECT source FROM messages GROUP BY source HAVING count(reply_to) > 0)
        ORDER BY source, channel, ts, length(message_id), message_id
        """
    ).fetchall()
    logs, start = [], 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end][:2] != rows[start][:2]:
            source, channel = rows[start][:2]
            labelled = [row[7] for row in rows[start:end]]
            first = labelled.index(True) if True in labelled else end - start
            if first < end - start:
                log = log_from_messages(f"{source}/{channel}", [r[2:7] for r in rows[start:end]], first)
                logs.append((source, log))
            start = end
    return logs


def split_logs(logs: Sequence[tuple[str, Log]], dev_share: float, tune_share: float) -> dict[str, list[Log]]:
    """Channels to fit on, to tune the bias on, and to report on, by `channel_share`; at least one channel each
    where there are three or more (with two: the bias is tuned on the dev channel; with one: nothing to hold out)."""
    keyed = sorted(((channel_share(source, log.name), k) for k, (source, log) in enumerate(logs)))
    shares = [share for share, _ in keyed]
    n_dev = max(sum(s < dev_share for s in shares), 1 if len(logs) >= 2 else 0)
    n_tune = max(sum(dev_share <= s < dev_share + tune_share for s in shares), 1 if len(logs) >= 3 else 0)
    channels = [logs[k][1] for _, k in keyed]
    dev, tune, rest = channels[:n_dev], channels[n_dev : n_dev + n_tune], channels[n_dev + n_tune :]
    return {"fit": rest, "tune": tune or dev, "dev": dev}


def sentence_encoder(model_path: str, device: str, batch_size: int, cache, onnx: Path | None = None) -> Encode:
    """Texts -> the model's L2-normalised vectors (encoded by its ONNX export in `onnx`, where given), through the
    run's embedding cache where there is one."""
    if onnx is not None:
        model = OnnxEncoder(onnx)
        key = model.key
    else:
        model, key = load_model(model_path, device), model_key(model_path)

    def encode(texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if cache is not None:
            return unit_rows(cache.encode(model, key, texts, batch_size))
        return unit_rows(model.encode(texts, batch_size=batch_size, convert_to_numpy=True))

    return encode


def compare(
    linker: Linker, logs: Sequence[Log], encode: Encode | None
) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]]]:
    """The linker and the baselines on the same logs: every metric per system (the linker's row also holds its
    paired verdict against each baseline on per-line link accuracy, `vs_<baseline>`: delta, p, verdict), and each
    system's parents per log."""
    systems = {"disentangler": lambda log: linker.link(log, encode), "previous": previous_parents}
    systems.update({f"silence_{m}min": (lambda log, m=m: silence_parents(log, m)) for m in SILENCE_MINUTES})
    parents = {name: {log.name: link(log) for log in logs} for name, link in systems.items()}
    scores = {name: score_logs(logs, predicted) for name, predicted in parents.items()}
    mine = line_hits(logs, parents["disentangler"])
    for name in list(systems)[1:]:
        delta, p = paired_test(mine, line_hits(logs, parents[name]))
        outcome = {"delta": round(delta, 4), "p": round(p, 4), "verdict": verdict(delta, p)}
        scores["disentangler"][f"vs_{name}"] = outcome
    return scores, parents


def _table(scores: dict[str, dict]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        [dg.TableRecord({"system": name, **{m: round(row[m], 1) for m in METRICS}}) for name, row in scores.items()]
    )


@dg.asset(
    code_version=code_version("disentangle", "chat"),  # the linker and its features live in chat/
    group_name="training",
    deps=[messages, thread_model, dg.AssetKey(ONNX_MODEL)],  # by key: onnx_model is defined above this layer
    kinds={"lightgbm"},
    output_required=False,
)
def disentangler(
    context: dg.AssetExecutionContext,
    config: DisentanglerConfig,
    warehouse: DuckDBResource,
    compute: ComputeResource,
    models: ModelStore,
) -> Iterator[dg.MaterializeResult]:
    """An online linker: each message's parent among the `window` lines before it (or itself: a new conversation),
    ranked by LightGBM lambdarank over time, speakers, addressing and mentions, TF-IDF and the model's similarity,
    from what is known when the message arrives. Fitted on the channels of every source with gold reply links, its
    new-conversation bias tuned on other channels, and scored on held-out channels beside "Previous" and silence
    cuts (and on `corpus_dev`, when given). Published as `models/disentangler/latest`."""
    with connect(warehouse, read_only=True) as con:
        logs = linked_logs(con)
    splits = split_logs(logs, config.dev_share, config.tune_share)
    if not splits["fit"]:
        context.log.warning(
            f"disentangler: not materialized: it needs 2+ channels with reply links (one to fit on, one to hold out), "
            f"the warehouse has {len(logs)} (chat JSONL with `reply_to`, such as ubuntu_irc, has them)"
        )
        return
    encoder = ranker_model(models) if config.dense else None
    device = compute.resolve_device()
    onnx = export_of(encoder, models.latest(ONNX_MODEL)) if encoder and config.onnx and device == "cpu" else None
    params = LinkerParams(window=config.window, n_estimators=config.n_estimators, learning_rate=config.learning_rate)
    with shared_embeddings() as cache:
        encode = sentence_encoder(encoder, device, compute.eval_batch_size, cache, onnx) if encoder else None
        linker = fit(splits["fit"], encode, params)
        tried = tune_new_bias(linker, splits["tune"], encode)
        scores, _ = compare(linker, splits["dev"], encode)
        corpus = compare(linker, read_split(Path(config.corpus_dev)), encode)[0] if config.corpus_dev else None
    folder = models.asset_dir(DISENTANGLER) / context.run_id
    card = {
        "encoder": encoder,
        "onnx": str(onnx) if onnx else None,
        "window": config.window,
        "new_bias": linker.new_bias,
        "channels": {split: [log.name for log in group] for split, group in splits.items()},
        "dev": scores,
        "corpus_dev": corpus,
        "importances": linker.importances,
    }
    save_linker(linker, folder, card)
    models.publish(DISENTANGLER, folder)
    mine = scores["disentangler"]
    context.log.info(
        f"disentangler: dev ({len(splits['dev'])} held-out channels) link F {mine['link_f']:.1f}, VI {mine['vi']:.1f}, "
        f"one-to-one {mine['one_to_one']:.1f}, conversation F {mine['conversation_f']:.1f}; Previous link F "
        f"{scores['previous']['link_f']:.1f}, VI {scores['previous']['vi']:.1f}"
    )
    metadata = {
        "dev": _table(scores),
        "importances": dg.MetadataValue.table(
            [
                dg.TableRecord({"feature": f, "gain_share": g})
                for f, g in sorted(linker.importances.items(), key=lambda item: -item[1])
            ]
        ),
        "link_accuracy_verdicts": {name: row for name, row in mine.items() if name.startswith("vs_")},
        "new_bias": linker.new_bias,
        "new_bias_tuned_on": f"{len(splits['tune'])} channels, conversation metrics' mean "
        f"{conversation_objective(tried[linker.new_bias]):.1f}",
        "channels": {split: len(group) for split, group in splits.items()},
        "messages": sum(len(log) for _, log in logs),
        "encoder": (f"{encoder} [ONNX int8]" if onnx else encoder) if encoder else "none (text and chat signals only)",
        "path": dg.MetadataValue.path(str(folder)),
        **{f"dev_{m}": round(mine[m], 1) for m in METRICS},
        **{f"previous_{m}": round(scores["previous"][m], 1) for m in DEV_LINE},
    }
    if corpus:
        metadata["corpus_dev"] = _table(corpus)
    yield dg.MaterializeResult(metadata=metadata)
