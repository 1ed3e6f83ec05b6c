"""The content-addressed blob store: addressing, dedupe, atomic and durable writes, lookup errors."""

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from hub.store.blobs import BlobNotFound, BlobStore, sha256_uri

INSTANCE = "患者 王秀英 的胸部CT".encode("gb18030") + bytes(range(256)) * 40


def temporary_files(blobs: BlobStore) -> list[Path]:
    return [p for p in blobs.root.rglob(".*") if p.is_file()]


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_a_blob_is_addressed_by_the_sha256_of_its_bytes(blobs: BlobStore) -> None:
    digest = hashlib.sha256(INSTANCE).hexdigest()
    blob = blobs.put(INSTANCE)
    assert (blob.uri, blob.sha256, blob.size) == (f"urn:sha256:{digest}", digest, len(INSTANCE))
    assert blob.uri == sha256_uri(digest)
    assert blob.path == blobs.path(blob.uri)
    assert blob.path.relative_to(blobs.root).parts == ("sha256", digest[:2], digest)
    assert blobs.read(blob.uri) == INSTANCE
    assert blob.uri in blobs
    assert blobs.put(bytearray(INSTANCE)).uri == blobs.put(memoryview(INSTANCE)).uri == blob.uri


def test_parts_are_stored_as_the_one_blob_of_their_bytes_in_order(blobs: BlobStore) -> None:
    head, tail = INSTANCE[:132], memoryview(bytearray(INSTANCE[132:]))
    parted = blobs.put(head, tail)
    assert (parted.sha256, parted.size) == (hashlib.sha256(INSTANCE).hexdigest(), len(INSTANCE))
    assert blobs.read(parted.uri) == INSTANCE
    assert blobs.put(INSTANCE) == parted
    assert blobs.put(tail, head).uri != parted.uri
    wide = memoryview(bytearray(8)).cast("I")  # not a byte format: its bytes count, not its items
    assert blobs.read(blobs.put(b"x", wide).uri) == b"x" + bytes(8)


def test_the_same_bytes_are_stored_once(blobs: BlobStore) -> None:
    first = blobs.put(INSTANCE)
    written = first.path.stat().st_mtime_ns
    os.utime(first.path, ns=(written - 10**9, written - 10**9))  # a rewrite would show as a new mtime
    second = blobs.put(INSTANCE)
    assert second == first
    assert first.path.stat().st_mtime_ns == written - 10**9
    assert sorted(p.name for p in (blobs.root / "sha256").rglob("*") if p.is_file()) == [first.sha256]
    other = blobs.put(INSTANCE + b"\x00")
    assert other.uri != first.uri and blobs.read(other.uri) == INSTANCE + b"\x00"


def test_concurrent_puts_of_the_same_bytes_leave_one_whole_file(blobs: BlobStore) -> None:
    start = threading.Barrier(8)
    uris: list[str] = []

    def put() -> None:
        start.wait()
        uris.append(blobs.put(INSTANCE).uri)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(uris)) == 1
    assert blobs.read(uris[0]) == INSTANCE
    assert temporary_files(blobs) == []


def test_a_failed_write_leaves_no_partial_blob(blobs: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    uri = sha256_uri(hashlib.sha256(INSTANCE).hexdigest())
    during: list[tuple[bool, int]] = []

    def crash_mid_write(fd: int) -> None:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return real_fsync(fd)  # the directories made for the blob
        # The bytes are written to the temporary file, not yet renamed: nothing is visible under the URI.
        during.append((uri in blobs, os.fstat(fd).st_size))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash_mid_write)
    with pytest.raises(OSError, match="No space"):
        blobs.put(INSTANCE)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert during == [(False, len(INSTANCE))]
    assert uri not in blobs
    assert temporary_files(blobs) == []  # the temporary file is gone too
    assert blobs.read(blobs.put(INSTANCE).uri) == INSTANCE  # and a retry stores it whole


def test_fsync_covers_the_file_and_every_directory_made_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    opened: dict[int, str] = {}
    real_open = os.open

    def tracking_open(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        opened[fd] = str(path)
        return fd

    def tracking_fsync(fd: int) -> None:
        synced.append(opened[fd])
        real_fsync(fd)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", tracking_fsync)
    blobs = BlobStore(tmp_path / "blobs")
    blob = blobs.put(INSTANCE)
    leaf = blob.path.parent
    temporary = [n for n, path in enumerate(synced) if Path(path).parent == leaf and Path(path).name.startswith(".")]
    assert len(temporary) == 1  # the data, written to a temporary file beside its final name
    assert synced[-1] == str(leaf) and temporary[0] < len(synced) - 1  # then the rename
    for made in (leaf, leaf.parent, blobs.root):  # each new directory's entry in its parent
        assert str(made.parent) in synced
    assert sorted(p.name for p in leaf.parent.iterdir()) == [f"{n:02x}" for n in range(256)]  # made at once
    synced.clear()
    BlobStore(tmp_path / "fast", fsync=False).put(INSTANCE)
    assert synced == []


def test_lookups_of_unknown_or_malformed_uris_raise_blob_not_found(blobs: BlobStore) -> None:
    absent = sha256_uri("0" * 64)
    for uri in (absent, "urn:sha256:xyz", "urn:oid:1.2.3", f"{absent}/../../etc/passwd", ""):
        with pytest.raises(BlobNotFound):
            blobs.path(uri)
        with pytest.raises(BlobNotFound):
            blobs.read(uri)
        assert uri not in blobs
    assert 42 not in blobs
