"""The source registry: every chat dataset the product knows, keyed by its partition key."""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from threadembed_assets import settings
from threadembed_assets.sources.chat_export import read_imports
from threadembed_assets.sources.chat_jsonl import chat_jsonl_part
from threadembed_assets.sources.config import HUB_ROW_BUDGET, RawSourceConfig, SourceConfigError
from threadembed_assets.sources.dialogue import (
    discord_dialogues_rows,
    thread_qa_rows,
    topical_chat_rows,
    ultrachat_rows,
)
from threadembed_assets.sources.discord import discord_api_rows, discord_unveiled_files
from threadembed_assets.sources.hub import iter_hub_records, limited
from threadembed_assets.sources.irc import irc_corpus_rows, irc_disentangle_rows, is_irc_corpus
from threadembed_assets.sources.sample import generate_sample
from threadembed_assets.sources.schema import RawPiece, batched
from threadembed_assets.sources.slack import read_disentangled_xml, read_slack_export_dir

Loader = Callable[["SourceSpec", RawSourceConfig], Iterator[RawPiece]]

UBUNTU_IRC_FILE = Path(__file__).parent / "data" / "ubuntu_irc.jsonl.gz"
"""The shipped slice of real Ubuntu IRC chat in chat JSONL (license and selection: data/LICENSE-ubuntu_irc.md)."""


@dataclass(frozen=True)
class SourceSpec:
    """One chat source: where it comes from, under what license, how urgent, and how to load it."""

    key: str
    platform: str
    upstream: str
    license: str
    priority: str  # P0 (needed for the core recipe), P1, P2
    description: str
    loader: Loader
    default_split: str = "train"
    hub_config: str | None = None  # the `name` argument of load_dataset
    hub_data_files: dict | None = None  # split -> file, for hub repos that need them named
    streams_from_hub: bool = False  # reads the hub over the network unless a local path is configured

    def row_budget(self, config: RawSourceConfig) -> int | None:
        """The messages to keep: the run config's `max_rows` (0: all), else `HUB_ROW_BUDGET` for a source that
        streams from the hub and everything for a local one."""
        if config.max_rows is None:
            return HUB_ROW_BUDGET if self.streams_from_hub else None
        return config.max_rows or None

    def load(self, config: RawSourceConfig) -> Iterator[RawPiece]:
        """Raw pieces (record batches or self-writing Parquet parts) of this source under `config`."""
        return self.loader(self, config)


def _hub_loader(to_rows: Callable[[Iterable[dict], str, str], Iterator[dict]]) -> Loader:
    """A loader that streams a hub dataset (or local files in its schema) through a record -> rows mapper."""

    def load(spec: SourceSpec, config: RawSourceConfig) -> Iterator[RawPiece]:
        split = config.split or spec.default_split
        records = iter_hub_records(
            spec.key,
            spec.upstream,
            name=spec.hub_config,
            split=split,
            path=config.path,
            revision=config.revision,
            data_files=spec.hub_data_files,
        )
        origin = config.path or f"{spec.upstream}:{split}"
        return batched(limited(to_rows(records, spec.key, origin), spec.row_budget(config)))

    return load


def _load_irc_disentangle(spec: SourceSpec, config: RawSourceConfig) -> Iterator[RawPiece]:
    """The corpus in its own format where `path` is such a folder (its train split, say), else the hub's schema."""
    if config.path and is_irc_corpus(Path(config.path)):
        return batched(limited(irc_corpus_rows(Path(config.path), spec.key), spec.row_budget(config)))
    return _hub_loader(irc_disentangle_rows)(spec, config)


def _required_path(spec: SourceSpec, config: RawSourceConfig) -> Path:
    path = Path(config.path) if config.path else settings.data_dir() / "external" / spec.key
    if not path.exists():
        raise SourceConfigError(
            f"Source '{spec.key}' reads local files ({spec.upstream}); none at {path}. Put them there or set "
            f"run config `ops: raw_messages: config: path: /path/to/folder` on partition {spec.key}."
        )
    return path


def _load_slack_disentangled(spec: SourceSpec, config: RawSourceConfig) -> Iterator[RawPiece]:
    root = _required_path(spec, config)
    files = sorted(root.rglob("*.xml")) if root.is_dir() else [root]
    rows = (row for file in files for row in read_disentangled_xml(file, spec.key))
    return batched(limited(rows, spec.row_budget(config)))


def _load_clojurians(spec: SourceSpec, config: RawSourceConfig) -> Iterator[RawPiece]:
    return batched(limited(read_slack_export_dir(_required_path(spec, config), spec.key), spec.row_budget(config)))


def _load_discord_unveiled(spec: SourceSpec, config: RawSourceConfig) -> Iterator[RawPiece]:
    rows = (
        row
        for name, stream in discord_unveiled_files(config.path, spec.upstream, spec.key)
        for row in discord_api_rows(stream, spec.key, name, config.seed, config.sample_rate)
    )
    return batched(limited(rows, spec.row_budget(config)))


def _load_chat_export(spec: SourceSpec, config: RawSourceConfig) -> Iterator[RawPiece]:
    folder = Path(config.path) if config.path else settings.imports_dir()
    return read_imports(folder, spec.key, config.max_archive_bytes, config.global_conversation_ids, config.irc_log_date)


def _load_ubuntu_irc(spec: SourceSpec, config: RawSourceConfig) -> Iterator[RawPiece]:
    if config.path:
        raise SourceConfigError(
            f"Source '{spec.key}' reads the slice shipped in the package ({UBUNTU_IRC_FILE.name}); it takes no "
            "path. Put your own chat JSONL under the imports folder and use the chat_export source instead."
        )
    return iter([chat_jsonl_part(UBUNTU_IRC_FILE, spec.key, spec.platform, spec.row_budget(config))])


def _load_sample(spec: SourceSpec, config: RawSourceConfig) -> Iterator[RawPiece]:
    return batched(limited(generate_sample(config.n_messages, config.seed, spec.key), spec.row_budget(config)))


SOURCES: dict[str, SourceSpec] = {
    spec.key: spec
    for spec in [
        SourceSpec(
            "ubuntu_irc",
            "irc",
            "jkkummerfeld/irc-disentanglement (train split, 51 of 153 channels, shipped in the package)",
            "CC-BY-4.0",
            "P0",
            "Real #ubuntu IRC chat with gold conversations (Kummerfeld et al., ACL 2019): a 20k-message slice "
            "shipped with the package, the offline default of `make run`.",
            _load_ubuntu_irc,
        ),
        SourceSpec(
            "sample",
            "mixed",
            "generator (deterministic, seeded)",
            "project",
            "P0",
            "Generated multi-platform chat with interleaved threads: small and fast, for tests.",
            _load_sample,
        ),
        SourceSpec(
            "chat_export",
            "mixed",
            "local files under THREADEMBED_IMPORTS_DIR",
            "user's own",
            "P0",
            "Your own exports: chat JSONL, Slack export (folder or zip), DiscordChatExporter JSON, IRC logs.",
            _load_chat_export,
        ),
        SourceSpec(
            "irc_disentangle",
            "irc",
            "jkkummerfeld/irc_disentangle",
            "CC-BY-4.0",
            "P0",
            "Ubuntu IRC with annotated reply links (Kummerfeld et al., 2019); `path` may name a split folder in the "
            "corpus's own format (`<stem>.raw.txt` and `<stem>.annotation.txt`).",
            _load_irc_disentangle,
            streams_from_hub=True,
            hub_config="ubuntu",
        ),
        SourceSpec(
            "discord_dialogues",
            "discord",
            "mookiezi/Discord-Dialogues",
            "Apache-2.0",
            "P0",
            "Two-party Discord reply chains as ChatML.",
            _hub_loader(discord_dialogues_rows),
            streams_from_hub=True,
        ),
        SourceSpec(
            "discord_unveiled",
            "discord",
            "SaisExperiments/Discord-Unveiled-Compressed",
            "unstated (research mirror)",
            "P1",
            "Public Discord servers' messages, streamed and sampled by channel-hour.",
            _load_discord_unveiled,
            streams_from_hub=True,
        ),
        SourceSpec(
            "slack_disentangled",
            "slack",
            "preethac/Software-related-Slack-Chats-with-Disentangled-Conversations (XML)",
            "unstated",
            "P1",
            "Developer Slack communities with disentangled conversation ids.",
            _load_slack_disentangled,
        ),
        SourceSpec(
            "flyte_slack",
            "slack",
            "unionai/flyte-slack-data",
            "unstated",
            "P2",
            "Flyte community Slack questions and their thread replies.",
            _hub_loader(thread_qa_rows),
            streams_from_hub=True,
        ),
        SourceSpec(
            "slack_long_responses",
            "slack",
            "Samhita/slack-data-long-responses",
            "unstated",
            "P2",
            "Slack threads with long replies.",
            _hub_loader(thread_qa_rows),
            streams_from_hub=True,
        ),
        SourceSpec(
            "clojurians",
            "slack",
            "GaiwanTeam/clojurians-log-v2 (Slack export)",
            "per workspace",
            "P2",
            "Clojurians Slack logs in Slack export layout.",
            _load_clojurians,
        ),
        SourceSpec(
            "topical_chat",
            "chat",
            "Conversational-Reasoning/Topical-Chat",
            "CDLA-Sharing-1.0",
            "P2",
            "Knowledge-grounded two-party conversations.",
            _hub_loader(topical_chat_rows),
            streams_from_hub=True,
            hub_data_files={
                split: f"{split}.jsonl" for split in ("train", "valid_freq", "valid_rare", "test_freq", "test_rare")
            },
        ),
        SourceSpec(
            "ultrachat",
            "chat",
            "HuggingFaceH4/ultrachat_200k",
            "MIT",
            "P2",
            "Multi-turn assistant dialogues.",
            _hub_loader(ultrachat_rows),
            streams_from_hub=True,
            default_split="train_sft",
        ),
    ]
}

source_partitions = dg.StaticPartitionsDefinition(list(SOURCES))
"""One partition per source, shared by the raw asset and every per-source asset downstream of it."""
