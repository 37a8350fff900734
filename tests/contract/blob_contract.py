"""The behaviour every ``BlobStore`` adapter must have, written only against the port.

An adapter's test module subclasses ``BlobStoreContract`` and provides the ``store`` fixture
(and, where containers must be created up front, overrides ``container`` and
``other_container`` to create fresh ones). The default container names are unique per test,
so a store shared between tests (an Azurite account) needs no cleanup between them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.blobs.port import BlobProperties, BlobStore
from shared.blobs.transfer import digest_prefix, download_prefix, holds_blobs, upload_directory
from shared.errors import (
    BlobConditionFailedError,
    BlobExistsError,
    BlobLeasedError,
    BlobLeaseLostError,
    BlobNotFoundError,
    InvalidBlobNameError,
)

# Templates: ``{c}`` is replaced by a valid container name.
INVALID_NAMES = [
    "",
    "{c}",
    "{c}/",
    "/{c}/x",
    "{c}/../x",
    "{c}/a/../../x",
    "{c}/./x",
    "{c}/a/.",
    "{c}//x",
    "{c}/x/",
    "{c}/a\\b",
    "{c}/..\\x",
    "{c}/a\x00b",
    "{c}/a\nb",
    "{c}/a\tb",
    "{c}/" + "x" * 1100,
    "ab/x",
    "Upper/x",
    "under_score/x",
    "-leading/x",
    "trailing-/x",
    "double--hyphen/x",
    "c" * 64 + "/x",
    "../x",
    "./x",
]

INVALID_PREFIXES = ["", "/{c}/", "Upper/", "ab/", "{c}//", "{c}/a//b", "{c}/..", "{c}/../x"]

# Clocks and file-system timestamp granularity differ; this only catches a wrong time zone or
# a timestamp that is not the write time at all.
CLOCK_TOLERANCE = timedelta(minutes=2)


def _names(blobs: Iterable[BlobProperties]) -> list[str]:
    return [p.name for p in blobs]


class BlobStoreContract:
    @pytest.fixture
    def store(self) -> BlobStore:
        raise NotImplementedError("an adapter's test class provides the `store` fixture")

    @pytest.fixture
    def container(self) -> str:
        return f"ct-{uuid.uuid4().hex[:20]}"

    @pytest.fixture
    def other_container(self, container: str) -> str:
        return f"{container}-b"

    # -- round trips -----------------------------------------------------------------------

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"hello",
            bytes(range(256)) * 64,
            b"\x00\r\n\x00\xff\xfe" * 1000,
        ],
        ids=["empty", "text", "all-bytes", "crlf-nul"],
    )
    def test_round_trip(self, store: BlobStore, container: str, data: bytes) -> None:
        name = f"{container}/dir/sub/blob.bin"
        props = store.upload_blob(name, data)
        assert props.name == name
        assert props.size == len(data)

        content = store.download_blob(name)
        assert content.data == data
        assert content.properties.name == name
        assert content.properties.size == len(data)
        assert content.properties.etag == props.etag

    @pytest.mark.parametrize(
        "path", ["a", "with space.csv", "ünïcødé/名前.txt", "a-b_c.d/e+f=g(1)", "deep/" * 20 + "x"]
    )
    def test_unusual_but_valid_names(self, store: BlobStore, container: str, path: str) -> None:
        name = f"{container}/{path}"
        store.upload_blob(name, path.encode())
        assert store.download_blob(name).data == path.encode()
        assert _names(store.list_blobs(f"{container}/")) == [name]

    def test_properties(self, store: BlobStore, container: str) -> None:
        name = f"{container}/props.bin"
        before = datetime.now(UTC)
        uploaded = store.upload_blob(name, b"x" * 1234)
        after = datetime.now(UTC)

        assert isinstance(uploaded.etag, str) and uploaded.etag
        assert uploaded.last_modified.tzinfo is not None
        assert before - CLOCK_TOLERANCE <= uploaded.last_modified <= after + CLOCK_TOLERANCE

        props = store.get_blob_properties(name)
        assert props.name == name
        assert props.size == 1234
        assert props.etag == uploaded.etag
        assert props.last_modified == uploaded.last_modified
        assert store.download_blob(name).properties == props
        assert list(store.list_blobs(f"{container}/")) == [props]

    def test_etag_changes_on_every_write_even_same_content(
        self, store: BlobStore, container: str
    ) -> None:
        name = f"{container}/etag.txt"
        etags = [store.upload_blob(name, b"same").etag for _ in range(5)]
        assert len(set(etags)) == 5
        assert store.get_blob_properties(name).etag == etags[-1]

    def test_etag_stable_while_not_written(self, store: BlobStore, container: str) -> None:
        name = f"{container}/stable.txt"
        etag = store.upload_blob(name, b"v1").etag
        store.upload_blob(f"{container}/neighbour.txt", b"other")
        store.download_blob(name)
        assert store.get_blob_properties(name).etag == etag
        assert store.get_blob_properties(name).etag == etag
        assert store.download_blob(name).properties.etag == etag
        by_name = {p.name: p.etag for p in store.list_blobs(f"{container}/")}
        assert by_name[name] == etag

    # -- conditional writes ----------------------------------------------------------------

    def test_create_only(self, store: BlobStore, container: str) -> None:
        name = f"{container}/create-only.txt"
        created = store.upload_blob(name, b"first", overwrite=False)
        with pytest.raises(BlobExistsError):
            store.upload_blob(name, b"second", overwrite=False)
        content = store.download_blob(name)
        assert content.data == b"first"
        assert content.properties.etag == created.etag

    def test_overwrite_is_the_default(self, store: BlobStore, container: str) -> None:
        name = f"{container}/overwrite.txt"
        store.upload_blob(name, b"first")
        store.upload_blob(name, b"second, longer")
        assert store.download_blob(name).data == b"second, longer"
        assert store.get_blob_properties(name).size == len(b"second, longer")

    def test_if_match(self, store: BlobStore, container: str) -> None:
        name = f"{container}/cas.txt"
        v1 = store.upload_blob(name, b"v1")
        v2 = store.upload_blob(name, b"v2", if_match=v1.etag)
        assert v2.etag != v1.etag
        assert store.download_blob(name).data == b"v2"

        with pytest.raises(BlobConditionFailedError):
            store.upload_blob(name, b"v3", if_match=v1.etag)  # stale
        content = store.download_blob(name)
        assert content.data == b"v2"
        assert content.properties.etag == v2.etag

    def test_if_match_on_a_missing_blob_fails(self, store: BlobStore, container: str) -> None:
        name = f"{container}/missing-cas.txt"
        other = store.upload_blob(f"{container}/exists.txt", b"x")
        with pytest.raises(BlobConditionFailedError):
            store.upload_blob(name, b"v1", if_match=other.etag)
        with pytest.raises(BlobNotFoundError):
            store.get_blob_properties(name)

    def test_if_match_after_delete_and_recreate_fails(
        self, store: BlobStore, container: str
    ) -> None:
        name = f"{container}/recreated.txt"
        old = store.upload_blob(name, b"same")
        store.delete_blob(name)
        new = store.upload_blob(name, b"same")
        assert new.etag != old.etag
        with pytest.raises(BlobConditionFailedError):
            store.upload_blob(name, b"late", if_match=old.etag)
        assert store.download_blob(name).data == b"same"

    # -- missing blobs and deletes ---------------------------------------------------------

    def test_missing_blob(self, store: BlobStore, container: str) -> None:
        store.upload_blob(f"{container}/present.txt", b"x")
        for name in (f"{container}/absent.txt", f"{container}/present.txt/below"):
            with pytest.raises(BlobNotFoundError):
                store.download_blob(name)
            with pytest.raises(BlobNotFoundError):
                store.get_blob_properties(name)
            with pytest.raises(BlobNotFoundError):
                store.delete_blob(name)

    def test_delete(self, store: BlobStore, container: str) -> None:
        name = f"{container}/dir/gone.txt"
        store.upload_blob(name, b"x")
        store.upload_blob(f"{container}/dir/kept.txt", b"y")
        store.delete_blob(name)
        with pytest.raises(BlobNotFoundError):
            store.download_blob(name)
        with pytest.raises(BlobNotFoundError):
            store.delete_blob(name)
        assert _names(store.list_blobs(f"{container}/")) == [f"{container}/dir/kept.txt"]
        # The name can be used again.
        store.upload_blob(name, b"again", overwrite=False)
        assert store.download_blob(name).data == b"again"

    def test_delete_if_match(self, store: BlobStore, container: str) -> None:
        name = f"{container}/cas-delete.txt"
        v1 = store.upload_blob(name, b"v1")
        v2 = store.upload_blob(name, b"v2")
        with pytest.raises(BlobConditionFailedError):
            store.delete_blob(name, if_match=v1.etag)
        assert store.download_blob(name).data == b"v2"
        store.delete_blob(name, if_match=v2.etag)
        with pytest.raises(BlobNotFoundError):
            store.get_blob_properties(name)

    # -- listing ---------------------------------------------------------------------------

    def test_list_by_prefix(self, store: BlobStore, container: str, other_container: str) -> None:
        c = container
        names = [
            f"{c}/dir/file.csv",
            f"{c}/dir/fi",
            f"{c}/dir/other.csv",
            f"{c}/dir/sub/deep.csv",
            f"{c}/dir-x/file.csv",
            f"{c}/dir2/file.csv",
            f"{c}/di",
            f"{c}/top.csv",
        ]
        for i, name in enumerate(names):
            store.upload_blob(name, b"x" * i)
        store.upload_blob(f"{other_container}/dir/file.csv", b"elsewhere")

        # Plain string prefixes, sorted by full name ("-" < "/" < "2"), not by directory walk.
        assert _names(store.list_blobs(f"{c}/dir/fi")) == [f"{c}/dir/fi", f"{c}/dir/file.csv"]
        assert _names(store.list_blobs(f"{c}/dir/")) == [
            f"{c}/dir/fi",
            f"{c}/dir/file.csv",
            f"{c}/dir/other.csv",
            f"{c}/dir/sub/deep.csv",
        ]
        assert _names(store.list_blobs(f"{c}/dir")) == [
            f"{c}/dir-x/file.csv",
            f"{c}/dir/fi",
            f"{c}/dir/file.csv",
            f"{c}/dir/other.csv",
            f"{c}/dir/sub/deep.csv",
            f"{c}/dir2/file.csv",
        ]
        assert _names(store.list_blobs(f"{c}/")) == sorted(names)
        assert _names(store.list_blobs(c)) == sorted(names)
        assert _names(store.list_blobs(f"{c}/dir/file.csv")) == [f"{c}/dir/file.csv"]
        assert _names(store.list_blobs(f"{c}/dir/nothing")) == []
        assert _names(store.list_blobs(f"{c}/nowhere/")) == []
        assert _names(store.list_blobs(f"{other_container}/")) == [
            f"{other_container}/dir/file.csv"
        ]

    def test_list_reports_properties(self, store: BlobStore, container: str) -> None:
        written = {
            f"{container}/a.bin": store.upload_blob(f"{container}/a.bin", b""),
            f"{container}/b/c.bin": store.upload_blob(f"{container}/b/c.bin", b"12345"),
        }
        listed = {p.name: p for p in store.list_blobs(f"{container}/")}
        assert listed.keys() == written.keys()
        for name, props in listed.items():
            assert props.etag == written[name].etag
            assert props.size == written[name].size
            assert props == store.get_blob_properties(name)

    # -- invalid names ---------------------------------------------------------------------

    @pytest.mark.parametrize("template", INVALID_NAMES, ids=repr)
    def test_invalid_names_refused(self, store: BlobStore, container: str, template: str) -> None:
        name = template.replace("{c}", container)
        with pytest.raises(InvalidBlobNameError):
            store.upload_blob(name, b"x")
        with pytest.raises(InvalidBlobNameError):
            store.upload_blob(name, b"x", overwrite=False)
        with pytest.raises(InvalidBlobNameError):
            store.download_blob(name)
        with pytest.raises(InvalidBlobNameError):
            store.get_blob_properties(name)
        with pytest.raises(InvalidBlobNameError):
            store.delete_blob(name)
        assert list(store.list_blobs(f"{container}/")) == []

    @pytest.mark.parametrize("template", INVALID_PREFIXES, ids=repr)
    def test_invalid_prefixes_refused(
        self, store: BlobStore, container: str, template: str
    ) -> None:
        with pytest.raises(InvalidBlobNameError):
            list(store.list_blobs(template.replace("{c}", container)))

    # -- transfer helpers ------------------------------------------------------------------

    def test_transfer_round_trip(self, store: BlobStore, container: str, tmp_path: Path) -> None:
        files = {
            "a.csv": b"a,b\n1,2\n",
            "empty": b"",
            "nested/deeper/model.bin": bytes(range(256)),
            "nested/x y.txt": "ünïcødé".encode(),
        }
        src = tmp_path / "src"
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)

        uploaded = upload_directory(store, src, f"{container}/out")
        assert uploaded.keys() == {f"{container}/out/{rel}" for rel in files}
        assert _names(store.list_blobs(f"{container}/")) == sorted(uploaded)

        dest = tmp_path / "dest"
        downloaded = download_prefix(store, f"{container}/out/", dest)
        assert downloaded == {rel: uploaded[f"{container}/out/{rel}"] for rel in files}
        on_disk = {
            p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()
        }
        assert on_disk == files

        # With or without the trailing slash, a prefix names the same directory.
        assert download_prefix(store, f"{container}/out", tmp_path / "dest2") == downloaded
        assert digest_prefix(store, f"{container}/out") == digest_prefix(store, f"{container}/out/")

    def test_download_of_an_empty_prefix(
        self, store: BlobStore, container: str, tmp_path: Path
    ) -> None:
        store.upload_blob(f"{container}/elsewhere/x", b"x")
        dest = tmp_path / "dest"
        assert download_prefix(store, f"{container}/nothing/", dest) == {}
        assert dest.is_dir() and not any(dest.iterdir())

    def test_holds_blobs_answers_as_the_listing_would(
        self, store: BlobStore, container: str, other_container: str
    ) -> None:
        store.upload_blob(f"{container}/data/sub/a.csv", b"a")
        store.upload_blob(f"{container}/data-x/b.csv", b"b")
        for prefix, expected in [
            (f"{container}/data/", True),
            (f"{container}/data/sub/", True),
            (f"{container}/data", True),  # a partial name: data/ and data-x/
            (f"{container}/dat", True),
            (f"{container}/data/sub/a.csv", True),
            (f"{container}/data/other/", False),
            (f"{container}/dataz/", False),
            (f"{container}/nothing", False),
            (f"{other_container}/", False),  # a container nobody wrote to
        ]:
            assert holds_blobs(store, prefix) is expected, prefix
            assert expected is any(True for _ in store.list_blobs(prefix)), prefix
        store.delete_blob(f"{container}/data/sub/a.csv")
        assert holds_blobs(store, f"{container}/data/") is False

    def test_digest_prefix(self, store: BlobStore, container: str) -> None:
        prefix = f"{container}/data/"
        store.upload_blob(f"{prefix}a.csv", b"a")
        store.upload_blob(f"{prefix}sub/b.csv", b"b")
        first = digest_prefix(store, prefix)
        assert len(first) == 64 and int(first, 16) >= 0
        assert digest_prefix(store, prefix) == first

        # Nothing outside the directory counts, not even look-alike names.
        store.upload_blob(f"{container}/data2/a.csv", b"a")
        store.upload_blob(f"{container}/data-x/a.csv", b"a")
        store.upload_blob(f"{container}/dat", b"a")
        assert digest_prefix(store, prefix) == first

        store.upload_blob(f"{prefix}a.csv", b"a")  # same bytes, new write
        rewritten = digest_prefix(store, prefix)
        assert rewritten != first

        store.upload_blob(f"{prefix}c.csv", b"c")
        added = digest_prefix(store, prefix)
        assert added not in (first, rewritten)

        store.delete_blob(f"{prefix}c.csv")
        assert digest_prefix(store, prefix) == rewritten

    def test_digest_of_an_empty_prefix_is_stable(self, store: BlobStore, container: str) -> None:
        empty = digest_prefix(store, f"{container}/none/")
        assert empty == digest_prefix(store, f"{container}/also-none/")
        store.upload_blob(f"{container}/none/x", b"")
        assert digest_prefix(store, f"{container}/none/") != empty

    # -- leases ----------------------------------------------------------------------------

    def test_a_lease_excludes_other_leases_until_released(
        self, store: BlobStore, container: str
    ) -> None:
        name = f"{container}/locks/model"
        store.upload_blob(name, b"")
        lease = store.acquire_blob_lease(name, duration_s=15)
        with pytest.raises(BlobLeasedError):
            store.acquire_blob_lease(name, duration_s=15)
        store.renew_blob_lease(name, lease)
        with pytest.raises(BlobLeasedError):
            store.acquire_blob_lease(name, duration_s=60)

        store.release_blob_lease(name, lease)
        again = store.acquire_blob_lease(name, duration_s=60)
        assert again != lease
        with pytest.raises(BlobLeaseLostError):
            store.renew_blob_lease(name, lease)
        store.release_blob_lease(name, lease)  # not ours any more: left alone
        with pytest.raises(BlobLeasedError):
            store.acquire_blob_lease(name, duration_s=15)
        store.release_blob_lease(name, again)
        with pytest.raises(BlobLeaseLostError):
            store.renew_blob_lease(name, again)
        store.release_blob_lease(name, again)  # twice is harmless

    def test_a_leased_blob_cannot_be_written_or_deleted(
        self, store: BlobStore, container: str
    ) -> None:
        name = f"{container}/locks/model"
        store.upload_blob(name, b"before")
        lease = store.acquire_blob_lease(name, duration_s=15)
        with pytest.raises(BlobLeasedError):
            store.upload_blob(name, b"after")
        with pytest.raises(BlobExistsError):
            store.upload_blob(name, b"after", overwrite=False)
        with pytest.raises(BlobLeasedError):
            store.delete_blob(name)
        assert store.download_blob(name).data == b"before"
        store.upload_blob(f"{container}/locks/other", b"")  # the lease is on one blob only

        store.release_blob_lease(name, lease)
        store.upload_blob(name, b"after")
        store.delete_blob(name)

    def test_a_missing_blob_cannot_be_leased(self, store: BlobStore, container: str) -> None:
        with pytest.raises(BlobNotFoundError):
            store.acquire_blob_lease(f"{container}/locks/none", duration_s=15)

    @pytest.mark.parametrize("duration_s", [14, 61, 0, -1])
    def test_lease_durations_are_azures(
        self, store: BlobStore, container: str, duration_s: int
    ) -> None:
        name = f"{container}/locks/model"
        store.upload_blob(name, b"")
        with pytest.raises(ValueError, match="15 to 60 seconds"):
            store.acquire_blob_lease(name, duration_s=duration_s)
