"""Batches of a training stage: no text twice, no two rows of one conversation, similar lengths, texts-only loss."""

import numpy as np
import torch
from datasets import Dataset

from threadembed_assets.training.batching import (
    ChatBatchSampler,
    ConversationCollator,
    UngroupedChatBatchSampler,
)
from threadembed_assets.training.data import GROUP_COLUMNS


def _chat_rows(n_conversations: int = 60, per_conversation: int = 5, seed: int = 0) -> Dataset:
    """Rows of many conversations, each with a negative from the next conversation, of very different lengths."""
    rng = np.random.default_rng(seed)
    rows = {"anchor": [], "positive": [], "negative": [], "conversation": [], "negative_conversation": []}
    for c in range(n_conversations):
        for i in range(per_conversation):
            length = int(rng.integers(5, 400))
            rows["anchor"].append(f"c{c} message {i}")
            rows["positive"].append(f"c{c} rest {i} " + "x" * length)
            rows["negative"].append(f"c{(c + 1) % n_conversations} other {i}")
            rows["conversation"].append(f"conversation:s/c{c}")
            rows["negative_conversation"].append(f"conversation:s/c{(c + 1) % n_conversations}")
    return Dataset.from_dict(rows)


def _batches(sampler_class, data: Dataset, batch_size: int = 8, seed: int = 3) -> list[list[int]]:
    sampler = sampler_class(data, batch_size=batch_size, drop_last=False, generator=torch.Generator(), seed=seed)
    return list(sampler)


def test_no_batch_holds_two_rows_of_one_conversation_or_a_text_twice():
    data = _chat_rows()
    for sampler_class in (ChatBatchSampler, UngroupedChatBatchSampler):
        batches = _batches(sampler_class, data)
        assert sorted(i for batch in batches for i in batch) == list(range(len(data)))  # every row, once
        for batch in batches:
            conversations = [data[i][column] for i in batch for column in GROUP_COLUMNS]
            own = [data[i]["conversation"] for i in batch]
            # a row's negative comes from another conversation, so each conversation appears at most twice: as one
            # row's own and as another row's negative would be a false negative, which the sampler refuses
            assert len(set(own)) == len(own)
            assert not {data[i]["negative_conversation"] for i in batch} & set(own), batch
            texts = [data[i][column] for i in batch for column in ("anchor", "positive", "negative")]
            assert len(set(texts)) == len(texts) and len(conversations) == 2 * len(batch)


def test_length_grouping_cuts_padding():
    """Padding (longest positive x batch size, summed over batches) is much lower with length grouping."""
    data = _chat_rows(n_conversations=200, per_conversation=2)
    lengths = np.array([len(text) for text in data["positive"]])

    def padded(batches: list[list[int]]) -> int:
        return sum(int(lengths[batch].max()) * len(batch) for batch in batches)

    grouped, shuffled = padded(_batches(ChatBatchSampler, data)), padded(_batches(UngroupedChatBatchSampler, data))
    assert grouped < 0.8 * shuffled, (grouped, shuffled)


def test_the_collator_keeps_conversation_columns_from_the_loss():
    from sentence_transformers import SentenceTransformer

    from threadembed_assets.resources import ModelStore

    model = SentenceTransformer(ModelStore().base_model_path(), device="cpu")
    collator = ConversationCollator(preprocess_fn=model.preprocess)
    batch = collator([_chat_rows(2, 1)[i] for i in range(2)])
    inputs = {key.rsplit("_", 2)[0] for key in batch if key.endswith("input_ids")}
    assert inputs == {"anchor", "positive", "negative"}
    assert not [key for key in batch if key.startswith(GROUP_COLUMNS)]
