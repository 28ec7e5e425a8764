"""The embedded store shared by the modules that keep data. See docs/store.md."""

from .base import MigrationStep, Op, Store
from .datadir import DataDirLock, default_data_dir, prepare_data_dir, resolve_data_dir
from .sqlite import DB_FILE, SqliteStore, StoreStats

__all__ = ["DB_FILE", "DataDirLock", "MigrationStep", "Op", "SqliteStore", "Store", "StoreStats",
           "default_data_dir", "prepare_data_dir", "resolve_data_dir"]
