"""Delta Lake tables: each run is committed to its tables exactly once.

(Filled in below.)
"""

from __future__ import annotations

TABLE_RUN_COLUMN = "logger_path"
"""The string column in which every table row carries the run (logger directory) it came from."""
