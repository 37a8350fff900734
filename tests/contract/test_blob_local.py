"""The blob contract against ``LocalBlobStore``, plus what only a local directory can show:
symlink escapes, crashed writes, and cross-process races on the lock files."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.blobs.local import INTERNAL_DIR, LocalBlobStore
from shared.blobs.port import BlobContent, BlobProperties, BlobStore
from shared.blobs.transfer import download_prefix, upload_directory
from shared.errors import (
    BlobConditionFailedError,
    BlobExistsError,
    BlobLeasedError,
    BlobLeaseLostError,
    BlobNotFoundError,
    InvalidBlobNameError,
)
from tests.contract.blob_contract import BlobStoreContract

# Spawned, not forked: the children start clean, as separate worker processes would.
MP = multiprocessing.get_context("spawn")
CRASH_EXIT = 17
PROCESS_TIMEOUT_S = 60


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> BlobStore:
        return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def store(root: Path) -> LocalBlobStore:
    return LocalBlobStore(root)


def _all_files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


# -- layout and persistence ----------------------------------------------------------------


def test_nothing_is_created_until_a_write(root: Path) -> None:
    store = LocalBlobStore(root)
    with pytest.raises(BlobNotFoundError):
        store.download_blob("box/a.txt")
    with pytest.raises(BlobNotFoundError):
        store.get_blob_properties("box/a.txt")
    with pytest.raises(BlobNotFoundError):
        store.delete_blob("box/a.txt")
    assert list(store.list_blobs("box/")) == []
    assert not root.exists()

    store.upload_blob("box/a.txt", b"x")
    assert root.is_dir()


def test_a_blob_is_a_plain_file_under_root(store: LocalBlobStore, root: Path) -> None:
    store.upload_blob("box/dir/data.csv", b"a,b\n1,2\n")
    assert (root / "box" / "dir" / "data.csv").read_bytes() == b"a,b\n1,2\n"
    # Everything else lives in the internal directory, which no container name can reach.
    assert {p.name for p in root.iterdir()} == {"box", INTERNAL_DIR}
    assert _all_files(root / "box") == ["dir/data.csv"]


def test_etags_survive_a_restart(root: Path) -> None:
    first = LocalBlobStore(root).upload_blob("box/a.txt", b"v1")
    again = LocalBlobStore(root)
    assert again.get_blob_properties("box/a.txt") == first
    assert [p.etag for p in again.list_blobs("box/")] == [first.etag]
    again.upload_blob("box/a.txt", b"v2", if_match=first.etag)
    with pytest.raises(BlobConditionFailedError):
        LocalBlobStore(root).upload_blob("box/a.txt", b"v3", if_match=first.etag)


def test_a_file_put_there_by_hand_is_a_blob(store: LocalBlobStore, root: Path) -> None:
    (root / "box").mkdir(parents=True)
    (root / "box" / "manual.csv").write_bytes(b"1,2\n")
    props = store.get_blob_properties("box/manual.csv")
    assert props.size == 4
    assert store.get_blob_properties("box/manual.csv").etag == props.etag
    assert [p.etag for p in store.list_blobs("box/")] == [props.etag]

    (root / "box" / "manual.csv").write_bytes(b"1,2\n3,4\n")  # changed by hand, too
    changed = store.get_blob_properties("box/manual.csv")
    assert changed.etag != props.etag
    store.upload_blob("box/manual.csv", b"new", if_match=changed.etag)
    with pytest.raises(BlobConditionFailedError):
        store.upload_blob("box/manual.csv", b"newer", if_match=changed.etag)


def test_a_blob_cannot_also_be_a_directory(store: LocalBlobStore) -> None:
    store.upload_blob("box/a", b"file")
    with pytest.raises(InvalidBlobNameError):
        store.upload_blob("box/a/b", b"below a file")
    assert store.download_blob("box/a").data == b"file"

    store.upload_blob("box/d/e/f", b"deep")
    with pytest.raises(InvalidBlobNameError):
        store.upload_blob("box/d", b"over a directory")
    assert store.download_blob("box/d/e/f").data == b"deep"

    # Once the blobs below are gone, the name is free (empty directories do not count).
    store.delete_blob("box/d/e/f")
    store.upload_blob("box/d", b"now a file")
    assert [p.name for p in store.list_blobs("box/")] == ["box/a", "box/d"]


def test_an_empty_directory_left_behind_does_not_block_a_blob(
    store: LocalBlobStore, root: Path
) -> None:
    (root / "box" / "name" / "sub").mkdir(parents=True)
    store.upload_blob("box/name", b"x")
    assert store.download_blob("box/name").data == b"x"


def test_overlong_path_segment_is_refused(store: LocalBlobStore) -> None:
    with pytest.raises(InvalidBlobNameError):
        store.upload_blob("box/" + "x" * 256, b"x")
    store.upload_blob("box/" + "x" * 255, b"x")


# -- symlinks ------------------------------------------------------------------------------


def test_symlink_escapes_are_refused(store: LocalBlobStore, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    store.upload_blob("box/inside.txt", b"inside")
    (root / "box" / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "box" / "link.txt").symlink_to(outside / "secret.txt")
    (root / "evil").symlink_to(outside, target_is_directory=True)

    for name in ("box/linkdir/secret.txt", "box/link.txt", "evil/secret.txt"):
        with pytest.raises(InvalidBlobNameError):
            store.download_blob(name)
        with pytest.raises(InvalidBlobNameError):
            store.get_blob_properties(name)
        with pytest.raises(InvalidBlobNameError):
            store.upload_blob(name, b"overwritten")
        with pytest.raises(InvalidBlobNameError):
            store.delete_blob(name)
    for name in ("box/linkdir/new.txt", "evil/new.txt"):
        with pytest.raises(InvalidBlobNameError):
            store.upload_blob(name, b"planted")
    with pytest.raises(InvalidBlobNameError):
        list(store.list_blobs("evil/"))

    assert _all_files(outside) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    # Listing does not follow the links out either.
    assert [p.name for p in store.list_blobs("box/")] == ["box/inside.txt"]


# -- crashes -------------------------------------------------------------------------------


def _crash_during_upload(root: Path, name: str, data: bytes, crash_at_replace: int) -> None:
    """Upload, but die without any cleanup at the n-th os.replace (1: data, 2: metadata)."""
    real_replace = os.replace
    calls = 0

    def replace(src: Any, dst: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == crash_at_replace:
            os._exit(CRASH_EXIT)
        real_replace(src, dst)

    os.replace = replace  # type: ignore[assignment]
    LocalBlobStore(root).upload_blob(name, data)


def _run(target: Callable[..., None], *args: Any) -> int | None:
    process = MP.Process(target=target, args=args)
    process.start()
    process.join(PROCESS_TIMEOUT_S)
    if process.is_alive():
        process.kill()
    return process.exitcode


def test_a_write_that_crashes_before_the_rename_leaves_the_old_blob(
    store: LocalBlobStore, root: Path
) -> None:
    old = store.upload_blob("box/a.txt", b"old content")
    files_before = _all_files(root)

    exitcode = _run(_crash_during_upload, root, "box/a.txt", b"NEW" * 1000, 1)

    assert exitcode == CRASH_EXIT
    assert len(_all_files(root)) > len(files_before)  # the crash did leave a temp file
    assert [p.name for p in store.list_blobs("box/")] == ["box/a.txt"]
    content = store.download_blob("box/a.txt")
    assert content.data == b"old content"
    assert content.properties.etag == old.etag
    store.upload_blob("box/a.txt", b"after", if_match=old.etag)
    assert store.download_blob("box/a.txt").data == b"after"


def test_a_write_that_crashes_between_data_and_etag_gets_a_new_etag(
    store: LocalBlobStore,
) -> None:
    old = store.upload_blob("box/a.txt", b"old content")

    exitcode = _run(_crash_during_upload, store.root, "box/a.txt", b"new content", 2)

    assert exitcode == CRASH_EXIT
    content = store.download_blob("box/a.txt")
    assert content.data == b"new content"
    # The old etag must not name the new bytes, and the etag is stable until the next write.
    assert content.properties.etag != old.etag
    assert store.get_blob_properties("box/a.txt").etag == content.properties.etag
    with pytest.raises(BlobConditionFailedError):
        store.upload_blob("box/a.txt", b"stale writer", if_match=old.etag)
    store.upload_blob("box/a.txt", b"fresh writer", if_match=content.properties.etag)
    assert store.download_blob("box/a.txt").data == b"fresh writer"


# -- races between processes ---------------------------------------------------------------


def _create_only(root: Path, tag: str, rounds: int, barrier: Any, wins_file: Path) -> None:
    store = LocalBlobStore(root)
    wins = []
    for i in range(rounds):
        barrier.wait(PROCESS_TIMEOUT_S)
        try:
            store.upload_blob(f"box/race-{i}", tag.encode(), overwrite=False)
        except BlobExistsError:
            continue
        wins.append(i)
    wins_file.write_text(json.dumps(wins))


def _race(
    rounds_of: Callable[[Path, str, int, Any, Path], None],
    store: LocalBlobStore,
    tmp_path: Path,
    rounds: int,
    tags: list[str],
) -> dict[str, set[int]]:
    """Runs ``rounds_of`` in one process per tag, in step (a barrier per round); the rounds
    each tag won."""
    barrier = MP.Barrier(len(tags))
    processes = [
        MP.Process(
            target=rounds_of, args=(store.root, tag, rounds, barrier, tmp_path / f"{tag}.json")
        )
        for tag in tags
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(PROCESS_TIMEOUT_S)
    assert [p.exitcode for p in processes] == [0] * len(tags)
    return {tag: set(json.loads((tmp_path / f"{tag}.json").read_text())) for tag in tags}


def test_concurrent_create_only_writes_have_exactly_one_winner(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    rounds, tags = 30, ["p0", "p1"]
    wins = _race(_create_only, store, tmp_path, rounds, tags)
    for i in range(rounds):
        winners = [tag for tag in tags if i in wins[tag]]
        assert len(winners) == 1, f"round {i}: winners {winners}"
        assert store.download_blob(f"box/race-{i}").data == winners[0].encode()


def _increment(root: Path, name: str, times: int, barrier: Any) -> None:
    store = LocalBlobStore(root)
    barrier.wait(PROCESS_TIMEOUT_S)
    for _ in range(times):
        while True:
            current = store.download_blob(name)
            value = json.loads(current.data)
            try:
                store.upload_blob(
                    name, json.dumps(value + 1).encode(), if_match=current.properties.etag
                )
                break
            except BlobConditionFailedError:
                time.sleep(random.uniform(0, 0.002))  # back off: another process won this round


def test_concurrent_if_match_updates_lose_nothing(store: LocalBlobStore) -> None:
    workers, times = 4, 50
    store.upload_blob("box/counter.json", b"0")
    barrier = MP.Barrier(workers)
    processes = [
        MP.Process(target=_increment, args=(store.root, "box/counter.json", times, barrier))
        for _ in range(workers)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(PROCESS_TIMEOUT_S)
    assert [p.exitcode for p in processes] == [0] * workers
    assert json.loads(store.download_blob("box/counter.json").data) == workers * times


def _lease_rounds(root: Path, tag: str, rounds: int, barrier: Any, wins_file: Path) -> None:
    store = LocalBlobStore(root)
    wins = []
    for i in range(rounds):
        barrier.wait(PROCESS_TIMEOUT_S)
        try:
            store.acquire_blob_lease(f"box/lock-{i}", duration_s=60)
        except BlobLeasedError:
            continue
        wins.append(i)
    wins_file.write_text(json.dumps(wins))


def test_concurrent_lease_requests_have_exactly_one_winner(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    rounds, tags = 30, ["p0", "p1"]
    for i in range(rounds):
        store.upload_blob(f"box/lock-{i}", b"")
    wins = _race(_lease_rounds, store, tmp_path, rounds, tags)
    for i in range(rounds):
        assert len([tag for tag in tags if i in wins[tag]]) == 1, f"round {i}"


# -- leases on the clock ------------------------------------------------------------------


def test_a_lease_expires_after_its_duration_and_renewing_restarts_it(root: Path) -> None:
    now = [1000.0]
    store = LocalBlobStore(root, clock=lambda: now[0])
    store.upload_blob("box/lock", b"")
    lease = store.acquire_blob_lease("box/lock", duration_s=15)
    now[0] += 14
    with pytest.raises(BlobLeasedError):
        store.acquire_blob_lease("box/lock", duration_s=15)
    store.renew_blob_lease("box/lock", lease)
    now[0] += 14
    with pytest.raises(BlobLeasedError):
        store.upload_blob("box/lock", b"x")

    now[0] += 1  # 15 s after the renewal: expired, but nobody has leased it since
    store.upload_blob("box/lock", b"x")
    store.renew_blob_lease("box/lock", lease)  # as on Azure: still ours to renew
    with pytest.raises(BlobLeasedError):
        store.acquire_blob_lease("box/lock", duration_s=15)

    now[0] += 15
    taken = store.acquire_blob_lease("box/lock", duration_s=15)
    with pytest.raises(BlobLeaseLostError):
        store.renew_blob_lease("box/lock", lease)
    store.release_blob_lease("box/lock", lease)
    with pytest.raises(BlobLeasedError):
        store.delete_blob("box/lock")
    store.release_blob_lease("box/lock", taken)
    store.delete_blob("box/lock")
    assert not any((root / INTERNAL_DIR / "leases").rglob("*.json")), "no lease left behind"


def test_a_lease_on_a_deleted_blob_is_lost(store: LocalBlobStore) -> None:
    store.upload_blob("box/lock", b"")
    lease = store.acquire_blob_lease("box/lock", duration_s=15)
    store.release_blob_lease("box/lock", lease)
    store.delete_blob("box/lock")
    store.upload_blob("box/lock", b"")
    with pytest.raises(BlobLeaseLostError):
        store.renew_blob_lease("box/lock", lease)


# -- transfer helpers: what a well-behaved store cannot produce -----------------------------


class _ListedNamesStore:
    """A store that lists whatever names it is given (as a foreign Azure container might)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.downloads: list[str] = []

    def _props(self, name: str) -> BlobProperties:
        return BlobProperties(name, "etag", 4, datetime.now(UTC))

    def upload_blob(
        self, name: str, data: bytes, *, overwrite: bool = True, if_match: str | None = None
    ) -> BlobProperties:
        raise AssertionError("not expected")

    def download_blob(self, name: str) -> BlobContent:
        self.downloads.append(name)
        return BlobContent(self._props(name), b"evil")

    def get_blob_properties(self, name: str) -> BlobProperties:
        return self._props(name)

    def list_blobs(self, prefix: str) -> Iterator[BlobProperties]:
        return iter([self._props(n) for n in self.names if n.startswith(prefix)])

    def delete_blob(self, name: str, *, if_match: str | None = None) -> None:
        raise AssertionError("not expected")

    def acquire_blob_lease(self, name: str, *, duration_s: int) -> str:
        raise AssertionError("not expected")

    def renew_blob_lease(self, name: str, lease_id: str) -> None:
        raise AssertionError("not expected")

    def release_blob_lease(self, name: str, lease_id: str) -> None:
        raise AssertionError("not expected")


@pytest.mark.parametrize(
    "name",
    ["box/in/../../evil", "box/in//tmp/evil", "box/in/a/../../../evil", "box/in/a\\..\\..\\evil"],
)
def test_download_prefix_refuses_to_write_outside_dest(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "work" / "dest"
    fake = _ListedNamesStore([name])
    with pytest.raises(InvalidBlobNameError):
        download_prefix(fake, "box/in/", dest)
    assert fake.downloads == []
    assert _all_files(tmp_path) == []


def test_download_prefix_refuses_a_symlink_in_dest(store: LocalBlobStore, tmp_path: Path) -> None:
    store.upload_blob("box/in/link/x", b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidBlobNameError):
        download_prefix(store, "box/in/", dest)
    assert _all_files(outside) == []


def test_download_prefix_refuses_a_file_symlinked_out_of_dest(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    # Its parent directory is inside dest; only the file itself points out.
    store.upload_blob("box/in/sub/a", b"new a")
    store.upload_blob("box/in/sub/x", b"new x")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "x").symlink_to(outside)
    with pytest.raises(InvalidBlobNameError):
        download_prefix(store, "box/in/", dest)
    assert outside.read_bytes() == b"keep"
    assert not (dest / "sub" / "a").exists()


def test_upload_directory_validates_every_name_before_uploading(
    store: LocalBlobStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-good.txt").write_bytes(b"x")
    (src / "back\\slash.txt").write_bytes(b"x")
    with pytest.raises(InvalidBlobNameError):
        upload_directory(store, src, "box/out")
    assert list(store.list_blobs("box/")) == []


def test_upload_directory_stops_at_a_leased_blob_and_reports_what_it_wrote(
    root: Path, tmp_path: Path
) -> None:
    created: list[str] = []
    store = LocalBlobStore(root, on_blob_created=lambda props: created.append(props.name))
    store.upload_blob("box/out/b.txt", b"old")
    store.acquire_blob_lease("box/out/b.txt", duration_s=60)
    created.clear()
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (src / name).write_bytes(name.encode())

    with pytest.raises(BlobLeasedError):
        upload_directory(store, src, "box/out")

    assert store.download_blob("box/out/b.txt").data == b"old"
    written = sorted(p.name for p in store.list_blobs("box/out/") if p.name != "box/out/b.txt")
    # Whatever was written before the error stopped the upload was announced, each once.
    assert sorted(created) == written
    for name in written:
        assert store.download_blob(name).data == name.rsplit("/", 1)[1].encode()
