"""Chat completions over an OpenAI-compatible endpoint (vLLM, TGI), or from a recording.

The openai client's own retries are off; tenacity retries timeouts, connection errors, 429 and
5xx with exponential backoff and jitter, never a 400, for as long as the request's deadline
allows: an endpoint that stays down ends the call with DeadlineExceeded (the walk then answers
with the heuristic policy), never with a failure. Every HTTP attempt is recorded with the call.
A per-process semaphore bounds the calls in flight, and a breaker shared by the process stops
every walk from hammering an endpoint that is down (one probe at a time instead).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
import openai
import orjson
from pydantic import TypeAdapter, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter
from typing_extensions import TypedDict

from ..config import Settings
from ..engine.steps import HTTPAttempt, LLMCall
from ..errors import ConfigError, DeadlineExceeded, ReplayExhausted
from ..retrying import first_then_retry
from .breaker import Breaker, EndpointDown
from .formats import SETTING as FORMAT_SETTING
from .formats import probe_format

# below this much time left, another attempt could not finish: the deadline has come
LAST_ATTEMPT_S = 0.05


class ChatTransport(Protocol):
    async def complete(
        self,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        deadline: float,
        max_tokens: int | None = None,
    ) -> LLMCall: ...


_VALIDATION = (
    "validation",
    "input should be",
    "invalid_request",
    "context_length",
    "must be one of",
    "unsupported",
    "not supported",
)


def is_validation_error(exc: openai.APIStatusError) -> bool:
    """A 5xx that only says our request was invalid (llama-cpp-python answers a pydantic
    validation error with 500): sending it again gives the same answer."""
    text = f"{exc.message} {exc.body}".casefold()
    return any(word in text for word in _VALIDATION)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError | openai.RateLimitError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500 and not is_validation_error(exc)


def http_client(transport: str, timeout_s: float) -> httpx.AsyncClient:
    """The openai client's transport. aiohttp (the client's `aiohttp` extra) costs a fraction of
    httpx's CPU per call (httpcore's pool checks every connection on each request); errors still
    reach us as the client's own (APITimeoutError, APIConnectionError), so retries see no change."""
    if transport == "aiohttp":
        return openai.DefaultAioHttpClient(timeout=timeout_s)
    return openai.DefaultAsyncHttpxClient(timeout=timeout_s)


class OpenAIChat:
    """One per process: the client, its connection pool and the in-flight limit are shared."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: openai.AsyncOpenAI | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.llm_base_url:
            raise ConfigError("no LLM endpoint: set LLM4RERANK_LLM_BASE_URL (e.g. http://127.0.0.1:8000/v1)")
        self.settings = settings
        self.model = settings.llm_model
        self.client = client or openai.AsyncOpenAI(
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key or "EMPTY",
            max_retries=0,
            timeout=settings.llm_timeout_s,
            http_client=http_client(settings.llm_transport, settings.llm_timeout_s),
        )
        self.limit = asyncio.Semaphore(settings.llm_max_inflight)
        self.clock = clock
        self.in_flight = 0
        self.breaker = Breaker(
            settings.llm_breaker_failures, max_probe_s=settings.llm_retry_max_wait_s, clock=clock
        )
        self.context_tokens: int | None = settings.llm_context_tokens

    async def close(self) -> None:
        await self.client.close()

    async def check(self) -> list[str]:
        """The served model ids; reads the context length and sends one request in the answer
        format. Raises ConfigError naming what to fix."""
        try:
            models = [m.id async for m in self.client.models.list()]
        except openai.APIConnectionError as exc:
            raise ConfigError(
                f"LLM endpoint {self.settings.llm_base_url} unreachable ({exc.__cause__ or exc}); "
                "start it or fix LLM4RERANK_LLM_BASE_URL"
            ) from None
        except openai.APIStatusError as exc:
            raise ConfigError(
                f"LLM endpoint answered {exc.status_code} to /models; check "
                "LLM4RERANK_LLM_BASE_URL and LLM4RERANK_LLM_API_KEY"
            ) from None
        if self.model not in models:
            raise ConfigError(
                f"model {self.model!r} is not served by {self.settings.llm_base_url} "
                f"(it serves {models}); set LLM4RERANK_LLM_MODEL"
            )
        self.context_tokens = self.settings.llm_context_tokens or await self.context_length()
        await self.probe(probe_format(self.settings.llm_structured), FORMAT_SETTING)
        return models

    async def context_length(self) -> int | None:
        """max_model_len as vLLM reports it in /v1/models (other servers: None)."""
        try:
            async for m in self.client.models.list():
                if m.id == self.model:
                    value = (m.model_extra or {}).get("max_model_len")
                    return int(value) if isinstance(value, int) else None
        except openai.OpenAIError:
            return None
        return None

    async def probe(self, response_format: dict[str, Any] | None, setting: str) -> None:
        """One tiny request in the configured answer format; a server that refuses the format
        stops the worker with a line naming the setting to change."""
        if response_format is None:
            return
        try:
            await self.client.chat.completions.create(  # type: ignore[call-overload]
                model=self.model,
                messages=[{"role": "user", "content": 'Answer {"next_node": "stop"}'}],
                max_tokens=16,
                temperature=0,
                response_format=response_format,
            )
        except openai.APIStatusError as exc:
            if exc.status_code < 500 or is_validation_error(exc):
                raise ConfigError(
                    f"the LLM server refused response_format type {response_format.get('type')!r} "
                    f"(HTTP {exc.status_code}: {exc.message[:200]}); set {setting} to one it "
                    "accepts: json_schema (vLLM, SGLang, llama.cpp), tgi (TGI), json_object "
                    "(llama-cpp-python) or none"
                ) from None
            raise

    async def complete(
        self,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        deadline: float,
        max_tokens: int | None = None,
    ) -> LLMCall:
        started = self.clock()
        attempts: list[HTTPAttempt] = []

        def record(**update: Any) -> LLMCall:
            return LLMCall(
                messages=messages,
                response_format=response_format,
                latency_ms=round((self.clock() - started) * 1000, 3),
                retries=max(len(attempts) - 1, 0),
                attempts=attempts,
                **update,
            )

        extra: dict[str, Any] = {}
        if response_format is not None:
            extra["response_format"] = response_format
        try:
            response = await self._sent(messages, extra, deadline, attempts, max_tokens)
        except (DeadlineExceeded, EndpointDown) as exc:
            raise self._deadline(exc, record) from None
        except openai.APIStatusError as exc:
            if is_retryable(exc):
                raise self._deadline(exc, record) from exc
            return record(error=f"HTTP {exc.status_code}: {exc.message}")
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise self._deadline(exc, record) from exc
        try:
            return record(**completion_fields(response))
        except MalformedCompletion as exc:  # the walk repairs an unusable answer like any other
            return record(error=str(exc))

    async def _sent(
        self,
        messages: list[dict[str, Any]],
        extra: dict[str, Any],
        deadline: float,
        attempts: list[HTTPAttempt],
        max_tokens: int | None,
    ) -> Any:
        """The answer, retried (tenacity) while the deadline leaves time for another attempt;
        the first attempt goes out before the loop is built (retrying.first_then_retry)."""

        def left() -> float:
            return deadline - self.clock()

        backoff = wait_exponential_jitter(multiplier=0.2, jitter=0.2, max=self.settings.llm_retry_max_wait_s)

        def wait(failed: int) -> float:
            return max(0.0, min(backoff(cast(RetryCallState, _Failed(failed))), left() - LAST_ATTEMPT_S))

        async def attempt() -> Any:
            return await self._attempt(messages, extra, deadline, attempts, max_tokens)

        def after_failure(exc: Exception) -> float | None:
            return wait(1) if is_retryable(exc) and left() > LAST_ATTEMPT_S else None

        def loop() -> AsyncRetrying:
            return AsyncRetrying(
                retry=retry_if_exception(is_retryable),
                wait=lambda state: wait(state.attempt_number + 1),  # the first was made before it
                stop=lambda _: left() <= LAST_ATTEMPT_S,
                reraise=True,
            )

        return await first_then_retry(attempt, after_failure, loop)

    async def _attempt(
        self,
        messages: list[dict[str, Any]],
        extra: dict[str, Any],
        deadline: float,
        attempts: list[HTTPAttempt],
        max_tokens: int | None = None,
    ) -> Any:
        """One HTTP request, recorded in `attempts` whatever its outcome; while the endpoint is
        known to be down, it waits for the breaker instead of sending."""
        async with self.breaker.admit(deadline):
            started = self.clock()
            try:
                response = await self._once(messages, extra, deadline, max_tokens)
            except DeadlineExceeded:
                raise
            except openai.APIStatusError as exc:
                attempts.append(
                    HTTPAttempt(
                        status=exc.status_code,
                        error=_describe(exc),
                        latency_ms=round((self.clock() - started) * 1000, 3),
                    )
                )
                self.breaker.failed() if is_retryable(exc) else self.breaker.answered()
                raise
            except Exception as exc:
                attempts.append(
                    HTTPAttempt(error=_describe(exc), latency_ms=round((self.clock() - started) * 1000, 3))
                )
                if is_retryable(exc):
                    self.breaker.failed()
                raise
            self.breaker.answered()
            attempts.append(HTTPAttempt(status=200, latency_ms=round((self.clock() - started) * 1000, 3)))
            return response

    async def _once(
        self,
        messages: list[dict[str, Any]],
        extra: dict[str, Any],
        deadline: float,
        max_tokens: int | None = None,
    ) -> bytes:
        """The answer's body (an OpenAI chat completion's JSON)."""
        left = deadline - self.clock()
        if left <= 0:
            raise DeadlineExceeded("deadline passed before the LLM call")
        try:
            async with asyncio.timeout(left):
                await self.limit.acquire()
        except TimeoutError:
            raise DeadlineExceeded("deadline passed waiting for an LLM slot") from None
        self.in_flight += 1
        try:
            timeout = min(self.settings.llm_timeout_s, max(deadline - self.clock(), 0.001))
            body = {
                "model": self.model,
                "messages": messages,
                "temperature": self.settings.llm_temperature,
                "max_tokens": min(max_tokens or self.settings.llm_max_tokens, self.settings.llm_max_tokens),
                "stream": False,
                **extra,
            }
            # the client's own POST (its errors, auth and timeout) with the body serialised once and
            # the answer read as JSON: `create` would walk every message through its TypedDict
            # transform (plain dicts here, it changes nothing) and build a ChatCompletion model tree
            response = await self.client.post(
                "/chat/completions",
                cast_to=httpx.Response,
                content=orjson.dumps(body),
                options={"timeout": timeout, "security": {"bearer_auth": True}},
            )
            return response.content
        finally:
            self.in_flight -= 1
            self.limit.release()

    def _deadline(self, exc: BaseException, record: Callable[..., LLMCall]) -> DeadlineExceeded:
        """The deadline came while the endpoint failed or hung: the call, with every attempt,
        goes to the trace, and the message names the outage."""
        call = record(error=f"deadline passed: {exc}", deadline_passed=True)
        if isinstance(exc, EndpointDown):  # nothing sent: others' attempts showed it down
            return DeadlineExceeded(
                f"LLM endpoint unavailable ({exc}; {len(call.attempts)} attempt(s) by this call)", [call]
            )
        if not call.attempts:
            if self.breaker.open:
                return DeadlineExceeded(
                    f"LLM endpoint unavailable ({self.breaker.describe()}); {exc}", [call]
                )
            return DeadlineExceeded(str(exc))
        last = call.attempts[-1]
        what = f"HTTP {last.status}" if last.status else (last.error or "no answer")
        return DeadlineExceeded(
            f"LLM endpoint unavailable ({len(call.attempts)} attempt(s), last: {what})", [call]
        )


class CompletionFields(TypedDict):
    raw: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    model: str | None
    cached_tokens: int | None


_COMPLETION = TypeAdapter(CompletionFields)
_SOURCE = {  # where each field comes from in the server's JSON, for the error message
    "raw": "choices.0.message.content",
    "prompt_tokens": "usage.prompt_tokens",
    "completion_tokens": "usage.completion_tokens",
    "finish_reason": "choices.0.finish_reason",
    "model": "model",
    "cached_tokens": "usage.prompt_tokens_details.cached_tokens",
}


class MalformedCompletion(ValueError):
    """A 200 whose body is not a chat completion (a proxy's error page, a truncated body)."""


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # orjson refuses lone surrogates; the call keeps them replaced
        return json.loads(body)


def completion_fields(body: bytes) -> CompletionFields:
    """What a call records from a completion's JSON, read without building the client's model
    tree; anything else raises MalformedCompletion with the start of the body."""
    try:
        answer = _loads(body)
        choice = answer["choices"][0]
        content = choice["message"].get("content") or ""
        usage = answer.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return _COMPLETION.validate_python(
            {
                "raw": content,
                "prompt_tokens": usage.get("prompt_tokens") or 0,
                "completion_tokens": usage.get("completion_tokens") or 0,
                "finish_reason": choice.get("finish_reason"),
                "model": answer.get("model"),
                "cached_tokens": details.get("cached_tokens"),
            }
        )
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        what = (
            "; ".join(f"{_SOURCE.get(str(e['loc'][0]))}: {e['msg']}" for e in exc.errors())
            if isinstance(exc, ValidationError)
            else str(exc).splitlines()[0]
        )[:160]
        raise MalformedCompletion(
            f"the LLM server's 200 answer is not a chat completion ({type(exc).__name__}: {what}); "
            f"body starts {body[:120]!r}"
        ) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    cause = exc.__cause__
    return f"{type(exc).__name__}: {exc}" + (f" ({cause})" if cause else "")


@dataclass(frozen=True)
class _Failed:
    """What a tenacity wait strategy reads of a retry state: attempts made so far."""

    attempt_number: int


class RecordedChat:
    """Serves stored answers in order; then hands over to `then` (resume) or stops (replay)."""

    def __init__(self, calls: list[LLMCall], then: ChatTransport | None = None) -> None:
        self.calls = list(calls)
        self.then = then
        self.served = 0

    async def complete(
        self,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        deadline: float,
        max_tokens: int | None = None,
    ) -> LLMCall:
        if self.served < len(self.calls):
            call = self.calls[self.served].model_copy(update={"messages": messages})
            self.served += 1
            if call.deadline_passed:  # the original met its deadline here
                raise DeadlineExceeded(call.error or "deadline passed", [call])
            return call
        if self.then is None:
            raise ReplayExhausted(
                f"the walk asked for LLM call {self.served + 1}, the session stored {len(self.calls)}"
            )
        return await self.then.complete(messages, response_format, deadline, max_tokens)

    @property
    def exhausted(self) -> bool:
        return self.served >= len(self.calls)
