"""Online learning: segment centroids that follow the stream as a challenger.

:class:`OnlineCentroids` starts from the champion's centroids and applies
mini-batch k-means updates to the scaled features of every player a
micro-batch updates. Each centroid moves towards the mean of the players
assigned to it with a step of ``batch count / total count``, so it settles
as evidence accumulates. The total is capped, so the step never falls
below ``1 / max_count`` and the centroids can still follow a drifting
population.

:class:`ChallengerPublisher` registers the result now and then under the
registry alias ``challenger``. It never moves the ``champion`` alias:
promotion is a separate, deliberate step.

:class:`BackgroundLearner` runs both, and the drift checks, on a thread, so
the consumer loop polls the next batch while the last one is learned.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from crmbet.streaming import metrics

if TYPE_CHECKING:
    from crmbet.models.bundle import SegmentModel

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"


class OnlineCentroids:
    """Mini-batch k-means updates on a copy of a model's centroids.

    Parameters
    ----------
    model:
        The champion whose scaling and centroids are the starting point.
    max_count:
        Cap of the per-centroid count, which bounds how slowly a centroid
        can move.

    Examples
    --------
    Fitted attributes end in ``_``: ``centers_`` (scaled space),
    ``counts_`` and ``n_updates_``.
    """

    def __init__(self, model: SegmentModel, max_count: float = 10_000.0) -> None:
        if max_count < 1:
            raise ValueError(f"max_count={max_count} is invalid; pass at least 1")
        self.model = model
        self.max_count = float(max_count)
        kmeans = model.pipeline.named_steps["kmeans"]
        self.initial_centers_ = np.array(kmeans.cluster_centers_, dtype=np.float64)
        self.centers_ = self.initial_centers_.copy()
        sizes = [max(float(profile.size), 1.0) for profile in model.profiles]
        if len(sizes) != self.centers_.shape[0]:
            sizes = [1.0] * self.centers_.shape[0]
        self.counts_ = np.minimum(np.array(sizes), self.max_count)
        self.n_updates_ = 0

    def partial_fit(self, features: np.ndarray) -> OnlineCentroids:
        """Move the centroids towards a batch of raw feature rows (model order)."""
        if features.size == 0:
            return self
        scaled = self.model.scale(features)
        squared = (
            (scaled**2).sum(axis=1)[:, None]
            - 2.0 * scaled @ self.centers_.T
            + (self.centers_**2).sum(axis=1)
        )
        labels = squared.argmin(axis=1)
        for cluster in np.unique(labels):
            members = scaled[labels == cluster]
            self.counts_[cluster] = min(
                self.counts_[cluster] + len(members), self.max_count
            )
            step = len(members) / self.counts_[cluster]
            self.centers_[cluster] += step * (
                members.mean(axis=0) - self.centers_[cluster]
            )
        self.n_updates_ += int(scaled.shape[0])
        return self

    def shift(self) -> float:
        """Return the maximum centroid distance from the champion's, in scaled units."""
        return float(
            np.sqrt(((self.centers_ - self.initial_centers_) ** 2).sum(axis=1)).max()
        )

    def to_model(self) -> SegmentModel:
        """Return a copy of the champion with the updated centroids.

        NOTE: the copy keeps the champion's segment names and profiles,
        which describe the champion's clusters; they are refreshed only
        when a challenger is retrained offline.
        """
        challenger = copy.deepcopy(self.model)
        challenger.pipeline.named_steps[
            "kmeans"
        ].cluster_centers_ = self.centers_.copy()
        # Re-reading the pickled state rebuilds the NumPy assignment path.
        challenger.__setstate__(challenger.__getstate__())
        challenger.version = None
        challenger.params = dict(challenger.params) | {
            "online_updates": self.n_updates_,
            "online_parent_version": self.model.version or "unregistered",
        }
        challenger.metrics = dict(challenger.metrics) | {
            "online_centroid_shift": self.shift()
        }
        return challenger


class ChallengerPublisher:
    """Register the online centroids as the ``challenger`` every so often.

    Parameters
    ----------
    registry:
        A :class:`crmbet.models.registry.ModelRegistry`.
    interval_s:
        Seconds between registrations.
    min_updates:
        Player updates needed since the start before the first registration.
    """

    def __init__(
        self,
        registry: object,
        interval_s: float = 600.0,
        min_updates: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.min_updates = min_updates
        self._clock = clock
        self._last = clock()
        self.versions: list[str] = []

    def maybe_publish(self, learner: OnlineCentroids) -> str | None:
        """Register the challenger when the interval has passed; return its version."""
        if (
            self._clock() - self._last < self.interval_s
            or learner.n_updates_ < self.min_updates
        ):
            return None
        return self.publish(learner)

    def publish(self, learner: OnlineCentroids) -> str | None:
        """Register the challenger now and point the ``challenger`` alias at it."""
        self._last = self._clock()
        registry = self.registry
        # The registry makes its first version the champion, so an empty
        # registry gets no challenger; that would silently become champion.
        if registry.alias_version(CHAMPION) is None:  # type: ignore[attr-defined]
            logger.warning(
                "registry has no champion; the online challenger is not registered"
            )
            return None
        challenger = learner.to_model()
        version = registry.register(  # type: ignore[attr-defined]
            challenger,
            extra_metrics={"online_updates": float(learner.n_updates_)},
            tags={"source": "stream-online-learning"},
            run_name="online-challenger",
        )
        registry.set_alias(CHALLENGER, version)  # type: ignore[attr-defined]
        metrics.CHALLENGERS.inc()
        self.versions.append(version)
        logger.info(
            "registered online challenger version %s after %d player updates "
            "(largest centroid shift %.3f)",
            version,
            learner.n_updates_,
            learner.shift(),
        )
        return version


class BackgroundLearner:
    """Runs online learning and drift checks on a thread, off the commit path.

    The consumer loop hands over the features and confidences of each
    committed batch and goes on polling. A bounded queue limits how far
    learning may fall behind: when ``max_pending`` batches wait, the next
    :meth:`submit` blocks until one is done, so no batch is skipped and
    memory stays bounded.

    Parameters
    ----------
    learn:
        Called on the thread with each batch's features and confidences;
        returns the drift alarms it raised.
    max_pending:
        Batches that may wait for the thread.
    """

    def __init__(
        self,
        learn: Callable[[np.ndarray, np.ndarray | None], list],
        max_pending: int = 4,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending={max_pending} is invalid; pass at least 1")
        self._learn = learn
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray | None] | None] = (
            queue.Queue(max_pending)
        )
        self._alarms: deque = deque()
        self._thread = threading.Thread(
            target=self._run, name="crmbet-stream-learning", daemon=True
        )
        self._thread.start()

    def submit(self, features: np.ndarray, confidence: np.ndarray | None) -> None:
        """Queue one batch; blocks while ``max_pending`` batches wait."""
        if not self._thread.is_alive():
            raise RuntimeError("the learning thread is closed; create a new one")
        self._queue.put((features, confidence))

    def take_alarms(self) -> list:
        """Return and forget the drift alarms raised since the last call."""
        alarms = []
        while self._alarms:
            alarms.append(self._alarms.popleft())
        return alarms

    def wait(self) -> None:
        """Block until every queued batch is learned."""
        self._queue.join()

    def close(self) -> None:
        """Learn the queued batches and stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._alarms.extend(self._learn(*item))
            except Exception:  # noqa: BLE001 - learning must not stop the stream
                logger.exception("online learning of a micro-batch failed")
            finally:
                self._queue.task_done()
