"""The state tables open RocksDB with bounded memory (Faust's defaults are 64 MiB
memtables and a 2 GiB block cache per partition database)."""

from __future__ import annotations

from dataclasses import replace

from standing.settings import Settings
from streams.app import create_app
from streams.tables import create_tables


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
