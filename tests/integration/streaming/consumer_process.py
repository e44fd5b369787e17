"""A stream consumer run as its own process, so tests can kill it with SIGKILL.

Usage: python consumer_process.py BOOTSTRAP TOPIC GROUP REDIS_URL NAMESPACE BATCH
"""

from __future__ import annotations

import logging
import sys

from crmbet.streaming import StreamConfig, StreamingMLPipeline


def main() -> None:
    bootstrap, topic, group, redis_url, namespace, batch = sys.argv[1:7]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = StreamConfig(
        kafka_bootstrap_servers=bootstrap,
        topic=topic,
        group_id=group,
        redis_url=redis_url,
        namespace=namespace,
        max_batch_size=int(batch),
        model_ref=None,
        enable_online_learning=False,
        session_timeout_ms=3000,
        max_poll_interval_ms=10_000,
        dead_letter_topic=f"{topic}.dlq",
        segment_topic=f"{topic}.segments",
        alert_topic=f"{topic}.alerts",
    )
    StreamingMLPipeline(config).run()


if __name__ == "__main__":
    main()
