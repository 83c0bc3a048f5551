"""The state tables open RocksDB with bounded memory (Faust's defaults are 64 MiB
memtables and a 2 GiB block cache per partition database)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from topology.settings import Settings
from streams.runtime.app import create_app
from streams.runtime.store import create_tables


def test_tables_use_the_configured_rocksdb_memory(tmp_path):
    settings = replace(Settings(), data_dir=tmp_path, rocksdb_write_buffer_mb=4, rocksdb_block_cache_mb=16, metrics_port=0)
    app = create_app(settings)
    for table in create_tables(app, settings):
        options = table.data.rocksdb_options
        assert options.write_buffer_size == 4 * 2**20
        assert options.max_write_buffer_number == 2
        assert options.block_cache_size == 16 * 2**20
        rocks = options.as_options()  # what RocksDB is opened with
        assert rocks is not None


def test_batches_load_through_a_bounded_write_through_cache(tmp_path):
    from streams.state import UserState
    from streams import state_codec
    from streams.runtime.store import user_store

    settings = replace(Settings(), data_dir=tmp_path, metrics_port=0)
    users_table, _ = create_tables(create_app(settings), settings)
    store = user_store(users_table, cache_entries=2)
    assert store.load(0, "ann") is None
    store.put(0, "ann", UserState(own=1.0))
    store.put(0, "bob", UserState(own=2.0))
    put = UserState(own=1.0)
    store.put(0, "ann", put)
    ann = store.load(0, "ann")
    assert ann is put  # what was written, not a fresh decode
    ann.own = 5.0  # a batch changes it in place ...
    assert store.get(0, "ann").own == 1.0  # ... RocksDB keeps what was put
    store.put(0, "ann", ann)
    assert store.get(0, "ann").own == 5.0 and store.load(0, "ann") is ann
    # A batch that changes a state in place (time decays it) but applies nothing that counts does not
    # write it: the next batch must read what RocksDB holds, not the object the last one changed.
    ann.own = 7.0
    again = store.load(0, "ann")
    assert again is not ann and again.own == 5.0
    store.put(0, "ann", again)
    store.put(0, "bob", UserState(own=2.0))
    store.put(1, "cid", UserState(own=3.0))  # a third entry evicts the least recently written (ann)
    assert (0, "ann") not in store._cache and store.load(0, "ann").own == 5.0
    store.put(0, "ann", UserState(own=1.0))
    # a write behind the cache (Faust restoring a changelog) is seen at once
    ann_now = store.load(0, "ann")
    store._db(0).put(b"ann", state_codec.encode_user(UserState(own=9.0)))
    assert store.load(0, "ann").own == 9.0 and store.load(0, "ann") is not ann_now
    store.forget()
    assert not store._cache and store.load(0, "ann").own == 9.0


def test_a_prefix_is_found_with_one_seek_whatever_else_the_partition_holds(tmp_path):
    from streams import batch
    from streams.state import PairState
    from streams.runtime.store import pair_store

    settings = replace(Settings(), data_dir=tmp_path, metrics_port=0)
    _, pairs_table = create_tables(create_app(settings), settings)
    store = pair_store(pairs_table)
    store.put(0, "ann\x1fbob", PairState("ann", "bob"))
    store.put(0, batch.CLOCK_KEY, batch.Raw(b"\x00" * 8))
    assert not store.has_key_with_prefix(0, batch.ERASED_PREFIX)  # keys before and after it, none with it
    store.put(1, batch.ERASED_PREFIX + "cid", batch.Raw(b"\x00" * 8))
    assert store.has_key_with_prefix(1, batch.ERASED_PREFIX) and not store.has_key_with_prefix(0, batch.ERASED_PREFIX)
    assert not store.has_key_with_prefix(2, batch.ERASED_PREFIX)  # an empty partition


def _options_file(db_path) -> dict[str, str]:
    """The column family options RocksDB wrote for a database (its newest OPTIONS file)."""
    newest = sorted(db_path.glob("OPTIONS-*"))[-1]
    pairs = (line.strip().split("=", 1) for line in newest.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def test_table_files_are_compressed_as_configured(tmp_path):
    from streams import runtime

    runtime.install(Settings())  # the options patch (store.PATCHES), as a worker has it; alone, this test ran without
    for compression, expected in (("zstd", "kZSTD"), ("lz4", "kLZ4Compression"), ("none", "kNoCompression")):
        settings = replace(Settings(), data_dir=tmp_path / compression, rocksdb_compression=compression,
                           rocksdb_level0_compaction_trigger=3, metrics_port=0)  # fmt: skip
        app = create_app(settings)
        users, _ = create_tables(app, settings)
        path = tmp_path / compression / "users-0.db"
        db = users.data.rocksdb_options.open(path)  # as Faust opens each partition's database
        db[b"u1"] = b"state" * 50
        db.close()
        written = _options_file(path)
        assert written["compression"] == expected
        assert written["level0_file_num_compaction_trigger"] == "3"
        if compression == "zstd":
            # A dictionary for the bottommost level only (Settings.rocksdb_compression says why).
            assert written["bottommost_compression"] == "kZSTD"
            assert "max_dict_bytes=16384" in written["bottommost_compression_opts"]
            assert "max_dict_bytes=0" in written["compression_opts"]


def test_a_batch_s_writes_are_put_back_as_it_loaded_them(tmp_path):
    from streams.state import UserState
    from streams.runtime.store import user_store

    settings = replace(Settings(), data_dir=tmp_path, metrics_port=0)
    users_table, _ = create_tables(create_app(settings), settings)
    store = user_store(users_table, cache_entries=8)
    store.put(0, "ann", UserState(own=1.0))
    was = store.load_raw(0, "ann")
    writes = [(0, "ann", UserState(own=2.0)), (1, "bob", UserState(own=3.0)), (0, "ann", UserState(own=4.0))]
    store.begin()
    assert store.load(0, "ann").own == 1.0 and store.load(1, "bob") is None  # the batch loads them
    store._db(0).put(b"ann", b"not what the batch loaded")  # (nothing writes between a load and before(): shows what is used)
    before = store.before(writes)
    assert before[0] == (0, "ann", was) and before[1] == (1, "bob", None)
    assert store.before(writes)[0] == (0, "ann", b"not what the batch loaded"), "once a batch is over, RocksDB is read"
    for partition, key, state in writes:
        store.put(partition, key, state)
    assert store.load(0, "ann").own == 4.0 and store.load(1, "bob").own == 3.0
    store.restore(before)
    assert store.load_raw(0, "ann") == was and store.load(0, "ann").own == 1.0  # the first entry wins
    assert store.load_raw(1, "bob") is None  # no state before: none now


def test_a_state_larger_than_a_changelog_takes_is_refused_before_it_is_written(tmp_path, monkeypatch):
    from streams.runtime import store as store_module
    from streams.state import FriendEntry, UserState

    settings = replace(Settings(), data_dir=tmp_path, metrics_port=0)
    users_table, _ = create_tables(create_app(settings), settings)
    store = store_module.user_store(users_table)
    monkeypatch.setattr(store_module, "STATE_MAX_BYTES", 200)  # 16 MiB less framing in production
    hub = UserState(own=1.0, friends={f"friend-{n}": FriendEntry(weight=1.0) for n in range(50)})
    with pytest.raises(store_module.StateTooLarge, match="'hub'"):
        store.put(0, "hub", hub)
    assert store.load_raw(0, "hub") is None


async def test_faust_waits_a_second_before_registering_tables(tmp_path):
    """Upstream, ``TableManager.on_start`` sleeps 1 s before registering the tables, and the conductor
    subscribes the consumer only after that: every start and restart waited a second for nothing.
    The patch (store.TABLES_ON_START) registers them at once; every worker the integration tests
    start runs it (it needs a started consumer, so it is not run here)."""
    import asyncio

    from streams import runtime
    from streams.runtime.store import TABLES_ON_START

    settings = replace(Settings(), data_dir=tmp_path, metrics_port=0)
    app = create_app(settings)
    create_tables(app, settings)
    starting = asyncio.ensure_future(TABLES_ON_START.original(app.tables))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(app.tables.wait_until_tables_registered(), timeout=0.8)
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    runtime.install(Settings())
    assert TABLES_ON_START.applied
