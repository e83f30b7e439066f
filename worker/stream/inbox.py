"""The inbox: validate a message, send it to the DLQ with the reason, or record it durably in
PostgreSQL before its offset can be committed, then hand it to the runner."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from ..errors import RequestError
from ..retrying import until_done
from ..schemas import DLQ_PAYLOAD_MAX_BYTES, Limits, RerankRequest, Source, dead_letter, parse_request
from ..service import Reranker
from ..store.faults import is_data_error, is_db_down, sqlstate
from ..store.store import Receipt, Store
from . import metrics
from .runner import Runner

log = logging.getLogger(__name__)
REPLAY_HEADER = "replay-of"
UNKNOWN_ERROR_ATTEMPTS = 5


class Inbox:
    def __init__(
        self,
        store: Store,
        runner: Runner,
        reranker: Reranker,
        limits: Limits,
        send_and_wait: Callable[[str, bytes | None, bytes], Awaitable[Any]],
        dlq_topic: str,
        *,
        deployment: str | None = None,
        result_topic: str | None = None,
        dlq_payload_max_bytes: int = DLQ_PAYLOAD_MAX_BYTES,
        max_message_bytes: int = 1_000_000,
    ) -> None:
        self.store, self.runner, self.reranker, self.limits = store, runner, reranker, limits
        self.send_and_wait = send_and_wait
        self.dlq_topic = dlq_topic
        self.deployment, self.result_topic = deployment, result_topic
        self.dlq_payload_max_bytes = dlq_payload_max_bytes
        self.max_message_bytes = max_message_bytes

    async def accept(
        self,
        value: bytes | None,
        source: Source,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: float | None = None,
    ) -> None:
        """One message: `accept_batch` of one."""
        await self.accept_batch([Message(value, source, headers, timestamp)])

    async def accept_batch(self, messages: Sequence[Message]) -> None:
        """Never raises: every message ends recorded, queued for a walk, or in the DLQ.

        The valid messages are recorded in one transaction (one per run of messages sharing a
        replay-of header; a request_id repeated within the batch starts the next run, so
        conflicts and duplicates are found exactly as one by one); an invalid message gets its
        own dead letter. A batch the database refuses is recorded again one message at a time,
        so one poison message never holds up the others. A message's `timestamp` (Kafka's, in
        seconds) starts the request's clock; receipt when it has none."""
        valid: list[_Parsed] = []
        for message in messages:
            raw = message.value or b""
            try:
                request = parse_request(raw, self.limits)
                self.reranker.plan(request)
            except RequestError as exc:
                await self._dead_letter(raw, exc, message.source)
                continue
            replay_of = next(
                (v.decode("utf-8", "replace") for k, v in message.headers or [] if k == REPLAY_HEADER), None
            )
            valid.append(_Parsed(raw, request, message.source, replay_of, message.timestamp))
        for chunk in _chunks(valid):
            for parsed, receipt in zip(chunk, await self._record(chunk), strict=True):
                if receipt is not None:
                    await self._handle(parsed, receipt)

    async def _handle(self, parsed: _Parsed, receipt: Receipt) -> None:
        request_id = parsed.request.request_id
        if request_id in receipt.conflicts:
            first = receipt.conflicts[request_id]
            await self._dead_letter(
                parsed.raw,
                RequestError(
                    "conflict",
                    f"request_id {request_id!r} was first received at {first.isoformat()} with "
                    "different content; this message was not processed",
                    {"request_id": request_id, "first_received_at": first.isoformat()},
                ),
                parsed.source,
            )
            return
        for note in receipt.notes:
            log.warning("%s: %s", request_id, note)
        if request_id in receipt.seen:
            metrics.DUPLICATES.inc()
            self.runner.on_done.set()  # its stored result is queued for publishing again
            return
        await self.runner.submit(request_id, len(parsed.raw))

    async def _record(self, chunk: list[_Parsed]) -> list[Receipt | None]:
        """Store the chunk in one transaction, each message's receipt in order; None for one the
        database refused (it went to the DLQ). A chunk that fails for anything but an outage is
        recorded again one message at a time, so only the refused one is dead-lettered."""
        try:
            receipt = await self._store(chunk)
        except Exception as exc:
            if len(chunk) == 1:
                parsed = chunk[0]
                error = (
                    unstorable(parsed.request, exc)
                    if is_data_error(exc)
                    else RequestError(
                        "store_error", f"the store failed {UNKNOWN_ERROR_ATTEMPTS} times: {exc}"[:2000]
                    )
                )
                await self._dead_letter(parsed.raw, error, parsed.source)
                return [None]
            log.warning(
                "recording a batch of %d failed (%s); recording them one by one",
                len(chunk),
                sqlstate(exc) or type(exc).__name__,
            )
            return [receipt for parsed in chunk for receipt in await self._record([parsed])]
        return [receipt] * len(chunk)

    async def _store(self, chunk: list[_Parsed]) -> Receipt:
        """Waits while the database is unreachable: only that is backpressure."""
        unknown = 0
        what = chunk[0].request.request_id if len(chunk) == 1 else f"a batch of {len(chunk)}"

        def waits(exc: BaseException) -> bool:
            nonlocal unknown
            if is_data_error(exc):
                return False
            if not is_db_down(exc):
                unknown += 1
                log.error("recording %s failed (%d of %d): %s", what, unknown, UNKNOWN_ERROR_ATTEMPTS, exc)
                return unknown < UNKNOWN_ERROR_ATTEMPTS
            return True

        replay_of = chunk[0].replay_of

        async def store() -> Receipt:
            return await self.store.receive_checked(
                [(p.request, p.source) for p in chunk],
                replay_of=replay_of,
                replay_mode="kafka" if replay_of else None,
                texts=[p.raw.decode("utf-8") for p in chunk],
                receipts=[receipt_time(p.timestamp) for p in chunk],
                run_config=self.reranker.stored_config,
                deployment=self.deployment,
                result_topic=self.result_topic,
            )

        return await until_done(
            store, "PostgreSQL (the inbox)", retry_on=waits, flag=metrics.BACKPRESSURE.labels("postgres")
        )

    async def _dead_letter(self, raw: bytes, error: RequestError, source: Source) -> None:
        record = dead_letter(raw, error, source, self.dlq_payload_max_bytes)
        metrics.INVALID.labels(error.code).inc()
        key = record.request_id.encode() if record.request_id else None
        body = orjson.dumps(record.model_dump(mode="json"))
        if len(body) + len(key or b"") > self.max_message_bytes * 0.9:  # never retried forever
            record = dead_letter(raw, error, source, 0)
            body = orjson.dumps(record.model_dump(mode="json"))
        # the broker unavailable: the message must not be lost, so this waits as long as it takes
        await until_done(lambda: self.send_and_wait(self.dlq_topic, key, body), "Kafka (the DLQ publish)")


class Message(NamedTuple):
    """A Kafka message as the inbox needs it."""

    value: bytes | None
    source: Source
    headers: list[tuple[str, bytes]] | None = None
    timestamp: float | None = None


@dataclass
class _Parsed:
    raw: bytes
    request: RerankRequest
    source: Source
    replay_of: str | None
    timestamp: float | None


def _chunks(valid: list[_Parsed]) -> list[list[_Parsed]]:
    """Runs of messages recorded together: the same replay-of, no request_id twice."""
    chunks: list[list[_Parsed]] = []
    ids: set[str] = set()
    for parsed in valid:
        rid = parsed.request.request_id
        if not chunks or chunks[-1][0].replay_of != parsed.replay_of or rid in ids:
            chunks.append([])
            ids = set()
        chunks[-1].append(parsed)
        ids.add(rid)
    return chunks


def receipt_time(timestamp: float | None) -> datetime | None:
    """A Kafka timestamp as a datetime; None (receipt) when the message carries none."""
    if timestamp is None or timestamp <= 0:
        return None
    return datetime.fromtimestamp(timestamp, UTC)


def unstorable(request: RerankRequest, exc: BaseException) -> RequestError:
    """A dead letter for a value the database refused, naming the field that holds it."""
    code = sqlstate(exc)
    fields = [
        where
        for where, text in _strings(request.model_dump(mode="json"))
        if "\x00" in text or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
    ]
    where = fields[0] if fields else "request"
    reason = str(getattr(exc, "orig", exc)).splitlines()[0][:500]
    return RequestError(
        "unstorable",
        f"{where}: the database refused the value ({reason})",
        {"field": where, "sqlstate": code},
    )


def _strings(value: object, where: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(where or "request", value)]
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            at = f"{where}.{k}".lstrip(".")
            out += [(at, str(k)), *_strings(v, at)]
        return out
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in _strings(v, f"{where}[{i}]")]
    return []
