"""A content-addressed blob store on the filesystem: DICOM instances and source messages.

    blobs = BlobStore(data_dir / "blobs")
    blob = blobs.put(data)            # Blob(uri="urn:sha256:<hex>", ...), on disk when it returns
    blobs.read(blob.uri)

Each blob is written to a temporary file, flushed to disk (``fsync``) and
renamed into place, so a reader never sees half a file and a crash leaves
either the whole blob or none. The same bytes are stored once. A URI is
``urn:sha256:<64 hex digits>``, which is what ``Source.uri`` and attachment URIs
carry.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hub.errors import HubError

__all__ = ["Blob", "BlobNotFound", "BlobStore", "sha256_uri"]

_URI = re.compile(r"urn:sha256:([0-9a-f]{64})")


class BlobNotFound(HubError):
    """No blob has that URI in this store."""


@dataclass(frozen=True, slots=True)
class Blob:
    uri: str
    sha256: str
    size: int
    path: Path


def sha256_uri(digest: str) -> str:
    return f"urn:sha256:{digest}"


class BlobStore:
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._tmp = self.root / "tmp"

    def _path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes | bytearray | memoryview) -> Blob:
        """Store ``data``; returns once it is durably on disk (when fsync is on)."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            self._write(path, data)
        return Blob(sha256_uri(digest), digest, len(data), path)

    def _write(self, path: Path, data: bytes | bytearray | memoryview) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                if self.fsync:
                    tmp.flush()
                    os.fsync(tmp.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(path.parent)

    def path(self, uri: str) -> Path:
        """Where the blob with ``uri`` lies; BlobNotFound when this store has none."""
        match = _URI.fullmatch(uri)
        if match is None:
            raise BlobNotFound(f"{uri!r} is not a urn:sha256: blob URI")
        path = self._path(match.group(1))
        if not path.is_file():
            raise BlobNotFound(f"no blob {uri} in {self.root}")
        return path

    def read(self, uri: str) -> bytes:
        return self.path(uri).read_bytes()

    def __contains__(self, uri: object) -> bool:
        try:
            return isinstance(uri, str) and self.path(uri) is not None
        except BlobNotFound:
            return False


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
