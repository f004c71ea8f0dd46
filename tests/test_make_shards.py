"""`jestkit make-shards`: user data in CSV/TSV/JSONL/parquet -> shards; bad rows counted by reason."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jestkit.cli import main as cli
from jestkit.data import SuperBatchLoader, load_manifest, load_split
from jestkit.data.make_shards import make_shards
from jestkit.errors import JestkitError

GOOD_UID = "00112233445566ff"


@pytest.fixture
def images(tmp_path):
    """A folder of images in assorted sizes and modes, plus broken ones."""
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (50, 20), dtype=np.uint8)).save(d / "grey.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (10, 10, 4), dtype=np.uint8), "RGBA").save(d / "alpha.png")
    Image.fromarray(rng.integers(0, 65536, (16, 16)).astype(np.uint16)).save(d / "deep.png")
    Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).convert("P").save(d / "pal.gif")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(d / "exact.png")  # already 16x16 grey
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d


def _rows():
    """(image, caption, extra) rows: 6 good, then one of each problem."""
    return [
        {"image": "imgs/rgb.png", "caption": "a colourful rectangle", "label": "1"},
        {"image": "imgs/grey.jpg", "caption": "a tall grey picture", "label": ""},
        {"image": "imgs/alpha.png", "caption": "transparent pixels", "label": "2"},
        {"image": "imgs/deep.png", "caption": "sixteen bits", "label": "3"},
        {"image": "imgs/pal.gif", "caption": "a palette image", "label": "4"},
        {
            "image": "imgs/exact.png",
            "caption": "already the right size",
            "label": "5",
            "uid": GOOD_UID,
        },
        {"image": "imgs/missing.png", "caption": "no such file", "label": "0"},
        {"image": "imgs/broken.png", "caption": "not an image", "label": "0"},
        {"image": "imgs/rgb.png", "caption": "   ", "label": "0"},
        {
            "image": "imgs/rgb.png",
            "caption": "a colourful rectangle",
            "label": "1",
        },  # duplicate uid
        {"image": "imgs/rgb.png", "caption": "bad label", "label": "seven"},
        {"image": "imgs/rgb.png", "caption": "bad uid", "label": "1", "uid": "xyz"},
        {"image": "", "caption": "no path", "label": "1"},
    ]


EXPECTED_SKIPS = {
    "missing file": 1, "unreadable image": 1, "empty caption": 1, "duplicate uid": 1,
    "invalid label": 1, "invalid uid": 1, "missing image path": 1,
}  # fmt: skip


def _write_input(tmp_path, fmt: str, rows) -> str:
    keys = ["image", "caption", "label", "uid", "url"]
    rows = [{**r, "url": f"http://example.com/{i}"} for i, r in enumerate(rows)]
    path = tmp_path / f"pairs.{fmt}"
    if fmt in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, keys, delimiter="," if fmt == "csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), path)
    return str(path)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_formats_write_good_rows_and_count_bad_ones(tmp_path, images, fmt):
    src = _write_input(tmp_path, fmt, _rows())
    log = io.StringIO()
    manifest, bad = make_shards(
        src, tmp_path / "out", image_size=16, channels=1, shard_size=4, progress=False, log=log
    )
    assert bad.counts == EXPECTED_SKIPS
    assert log.getvalue().count("resizing images to 16x16") == 1  # said once
    sb = load_split(tmp_path / "out" / "train")
    assert len(sb) == 6 and manifest["splits"]["train"]["count"] == 6
    assert sb.images.shape == (6, 1, 16, 16)
    assert sb.captions[:2] == ["a colourful rectangle", "a tall grey picture"]
    assert sb.meta["label"].tolist() == [1, -1, 2, 3, 4, 5]
    assert sb.uids[5] == GOOD_UID and (sb.images[5] == 7).all()  # exact size: untouched pixels
    assert sb.meta["url"][0] == "http://example.com/0" and sb.meta["noise"].tolist() == [""] * 6
    m = load_manifest(tmp_path / "out")
    assert m["image_size"] == 16 and m["in_channels"] == 1 and m["skipped"] == EXPECTED_SKIPS
    loader = SuperBatchLoader(
        tmp_path / "out", batch_size=3, progress=False
    )  # the dataset folder works too
    assert len(next(iter(loader))) == 3


def test_cli_summary_line_strict_and_rgb(tmp_path, images, capsys):
    src = _write_input(tmp_path, "csv", _rows())
    assert (
        cli(
            [
                "make-shards",
                src,
                "--out",
                str(tmp_path / "o"),
                "--image-size",
                "8",
                "--channels",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith("make-shards: wrote 6 record(s)") and "skipped 7 (" in out[0]
    for reason in EXPECTED_SKIPS:
        assert reason in out[0]
    assert load_split(tmp_path / "o" / "train").images.shape == (6, 3, 8, 8)
    assert cli(["make-shards", src, "--out", str(tmp_path / "s"), "--strict", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pairs.csv: row 7: missing file" in err
    assert not (tmp_path / "s").exists()


def test_non_utf8_and_malformed_rows(tmp_path, images):
    (tmp_path / "bad.csv").write_bytes(
        b"image,caption\nimgs/rgb.png,caf\xe9\nimgs/grey.jpg,fine caption\nimgs/rgb.png,too,many\n"
    )
    _, bad = make_shards(
        tmp_path / "bad.csv", tmp_path / "o1", image_size=8, progress=False, log=io.StringIO()
    )
    assert bad.counts == {"non-UTF-8 text": 1, "malformed row": 1}
    (tmp_path / "bad.jsonl").write_bytes(
        b'{"image": "imgs/rgb.png", "caption": "ok"}\n{"image": "imgs/rgb.png", "caption": "caf\xe9"}\nnot json\n'
        b'{"image": "imgs/grey.jpg"}\n'
    )
    _, bad = make_shards(
        tmp_path / "bad.jsonl", tmp_path / "o2", image_size=8, progress=False, log=io.StringIO()
    )
    assert bad.counts == {"non-UTF-8 text": 1, "malformed row": 1, "missing caption": 1}


def test_input_errors(tmp_path, images):
    (tmp_path / "x.txt").write_text("image,caption\n")
    with pytest.raises(JestkitError, match="unknown format"):
        make_shards(tmp_path / "x.txt", tmp_path / "o", progress=False)
    (tmp_path / "nocap.csv").write_text("image,text\nimgs/rgb.png,hello\n")
    with pytest.raises(JestkitError, match=r"missing column\(s\) \['caption'\]"):
        make_shards(tmp_path / "nocap.csv", tmp_path / "o", progress=False)
    (tmp_path / "allbad.csv").write_text("image,caption\nimgs/missing.png,hello\n")
    with pytest.raises(JestkitError, match="no usable rows"):
        make_shards(tmp_path / "allbad.csv", tmp_path / "o", progress=False, log=io.StringIO())
    with pytest.raises(JestkitError, match="file not found"):
        make_shards(tmp_path / "nothere.csv", tmp_path / "o", progress=False)
