"""The offline summarizer: a conversation's opening question plus its most distinctive terms."""

import math
import re
from collections import Counter

EXTRACTIVE_MODEL = "extractive"
EXTRACTIVE_VERSION = "extractive-v1"

_WORD = re.compile(r"[a-z][a-z0-9+#.\-]{2,}")
_ADDRESS = re.compile(r"^\s*@?[\w\-\[\]|`^{}]+[:,]\s+")
_QUESTION_START = re.compile(r"^(how|what|why|when|where|who|which|is|are|can|could|does|do|did|should|anyone)\b")
_STOP = frozenset(
    """
    the and for you that this with have not but are was just what can how does any there your from about they
    then them its it's i'm don't can't thanks thank yes yeah okay lol now get got use using one all out like know
    need try think see did also would should could when where why who which will still been had has here into
    more some than very really sure want way work works working make
    """.split()
)


def terms(text: str) -> list[str]:
    """Lower-cased content words of a text."""
    return [word.strip(".-") for word in _WORD.findall(text.lower()) if word.strip(".-") not in _STOP]


def opening_question(messages: list[str], look_ahead: int = 3, min_opener_chars: int = 25) -> str:
    """The conversation's opener without a leading nick address; when the opener is a mere greeting ("hi",
    "anyone around?"), the first question-like message among the next few."""
    bare = [_ADDRESS.sub("", text).strip() for text in messages]
    if not bare:
        return ""
    if len(bare[0]) >= min_opener_chars:
        return bare[0]
    for text in bare[:look_ahead]:
        if len(text) >= min_opener_chars and ("?" in text or _QUESTION_START.match(text.lower())):
            return text
    return bare[0]


def extractive_summaries(
    conversations: dict[str, list[tuple[str | None, str]]], n_terms: int = 5, max_chars: int = 160
) -> dict[str, str]:
    """Conversation id -> summary, from (author, text) messages per conversation.

    Term weights are tf-idf over the given set; participants' names are left out (they say who, not what).
    """
    term_counts = {}
    for cid, turns in conversations.items():
        names = {(author or "").lower() for author, _ in turns}
        counts = Counter(terms(" ".join(text for _, text in turns)))
        term_counts[cid] = Counter({term: n for term, n in counts.items() if term not in names})
    document_frequency = Counter(term for counts in term_counts.values() for term in counts)
    n_documents = len(conversations) or 1
    summaries = {}
    for cid, turns in conversations.items():
        counts = term_counts[cid]
        ranked = sorted(
            counts, key=lambda t: (-counts[t] * math.log((1 + n_documents) / (1 + document_frequency[t])), t)
        )
        opening = opening_question([text for _, text in turns])
        if len(opening) > max_chars:
            opening = opening[: max_chars - 1].rsplit(" ", 1)[0] + "…"
        salient = [t for t in ranked if t not in opening.lower()][:n_terms]
        summaries[cid] = f"{opening} ({', '.join(salient)})" if salient else opening
    return summaries
