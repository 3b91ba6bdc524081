"""Where a sweep's results go: a local path or a filesystem URI (s3://, gs://, hdfs://, or any fsspec
protocol such as memory://), every file written whole or not at all.

Local paths: a temporary file in the same directory, fsynced, then renamed over the target
(``ipg.files.atomic_write_bytes``). Object stores: one PUT per file (a multipart upload becomes visible
only when it completes), so a reader never sees half a file. Other filesystems: a temporary name, then a
move. pyarrow's own filesystems are used where it knows the scheme; fsspec (when installed) for the rest.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ipg.errors import InputError
from ipg.files import atomic_write_bytes

OBJECT_STORES = ("S3FileSystem", "GcsFileSystem")


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as arrow_error:
        try:
            import fsspec
        except ImportError:
            raise InputError(
                f"out: pyarrow cannot open '{uri}' ({arrow_error}); install fsspec and the package for "
                f"its scheme (e.g. s3fs, gcsfs), or give a local path"
            ) from None
        protocol, path = uri.split("://", 1)
        try:
            fs = fsspec.filesystem(protocol)
        except (ImportError, ValueError) as e:
            raise InputError(
                f"out: no filesystem for '{protocol}://' ({e}); install its fsspec package or give a local path"
            ) from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


class Store:
    """Files under one root (local path or URI), written atomically; names are '/'-separated relative paths."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = _filesystem(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.root, recursive=True)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def write_bytes(self, name: str, data: bytes) -> str:
        target = self.path(name)
        if self.local:
            atomic_write_bytes(target, data)
            return target
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if type(self.fs).__name__ in OBJECT_STORES:  # one object, visible only once complete
            with self.fs.open_output_stream(target) as f:
                f.write(data)
            return target
        tmp = f"{parent}/.{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, target)
        return target

    def write_json(self, name: str, obj) -> str:
        return self.write_bytes(name, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode())

    def write_parquet(self, name: str, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return self.write_bytes(name, buf.getvalue())

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type == pafs.FileType.File

    def read_bytes(self, name: str) -> bytes | None:
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read()

    def read_json(self, name: str):
        data = self.read_bytes(name)
        return None if data is None else json.loads(data)

    def read_parquet(self, name: str) -> pa.Table:
        return pq.read_table(self.path(name), filesystem=self.fs)

    def list(self, prefix: str) -> list[str]:
        """Relative names of the files under ``prefix`` (none when it does not exist); temporaries skipped."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True))
        root = self.root.strip("/") + "/"  # some filesystems answer with a leading '/', some without
        return sorted(
            i.path.lstrip("/")[len(root) :]
            for i in info
            if i.type == pafs.FileType.File and not i.base_name.startswith(".")
        )
