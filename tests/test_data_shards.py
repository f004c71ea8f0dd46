"""`jestkit prepare` output, shard layout, the validating index and its bad-record handling."""

from __future__ import annotations

import collections
import filecmp
import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jestkit.cli import main as cli
from jestkit.data import fashion, load_manifest, load_split, prepare_dataset
from jestkit.data.recipes import NOISE_KINDS
from jestkit.data.shards import (
    BadRecordWarning,
    SplitWriter,
    build_index,
    data_fingerprint,
    iter_tar,
    read_split_info,
)
from jestkit.data.transforms import encode_png
from jestkit.data.uids import compute_uid
from jestkit.errors import JestkitError

SMALL = {
    "pool_size": 500,
    "eval_size": 40,
    "zeroshot_size": 40,
    "curated_fraction": 0.1,
    "shard_size": 128,
}
FASHION = pytest.mark.skipif(not fashion.fashion_available(), reason="needs dataset-fashion-mnist")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "digits"
    prepare_dataset("digits", out, progress=False, seed=3, **SMALL)
    return out


def _tree_equal(a: Path, b: Path) -> None:
    files_a = sorted(
        p.relative_to(a) for p in a.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    files_b = sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    assert files_a == files_b
    for f in files_a:
        assert filecmp.cmp(a / f, b / f, shallow=False), f


def test_prepare_is_deterministic_and_seed_dependent(digits, tmp_path):
    again = tmp_path / "again"
    prepare_dataset("digits", again, progress=False, seed=3, **SMALL)
    _tree_equal(digits, again)  # same uids and the same bytes, manifest included
    other = tmp_path / "other"
    prepare_dataset("digits", other, progress=False, seed=4, **SMALL)
    assert load_manifest(other)["fingerprint"] != load_manifest(digits)["fingerprint"]


@FASHION
def test_prepare_fashion_scenes_deterministic(tmp_path):
    opts = {**SMALL, "pool_size": 200, "progress": False, "seed": 1}
    prepare_dataset("fashion-mnist", tmp_path / "a", **opts)  # alias of fashion-scenes
    prepare_dataset("fashion-scenes", tmp_path / "b", **opts)
    _tree_equal(tmp_path / "a", tmp_path / "b")
    m = load_manifest(tmp_path / "a")
    assert m["name"] == "fashion-scenes" and m["image_size"] == 56 and len(m["templates"]) == 16
    ev = load_split(tmp_path / "a" / "eval")
    assert set(ev.meta["origin"]) == {"fashion-test"}  # eval scenes use official test items only
    assert ev.images.shape[1:] == (1, 56, 56)
    assert (ev.meta["hard_negative_group"] >= 0).mean() == pytest.approx(0.25, abs=1 / 40)
    pool = pq.read_table(tmp_path / "a" / "pool" / "meta.parquet").to_pydict()
    assert set(pool["origin"]) <= {"fashion-train", "digits"}


def test_manifest_and_measured_rates_match_requested(digits):
    m = load_manifest(digits)
    assert m["format"] == "jestkit-dataset" and m["name"] == "digits" and m["seed"] == 3
    assert (
        m["image_size"] == 8
        and m["in_channels"] == 1
        and m["classes"] == list(fashion.DIGIT_CLASSES)
    )
    assert set(m["splits"]) == {"pool", "curated", "uncurated", "eval", "zeroshot"}
    req = m["noise_rates"]["requested"]
    for name in ("pool", "uncurated"):
        split = m["splits"][name]
        meta = pq.read_table(digits / name / "meta.parquet").to_pydict()
        n = len(meta["uid"])
        assert n == split["count"] and len(set(meta["uid"])) == n
        counts = collections.Counter(meta["noise"])
        for kind in NOISE_KINDS:
            measured = counts[kind] / n
            assert measured == split["noise_rates"][kind]  # manifest = metadata
            assert abs(measured - req[kind]) <= 0.5 / n + 1e-12  # = requested up to rounding
    for name in ("curated", "eval", "zeroshot"):
        meta = pq.read_table(digits / name / "meta.parquet").to_pydict()
        assert set(meta["noise"]) == {""}
    assert m["splits"]["curated"]["count"] == m["splits"]["uncurated"]["count"] == 50
    zs = load_split(digits / "zeroshot")
    assert (zs.meta["label"] >= 0).all() and set(zs.meta["origin"]) == {"digits-test"}
    for split in m["splits"].values():
        assert split["fingerprint"] == data_fingerprint(Path(split["dir"]))


def test_every_uid_is_the_hash_of_its_stored_bytes_and_unique_across_splits(digits):
    all_uids = []
    for split in load_manifest(digits)["splits"].values():
        d = Path(split["dir"])
        for shard in split["shards"]:
            with tarfile.open(d / shard) as tf:
                members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
            keys = sorted({n.split(".")[0] for n in members})
            for k in keys:
                assert compute_uid(members[f"{k}.png"], members[f"{k}.txt"].decode()) == k
            all_uids += keys
    assert len(all_uids) == len(set(all_uids))


def test_parquet_offsets_point_at_tar_members_and_webdataset_reads_shards(digits):
    import webdataset as wds

    d = digits / "pool"
    meta = pq.read_table(d / "meta.parquet").to_pydict()
    where = {u: (s, o) for u, s, o in zip(meta["uid"], meta["shard"], meta["offset"], strict=True)}
    for shard in read_split_info(d)["shards"]:
        with tarfile.open(d / shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".png"):
                    assert where[m.name[:-4]] == (shard, m.offset)
                assert m.mtime == 0 and m.uname == "jestkit"
    ds = wds.WebDataset(str(d / "shard-000000.tar"), shardshuffle=False).decode("pil")
    first = next(iter(ds))
    assert first["__key__"] == meta["uid"][0] and first["txt"] == meta["caption"][0]
    assert first["png"].size == (8, 8)


def test_iter_tar_equals_tarfile(digits):
    path = digits / "pool" / "shard-000000.tar"
    with open(path, "rb") as f:
        fast = [(n, o, len(b)) for n, o, b in iter_tar(f)]
    with tarfile.open(path) as tf:
        slow = [(m.name, m.offset_data, m.size) for m in tf.getmembers()]
    assert fast == slow
    # long names (GNU and pax) are read too
    buf = io.BytesIO()
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            info = tarfile.TarInfo("d/" + "x" * 120 + ".txt")
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
        buf.seek(0)
        assert [(n, b) for n, _, b in iter_tar(buf)] == [("d/" + "x" * 120 + ".txt", b"abc")]


# ---------------------------------------------------------------------------------------------
# bad records


def _raw_split(
    d: Path,
    records: list[tuple[str, dict[str, bytes]]],
    meta_uids: list[str],
    shape=(1, 8, 8),
    counts=None,
):
    """A split folder written by hand, bad records included."""
    d.mkdir(parents=True)
    with tarfile.open(d / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in records:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    pq.write_table(
        pa.table({"uid": meta_uids, "label": list(range(len(meta_uids)))}), d / "meta.parquet"
    )
    info = {
        "count": len(records),
        "shards": ["shard-000000.tar"],
        "image_size": shape[1],
        "in_channels": shape[0],
    }
    if counts:
        info["shard_counts"] = counts
    (d / "split.json").write_text(json.dumps(info))


def _good(i: int, caption: str | None = None) -> tuple[str, dict[str, bytes], str]:
    img = np.full((1, 8, 8), i, np.uint8)
    png, cap = encode_png(img), caption or f"example {i}"
    uid = compute_uid(png, cap)
    return uid, {"png": png, "txt": cap.encode()}, uid


def test_bad_records_are_skipped_counted_and_named(tmp_path):
    goods = [_good(i) for i in range(6)]
    _u0, m0, _ = goods[0]
    corrupt = bytearray(m0["png"])
    corrupt[45] ^= 0xFF
    records = [
        (goods[0][0], goods[0][1]),
        ("1" * 16, {"png": bytes(corrupt), "txt": b"corrupt image"}),
        ("2" * 16, {"png": encode_png(np.zeros((1, 9, 9), np.uint8)), "txt": b"nine by nine"}),
        ("3" * 16, {"png": m0["png"]}),  # no caption
        ("4" * 16, {"txt": b"no image"}),
        ("5" * 16, {"png": m0["png"], "txt": b"  \n"}),
        ("6" * 16, {"png": m0["png"], "txt": b"caf\xe9 latin-1"}),
        ("not-a-uid", {"png": m0["png"], "txt": b"bad key"}),
        (goods[1][0], goods[1][1]),
        (goods[1][0], goods[1][1]),  # duplicate uid
        (goods[2][0], goods[2][1]),  # absent from meta.parquet
        (goods[3][0], goods[3][1]),
    ]
    meta = [g[2] for g in goods if g[2] != goods[2][2]] + [
        "1" * 16,
        "2" * 16,
        "3" * 16,
        "5" * 16,
        "6" * 16,
    ]
    d = tmp_path / "split"
    _raw_split(d, records, meta)
    with pytest.warns(BadRecordWarning, match="skipped 9 record"):
        index = build_index(d, progress=False)
    assert index.uids() == [goods[0][0], goods[1][0], goods[3][0]]
    assert index.bad.counts == {
        "corrupt image": 1, "wrong image size": 1, "missing caption": 1, "missing image": 1,
        "empty caption": 1, "non-UTF-8 caption": 1, "invalid uid": 1, "duplicate uid": 1, "no metadata": 1,
    }  # fmt: skip
    assert any(
        "shard-000000.tar: record 1111111111111111" in e[0]
        for e in index.bad.examples["corrupt image"]
    )
    # metadata is aligned with the good records
    assert index.meta["label"].tolist() == [0, 1, 2]
    # a cached index reports the same (and the warning again)
    with pytest.warns(BadRecordWarning):
        again = build_index(d, progress=False)
    assert again.bad.counts == index.bad.counts and again.uids() == index.uids()
    # strict: the first bad record raises, naming file and record
    with pytest.raises(
        JestkitError, match=r"shard-000000\.tar: record 1111111111111111: corrupt image"
    ):
        build_index(d, strict=True, cache=False, progress=False)
    with pytest.raises(JestkitError, match="strict"):
        build_index(d, strict=True, progress=False)  # from the cache too
    with pytest.warns(BadRecordWarning):
        sb = load_split(d)
    assert sb.captions == ["example 0", "example 1", "example 3"]


def test_truncated_tar_keeps_complete_records(tmp_path):
    goods = [_good(i) for i in range(10)]
    d = tmp_path / "split"
    _raw_split(d, [(u, m) for u, m, _ in goods], [g[2] for g in goods], counts=[10])
    shard = d / "shard-000000.tar"
    data = shard.read_bytes()
    with tarfile.open(shard) as tf:
        cut = next(m for m in tf.getmembers() if m.name == f"{goods[6][0]}.png").offset_data + 10
    shard.write_bytes(data[:cut])
    with pytest.warns(BadRecordWarning, match="truncated tar"):
        index = build_index(d, progress=False)
    assert index.uids() == [g[0] for g in goods[:6]]
    assert index.bad.counts == {"truncated tar": 1}
    # cut at a member boundary (no end-of-archive blocks): detected from split.json's count
    boundary = next(o for n, o, _ in iter_tar(io.BytesIO(data)) if n == f"{goods[4][0]}.png") - 512
    shard.write_bytes(data[:boundary])
    with pytest.warns(BadRecordWarning, match="split.json says 10"):
        index = build_index(d, progress=False)
    assert len(index) == 4


def test_index_cache_is_invalidated_when_shards_change(tmp_path):
    d = tmp_path / "s"
    w = SplitWriter(d, (1, 8, 8), shard_size=4)
    for i in range(10):
        w.write(encode_png(np.full((1, 8, 8), i, np.uint8)), f"caption {i}", {"label": i})
    w.close()
    assert len(build_index(d, progress=False)) == 10
    shard = d / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[512 + 60] ^= 0xFF  # first PNG of the second shard
    shard.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index(d, progress=False)
    assert len(index) == 9 and index.bad.counts == {"corrupt image": 1}
    assert any(issubclass(c.category, BadRecordWarning) for c in caught)


def _scene_split(d: Path, value: int) -> Path:
    w = SplitWriter(d, (1, 8, 8), shard_size=4)
    for i in range(10):
        img = ((np.arange(64).reshape(1, 8, 8) * (i + 1) + value) % 256).astype(np.uint8)
        w.write(encode_png(img), f"caption {i} \u00e9t\u00e9 {value}", {"label": i})
    w.close()
    return d


def test_decoded_split_is_cached_and_mapped_only_while_its_shards_are_unchanged(
    tmp_path, monkeypatch
):
    from jestkit.data import shards

    d = _scene_split(tmp_path / "s", 0)
    fresh = build_index(d, cache=False, progress=False).read_all()
    assert fresh[0].flags.writeable and not list(d.glob(".decoded-*"))  # cache=False: no copy
    first = build_index(d, progress=False).read_all()  # decodes and keeps the decoded split
    assert np.array_equal(first[0], fresh[0]) and first[1] == fresh[1]
    assert len(list(d.glob(".decoded-*"))) == len(list(d.glob(".captions-*"))) == 1

    def no_decode(*a):
        raise AssertionError("decoded a PNG although the decoded split is cached")

    with monkeypatch.context() as m:
        m.setattr(shards.ShardIndex, "_decode", no_decode)
        m.setattr(shards.ShardIndex, "_fd", no_decode)
        index = build_index(d, progress=False)
        images, captions = index.read_all()
        assert not images.flags.writeable  # memory-mapped, read-only
        assert np.array_equal(images, fresh[0]) and captions == fresh[1]
        assert index.read_captions() == fresh[1]
        sb = load_split(d)
    assert torch_equal(sb.images, fresh[0]) and sb.captions == fresh[1]

    # New content under the same names: a new key; the stale copy is neither used nor kept.
    old_copy = next(d.glob(".decoded-*"))
    _scene_split(tmp_path / "t", 7)
    for f in (tmp_path / "t").iterdir():
        f.replace(d / f.name)
    changed = build_index(d, cache=False, progress=False).read_all()
    assert not np.array_equal(changed[0], fresh[0])
    again = build_index(d, progress=False).read_all()
    assert np.array_equal(again[0], changed[0]) and again[1] == changed[1]
    assert not old_copy.exists() and len(list(d.glob(".decoded-*"))) == 1

    # A torn copy is decoded again (and rewritten whole).
    copy = next(d.glob(".decoded-*"))
    copy.write_bytes(copy.read_bytes()[:200])
    torn = build_index(d, progress=False).read_all()
    assert torn[0].flags.writeable and np.array_equal(torn[0], changed[0])
    assert copy.stat().st_size > 640

    # A split that cannot be written (read-only, full disk) is decoded every time.
    e = _scene_split(tmp_path / "ro", 3)
    build_index(e, progress=False)  # its index is cached while writable

    def read_only(path, data):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(shards, "atomic_write", read_only)
    for _ in range(2):
        images, captions = build_index(e, progress=False).read_all()
        assert images.flags.writeable and len(captions) == 10
        assert np.array_equal(images, build_index(e, cache=False, progress=False).read_all()[0])
    assert not list(e.glob(".decoded-*")) and not list(e.glob(".captions-*"))


def torch_equal(t, a: np.ndarray) -> bool:
    return bool((t.numpy() == a).all()) and tuple(t.shape) == a.shape


def test_writer_skips_or_rejects_duplicate_uids(tmp_path):
    png = encode_png(np.zeros((1, 8, 8), np.uint8))
    w = SplitWriter(tmp_path / "a", (1, 8, 8))
    assert w.write(png, "same") and not w.write(png, "same")
    info = w.close()
    assert info["count"] == 1 and info["skipped"] == {"duplicate uid": 1}
    w = SplitWriter(tmp_path / "b", (1, 8, 8), strict=True)
    w.write(png, "same")
    with pytest.raises(JestkitError, match="duplicate uid"):
        w.write(png, "same")


def test_prepare_cli_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["prepare", "--dataset", "digits", "--out", str(out), "--pool-size", "120", "--eval-size", "0",
            "--zeroshot-size", "10", "--noise", "caption_swap=0.2", "junk-caption=0", "--quiet"]  # fmt: skip
    assert cli(args) == 0
    m = load_manifest(out)
    assert m["noise_rates"]["requested"]["caption_swap"] == 0.2 and "eval" not in m["splits"]
    assert m["noise_rates"]["measured"]["junk_caption"] == 0.0
    assert cli(args) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert cli(["prepare", "--out", str(tmp_path / "x"), "--dataset", "cifar"]) == 2
    assert "'cifar'" in capsys.readouterr().err
    assert (
        cli(
            [
                "prepare",
                "--out",
                str(tmp_path / "x"),
                "--dataset",
                "digits",
                "--noise",
                "caption_swap",
            ]
        )
        == 2
    )
    assert "KIND=RATE" in capsys.readouterr().err
    assert (
        cli(
            [
                "prepare",
                "--out",
                str(tmp_path / "x"),
                "--dataset",
                "digits",
                "--hard-negative-density",
                "0.3",
            ]
        )
        == 2
    )
    assert "fashion-scenes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(
        tmp_path.glob(".x.tmp-*")
    )  # nothing half-written


def test_curated_imbalance_skews_classes(tmp_path):
    out = tmp_path / "imb"
    prepare_dataset("digits", out, progress=False, pool_size=1000, curated_fraction=0.3, eval_size=0, zeroshot_size=0,
                    curated_imbalance="20", recipe="clean")  # fmt: skip
    labels = pq.read_table(out / "curated" / "meta.parquet").column("label").to_numpy()
    counts = np.bincount(labels, minlength=10)
    assert counts[0] > 4 * counts[9] and counts.sum() == 300
    pool = np.bincount(
        pq.read_table(out / "pool" / "meta.parquet").column("label").to_numpy(), minlength=10
    )
    assert pool.max() < 2 * pool.min()  # the pool stays balanced


@FASHION
def test_prepare_layout_groups_and_graded_recipe(tmp_path, capsys):
    out = tmp_path / "layouts"
    args = ["prepare", "--out", str(out), "--pool-size", "400", "--eval-size", "120",
            "--zeroshot-size", "0", "--curated-fraction", "0.1", "--recipe", "graded-web",
            "--hard-negative-density", "0.5", "--hard-negative-group-size", "40",
            "--hard-negative-edits", "layout"]  # fmt: skip
    assert cli(args) == 0
    m = load_manifest(out)
    pool = m["splits"]["pool"]
    # 0.5 * 400 = 200 twins = 5 groups of 40: 39 mates each, over the 400 examples.
    assert pool["twin_group_mates"] == pytest.approx(200 * 39 / 400)
    assert pool["noise_rates"]["caption_partial"] == 0.2 and pool["noise_rates"]["image_degrade"]
    assert "group-mates" in capsys.readouterr().out
    from jestkit.data.recipes import near_twins_per_example
    from jestkit.reproduce import data_regime

    regime = data_regime(out / "pool", 16)  # f = 0.8: a super-batch of 80
    assert regime["super_batch"] == 80 and regime["pool_size"] == 400
    assert regime["imperfect_share"] == pytest.approx(sum(pool["noise_rates"].values()))
    groups = load_split(out / "pool").meta["hard_negative_group"]
    assert regime["near_twins_per_example"] == near_twins_per_example(groups, 80)
    assert regime["near_twins_per_example"] == pytest.approx(200 * 39 / 400 * 79 / 399)
    ev = load_split(out / "eval")  # the fine-grained eval: the eval split has the groups too
    groups = ev.meta["hard_negative_group"]
    assert (groups >= 0).sum() == 60  # round(0.5 * 120) in groups of 4, whatever the pool's size
    assert set(np.unique(groups[groups >= 0], return_counts=True)[1]) == {4}
    bad = ["prepare", "--out", str(tmp_path / "x"), "--pool-size", "100",
           "--hard-negative-group-size", "10"]  # fmt: skip
    assert cli(bad) == 2  # attribute edits: at most 9 per group
    err = capsys.readouterr().err
    assert "--hard-negative-group-size: must be <= 9 with --hard-negative-edits attribute" in err
    assert cli([*bad[:-1], "1393", "--hard-negative-edits", "layout"]) == 2
    # 2-item scenes bound it: 26 single edits, 249 compatible pairs, 1116 compatible triples.
    assert "must be <= 1392 with --hard-negative-edits layout" in capsys.readouterr().err
