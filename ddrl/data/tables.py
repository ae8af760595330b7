"""Logged tables that an algorithm learns from (``algo: bc``): the Parquet files under a location, checked once on
the driver, and each task's contiguous share of their rows, read by the task itself."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

from ddrl.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ParquetTable:
    """The files of a table in a fixed order (their paths' order) with their row counts: what fixes each task's
    rows, so that a retried task reads the same ones."""

    location: str
    files: tuple[str, ...]
    rows: tuple[int, ...]
    columns: tuple[str, ...]
    versions: tuple[tuple[int, int], ...]
    """Each file's size and modification time when it was opened: a worker's cached share is for these files only."""

    @staticmethod
    def open(location: str, columns: list[str], field: str) -> "ParquetTable":
        """The table at ``location`` (a Parquet file, or a directory of them, recursively; names starting with
        ``_`` or ``.`` skipped, as Spark does), needing ``columns``; ``ConfigError`` names ``field`` and the file
        that is unreadable, the column that is missing, or an empty table."""
        try:
            filesystem, path = fs.FileSystem.from_uri(location)
            info = filesystem.get_file_info(path)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{field}: cannot open {location}: {error}") from None
        if info.type == fs.FileType.NotFound:
            raise ConfigError(f"{field}: no such file or directory: {location}")
        if info.type == fs.FileType.File:
            paths = [path]
        else:
            listed = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            paths = sorted(entry.path for entry in listed if entry.type == fs.FileType.File and _visible(entry.path, path))
        if not paths:
            raise ConfigError(f"{field}: no Parquet files in {location}")
        rows = []
        for file in paths:
            try:
                metadata = pq.read_metadata(file, filesystem=filesystem)
            except (OSError, pa.ArrowException) as error:
                raise ConfigError(f"{field}: cannot read {file}: {' '.join(str(error).split())}") from None
            schema = metadata.schema.to_arrow_schema()
            missing = [column for column in columns if schema.get_field_index(column) < 0]
            if missing:
                names = ", ".join(schema.names)
                raise ConfigError(f"{field}: {file} has no column {', '.join(map(repr, missing))} (its columns: {names})")
            rows.append(metadata.num_rows)
        if sum(rows) == 0:
            raise ConfigError(f"{field}: the table at {location} is empty ({len(paths)} files, no rows)")
        versions = tuple((info.size, info.mtime_ns or 0) for info in filesystem.get_file_info(paths))
        return ParquetTable(location, tuple(filesystem.normalize_path(file) for file in paths), tuple(rows), tuple(columns), versions)

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

    def shard(self, task: int, num_tasks: int) -> tuple[pa.Table, list[str]]:
        """Task ``task``'s rows of ``num_tasks`` equal contiguous shares, and the files they come from."""
        filesystem, _ = fs.FileSystem.from_uri(self.location)
        first, last = task * self.num_rows // num_tasks, (task + 1) * self.num_rows // num_tasks
        parts, sources, start = [], [], 0
        for file, rows in zip(self.files, self.rows):
            stop = start + rows
            if start < last and stop > first:
                table = pq.read_table(file, columns=list(self.columns), filesystem=filesystem)
                parts.append(table.slice(max(first - start, 0), min(last, stop) - max(first, start)))
                sources.append(file)
            start = stop
        return pa.concat_tables(parts, promote_options="permissive"), sources


def _visible(file: str, root: str) -> bool:
    relative = file[len(root):].lstrip("/")
    return not any(part.startswith(("_", ".")) for part in relative.split("/"))
