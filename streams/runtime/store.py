"""The worker's state: two Faust tables (RocksDB + changelog) and fast access to them.

``users``: user_id -> UserState (own part, published estimate, friends, recent ids).
``pairs``: unordered pair key -> PairState (the friendship as its own partition orders it).

Faust's ``table[key] = value`` needs the "current event" to pick a partition
and costs a full trip through its bookkeeping per key. Our agents process a
batch of one partition at a time and already know the partition, so
``PartitionedStore`` writes straight into that partition's RocksDB and sends
the same changelog record Faust would: recovery, standbys and rebalancing
keep working unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

import faust
from faust.types import TP

from topology.settings import Settings
from streams import state_codec
from streams.batch import Raw
from streams.runtime.output import Outgoing
from streams.runtime.patches import Patch
from streams.state import PairState, UserState
from topology.topics import MAX_VALUE_BYTES, PAIRS_TABLE, USERS_TABLE, changelog_topic

T = TypeVar("T")

#: Keys Faust keeps in every partition database for itself (the persisted offset).
FAUST_KEYS_PREFIX = b"__faust"
#: Keys Standing keeps that are not states (erasure markers): a NUL no id can start with.
RESERVED_PREFIX = b"\x00"


def closed_partition_entries(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of a partition database no worker has open, Faust's own keys left out."""
    from rocksdict import AccessType, Options, Rdict

    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        for key, value in db.items():
            if not key.startswith(FAUST_KEYS_PREFIX):
                yield key, value
    finally:
        db.close()


#: zstd dictionary per table file, and how many bytes of records to train it on.
ZSTD_DICT_BYTES = 16 * 1024
ZSTD_TRAIN_BYTES = 100 * ZSTD_DICT_BYTES


def apply_compression(options, compression: str) -> None:
    """Compress the table files of rocksdict ``options`` with ``compression`` (Settings.rocksdb_compression)."""
    from rocksdict import DBCompressionType

    options.set_compression_type(getattr(DBCompressionType, compression)())
    if compression == "zstd":
        # A dictionary for the bottommost level only, where compactions put
        # the states that stay. Writing 20k users' states 5 times over and
        # compacting took 1.6 s of CPU so, 5.9 s with a dictionary trained at
        # every memtable flush too (1.3 s without one, 0.7 s with snappy),
        # for the same size once compacted.
        options.set_bottommost_compression_type(DBCompressionType.zstd())
        # window bits (-14: zstd's default), level 3 (zstd's default), strategy, dictionary size, enabled
        options.set_bottommost_compression_options(-14, 3, 0, ZSTD_DICT_BYTES, True)
        options.set_bottommost_zstd_max_train_bytes(ZSTD_TRAIN_BYTES, True)


def _as_options(self):
    """Faust's rocksdict options, with the table's ``compression`` and ``level0_compaction_trigger`` on top."""
    options = AS_OPTIONS.original(self)
    if self.use_rocksdict:
        compression = self.extra_options.get("compression")
        if compression:
            apply_compression(options, compression)
        trigger = self.extra_options.get("level0_compaction_trigger")
        if trigger:
            options.set_level_zero_file_num_compaction_trigger(trigger)
    return options


AS_OPTIONS = Patch(
    target="faust.stores.rocksdb:RocksDBOptions.as_options",
    sha256="d2a1bea17736d2eb2f8d2da592ef843f31bd9583b17b3fcbb2ebd84c15051660",
    why="Faust builds each partition's rocksdict Options itself and drops the options it has no setter for, "
    "so tables were written with snappy and the default level-0 trigger whatever was configured",
    shown_by="tests/streams/runtime/test_store.py",
    replacement=_as_options,
    where="streams/runtime/store.py",
)


async def _tables_on_start(self) -> None:
    """Faust's ``TableManager.on_start`` without its one-second sleep: Standing's tables exist before the app starts."""
    if not self.should_stop:
        await self._update_channels()
        await self.recovery.start()


TABLES_ON_START = Patch(
    target="faust.tables.manager:TableManager.on_start",
    sha256="365dd25fbc0e068499c89e526516c638693a2d143b6ac249f84a60f5267fec9d",
    why="Faust sleeps a whole second before registering the tables (for tables declared while the app starts); "
    "the consumer subscribes only after it, so every start and restart waited 1 s for nothing: "
    "Standing declares both tables before the app starts (create_tables), and a table added later "
    "still fails loudly (TableManager.add: 'Too late to add tables')",
    shown_by="tests/streams/runtime/test_store.py::test_faust_waits_a_second_before_registering_tables",
    replacement=_tables_on_start,
    where="streams/runtime/store.py",
)
PATCHES = [AS_OPTIONS, TABLES_ON_START]


def create_tables(app: faust.App, settings: Settings) -> tuple[faust.Table, faust.Table]:
    def table(name: str) -> faust.Table:
        return app.Table(
            name,
            partitions=settings.partitions,
            # Passed to faust.stores.rocksdb.RocksDBOptions for every partition's database.
            options={
                "write_buffer_size": settings.rocksdb_write_buffer_mb * 2**20,
                "max_write_buffer_number": 2,
                "block_cache_size": settings.rocksdb_block_cache_mb * 2**20,
                # Faust's rocksdict path ignores options it does not know: applied by the AS_OPTIONS patch.
                "compression": settings.rocksdb_compression,
                "level0_compaction_trigger": settings.rocksdb_level0_compaction_trigger,
            },
            schema=faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"),
            changelog_topic=app.topic(
                changelog_topic(settings.app_id, name),
                partitions=settings.partitions,
                key_serializer="raw",
                value_serializer="raw",
                compacting=True,
                deleting=False,
                # As Faust's own changelog topics (Table._new_changelog_topic):
                # no stream acknowledges their records, so the consumer must
                # not track them. Acked, Faust's livelock check logged
                # "Stream has not started processing" for every changelog
                # partition ~6 times a second from 5 minutes after start.
                acks=False,
            ),
        )

    return table(USERS_TABLE), table(PAIRS_TABLE)


_MISSING = object()
#: Largest state a changelog of Standing's takes
STATE_MAX_BYTES = MAX_VALUE_BYTES


class StateTooLarge(ValueError):
    """A state grew larger than any changelog of Standing's takes: the fault of the record that grew it."""


class PartitionedStore(Generic[T]):
    """Typed get/put on one Faust table, by explicit partition.

    Batches read through ``load``, which keeps the states most recently
    written (decoding a state was a sixth of the worker's time; hubs and
    active users come back batch after batch). An entry is used only while
    RocksDB still holds the very bytes it was written as (one cheap read and
    compare), so a write behind our back — Faust restoring a changelog after a
    rebalance — can never be hidden by it. ``load`` hands the entry over: a
    batch changes what it loads in place (time moves it, even when nothing it
    applies counts) and writes it only if it changed, so an object not put
    back must not be the next batch's state.
    """

    def __init__(
        self, table: faust.Table, decode: Callable[[bytes], T], encode: Callable[[T], bytes], cache_entries: int = 0
    ) -> None:
        self._table = table
        self._decode = decode
        self._encode = encode
        self._changelog = table.changelog_topic.get_topic_name()
        self._cache: OrderedDict[tuple[int, str], tuple[bytes, T]] = OrderedDict()
        self._cache_entries = cache_entries
        #: while a batch decides (``begin``): (partition, key) -> the bytes its first load found, for ``before``
        self._loaded: dict[tuple[int, str], bytes | None] | None = None

    def begin(self) -> None:
        """A batch starts deciding: what it loads is remembered as it was, so ``before`` need not read it again."""
        self._loaded = {}

    def load(self, partition: int, key: str) -> T | None:
        """The state to update in a batch (the caller puts it back if it changes)."""
        raw = self._db(partition).get(key.encode())
        slot = (partition, key)
        loaded = self._loaded
        if loaded is not None and slot not in loaded:
            loaded[slot] = raw
        if raw is None:
            return None
        entry = self._cache.pop(slot, None)  # handed over: ``put`` keeps it again
        if entry is not None and entry[0] == raw:
            return entry[1]
        return self._decode(raw)

    def _remember(self, slot: tuple[int, str], raw: bytes, value: T) -> None:
        cache = self._cache
        cache[slot] = (raw, value)
        cache.move_to_end(slot)
        if len(cache) > self._cache_entries:
            cache.popitem(last=False)

    def forget(self) -> None:
        self._cache.clear()
        self._loaded = None

    def _db(self, partition: int):
        # The RocksDB store opens one database per partition on demand.
        return self._table.data._db_for_partition(partition)

    def get(self, partition: int, key: str) -> T | None:
        """The stored state, decoded afresh (not cached)."""
        raw = self._db(partition).get(key.encode())
        return None if raw is None else self._decode(raw)

    def put(self, partition: int, key: str, value: T, *, checked: bool = True) -> Outgoing:
        """Write locally; returns the changelog record for the batch to deliver.

        The batch delivers it with its other outputs and waits for the broker's
        acknowledgement before its input events are acknowledged (Faust's own
        pre-commit flush gives up after 0.1 s, ProducerBuffer.flush_atmost, so
        it is no barrier); on delivery the partition's persisted offset moves
        (``set_persisted_offset``), as Faust's own changelog callback does.

        ``checked``: a state larger than a changelog takes is refused
        (``StateTooLarge``); the re-send scan, writing again what is stored
        already, does not check.
        """
        key_bytes = key.encode()
        raw = isinstance(value, Raw)  # a marker, or a state the C path encoded
        value_bytes = value.value if raw else self._encode(value)
        if checked and len(value_bytes) > STATE_MAX_BYTES:
            # Refused here, before anything is written or sent, rather than by the broker after
            # some of the batch's states have landed: the batch is put back and its record found.
            raise StateTooLarge(
                f"the state of {key!r} would take {len(value_bytes):,} bytes, more than the {STATE_MAX_BYTES:,} "
                f"a changelog of Standing's takes"
            )
        if self._cache_entries and not raw:
            self._remember((partition, key), value_bytes, value)
        self._db(partition).put(key_bytes, value_bytes)
        return Outgoing(self._changelog, key_bytes, value_bytes, partition, self)

    def before(self, writes) -> list[tuple[int, str, bytes | None]]:
        """What RocksDB held under the keys of ``writes`` (partition, key, ...) before the batch: for ``restore``.

        Ends what ``begin`` started: keys the batch loaded are taken as it
        loaded them, not read again (a read per write was ~6% of a replay);
        nothing awaits between ``begin`` and this, so nothing else wrote them.
        """
        loaded, self._loaded = self._loaded or {}, None
        missing = _MISSING
        found = []
        for partition, key, *_ in writes:
            raw = loaded.get((partition, key), missing)
            if raw is missing:
                raw = self._db(partition).get(key.encode())
            found.append((partition, key, raw))
        return found

    def restore(self, before: list[tuple[int, str, bytes | None]]) -> None:
        """Put back what ``before`` read (a key's first entry wins; no state before: deleted).

        For a batch that failed while writing (``Scorer._deliver``), before
        anything of it was sent: its states go back to what they were, so its
        records, read again, count anew (and the one to blame can be found)
        instead of being taken for duplicates. The changelog never had them.
        """
        first: dict[tuple[int, str], bytes | None] = {}
        for partition, key, raw in before:
            first.setdefault((partition, key), raw)
        for (partition, key), raw in first.items():
            db, key_bytes = self._db(partition), key.encode()
            if raw is None:
                db.delete(key_bytes)
            else:
                db.put(key_bytes, raw)
            self._cache.pop((partition, key), None)

    def load_raw(self, partition: int, key: str) -> bytes | None:
        """The bytes under a key: a marker (``streams.batch.ERASED_PREFIX``), or a state the C path reads itself."""
        raw = self._db(partition).get(key.encode())
        loaded = self._loaded
        if loaded is not None and (partition, key) not in loaded:
            loaded[(partition, key)] = raw
        return raw

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        """Where Faust resumes reading this partition's changelog on a kept data directory."""
        self._table.data.set_persisted_offset(TP(self._changelog, partition), offset)

    def has_key_with_prefix(self, partition: int, prefix: str) -> bool:
        """Whether any key starts with ``prefix`` (one seek: keys are sorted)."""
        wanted = prefix.encode()
        it = self._db(partition).iter()
        it.seek(wanted)
        return it.valid() and it.key().startswith(wanted)

    def items(self, partition: int) -> Iterator[tuple[str, T]]:
        """The states of one partition: Faust's own bookkeeping and keys that hold no state left out."""
        for key, raw in self._db(partition).items():
            if key.startswith(FAUST_KEYS_PREFIX) or key.startswith(RESERVED_PREFIX):
                continue
            yield key.decode(), self._decode(raw)

    def keys(self, partition: int) -> Iterator[bytes]:
        """The keys of one partition's states, Faust's own bookkeeping and keys that hold no state left out."""
        for key in self._db(partition).keys():
            if not (key.startswith(FAUST_KEYS_PREFIX) or key.startswith(RESERVED_PREFIX)):
                yield key

    def partitions(self) -> list[int]:
        return sorted(self._table.data._dbs)


def user_store(table: faust.Table, cache_entries: int = 0) -> PartitionedStore[UserState]:
    return PartitionedStore(table, state_codec.decode_user, state_codec.encode_user, cache_entries)


def pair_store(table: faust.Table, cache_entries: int = 0) -> PartitionedStore[PairState]:
    return PartitionedStore(table, state_codec.decode_pair, state_codec.encode_pair, cache_entries)
