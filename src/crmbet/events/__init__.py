"""Transaction events: the canonical schema, validation, adapters and pseudonyms."""

from crmbet.events.adapters import (
    IngestResult,
    bundled_bustabit_path,
    ingest,
    ingest_frame,
    iter_events,
    iter_ingest,
)
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.events.schema import (
    EVENT_SCHEMA,
    EVENT_SCHEMA_VERSION,
    Event,
    EventType,
    Product,
)
from crmbet.events.validation import ColumnMapping, ValidationResult, normalize

__all__ = [
    "EVENT_SCHEMA",
    "EVENT_SCHEMA_VERSION",
    "ColumnMapping",
    "Event",
    "EventType",
    "IngestResult",
    "Product",
    "Pseudonymizer",
    "ValidationResult",
    "bundled_bustabit_path",
    "ingest",
    "ingest_frame",
    "iter_events",
    "iter_ingest",
    "normalize",
]
