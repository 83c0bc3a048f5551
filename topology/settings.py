"""One typed settings object for every process, read from the environment.

Command-line flags override the environment by building a copy with
``dataclasses.replace``; nothing else in the code reads ``os.environ``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_BROKER_HOST = "127.0.0.1"
DEFAULT_BROKER_PORT = 9092


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "a whole number")


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def _env_number(name: str, default, parse, what: str):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not {what}; unset it or give e.g. {name}={default}")


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r}: expected 1/0, true/false or auto")


@dataclass(frozen=True)
class Settings:
    #: Kafka bootstrap address, HOST:PORT (several separated by commas).
    broker: str = f"{DEFAULT_BROKER_HOST}:{DEFAULT_BROKER_PORT}"
    #: Rules file (TOML); None means the default shipped with the package.
    rules_path: Path | None = None
    #: Where the worker keeps its RocksDB tables.
    data_dir: Path = Path(".standing/worker")
    #: Where the embedded broker keeps its log segments.
    broker_data_dir: Path = Path(".standing/broker")
    #: Partitions of every keyed topic (inputs, friend updates, scores, changelogs).
    partitions: int = 8
    #: Faust application id = consumer group = changelog topic prefix.
    app_id: str = "standing"
    #: This worker's stable identity in the consumer group (Kafka static
    #: membership, group.instance.id). A restarted worker with the same id takes
    #: its partitions back at once, without a rebalance or waiting for the old
    #: session to expire. Empty: derived from the host name and the data
    #: directory (two workers never share a data directory). Give each replica
    #: of a deployment its own (a StatefulSet pod name, for instance).
    worker_id: str = ""
    #: Work around the embedded broker (noida-db 0.2.3): pace empty fetches,
    #: remove dead group members (streams/runtime/embedded_broker.py says
    #: why). None ("auto") = on for a broker on loopback, off for any other.
    embedded_broker_workarounds: bool | None = None
    #: Explanations name each friend and show their score (friend by friend)
    #: instead of one network reason. Off by default: one person's score is
    #: not shown to whoever asks about another (spec section 5).
    explain_friends: bool = False
    #: Faust web server (query API) bind address and port.
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: Prometheus metrics port (0 disables the metrics server).
    metrics_port: int = 9464
    #: How often the worker commits offsets, seconds.
    commit_interval: float = 0.5
    #: Seconds without heartbeats before a worker counts as dead and its partitions move.
    session_timeout: float = 10.0
    #: How long the worker's producer waits for the broker to acknowledge a record
    #: before its delivery fails (aiokafka's default); a lane then rewinds and sends
    #: the undelivered records again before anything else (streams/runtime/agents.py).
    request_timeout_ms: int = 40_000
    #: Largest number of records processed as one batch (streams/runtime/intake.py
    #: buffers up to four). Each batch waits for two rounds of
    #: acknowledgements (states, then what they caused); bigger batches
    #: coalesce more and wait less often. 10k users / 100k events here: 8000
    #: records 3.9k events/s, 32000 records 3.5k (noise is about 15%).
    batch_size: int = 8000
    #: How long a batch may wait to fill, seconds, when nothing else is to
    #: be done (adds up to this much latency). Measured with 100 ms and 20 ms:
    #: neither changed throughput beyond noise (a backlog fills batches at
    #: once); with waiting friend updates no batch waits at all.
    batch_wait: float = 0.005
    #: Time a batch gives to friend updates (propagation) after its users'
    #: own events, milliseconds, and at least this share of the time those
    #: events took. Updates that do not fit wait, coalesced latest-wins, for
    #: the next batch (streams/waiting.py), so an own event is never
    #: queued behind a propagation wave. 10k users at 4k events/s: a slice of
    #: 40 ms and share 1 gave event-to-score p50 213 ms, p99 840 ms; 10 ms
    #: and 0.25 gave 73-92 ms and 242-439 ms.
    propagation_slice_ms: int = 10
    propagation_share: float = 0.25
    #: Friend updates held decoded in memory at most (~440 B each, measured).
    #: Beyond it, friend-update records are kept unread (about ten times
    #: smaller) until fewer wait; none of them is committed meanwhile.
    #: Coalescing needs room: at 100k users (1.1M friendship directions) a
    #: limit of 200k made the replay's propagation tail 340 s instead of 55 s,
    #: because unread updates cannot replace each other. Giving propagation
    #: more time above the limit instead stalled own events for tens of seconds.
    waiting_updates_limit: int = 1_000_000
    #: Users only friends' estimates and links reach in a batch go through the C path
    #: (``UserBatch.estimates``/``links``, streams/_state_codec.c ``Receiver``): byte for
    #: byte what the Python path does, which stays the reference and is what
    #: False (STANDING_NATIVE_RECEIVERS=0) runs for everyone. 20k users /
    #: 200k events in process: 10.0-10.1k events/s became 11.8-12.1k.
    native_receivers: bool = True
    #: After an empty fetch, wait this long before fetching from that broker
    #: again, while the embedded broker's workarounds are on
    #: (streams/runtime/embedded_broker.py: noida-db does not long-poll); 0 = off.
    empty_fetch_pause_ms: int = 10
    #: "uvloop" or "asyncio". uvloop, 10k users / 100k events, two runs each:
    #: +9-11% events/s, recovery 32 s instead of 36-37 s (Faust's per-record
    #: paths create tasks and futures that uvloop makes cheaper).
    event_loop: str = "uvloop"
    #: Allocations between the cyclic garbage collector's young-generation
    #: runs in the worker (Python's default is 700; 0 keeps it). A batch holds
    #: thousands of decoded states alive, and at the default the collector
    #: kept promoting and re-scanning them: 10% of the worker's time at 10k
    #: users / 100k events. With 50,000 (and the start-up objects frozen out
    #: of its scans) it was 1%, and the scorer 9.1-10.0k events/s against
    #: 8.3-8.6k. State objects hold no cycles; they are freed by reference
    #: counting whatever this is.
    gc_young_threshold: int = 50_000
    #: RocksDB memory per table partition (one database each): memtable size
    #: and block cache, MiB. Faust's defaults (64 MiB memtables, a 2 GiB cache
    #: per database) let a worker with 16 databases grow into gigabytes.
    rocksdb_write_buffer_mb: int = 8
    rocksdb_block_cache_mb: int = 8
    #: How table files are compressed: "zstd" (with a 16 KiB dictionary per
    #: file, trained on its own records), "lz4", "snappy" (RocksDB's default)
    #: or "none" (streams/runtime/store.py). Measured on 20k users / 112k pairs,
    #: compacted: user states 377 B on disk with snappy, 321 with zstd, 270
    #: with zstd and a dictionary (encoded: 565); pairs 37, 27, 25 (encoded:
    #: 66). States of different users share most of their shape (schema
    #: header, float columns, id prefixes), which is what a dictionary holds.
    rocksdb_compression: str = "zstd"
    #: Level-0 files (memtable flushes) that start a compaction into the
    #: level below. Each flush of a busy partition holds a near-full copy of
    #: its states, so the files waiting are mostly superseded versions.
    rocksdb_level0_compaction_trigger: int = 4
    #: Decoded user and pair states kept in memory between batches, per table, as
    #: they were last written (streams/runtime/store.py). Off by default: +9% events/s for +100 MB RSS at
    #: 10k users / 100k events with the Python codec; with the C codec
    #: (decoding a typical state takes ~4 us) 2,000 entries gave no gain
    #: (8.0k events/s against 9.2k, within this machine's noise). The
    #: empty-data-dir restart failures once seen with it on matched the
    #: consumer race streams/runtime/commits.py now guards against (those tests also
    #: hung without it, 1 run in 8).
    state_cache_entries: int = 0
    #: Per-subject de-duplication memory: event ids younger than this (event time) are kept.
    dedup_window_ms: int = 24 * 3600 * 1000
    #: ... and at least this many of the most recent ids per subject, whatever their age.
    dedup_min_ids: int = 64
    #: Kafka security (see README, "Security"); empty means PLAINTEXT.
    #: A Confluent Schema Registry (``http://registry:8081``): schemas are
    #: registered there and the ids it gives out are read and written
    #: (streams/runtime/schema_registry.py). Empty: the ids of
    #: schemas/registry.json, served read-only by every worker.
    schema_registry_url: str = ""
    #: ``user:password`` for the registry's basic authentication.
    schema_registry_user_info: str = field(default="", repr=False)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        base = cls()
        return replace(
            base,
            broker=env.get("STANDING_BROKER") or base.broker,
            rules_path=Path(env["STANDING_RULES"]) if env.get("STANDING_RULES") else None,
            data_dir=Path(env.get("STANDING_DATA_DIR") or base.data_dir),
            broker_data_dir=Path(env.get("STANDING_BROKER_DATA_DIR") or base.broker_data_dir),
            partitions=_env_int("STANDING_PARTITIONS", base.partitions),
            request_timeout_ms=_env_int("STANDING_REQUEST_TIMEOUT_MS", base.request_timeout_ms),
            app_id=env.get("STANDING_APP_ID") or base.app_id,
            worker_id=env.get("STANDING_WORKER_ID") or "",
            embedded_broker_workarounds=_env_bool("STANDING_EMBEDDED_BROKER_WORKAROUNDS"),
            batch_size=_env_int("STANDING_BATCH_SIZE", base.batch_size),
            batch_wait=_env_int("STANDING_BATCH_WAIT_MS", int(base.batch_wait * 1000)) / 1000.0,
            rocksdb_write_buffer_mb=_env_int("STANDING_ROCKSDB_WRITE_BUFFER_MB", base.rocksdb_write_buffer_mb),
            rocksdb_block_cache_mb=_env_int("STANDING_ROCKSDB_BLOCK_CACHE_MB", base.rocksdb_block_cache_mb),
            rocksdb_level0_compaction_trigger=_env_int("STANDING_ROCKSDB_LEVEL0_COMPACTION_TRIGGER", base.rocksdb_level0_compaction_trigger),
            rocksdb_compression=_one_of(
                "STANDING_ROCKSDB_COMPRESSION", env.get("STANDING_ROCKSDB_COMPRESSION") or base.rocksdb_compression,
                ROCKSDB_COMPRESSIONS, "a compression",
            ),
            state_cache_entries=_env_int("STANDING_STATE_CACHE_ENTRIES", base.state_cache_entries),
            propagation_slice_ms=_env_int("STANDING_PROPAGATION_SLICE_MS", base.propagation_slice_ms),
            propagation_share=_env_float("STANDING_PROPAGATION_SHARE", base.propagation_share),
            waiting_updates_limit=_env_int("STANDING_WAITING_UPDATES_LIMIT", base.waiting_updates_limit),
            native_receivers=_env_bool("STANDING_NATIVE_RECEIVERS") is not False,
            empty_fetch_pause_ms=_env_int("STANDING_EMPTY_FETCH_PAUSE_MS", base.empty_fetch_pause_ms),
            event_loop=_one_of("STANDING_EVENT_LOOP", env.get("STANDING_EVENT_LOOP") or base.event_loop, EVENT_LOOPS, "an event loop"),
            gc_young_threshold=_env_int("STANDING_GC_YOUNG_THRESHOLD", base.gc_young_threshold),
            explain_friends=bool(_env_bool("STANDING_EXPLAIN_FRIENDS")),
            web_host=env.get("STANDING_WEB_HOST") or base.web_host,
            web_port=_env_int("STANDING_WEB_PORT", base.web_port),
            metrics_port=_env_int("STANDING_METRICS_PORT", base.metrics_port),
            schema_registry_url=(env.get("STANDING_SCHEMA_REGISTRY_URL") or "").rstrip("/"),
            schema_registry_user_info=env.get("STANDING_SCHEMA_REGISTRY_USER_INFO") or "",
            security_protocol=env.get("STANDING_SECURITY_PROTOCOL") or base.security_protocol,
            sasl_mechanism=env.get("STANDING_SASL_MECHANISM") or "",
            sasl_username=env.get("STANDING_SASL_USERNAME") or "",
            sasl_password=env.get("STANDING_SASL_PASSWORD") or "",
            ssl_cafile=env.get("STANDING_SSL_CAFILE") or "",
        )

    def with_overrides(self, **changes) -> "Settings":
        """A copy with every non-None keyword applied (command-line flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def group_instance_id(self) -> str:
        """The worker's group.instance.id: ``worker_id``, else host + data directory."""
        if self.worker_id:
            return f"{self.app_id}-{self.worker_id}"
        import hashlib
        import socket

        where = hashlib.sha1(str(Path(self.data_dir).resolve()).encode()).hexdigest()[:10]
        return f"{self.app_id}-{socket.gethostname()}-{where}"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [part.strip() for part in self.broker.split(",") if part.strip()]

    def kafka_client_options(self) -> dict:
        """Security options in aiokafka's keyword form (empty for PLAINTEXT)."""
        options: dict = {}
        if self.security_protocol and self.security_protocol != "PLAINTEXT":
            options["security_protocol"] = self.security_protocol
            if self.sasl_mechanism:
                options["sasl_mechanism"] = self.sasl_mechanism
                options["sasl_plain_username"] = self.sasl_username
                options["sasl_plain_password"] = self.sasl_password
            if self.ssl_cafile:
                import ssl

                options["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return options


ROCKSDB_COMPRESSIONS = ("zstd", "lz4", "snappy", "none")
EVENT_LOOPS = ("uvloop", "asyncio")


def _one_of(variable: str, value: str, allowed: tuple[str, ...], what: str) -> str:
    """``value`` (case and spaces ignored) if it is one of ``allowed``; else stop, saying what to give."""
    chosen = value.strip().lower()
    if chosen not in allowed:
        raise SystemExit(f"{variable}={value!r} is not {what} Standing knows; unset it or give one of {', '.join(allowed)}")
    return chosen
