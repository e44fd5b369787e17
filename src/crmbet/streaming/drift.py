"""Drift detection on the stream with ADWIN, debounced.

River's ADWIN detector (``river.drift.ADWIN``) keeps a window of a signal
and cuts it when the means of two sub-windows differ more than chance
allows. One monitor watches the prediction confidence and a few model
features of every updated player. After an alarm a signal stays quiet for a
cooldown, so one change raises one alarm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from crmbet.streaming import metrics

logger = logging.getLogger(__name__)

#: Values fed to each detector per micro-batch, evenly spaced, to bound cost.
MAX_VALUES_PER_BATCH = 500


@dataclass(frozen=True)
class DriftAlarm:
    """One detected change of a stream signal."""

    signal: str
    mean_before: float
    mean_after: float
    n_seen: int
    detected_at: float

    def to_dict(self) -> dict[str, object]:
        """Return the alarm as JSON-ready data."""
        return {"type": "drift", **self.__dict__}


class StreamDriftMonitor:
    """ADWIN detectors for named signals, with one alarm per change.

    Parameters
    ----------
    signals:
        Names of the watched signals.
    delta:
        ADWIN confidence; smaller values raise fewer false alarms.
    cooldown_s:
        Seconds a signal stays quiet after an alarm.

    Examples
    --------
    >>> monitor = StreamDriftMonitor(["confidence"], cooldown_s=0)
    >>> monitor.update({"confidence": np.zeros(100)})
    []
    """

    def __init__(
        self,
        signals: Sequence[str],
        delta: float = 0.002,
        cooldown_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.delta = delta
        self.cooldown_s = cooldown_s
        self._clock = clock
        # Imported here because river's package import pulls in scikit-learn.
        from river.drift import ADWIN

        self._detectors = {name: ADWIN(delta=delta) for name in signals}
        self._quiet_until = dict.fromkeys(signals, 0.0)
        self._seen = dict.fromkeys(signals, 0)
        self.alarms: list[DriftAlarm] = []

    def update(self, values: dict[str, np.ndarray]) -> list[DriftAlarm]:
        """Feed one micro-batch of values per signal; return new alarms."""
        raised: list[DriftAlarm] = []
        now = self._clock()
        for name, column in values.items():
            detector = self._detectors.get(name)
            if detector is None or column.size == 0:
                continue
            if column.size > MAX_VALUES_PER_BATCH:
                column = column[
                    np.linspace(0, column.size - 1, MAX_VALUES_PER_BATCH).astype(int)
                ]
            before = detector.estimation
            detected = False
            for value in column.tolist():
                detector.update(value)
                detected |= detector.drift_detected
            self._seen[name] += int(column.size)
            if now >= self._quiet_until[name]:
                metrics.DRIFT_ACTIVE.labels(signal=name).set(0)
            if detected and now >= self._quiet_until[name]:
                alarm = DriftAlarm(
                    name,
                    float(before),
                    float(detector.estimation),
                    self._seen[name],
                    now,
                )
                self._quiet_until[name] = now + self.cooldown_s
                metrics.DRIFT_ALARMS.labels(signal=name).inc()
                metrics.DRIFT_ACTIVE.labels(signal=name).set(1)
                logger.warning(
                    "drift detected on %s: mean %.4g -> %.4g after %d values",
                    name,
                    alarm.mean_before,
                    alarm.mean_after,
                    alarm.n_seen,
                )
                raised.append(alarm)
        self.alarms.extend(raised)
        return raised
