"""The `llm` resource: an OpenAI-compatible chat client with bounded concurrency and patient retries."""

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import openai
from pydantic import Field

# Which failures are worth another try. A 4xx other than 429 or an empty answer will not change by asking again.
RETRYABLE = {"rate_limited", "server_error", "timeout", "connection", "malformed_response"}


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


def classify(error: Exception) -> tuple[str, float | None]:
    """The failure kind of an exception from the client, and the server's Retry-After in seconds if it gave one."""
    if isinstance(error, openai.RateLimitError):
        header = error.response.headers.get("retry-after") if error.response is not None else None
        try:
            return "rate_limited", float(header) if header is not None else None
        except ValueError:
            return "rate_limited", None
    if isinstance(error, openai.InternalServerError):
        return "server_error", None
    if isinstance(error, openai.APITimeoutError):
        return "timeout", None
    if isinstance(error, openai.APIConnectionError):
        return "connection", None
    if isinstance(error, json.JSONDecodeError | openai.APIResponseValidationError):
        return "malformed_response", None
    if isinstance(error, openai.APIStatusError):
        return "server_error" if error.status_code >= 500 else "client_error", None
    return "unexpected", None


def backoff_seconds(attempt: int, base_s: float, max_s: float, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter; a server's Retry-After is honoured as the least wait."""
    jittered = rng.uniform(0, min(max_s, base_s * 2 ** (attempt - 1)))
    return max(jittered, retry_after) if retry_after is not None else jittered


def call_with_retries(
    call: Callable[[], object],
    *,
    max_attempts: int,
    base_s: float,
    max_s: float,
    redact: Callable[[str], str] = str,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Completion:
    """Run one chat completion `call`, retrying retryable failures; raise LLMCallFailed when it gives up."""
    rng = rng or random.Random()
    for attempt in range(1, max_attempts + 1):
        try:
            response = call()
        except Exception as error:  # noqa: BLE001 - every client failure is classified, none escapes raw
            kind, retry_after = classify(error)
            if kind not in RETRYABLE or attempt == max_attempts:
                raise LLMCallFailed(kind, redact(str(error))[:300], attempt) from None
            sleep(backoff_seconds(attempt, base_s, max_s, retry_after, rng))
            continue
        text = (response.choices[0].message.content or "").strip() if response.choices else ""
        if not text:
            raise LLMCallFailed("empty_content", "the model returned no text", attempt)
        usage = response.usage
        return Completion(text, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0, attempt)
    raise AssertionError("unreachable")


class LLMResource(dg.ConfigurableResource):
    """An OpenAI-compatible chat endpoint (hosted, vLLM, Ollama, ...). Unconfigured, summaries are extractive."""

    base_url: str | None = Field(default=None, description="e.g. http://localhost:8000/v1 (OPENAI_BASE_URL).")
    model: str | None = Field(default=None, description="Model name on that endpoint (THREADEMBED_LLM_MODEL).")
    api_key: str | None = Field(default=None, description="Secret; pass EnvVar('OPENAI_API_KEY').")
    max_concurrency: int = Field(default=4, description="Requests in flight at once.")
    timeout_s: float = Field(default=60.0, description="Per-call timeout.")
    max_attempts: int = Field(default=5, description="Tries per conversation before it is recorded as failed.")
    backoff_base_s: float = Field(default=1.0, description="First backoff; doubles per attempt, with jitter.")
    backoff_max_s: float = Field(default=60.0, description="Longest backoff between attempts.")

    @property
    def configured(self) -> bool:
        """True when an endpoint and a model are set."""
        return bool(self.base_url and self.model)

    def redact(self, text: str) -> str:
        """`text` with the API key masked, for anything that may reach a log or metadata."""
        return text.replace(self.api_key, "***") if self.api_key else text

    def complete(self, messages: list[dict], max_tokens: int = 120) -> Completion:
        """One chat completion with retries; raises LLMCallFailed."""
        client = openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key or "unused", timeout=self.timeout_s, max_retries=0
        )
        return call_with_retries(
            lambda: client.chat.completions.create(
                model=self.model, messages=messages, temperature=0.0, max_tokens=max_tokens
            ),
            max_attempts=self.max_attempts,
            base_s=self.backoff_base_s,
            max_s=self.backoff_max_s,
            redact=self.redact,
        )
