"""Stream processing: Kafka or file replay in, current player state and segments out."""

from crmbet.streaming.config import StreamConfig
from crmbet.streaming.dedupe import DedupeWindow
from crmbet.streaming.drift import DriftAlarm, StreamDriftMonitor
from crmbet.streaming.learning import ChallengerPublisher, OnlineCentroids
from crmbet.streaming.pipeline import StreamingMLPipeline
from crmbet.streaming.processor import (
    BatchProcessor,
    BatchResult,
    SegmentChange,
    SegmentChanges,
)
from crmbet.streaming.records import DeadLetter, RecordBatch
from crmbet.streaming.replay import ReplaySource
from crmbet.streaming.sinks import KafkaSink, LocalSink, OutputSink
from crmbet.streaming.stores import (
    Commit,
    EmbeddedStateStore,
    RedisStateStore,
    StaleOffsetError,
    StreamStateStore,
    open_state_store,
)

__all__ = [
    "BatchProcessor",
    "BatchResult",
    "ChallengerPublisher",
    "Commit",
    "DeadLetter",
    "DedupeWindow",
    "DriftAlarm",
    "EmbeddedStateStore",
    "KafkaSink",
    "LocalSink",
    "OnlineCentroids",
    "OutputSink",
    "RecordBatch",
    "RedisStateStore",
    "ReplaySource",
    "SegmentChange",
    "SegmentChanges",
    "StaleOffsetError",
    "StreamConfig",
    "StreamDriftMonitor",
    "StreamStateStore",
    "StreamingMLPipeline",
    "open_state_store",
]
