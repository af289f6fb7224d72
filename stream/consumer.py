"""The batch-native consume path: the input topic read in batches straight from an aiokafka consumer.

Faust's agent machinery builds an Event object, a callback chain and an ack per record; on the
``null`` backend that was the largest share of a saturated worker thread. Here the worker's own
``AIOKafkaConsumer`` (in the worker's consumer group, automatic commits off) hands over whole
batches (``getmany``), the processor's ``BatchPipeline`` keeps two of them in flight, and offsets
are committed per partition only for batches whose outputs Kafka and Redis have acknowledged, in
take order. Faust keeps the process: lifecycle and signals, the producer, the timers and the web
server (``stream.app`` turns Faust's own consumer off, so the group has one kind of member).

Rebalances: before partitions are revoked every batch in flight is finished (or, past half the
session timeout, abandoned uncommitted) and the durable offsets are committed; a batch fetched
across a rebalance is dropped, since whoever owns its partition now starts from the committed
offset. A stop does the same before the consumer leaves the group.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from itertools import zip_longest

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from stream.processor import BatchPipeline, BatchProcessor, BatchResult, RawMessage
from stream.security import kafka_client_kwargs
from stream.settings import StreamSettings

log = structlog.get_logger(__name__)

# How often durable progress is committed at most. Commits run beside the batches (never on their
# critical path); what a crash leaves uncommitted is redone and deduped by Redis. Faust committed
# every second; this is a quarter of that.
COMMIT_INTERVAL_S = 0.25


class _Listener(ConsumerRebalanceListener):
    """aiokafka awaits these before leaving and after joining a generation: the place to drain and commit."""

    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owner.on_assigned(assigned)


class BatchConsumer:
    """Fetch, process and commit the input topic in batches (one instance per worker process)."""

    def __init__(
        self,
        settings: StreamSettings,
        processor: BatchProcessor,
        consumer_factory: Callable[[], AIOKafkaConsumer] | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self._factory = consumer_factory or self._default_consumer
        self.consumer: AIOKafkaConsumer | None = None
        # A failed batch ends the process at once (see _die), not at the next batch or the next stop.
        self.pipeline = BatchPipeline(processor, settings.pipeline_depth, on_failure=self._batch_failed)
        # Held while a fetched batch is handed to the pipeline and while a revocation drains it, so
        # nothing new starts between "drained" and "committed".
        self._gate = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        # Counted at the start of every revocation: records fetched before one belong to a revoked assignment.
        self._revocations = 0
        self._durable: dict[TopicPartition, int] = {}  # next offset whose input is not yet durable
        # The newest event time of the durable inputs per partition (what a commit of _durable covers).
        self._durable_ms: dict[TopicPartition, int] = {}
        # Handed to every window call once committed: the dedupe floor never passes an uncommitted event.
        processor.committed_event_ms = {}
        self.committed: dict[TopicPartition, int] = {}  # what this worker last committed
        self._dirty = asyncio.Event()
        self._stopping = False
        self._loop_done = asyncio.Event()

    def _default_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **kafka_client_kwargs(s),
            group_id=s.consumer_group,
            client_id=f"{s.consumer_group}-batch",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.broker_session_timeout_s * 1000),
            heartbeat_interval_ms=1000,
            # A revocation may wait for a batch in flight (half the session timeout at most, below).
            rebalance_timeout_ms=int(max(s.broker_session_timeout_s, 10.0) * 1000),
            max_poll_interval_ms=300_000,
        )

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Fetch batches until stopped; any unexpected failure ends the process (see ``_die``)."""
        try:
            await self._start_consumer()
            committer = asyncio.ensure_future(self._committer())
            try:
                await self._fetch_loop()
            finally:
                committer.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every non-transient failure must end the process
            self._die(exc)
        finally:
            self._loop_done.set()

    async def _start_consumer(self) -> None:
        delay = 0.5
        while not self._stopping:
            consumer = self._factory()
            consumer.subscribe([self.settings.input_topic], listener=_Listener(self))
            try:
                await consumer.start()
            except KafkaError as exc:
                # The worker waited for Kafka before starting; a broker lost in between is waited out.
                log.warning("consumer_start_retry", error=type(exc).__name__, detail=str(exc)[:200], retry_in_s=delay)
                await consumer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.consumer = consumer
            log.info("batch_consumer_started", topic=self.settings.input_topic, group=self.settings.consumer_group)
            return

    async def _fetch_loop(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        s = self.settings
        timeout_ms, size = s.max_wait_ms, s.max_batch_size
        while not self._stopping:
            try:
                # Everything already fetched, from every partition (aiokafka drains partition by
                # partition when capped, which would skew event time across partitions).
                fetched = await consumer.getmany(timeout_ms=timeout_ms)
            except KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    raise
                log.warning("fetch_retry", error=type(exc).__name__, detail=str(exc)[:200])
                await asyncio.sleep(0.5)
                continue
            # Read before any await: aiokafka returns records only of the assignment active at this
            # moment (it waits out a reassignment), so a revocation counted after it makes them stale.
            revocations = self._revocations
            if not fetched:
                continue
            # Round-robin across partitions, as Faust's consumer served them: event time advances on
            # every partition together, so the low watermark does not run ahead of a partition.
            if len(fetched) == 1:
                records = next(iter(fetched.values()))
            else:
                records = [r for group in zip_longest(*fetched.values()) for r in group if r is not None]
            for start in range(0, len(records), size):
                chunk = records[start : start + size]
                msgs = [RawMessage(r.value, r.key, r.topic, r.partition, r.offset, r.timestamp) for r in chunk]
                ends = {TopicPartition(r.topic, r.partition): r.offset + 1 for r in chunk}
                async with self._gate:
                    if self._stopping or revocations != self._revocations:
                        # Records of a revoked assignment (or a stop): never processed here, so never
                        # committed. The next assignment starts from the committed offsets, so whoever
                        # owns these partitions then reads them again.
                        log.info(
                            "stale_batch_dropped",
                            events=len(records) - start,
                            reason="stop" if self._stopping else "rebalance",
                        )
                        break
                    await self.pipeline.submit(msgs, self._mark_durable(ends))

    def _mark_durable(self, ends: Mapping[TopicPartition, int]) -> Callable[[BatchResult], Awaitable[None]]:
        """The pipeline calls this, in take order, once a batch's outputs are all acknowledged.

        Always before the revocation of its partitions has finished: a revocation drains the pipeline
        (cancelled batches are never called back) before it commits and forgets the revoked partitions.
        """

        async def done(result: BatchResult) -> None:
            for tp, end in ends.items():
                if end > self._durable.get(tp, -1):
                    self._durable[tp] = end
                ms = result.newest_ms.get(f"{tp.topic}:{tp.partition}")
                if ms is not None and ms > self._durable_ms.get(tp, -1):
                    self._durable_ms[tp] = ms
            self._dirty.set()

        return done

    # --- commits ----------------------------------------------------------------------------------
    async def _committer(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.commit_durable()
            await asyncio.sleep(COMMIT_INTERVAL_S)

    async def commit_durable(self) -> None:
        """Commit every durable offset of an assigned partition that is ahead of its last commit."""
        consumer = self.consumer
        if consumer is None:
            return
        async with self._commit_lock:
            assigned = consumer.assignment()
            todo = {tp: off for tp, off in self._durable.items() if tp in assigned and self.committed.get(tp) != off}
            if not todo:
                return
            # Read with the offsets, before the commit is awaited: batches made durable meanwhile are not in it.
            times = {tp: self._durable_ms[tp] for tp in todo if tp in self._durable_ms}
            try:
                await consumer.commit(todo)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on (a rebalance is under way): its revocation commits what is durable.
                log.warning("commit_skipped", error=type(exc).__name__, detail=str(exc)[:200])
                return
            except KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    raise
                log.warning("commit_retry", error=type(exc).__name__, detail=str(exc)[:200])
                self._dirty.set()  # try again on the next round
                return
            self.committed.update(todo)
            marks = self.processor.committed_event_ms
            if marks is not None:
                for tp, ms in times.items():
                    src = f"{tp.topic}:{tp.partition}"
                    if ms > marks.get(src, -1):
                        marks[src] = ms

    # --- rebalances and stop ----------------------------------------------------------------------
    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batches in flight and commit their offsets before the partitions go."""
        self._revocations += 1
        t = time.perf_counter()
        async with self._gate:
            await self._finish_inflight(fatal=True)
            try:
                # Bounded: a commit waits out a broker outage forever, and the group waits for us.
                await asyncio.wait_for(self.commit_durable(), timeout=self.settings.broker_session_timeout_s / 4)
            except (TimeoutError, KafkaError) as exc:
                log.warning("revoke_commit_failed", error=type(exc).__name__, detail=str(exc)[:200])
            for tp in revoked:
                self._durable.pop(tp, None)
                self._durable_ms.pop(tp, None)
                self.committed.pop(tp, None)
        log.info("partitions_revoked", partitions=len(revoked), drain_ms=round((time.perf_counter() - t) * 1000, 1))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        # Positions of a new assignment start at the group's committed offsets (aiokafka fetches them).
        for tp in set(self._durable) - assigned:
            self._durable.pop(tp, None)
        for tp in set(self._durable_ms) - assigned:
            self._durable_ms.pop(tp, None)
        for tp in set(self.committed) - assigned:
            self.committed.pop(tp, None)
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    async def _finish_inflight(self, fatal: bool) -> None:
        """Let batches in flight finish within half the session timeout; those that do not are cancelled
        (never committed: redelivered, and Redis dedupes what they counted).

        A batch that failed is a bug (transient errors are retried, never raised): fatal during a
        rebalance, as anywhere in the loop; on a stop the process is exiting anyway, so it is only logged.
        """
        failures = await self.pipeline.close(timeout=self.settings.broker_session_timeout_s / 2)
        if failures and fatal:
            self._die(failures[0])

    async def stop(self) -> None:
        """Stop fetching, finish what is in flight, commit it, leave the group (Faust calls this before
        its producer stops, so the batches in flight can still send their outputs)."""
        if self._stopping:
            return
        self._stopping = True
        try:
            await asyncio.wait_for(self._loop_done.wait(), timeout=self.settings.broker_session_timeout_s / 2)
        except TimeoutError:
            log.warning("fetch_loop_slow_to_stop")
        async with self._gate:
            await self._finish_inflight(fatal=False)
            try:
                await asyncio.wait_for(self.commit_durable(), timeout=self.settings.broker_session_timeout_s / 4)
            except (TimeoutError, KafkaError) as exc:
                log.warning("final_commit_failed", error=type(exc).__name__, detail=str(exc)[:200])
        if self.consumer is not None:
            await self.consumer.stop()
        log.info(
            "batch_consumer_stopped", committed={f"{tp.topic}:{tp.partition}": o for tp, o in self.committed.items()}
        )

    def lag(self) -> dict[tuple[str, int], int]:
        """High watermark minus committed offset for every input partition assigned to this worker."""
        consumer = self.consumer
        out: dict[tuple[str, int], int] = {}
        if consumer is None:
            return out
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None and high >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - self.committed.get(tp, 0))
        return out

    def _batch_failed(self, exc: BaseException) -> None:
        # While stopping, the batches in flight are being finished or abandoned: their failures are
        # logged by the pipeline's close and redelivered to the next owner; the stop goes on.
        if not self._stopping:
            self._die(exc)

    @staticmethod
    def _die(exc: BaseException) -> None:
        # Transient Redis/Kafka errors never get here (they are retried forever): this is a bug or a
        # permanent misconfiguration. Dying loudly lets the supervisor restart the worker and Kafka
        # redeliver what was not committed (Redis dedupes what was already counted).
        log.critical("consumer_failed_exiting", error=type(exc).__name__, detail=str(exc)[:500])
        os._exit(70)
