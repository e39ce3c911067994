"""The `llm` resource: one OpenAI-compatible chat client per resource, with bounded concurrency and retries."""

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import openai
from pydantic import Field, PrivateAttr


@dataclass(frozen=True)
class Completion:
    """What one successful chat completion gave."""

    text: str
    tokens_in: int
    tokens_out: int
    attempts: int


class LLMCallFailed(Exception):
    """A completion that failed for good: `kind` says why (rate_limited, timeout, empty_content, ...)."""

    def __init__(self, kind: str, message: str, attempts: int):
        super().__init__(f"{kind} after {attempts} attempt(s): {message}")
        self.kind, self.message, self.attempts = kind, message, attempts


def classify(error: Exception) -> str:
    """The failure kind of an exception from the client."""
    if isinstance(error, openai.RateLimitError):
        return "rate_limited"
    if isinstance(error, openai.InternalServerError):
        return "server_error"
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    if isinstance(error, json.JSONDecodeError | openai.APIResponseValidationError):
        return "malformed_response"
    if isinstance(error, openai.APIStatusError):
        return "server_error" if error.status_code >= 500 else "client_error"
    return "unexpected"


def backoff_seconds(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter."""
    return rng.uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))


# The openai client retries these itself (429 honouring Retry-After, 408/409, 5xx, timeouts, dropped connections).
CLIENT_RETRIED = {"rate_limited", "server_error", "timeout", "connection"}


def complete_with_retries(
    create: Callable[[int], object],
    *,
    max_attempts: int,
    base_s: float,
    max_s: float,
    redact: Callable[[str], str] = str,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Completion:
    """One chat completion in at most `max_attempts` requests; raise LLMCallFailed when it gives up.

    `create(max_retries)` sends the request through the openai client, which retries transport and server failures
    itself up to `max_retries` times, and returns its raw response (with `retries_taken`). What the client cannot
    retry, an answer whose body does not parse, is asked again here after a jittered backoff.
    """
    rng = rng or random.Random()
    used = 0
    while True:
        try:
            raw = create(max_attempts - used - 1)
        except Exception as error:  # noqa: BLE001 - every client failure is classified, none escapes raw
            kind = classify(error)
            attempts = max_attempts if kind in CLIENT_RETRIED else used + 1
            raise LLMCallFailed(kind, redact(str(error))[:300], attempts) from None
        used += raw.retries_taken + 1
        try:
            response = raw.parse()
        except Exception as error:  # noqa: BLE001 - as above
            kind = classify(error)
            if kind != "malformed_response" or used >= max_attempts:
                raise LLMCallFailed(kind, redact(str(error))[:300], used) from None
            sleep(backoff_seconds(used, base_s, max_s, rng))
            continue
        text = (response.choices[0].message.content or "").strip() if response.choices else ""
        if not text:
            raise LLMCallFailed("empty_content", "the model returned no text", used)
        usage = response.usage
        return Completion(text, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0, used)


class LLMResource(dg.ConfigurableResource):
    """An OpenAI-compatible chat endpoint (hosted, vLLM, Ollama, ...). Unconfigured, summaries are extractive."""

    base_url: str | None = Field(default=None, description="e.g. http://localhost:8000/v1 (OPENAI_BASE_URL).")
    model: str | None = Field(default=None, description="Model name on that endpoint (THREADEMBED_LLM_MODEL).")
    api_key: str | None = Field(default=None, description="Secret; pass EnvVar('OPENAI_API_KEY').")
    max_concurrency: int = Field(default=4, description="Requests in flight at once.")
    timeout_s: float = Field(default=60.0, description="Per-call timeout.")
    max_attempts: int = Field(default=5, description="Tries per conversation before it is recorded as failed.")
    backoff_base_s: float = Field(
        default=1.0,
        description="First wait before asking again after a malformed answer; doubles per attempt, with jitter. "
        "Rate limits, 5xx, timeouts and dropped connections are retried by the openai client itself "
        "(0.5 s doubling to 8 s, honouring Retry-After).",
    )
    backoff_max_s: float = Field(default=60.0, description="Longest wait after a malformed answer.")

    _client: openai.OpenAI | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def configured(self) -> bool:
        """True when an endpoint and a model are set."""
        return bool(self.base_url and self.model)

    def redact(self, text: str) -> str:
        """`text` with the API key masked, for anything that may reach a log or metadata."""
        return text.replace(self.api_key, "***") if self.api_key else text

    def client(self) -> openai.OpenAI:
        """The resource's one openai client: every call and thread shares its connection pool."""
        with self._lock:
            if self._client is None:
                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=self.api_key or "unused", timeout=self.timeout_s, max_retries=0
                )
            return self._client

    def complete(self, messages: list[dict], max_tokens: int = 120) -> Completion:
        """One chat completion with retries; raises LLMCallFailed."""

        def create(max_retries: int):
            completions = self.client().with_options(max_retries=max_retries).chat.completions
            return completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=0.0, max_tokens=max_tokens
            )

        return complete_with_retries(
            create,
            max_attempts=self.max_attempts,
            base_s=self.backoff_base_s,
            max_s=self.backoff_max_s,
            redact=self.redact,
        )
