"""The symbol-detection zip loader (layout, bounds, hostile archives), the sample generator and
``retrainer load-zip`` against the local blob store."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.load_zip import LoadZipError, fetch_archive, load_zip, redacted
from cli.main import main
from recipes.symbol_detection import load_archive, recipe
from recipes.symbol_detection.dataset import parse_line
from recipes.symbol_detection.loader import ArchiveError, ZipLimits, convert_zip
from recipes.symbol_detection.sample_data import CLASSES, write_sample_zip
from shared.bootstrap import create_blob_store
from shared.settings import CommonSettings


def jpeg(width: int = 40, height: int = 20) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="JPEG")
    return out.getvalue()


def npy(rows: list[list[float]], dtype: str = "float32") -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(rows, dtype=dtype).reshape(-1, 5), allow_pickle=False)
    return out.getvalue()


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def test_layout_boxes_normalised_by_the_image_size(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "a.zip",
        {
            "classes.txt": b"valve\npump\n",
            "deliveries/a.jpg": jpeg(40, 20),
            "deliveries/a.npy": npy([[1, 4, 2, 20, 10], [0, 0, 0, 40, 20]]),
            "b.jpeg": jpeg(10, 10),
            "labels/b.npy": npy([]),
        },
    )
    summary = convert_zip(archive, tmp_path / "out")
    assert summary.as_dict() | {"ignored": []} == {
        "images": 2,
        "boxes": 2,
        "classes": ["valve", "pump"],
        "per_class": {"pump": 1, "valve": 1},
        "ignored": [],
        "ignored_count": 0,
    }
    assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == ["a.jpg", "b.jpeg"]
    labels = tmp_path / "out/labels"
    assert sorted(p.name for p in labels.iterdir()) == ["a.jsonl", "b.jsonl", "classes.txt"]
    line = json.loads((labels / "a.jsonl").read_text())
    assert line["image_url"] == "a.jpg"
    assert line["image_details"] == {"format": "jpg", "width": "40px", "height": "20px"}
    assert line["label"][0] == {
        "label": "pump",
        "topX": 0.1,
        "topY": 0.1,
        "bottomX": 0.5,
        "bottomY": 0.5,
        "isCrowd": 0,
    }
    assert line["label"][1]["bottomX"] == 1.0
    assert parse_line((labels / "b.jsonl").read_text()).boxes == ()
    assert (labels / "classes.txt").read_text() == "valve\npump\n"


def test_without_class_names_ids_name_the_classes(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"a.jpg": jpeg(), "a.npy": npy([[3, 1, 1, 5, 5]])})
    summary = convert_zip(archive, tmp_path / "out")
    assert summary.classes == ["3"] and summary.per_class == {"3": 1}
    # Names given by the caller win over the archive.
    named = convert_zip(archive, tmp_path / "named", classes=["a", "b", "c", "d"])
    assert named.per_class == {"d": 1}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"../evil.jpg": b"x"}, "outside the target folder"),
        ({"/abs/a.jpg": b"x"}, "outside the target folder"),
        ({"C:/a.jpg": b"x"}, "outside the target folder"),
        ({"a\\..\\b.jpg": b"x"}, "outside the target folder"),
        ({"a.jpg": jpeg()}, "without their pair"),
        ({"a.npy": npy([])}, "without their pair"),
        ({"readme.md": b"hi"}, "no JPEG images"),
        ({"a.jpg": jpeg(), "x/a.npy": npy([]), "y/a.npy": npy([])}, "two files with stem"),
        ({"a b.jpg": jpeg(), "a b.npy": npy([])}, "file names must be"),
        ({"a.jpg": b"not an image", "a.npy": npy([])}, "not a readable image"),
        ({"a.jpg": jpeg(), "a.npy": b"not numpy"}, "not a .npy array"),
        ({"a.jpg": jpeg(), "a.npy": npy([[0, 1, 1, 2, 2]])[:60]}, "not a .npy array"),
        ({"a.jpg": jpeg(), "a.npy": npy([[0, 1, 1, 2, float("nan")]])}, "finite"),
        ({"a.jpg": jpeg(), "a.npy": npy([[-1, 1, 1, 2, 2]])}, "whole numbers"),
        ({"a.jpg": jpeg(), "a.npy": npy([[0.5, 1, 1, 2, 2]])}, "whole numbers"),
        ({"classes.txt": b"one\n", "a.jpg": jpeg(), "a.npy": npy([[1, 1, 1, 2, 2]])}, "class id 1"),
        ({"classes.txt": b"x\nx\n", "a.jpg": jpeg(), "a.npy": npy([])}, "unique"),
    ],
)
def test_hostile_or_broken_archives_are_refused(
    tmp_path: Path, entries: dict[str, bytes], expected: str
) -> None:
    archive = make_zip(tmp_path / "bad.zip", entries)
    with pytest.raises(ArchiveError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        convert_zip(archive, tmp_path / "out")


def test_a_wrong_shape_and_a_pickle_are_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    np.save(out, np.zeros((2, 4), dtype="float32"))
    bad_shape = make_zip(tmp_path / "s.zip", {"a.jpg": jpeg(), "a.npy": out.getvalue()})
    with pytest.raises(ArchiveError, match=r"shape \[2, 4\]"):
        convert_zip(bad_shape, tmp_path / "o1")
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"boxes": 1}], dtype=object), allow_pickle=True)
    objects = make_zip(tmp_path / "p.zip", {"a.jpg": jpeg(), "a.npy": pickled.getvalue()})
    with pytest.raises(ArchiveError, match="without pickles"):
        convert_zip(objects, tmp_path / "o2")
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    not_jpeg = make_zip(tmp_path / "png.zip", {"a.jpg": png.getvalue(), "a.npy": npy([])})
    with pytest.raises(ArchiveError, match="PNG, not a JPEG"):
        convert_zip(not_jpeg, tmp_path / "o3")


def test_bounds_entry_count_sizes_and_ratio(tmp_path: Path) -> None:
    entries = {f"{i}.jpg": jpeg() for i in range(5)} | {f"{i}.npy": npy([]) for i in range(5)}
    archive = make_zip(tmp_path / "many.zip", entries)
    with pytest.raises(ArchiveError, match="10 entries; at most 4"):
        convert_zip(archive, tmp_path / "o", limits=ZipLimits(max_entries=4))
    with pytest.raises(ArchiveError, match="in all"):
        convert_zip(archive, tmp_path / "o", limits=ZipLimits(max_total_bytes=2000))
    with pytest.raises(ArchiveError, match="per entry"):
        convert_zip(archive, tmp_path / "o", limits=ZipLimits(max_entry_bytes=100))
    # A bomb: 64 MiB of zeros compresses about 1000-fold.
    bomb = make_zip(tmp_path / "bomb.zip", {"a.jpg": jpeg(), "a.npy": b"\0" * (64 * 1024**2)})
    with pytest.raises(ArchiveError, match="zip bomb"):
        convert_zip(bomb, tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing extracted from a refused archive


def test_a_symbolic_link_and_a_lying_size_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("a.jpg")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        convert_zip(path, tmp_path / "o")
    # An entry whose data is longer than its header says: cut at the declared size and
    # refused by the CRC check, never read beyond it.
    lying = tmp_path / "lying.zip"
    make_zip(lying, {"a.jpg": jpeg(), "a.npy": npy([[0, 1, 1, 2, 2]] * 50)})
    data = bytearray(lying.read_bytes())
    with zipfile.ZipFile(lying) as archive:
        info = archive.getinfo("a.npy")
    for start in range(len(data)):
        if data[start : start + 4] == b"PK\x01\x02" and data[start + 46 : start + 51] == b"a.npy":
            data[start + 24 : start + 28] = (100).to_bytes(4, "little")  # uncompressed size
    lying.write_bytes(bytes(data))
    assert info.file_size > 100
    with pytest.raises(ArchiveError, match=r"a\.npy"):
        convert_zip(lying, tmp_path / "o2")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK but not really")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        convert_zip(path, tmp_path / "o")


def test_sample_zip_draws_classes_sizes_overlaps_and_edges(tmp_path: Path) -> None:
    archive = write_sample_zip(tmp_path / "s.zip", images=30, seed=4, name_prefix="batch2")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert names[0] == "classes.txt" and z.read("classes.txt").decode().split() == list(CLASSES)
        assert "images/batch2-0000.jpg" in names and "labels/batch2-0029.npy" in names
        arrays = [np.load(io.BytesIO(z.read(n))) for n in names if n.endswith(".npy")]
        sizes = {Image.open(io.BytesIO(z.read(n))).size for n in names if n.endswith(".jpg")}
    boxes = np.concatenate(arrays)
    assert boxes.shape[1] == 5 and boxes.dtype == np.float32
    assert set(boxes[:, 0].astype(int)) == set(range(len(CLASSES)))
    widths = boxes[:, 3] - boxes[:, 1]
    assert widths.min() >= 20 and widths.max() <= 56 and widths.max() - widths.min() >= 20
    assert len(sizes) > 1
    assert (boxes[:, 1] == 0).any() or (boxes[:, 2] == 0).any()  # some touch an edge

    def overlapping(rows: np.ndarray) -> bool:
        return any(
            min(a[3], b[3]) > max(a[1], b[1]) and min(a[4], b[4]) > max(a[2], b[2])
            for i, a in enumerate(rows)
            for b in rows[i + 1 :]
        )

    assert sum(overlapping(rows) for rows in arrays) >= 3
    # Same seed, same drawings.
    again = write_sample_zip(tmp_path / "t.zip", images=30, seed=4, name_prefix="batch2")
    with zipfile.ZipFile(archive) as a, zipfile.ZipFile(again) as b:
        assert a.read("labels/batch2-0007.npy") == b.read("labels/batch2-0007.npy")


def test_recipe_hooks_load_and_write_the_same_layout(tmp_path: Path) -> None:
    archive = write_sample_zip(tmp_path / "s.zip", images=4, seed=1)
    summary = load_archive(archive, tmp_path / "loaded")
    assert summary["images"] == 4 and summary["classes"] == list(CLASSES)
    recipe.write_sample_data(tmp_path / "sample", 1)
    for folder in ("images", "labels"):
        loaded = sorted(p.name for p in (tmp_path / "loaded" / folder).iterdir())
        assert set(loaded) <= {p.name for p in (tmp_path / "sample" / folder).iterdir()}


def test_load_zip_uploads_images_and_labels_under_two_prefixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETRAINER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RETRAINER_TRIGGER_RULES", "[]")
    archive = write_sample_zip(tmp_path / "s.zip", images=3, seed=2)
    code = main(
        ["load-zip", str(archive), "datasets/drawings", "--to", "labels=labelled/drawings/l"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "images: 3 blob(s) under datasets/drawings/images/" in printed
    assert "labels: 4 blob(s) under labelled/drawings/l/" in printed
    assert "no trigger rule covers them" in printed
    store = create_blob_store(CommonSettings())
    images = [b.name for b in store.list_blobs("datasets/drawings/images/")]
    labels = [b.name for b in store.list_blobs("labelled/drawings/l/")]
    assert images == [f"datasets/drawings/images/drawing-000{i}.jpg" for i in range(3)]
    assert labels[0] == "labelled/drawings/l/classes.txt" and len(labels) == 4


def test_load_zip_refusals_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETRAINER_STATE_DIR", str(tmp_path / "state"))
    bomb = make_zip(tmp_path / "bad.zip", {"../x.jpg": b"x"})
    assert main(["load-zip", str(bomb), "datasets/x"]) == 2
    assert "outside the target folder" in capsys.readouterr().err
    assert main(["load-zip", str(tmp_path / "missing.zip"), "datasets/x"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(LoadZipError, match="does not load archives"):
        load_zip(CommonSettings(), str(bomb), "datasets/x", recipe_name="state_identifier")
    with pytest.raises(LoadZipError, match="only https"):
        fetch_archive("http://example.com/a.zip?sig=SECRET", tmp_path / "a.zip")


def test_a_sas_url_is_downloaded_within_bounds_and_never_shown(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    payload = write_sample_zip(tmp_path / "s.zip", images=2, seed=3).read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if "sig=" not in self.path:
                self.send_response(403)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/c/s.zip"
        got = fetch_archive(base + "?sv=1&sig=SECRET", tmp_path / "got.zip")
        assert got.read_bytes() == payload
        with pytest.raises(LoadZipError) as refused:
            fetch_archive(base + "?sig=SECRET", tmp_path / "big.zip", max_bytes=100)
        assert "SECRET" not in str(refused.value) and "at most 100" in str(refused.value)
        with pytest.raises(LoadZipError, match="HTTP 403"):
            fetch_archive(base, tmp_path / "no.zip")
    finally:
        server.shutdown()
        server.server_close()
    assert redacted(base + "?sig=SECRET") == base + "?<redacted>"
