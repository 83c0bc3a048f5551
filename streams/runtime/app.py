"""The Faust application: configuration only (agents live in ``streams.runtime.agents``).

Faust is used for what it does well — consumer groups and rebalancing,
RocksDB tables with changelog topics and their recovery, the web server —
while the per-record work is done in batches by pure code
(``streams.batch``), which is where the throughput comes from.
"""

from __future__ import annotations

import faust

from streams.runtime import embedded_broker
from topology.settings import Settings


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        autodiscover=False,
        # Every topic is created by streams.runtime.admin with its configs before the
        # worker starts; Faust must not create any with defaults of its own.
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_commit_interval=settings.commit_interval,
        # A killed worker's partitions move after this long without heartbeats.
        broker_session_timeout=settings.session_timeout,
        # Static membership: a restarted worker reclaims its own partitions.
        consumer_group_instance_id=settings.group_instance_id,
        # Names the metrics port, whose server (a thread started before Faust)
        # answers as long as the process lives, and this process's token:
        # peers probe it (streams/runtime/embedded_broker.py).
        broker_client_id=embedded_broker.client_id(settings.metrics_port),
        broker_heartbeat_interval=max(0.5, settings.session_timeout / 10),
        producer_acks=-1,
        producer_linger_ms=1,
        stream_buffer_maxsize=max(4 * settings.batch_size, 4096),
        # Records handed over per fetch loop round. Unbounded, one round took
        # everything the consumer had buffered (noida-db answers a fetch with
        # whole partitions: 1M records at the bench's default size), and
        # nothing fetched later -- friend updates -- was delivered before all
        # of it: propagation waited for the input backlog. Bounded, the
        # consumer fetches partitions with nothing buffered in between.
        broker_max_poll_records=settings.batch_size,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        logging_config=None,
    )


def _credentials(settings: Settings):
    if settings.security_protocol in ("", "PLAINTEXT"):
        return None
    import ssl

    context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=context if settings.security_protocol == "SASL_SSL" else None,
        )
    return faust.SSLCredentials(context)
