"""The stream consumer: Kafka (or a replayed file) in, player state and segments out.

Example
-------
>>> from crmbet.streaming import StreamConfig, StreamingMLPipeline
>>> pipeline = StreamingMLPipeline(StreamConfig(model_ref=None))
>>> pipeline.health()["status"]
'stopped'
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crmbet.config import Settings, get_settings
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.streaming import metrics
from crmbet.streaming.config import StreamConfig
from crmbet.streaming.drift import DriftAlarm, StreamDriftMonitor
from crmbet.streaming.learning import (
    BackgroundLearner,
    ChallengerPublisher,
    OnlineCentroids,
)
from crmbet.streaming.processor import BatchProcessor, BatchResult
from crmbet.streaming.records import RecordBatch
from crmbet.streaming.replay import ReplaySource
from crmbet.streaming.sinks import KafkaSink, LocalSink, OutputSink
from crmbet.streaming.stores import (
    EmbeddedStateStore,
    StaleOffsetError,
    StreamStateStore,
    open_state_store,
)

if TYPE_CHECKING:
    from crmbet.serving.predictor import SegmentPredictor

logger = logging.getLogger(__name__)

#: Seconds between two lag readings.
LAG_INTERVAL_S = 5.0
#: Model features watched for drift besides the prediction confidence.
DRIFT_FEATURES = 2


class StreamingMLPipeline:
    """Consume transactions, keep player state and segments current, learn online.

    Parameters
    ----------
    config:
        Stream settings.
    settings:
        crmbet settings (pseudonymisation key, registry, Redis URL).
    predictor:
        Segment predictor; loaded from the registry (``config.model_ref``)
        when None.
    store:
        Online store; Redis when ``config.redis_url`` is set, else embedded.
    sink:
        Output sink; Kafka topics when consuming Kafka, else local files
        under ``settings.home / "stream"``.
    registry:
        Model registry for the challenger; opened from ``settings`` when
        online learning is on.
    """

    def __init__(
        self,
        config: StreamConfig,
        *,
        settings: Settings | None = None,
        predictor: SegmentPredictor | None = None,
        store: StreamStateStore | None = None,
        sink: OutputSink | None = None,
        registry: object | None = None,
    ) -> None:
        # Backends not given in the config come from the settings.
        self.settings = settings or get_settings()
        if config.redis_url is None and self.settings.redis_url is not None:
            config.redis_url = self.settings.redis_url.get_secret_value()
        if config.kafka_bootstrap_servers is None:
            config.kafka_bootstrap_servers = self.settings.kafka_bootstrap_servers
        self.config = config

        self._registry = registry
        self.predictor = predictor if predictor is not None else self._load_predictor()
        self.store = (
            store
            if store is not None
            else open_state_store(
                config.redis_url, config.namespace, config.snapshot_path
            )
        )
        self.sink = sink
        self.processor = BatchProcessor(
            self.store,
            Pseudonymizer(self.settings.pseudonym_key_bytes()),
            group_id=config.group_id,
            topic=config.topic,
            predictor=self.predictor,
            dedupe_window=config.dedupe_window,
            mapping=config.column_mapping,
        )

        self.learner: OnlineCentroids | None = None
        self.publisher: ChallengerPublisher | None = None
        self.drift: StreamDriftMonitor | None = None
        # Set while run() or replay() is running with online learning on.
        self._learning: BackgroundLearner | None = None
        if config.enable_online_learning and self.predictor is not None:
            self._start_learning(self.predictor)

        # Counters and liveness state, read by health() from other threads.
        self.freshness_ms: deque[float] = deque(maxlen=1_000_000)
        self.events_processed = 0
        self.records_processed = 0
        self.dead_letter_count = 0
        self.batches = 0
        self._source = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._running = False
        self._last_poll = 0.0
        self._last_batch = 0.0
        self._last_lag = 0.0
        self._rate = deque(maxlen=20)
        self._stall_logged = False
        self.first_batch_at: float | None = None
        self.last_commit_at: float | None = None

    # Setup ------------------------------------------------------------------

    def _load_predictor(self) -> SegmentPredictor | None:
        if self.config.model_ref is None:
            return None
        from crmbet.serving.predictor import SegmentPredictor

        return SegmentPredictor.from_registry(self.registry, self.config.model_ref)

    @property
    def registry(self) -> object:
        """The model registry, opened from the settings on first use."""
        if self._registry is None:
            from crmbet.models.registry import ModelRegistry

            self._registry = ModelRegistry(self.settings)
        return self._registry

    def _start_learning(self, predictor: SegmentPredictor) -> None:
        model = predictor.model
        self.learner = OnlineCentroids(model)
        self.publisher = ChallengerPublisher(
            self.registry, self.config.challenger_interval_s
        )
        signals = ["confidence", *model.feature_names[:DRIFT_FEATURES]]
        self.drift = StreamDriftMonitor(
            signals, self.config.drift_delta, self.config.drift_cooldown_s
        )

    # Running ----------------------------------------------------------------

    def start(self) -> StreamingMLPipeline:
        """Run the Kafka consumer loop in a background thread and return at once."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(
                "the stream consumer is already running; call stop() first"
            )
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, name="crmbet-stream", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the loop to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def run(
        self, max_records: int | None = None, idle_timeout_s: float | None = None
    ) -> int:
        """Consume Kafka until stopped; return the number of records processed.

        Parameters
        ----------
        max_records:
            Stop after this many records.
        idle_timeout_s:
            Stop after this long without a record.
        """
        from confluent_kafka import Producer

        from crmbet.streaming.kafka import KafkaSource, producer_settings

        config = self.config
        if self.sink is None:
            # The sink acts on failed deliveries only. Reports of successful
            # ones would cost a Python callback per output record.
            producer = Producer(
                producer_settings(
                    config.kafka_bootstrap_servers or "",
                    **{"delivery.report.only.error": True},
                )
            )
            self.sink = KafkaSink(
                producer,
                config.dead_letter_topic,
                config.segment_topic,
                config.alert_topic,
            )
        source = KafkaSource(config, self.processor.assign, self.processor.revoke)
        self._source = source
        self._start_learning_thread()
        self._running = True
        self._last_poll = self._last_batch = time.monotonic()
        watchdog = threading.Thread(
            target=self._watch, name="crmbet-stream-watchdog", daemon=True
        )
        watchdog.start()
        logger.info(
            "stream consumer started on %s (group %s, topic %s)",
            config.kafka_bootstrap_servers,
            config.group_id,
            config.topic,
        )
        start = self.records_processed
        try:
            while not self._stop.is_set():
                batch = source.poll_batch()
                self._last_poll = time.monotonic()
                if batch is not None:
                    self._handle(batch, source.seek)
                    self._last_batch = self._last_poll
                elif idle_timeout_s is not None and (
                    self._last_poll - self._last_batch >= idle_timeout_s
                ):
                    break
                if (
                    max_records is not None
                    and self.records_processed - start >= max_records
                ):
                    break
                if self._last_poll - self._last_lag >= LAG_INTERVAL_S:
                    self._last_lag = self._last_poll
                    source.update_lag(self.processor.positions)
        finally:
            self._running = False
            self._close(source)
        return self.records_processed - start

    def replay(self, path: str | Path, rate: float | None = None) -> int:
        """Process a file like Kafka records and return the record count."""
        source = ReplaySource(path, batch_size=self.config.max_batch_size, rate=rate)
        self.processor.topic = source.topic
        if self.sink is None:
            self.sink = LocalSink(self.settings.home / "stream")
        stored = self.processor.assign([0])[0] or 0
        self._start_learning_thread()
        self._running = True
        self._last_poll = self._last_batch = time.monotonic()
        logger.info("replaying %s from record %d", path, stored)
        start = self.records_processed
        try:
            for batch in source.batches(start=stored):
                if self._stop.is_set():
                    break
                self._handle(batch, lambda offsets: None)
                self._last_poll = self._last_batch = time.monotonic()
        finally:
            self._running = False
            self._stop_learning_thread()
            self.sink.flush()
            self.store.close()
        logger.info("replayed %d records from %s", self.records_processed - start, path)
        return self.records_processed - start

    def _handle(
        self, batch: RecordBatch, seek: Callable[[dict[int, int | None]], None]
    ) -> None:
        started = time.monotonic()
        if self.first_batch_at is None:
            self.first_batch_at = started
        result = self.processor.process(batch)
        if result.commit is None:
            return
        sink = self.sink
        assert sink is not None  # set by run() and replay()
        partitions = list(result.commit.offsets)
        try:
            sink.send_dead_letters(result.dead_letters)
            sink.send_segment_changes(result.segment_changes)
            if self._learning is not None:
                # Alarms of earlier batches, raised on the learning thread.
                sink.send_alarms(self._learning.take_alarms())
            sink.flush()
        except (TimeoutError, RuntimeError) as error:
            # Nothing is committed, so seeking back reads the batch again.
            logger.error(
                "sending the outputs of %s%s failed, retrying the batch: %s",
                self.processor.topic,
                partitions,
                error,
            )
            seek({p: self.processor.positions.get(p) for p in partitions})
            return
        try:
            self.processor.apply(result)
        except StaleOffsetError as error:
            metrics.FENCED_BATCHES.inc()
            logger.warning("%s", error)
            offsets = self.processor.assign(partitions)
            seek(offsets)
            return
        self.last_commit_at = time.monotonic()
        self._after_commit(result)

    def _after_commit(self, result: BatchResult) -> None:
        now_ms = time.time() * 1000.0
        self.batches += 1
        self.records_processed += result.n_records - result.n_skipped
        self.events_processed += result.n_events
        self.dead_letter_count += len(result.dead_letters)
        metrics.EVENTS.inc(result.n_events)
        if result.n_duplicates:
            metrics.DUPLICATES.inc(result.n_duplicates)
        for letter in result.dead_letters:
            metrics.DEAD_LETTERS.labels(reason=letter.reason).inc()
        if result.segment_changes:
            metrics.SEGMENT_CHANGES.inc(len(result.segment_changes))
        if result.timestamps_ms:
            ages = now_ms - np.asarray(result.timestamps_ms, dtype=np.float64)
            self.freshness_ms.extend(ages.tolist())
            for age in np.percentile(ages, [50, 99]).tolist():
                metrics.FRESHNESS.observe(age / 1000.0)
        self._rate.append((time.monotonic(), result.n_records))
        if len(self._rate) > 1:
            span = self._rate[-1][0] - self._rate[0][0]
            if span > 0:
                metrics.THROUGHPUT.set(sum(n for _, n in list(self._rate)[1:]) / span)
        self._learn(result)
        if isinstance(self.store, EmbeddedStateStore):
            self.store.maybe_snapshot(self.config.snapshot_interval_s)

    def _start_learning_thread(self) -> None:
        if self.learner is not None and self._learning is None:
            self._learning = BackgroundLearner(self._learn_batch)

    def _stop_learning_thread(self) -> None:
        """Learn the queued batches, stop the thread and send its last alarms."""
        learning, self._learning = self._learning, None
        if learning is None:
            return
        learning.close()
        alarms = learning.take_alarms()
        if alarms and self.sink is not None:
            self.sink.send_alarms(alarms)

    def _learn(self, result: BatchResult) -> None:
        if self.learner is None or result.features is None:
            return
        if self._learning is not None:
            self._learning.submit(result.features, result.confidence)
            return
        alarms = self._learn_batch(result.features, result.confidence)
        if alarms and self.sink is not None:
            self.sink.send_alarms(alarms)

    def _learn_batch(
        self, features: np.ndarray, confidence: np.ndarray | None
    ) -> list[DriftAlarm]:
        """Update the centroids and drift detectors; return the new alarms."""
        learner = self.learner
        assert learner is not None  # checked by _learn
        learner.partial_fit(features)
        alarms: list[DriftAlarm] = []
        if self.drift is not None and confidence is not None:
            signals = {"confidence": confidence}
            names = learner.model.feature_names[:DRIFT_FEATURES]
            for i, name in enumerate(names):
                signals[name] = features[:, i]
            alarms = self.drift.update(signals)
        if self.publisher is not None:
            try:
                self.publisher.maybe_publish(learner)
            except Exception as error:  # noqa: BLE001 - the stream must go on
                logger.error("registering the online challenger failed: %s", error)
        return alarms

    def _close(self, source: object) -> None:
        try:
            self._stop_learning_thread()
            if self.sink is not None:
                self.sink.flush()
        finally:
            source.close()  # type: ignore[attr-defined]
            self.store.close()
            logger.info(
                "stream consumer stopped after %d records", self.records_processed
            )

    # Liveness ---------------------------------------------------------------

    def _watch(self) -> None:
        limit = self.config.max_poll_interval_ms / 1000.0
        while self._running:
            healthy = self.health()["status"] == "ok"
            metrics.HEALTHY.set(1 if healthy else 0)
            stalled = time.monotonic() - self._last_poll > limit
            if stalled and not self._stall_logged:
                logger.error(
                    "the stream handler has not polled for over %.0f s "
                    "(max.poll.interval.ms); the group will reassign its "
                    "partitions and this consumer rejoins when it polls again",
                    limit,
                )
            self._stall_logged = stalled
            time.sleep(min(1.0, limit / 4))

    def health(self) -> dict[str, object]:
        """Return the consumer's liveness: status, poll age, broker error, counts."""
        now = time.monotonic()
        poll_age = now - self._last_poll if self._running else None
        broker_error = (
            getattr(self._source, "broker_error", None) if self._running else None
        )
        if not self._running:
            status = "stopped"
        elif (
            poll_age is not None
            and poll_age > self.config.max_poll_interval_ms / 1000.0
        ):
            status = "stalled"
        elif broker_error:
            status = "broker_unavailable"
        else:
            status = "ok"
        return {
            "status": status,
            "seconds_since_poll": poll_age,
            "broker_error": broker_error,
            "assigned_partitions": sorted(self.processor.positions),
            "records_processed": self.records_processed,
            "events_processed": self.events_processed,
            "dead_letters": self.dead_letter_count,
        }
