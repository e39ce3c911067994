"""How a stage's rows become batches: no value twice in a batch (texts, and the conversations of the rows, so that
no in-batch negative comes from an anchor's own conversation), batches of similar lengths, and a collator that
keeps the conversation columns away from the loss."""

from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
import torch
from sentence_transformers import SentenceTransformerTrainer
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from threadembed_assets.training.data import GROUP_COLUMNS

TEXT_COLUMNS = ("anchor", "positive", "negative")
# Length grouping sorts rows by length within spans of this many batches of a shuffled order, then shuffles the
# batches: similar lengths in a batch, yet every part of the data early and late in an epoch.
GROUP_SPAN_BATCHES = 16


class ChatBatchSampler(NoDuplicatesBatchSampler):
    """sentence-transformers' no-duplicates sampler, over values computed once per row, with length grouping.

    A row's values are all its column values, the GROUP_COLUMNS included, so two rows of one conversation (or a row
    and another's negative's conversation) never share a batch. With `group_by_length`, the rows of each span of
    GROUP_SPAN_BATCHES batches are ordered by length before batching and the batches are then shuffled.
    """

    group_by_length = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        columns = [c for c in self.dataset.column_names if c != "dataset_name"]
        values = [self.dataset[c] for c in columns]
        self._values = [frozenset(hash(str(v)) for v in row) for row in zip(*values, strict=True)]
        texts = [column for name, column in zip(columns, values, strict=True) if name in TEXT_COLUMNS]
        self._lengths = np.array([max(len(t) for t in row) for row in zip(*texts, strict=True)]) if texts else None

    def _iter_one_pass(self, get_sample_values: Callable, has_overlap: Callable) -> Iterator[list[int]]:
        """One shuffled pass: greedy batches that defer a conflicting row to the next batch."""
        order = torch.randperm(len(self.dataset), generator=self.generator).numpy()
        if self.group_by_length and self._lengths is not None:
            span = self.batch_size * GROUP_SPAN_BATCHES
            chunks = np.split(order, range(span, len(order), span))
            order = np.concatenate([chunk[np.argsort(-self._lengths[chunk], kind="stable")] for chunk in chunks])
        batches = list(self._greedy(order))
        if self.group_by_length:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]
        yield from batches

    def _greedy(self, order: np.ndarray) -> Iterator[list[int]]:
        queue = deque(int(i) for i in order)
        while queue:
            batch, seen, deferred = [], set(), []
            while queue and len(batch) < self.batch_size:
                index = queue.popleft()
                if seen.isdisjoint(self._values[index]):
                    batch.append(index)
                    seen |= self._values[index]
                else:
                    deferred.append(index)
            queue.extendleft(reversed(deferred))
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch


class UngroupedChatBatchSampler(ChatBatchSampler):
    """ChatBatchSampler without length grouping (batches in shuffled order)."""

    group_by_length = False


def batch_sampler(group_by_length: bool) -> type[ChatBatchSampler]:
    """The `batch_sampler` argument of the training arguments (a class, so that checkpoints can pickle it)."""
    return ChatBatchSampler if group_by_length else UngroupedChatBatchSampler


class ConversationCollator(SentenceTransformerDataCollator):
    """The default collator, without the GROUP_COLUMNS: the loss sees only texts."""

    def __call__(self, features: list[dict]) -> dict:
        return super().__call__([{k: v for k, v in row.items() if k not in GROUP_COLUMNS} for row in features])


class ChatTrainer(SentenceTransformerTrainer):
    """sentence-transformers' trainer with the ConversationCollator."""

    data_collator_class = ConversationCollator
