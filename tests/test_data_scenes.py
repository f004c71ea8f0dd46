"""Scenes, captions, noise operations, uids, the PNG codec and image transforms."""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import re
import struct

import numpy as np
import pytest
from PIL import Image

from jestkit.data import fashion, recipes, scenes
from jestkit.data.transforms import ImageTransform, check_png, decode_png, encode_png
from jestkit.data.uids import compute_uid, fingerprint_uids, int_to_uid, uid_to_int
from jestkit.errors import JestkitError

# ---------------------------------------------------------------------------------------------
# uids


def test_uid_is_first_64_bits_of_sha256_of_bytes_nul_caption():
    png, caption = b"\x89PNG fake bytes", "a small dark bag — in the top left"
    expected = hashlib.sha256(png + b"\0" + caption.encode("utf-8")).hexdigest()[:16]
    assert compute_uid(png, caption) == expected
    assert compute_uid(png, caption + " ") != expected


def test_uid_int_roundtrip_keeps_order():
    rng = np.random.default_rng(0)
    uids = [f"{int(x):016x}" for x in rng.integers(0, 2**63, size=200, dtype=np.int64)] + [
        "ffffffffffffffff",
        "0000000000000000",
    ]
    ints = uid_to_int(uids)
    assert ints.dtype == np.uint64
    assert int_to_uid(ints) == uids
    assert [int(v) for v in ints] == [int(u, 16) for u in uids]
    assert int_to_uid(np.sort(ints)) == sorted(uids)
    assert fingerprint_uids(uids) == fingerprint_uids(uids[::-1])
    assert fingerprint_uids(uids) != fingerprint_uids(uids[1:])


@pytest.mark.parametrize("bad", ["abc", "zzzzzzzzzzzzzzzz", "0123456789abcdef0", ""])
def test_uid_to_int_rejects_malformed(bad):
    with pytest.raises(JestkitError, match=re.escape(repr(bad))):
        uid_to_int(["0123456789abcdef", bad])


# ---------------------------------------------------------------------------------------------
# PNG codec and transforms


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 56, 56), (3, 17, 5), (1, 1, 1)])
def test_png_roundtrip_and_pil_agrees(shape):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png(arr)
    assert data == encode_png(arr.copy())  # deterministic bytes
    np.testing.assert_array_equal(decode_png(data, shape), arr)
    np.testing.assert_array_equal(decode_png(data, shape, verify=False), arr)
    pil = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(pil, arr[0] if shape[0] == 1 else arr.transpose(1, 2, 0))
    assert check_png(data, shape) is None


def test_decode_png_reads_filtered_pngs_written_by_pil():
    rng = np.random.default_rng(2)
    smooth = np.cumsum(rng.integers(0, 3, size=(40, 30)), axis=1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, format="PNG")  # Pillow uses adaptive row filters
    np.testing.assert_array_equal(decode_png(buf.getvalue(), (1, 40, 30)), smooth[None])


def test_check_png_finds_corruption_truncation_and_wrong_size():
    arr = np.random.default_rng(3).integers(0, 256, size=(1, 16, 16), dtype=np.uint8)
    data = bytearray(encode_png(arr))
    assert "wrong image size" in check_png(bytes(data), (1, 8, 8))
    assert check_png(bytes(data), (3, 16, 16)) is not None
    assert "truncated" in check_png(bytes(data[:-20]), (1, 16, 16))
    assert "signature" in check_png(b"GIF89a" + bytes(data[6:]), (1, 16, 16))
    data[50] ^= 0xFF  # inside IDAT
    assert "CRC" in check_png(bytes(data), (1, 16, 16))
    with pytest.raises(ValueError):
        decode_png(bytes(data), (1, 16, 16))


def _pil(mode: str, size=(20, 10)) -> Image.Image:
    rng = np.random.default_rng(4)
    if mode in ("L", "P", "1"):
        return Image.fromarray(rng.integers(0, 256, size=size[::-1], dtype=np.uint8)).convert(mode)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, size=size[::-1]).astype(np.uint16))
    if mode == "F":
        return Image.fromarray(rng.random(size[::-1]).astype(np.float32))
    return Image.fromarray(
        rng.integers(0, 256, size=(*size[::-1], 4), dtype=np.uint8), "RGBA"
    ).convert(mode)


@pytest.mark.parametrize("mode", ["L", "P", "1", "I;16", "F", "RGB", "RGBA", "LA", "CMYK"])
@pytest.mark.parametrize("channels", [1, 3])
def test_transform_any_mode_to_configured_shape(mode, channels):
    for resize in ("crop", "stretch", "pad"):
        out = ImageTransform(12, channels, resize)(_pil(mode))
        assert out.shape == (channels, 12, 12) and out.dtype == np.uint8


def test_transform_geometry():
    # crop: shorter side fits, centre kept; pad: longer side fits, black borders; same size: identity
    img = np.zeros((10, 30), np.uint8)
    img[:, 10:20] = 200  # a bright centre third
    t = ImageTransform(10, 1, "crop")(Image.fromarray(img))
    assert t.min() > 150  # only the centre survives the crop
    p = ImageTransform(30, 1, "pad")(Image.fromarray(img))
    assert (p[0, :9] == 0).all() and (p[0, -9:] == 0).all()  # 10 rows padded to 30: black bands
    same = np.random.default_rng(5).integers(0, 256, (16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(ImageTransform(16, 1)(Image.fromarray(same))[0], same)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255  # white but fully transparent -> black
    assert ImageTransform(4, 3)(Image.fromarray(rgba, "RGBA")).max() == 0
    with pytest.raises(JestkitError, match="channels"):
        ImageTransform(8, 2)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST / digits loading


def _write_idx(path, arr: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(">u1").tobytes())


def test_read_idx_and_missing_dataset_message(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28) % 256
    for split, n in (("train", 2), ("t10k", 2)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", imgs[:n])
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.array([3, 7][:n]))
    x, y = fashion.load_fashion_mnist("test", root=tmp_path)
    np.testing.assert_array_equal(x, imgs.astype(np.uint8))
    assert y.tolist() == [3, 7]
    with pytest.raises(JestkitError, match="apt-get install dataset-fashion-mnist"):
        fashion.load_fashion_mnist("train", root=tmp_path / "nowhere")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
    with pytest.raises(JestkitError, match=r"bad\.gz"):
        fashion.read_idx(tmp_path / "bad.gz")


def test_digits_split_is_disjoint_and_complete():
    tr, te, (al, _) = (
        fashion.load_digits("train"),
        fashion.load_digits("test"),
        fashion.load_digits(),
    )
    assert len(tr[0]) + len(te[0]) == len(al) == 1797
    assert tr[0].dtype == np.uint8 and tr[0].max() == 255


# ---------------------------------------------------------------------------------------------
# scenes and captions

WORD = r"[a-z\-]+"


def _parse(caption: str) -> list[tuple[str, str, bool, bool]]:
    """An independent reading of a scene caption: (class, cell, dark, small) per mentioned item."""
    cells = {p: c for c, ps in enumerate(scenes.POSITION_PHRASES) for p in ps}
    nouns = sorted(
        ((s, c) for c, ss in enumerate(scenes.CLASS_SYNONYMS) for s in ss), key=lambda x: -len(x[0])
    )
    tones = {w: d for d, ws in scenes.TONE_WORDS.items() for w in ws}
    sizes = {w: s for s, ws in scenes.SIZE_WORDS.items() for w in ws}
    pos_re = "|".join(sorted(map(re.escape, cells), key=len, reverse=True))
    noun_re = "|".join(re.escape(n) for n, _ in nouns)
    item_re = re.compile(rf"\ban? ({WORD}) ({WORD}) ({noun_re}) ({pos_re})")
    out = []
    for size, tone, noun, pos in item_re.findall(caption):
        label = dict(nouns)[noun]
        out.append(
            (scenes.FASHION_CLASSES[label], scenes.CELL_NAMES[cells[pos]], tones[tone], sizes[size])
        )
    return out


def _by_class(n=10, per=5):
    return [np.arange(c * per, (c + 1) * per) for c in range(n)]


def test_captions_name_every_item_with_its_attributes_and_position():
    rng = np.random.default_rng(6)
    seen_captions = set()
    for _ in range(500):
        scene = scenes.sample_scene(rng, _by_class())
        caption = scenes.scene_caption(scene, scenes.sample_wording(rng, len(scene)))
        seen_captions.add(caption)
        got = sorted(_parse(caption))
        want = sorted(
            (scenes.FASHION_CLASSES[i.label], scenes.CELL_NAMES[i.cell], i.dark, i.small)
            for i in scene
        )
        assert got == want, caption
        assert 2 <= len(scene) <= 4 and len({i.cell for i in scene}) == len(scene)
    assert len(seen_captions) == 500  # close to unique per image


def test_word_order_matters():
    a = (scenes.Item(7, 0, 0, True, False), scenes.Item(8, 1, 3, False, False))
    b = (scenes.Item(7, 0, 0, False, False), scenes.Item(8, 1, 3, True, False))  # tones swapped
    w = scenes.Wording(
        template=0,
        synonyms=(0, 0),
        tones=(0, 0),
        sizes=(0, 0),
        position_style=0,
        order=(0, 1),
        join=0,
    )
    ca, cb = scenes.scene_caption(a, w), scenes.scene_caption(b, w)
    assert sorted(ca.split()) == sorted(cb.split()) and ca != cb
    assert scenes.describe(a) != scenes.describe(b)


def test_twin_edits_differ_in_exactly_one_attribute():
    rng = np.random.default_rng(7)
    for _ in range(100):
        scene = scenes.sample_scene(rng, _by_class())
        edits = scenes.twin_edits(scene)
        n = len(scene)
        assert len(edits) == n * (6 - n)
        twins = [scenes.apply_edit(scene, e) for e in edits]
        assert all(scenes.scene_difference(scene, t) == 1 for t in twins)
        assert len({scenes.describe(t) for t in twins}) == len(twins)


def test_render_scene_places_items_in_their_cells():
    rng = np.random.default_rng(8)
    sources = rng.integers(100, 256, size=(40, 28, 28), dtype=np.uint8)  # no pixel darkens to 0
    for _ in range(50):
        scene = scenes.sample_scene(rng, [np.arange(c * 4, c * 4 + 4) for c in range(10)])
        img = scenes.render_scene(scene, sources)
        assert img.shape == (1, 56, 56) and img.dtype == np.uint8
        expect = np.zeros((56, 56), bool)
        for it in scene:
            r, c = divmod(it.cell, 2)
            o, s = (7, 14) if it.small else (0, 28)
            block = img[0, r * 28 + o : r * 28 + o + s, c * 28 + o : c * 28 + o + s]
            expect[r * 28 + o : r * 28 + o + s, c * 28 + o : c * 28 + o + s] = True
            assert block.max() <= (scenes.DARK_PEAK if it.dark else 255)
            assert block.min() > 0
        assert not img[0][~expect].any()


def test_zeroshot_templates_format_every_class():
    for ds in recipes.DATASETS:
        classes = fashion.DIGIT_CLASSES if ds == "digits" else fashion.FASHION_CLASSES
        for t in scenes.zeroshot_templates(ds):
            assert t.count("{}") == 1 and all(c in t.format(c) for c in classes)


# ---------------------------------------------------------------------------------------------
# noise operations and split generation


def test_junk_captions_share_no_word_with_image_captions():
    vocab = set()
    for group in (
        *scenes.CLASS_SYNONYMS,
        *scenes.TONE_WORDS.values(),
        *scenes.SIZE_WORDS.values(),
        *scenes.POSITION_PHRASES,
    ):
        for phrase in group:
            vocab |= set(re.findall(r"[a-z]+", phrase))
    vocab |= set(fashion.DIGIT_CLASSES) - {"one"}
    vocab -= {"a", "of", "in", "the", "at", "pair"}
    rng = np.random.default_rng(9)
    for _ in range(300):
        words = set(re.findall(r"[a-z]+", recipes.junk_caption(rng).lower()))
        assert not (words & vocab), words & vocab


def test_perturb_and_corrupt():
    rng = np.random.default_rng(10)
    img = rng.integers(0, 256, size=(1, 20, 20), dtype=np.uint8)
    img[0, 0, :5] = 0
    img[0, 1, :5] = 255
    for _ in range(50):
        p = recipes.perturb_pixels(img, rng, n_pixels=3)
        diff = p.astype(int) - img.astype(int)
        assert np.count_nonzero(diff) == 3 and np.abs(diff).max() == 1
    kinds = collections.Counter()
    for _ in range(60):
        c, kind = recipes.corrupt_image(img, rng)
        kinds[kind] += 1
        assert c.shape == img.shape and c.dtype == np.uint8
        if kind == "blank":
            assert len(np.unique(c)) == 1
        if kind == "occlusion":
            assert (c == c[0, 10, 10]).mean() >= 0.6
    assert set(kinds) == set(recipes.CORRUPTIONS)


def _generate(dataset, size, rates, density=0.0, group=2, dup_groups=1, seed=0, seen=None):
    source = recipes.load_source(dataset, "train")
    off = None if dataset == "digits" else recipes.Source(*fashion.load_digits(), "digits", 10)
    plan = recipes.SplitPlan(
        "pool", size, source, rates, density, group_size=group, dup_groups=dup_groups
    )
    gen = recipes.SplitGenerator(
        dataset, plan, np.random.default_rng(seed), set() if seen is None else seen, off_source=off
    )
    return gen.generate()


def test_generated_noise_counts_are_exact_and_recorded():
    rates = {
        "caption_swap": 0.1,
        "junk_caption": 0.05,
        "image_corrupt": 0.07,
        "near_duplicate": 0.04,
        "off_distribution": 0.03,
    }
    recs = _generate("digits", 400, rates, dup_groups=2)
    assert len(recs) == 400 and len({r.uid for r in recs}) == 400
    counts = collections.Counter(r.meta["noise"] for r in recs)
    for kind, rate in rates.items():
        assert counts[kind] == round(rate * 400)
    for r in recs:
        assert r.uid == compute_uid(r.png, r.caption)
    by_uid = {r.uid: r for r in recs}
    for r in recs:
        if r.meta["noise"] == "caption_swap":
            donor = by_uid[r.meta["swap_from"]]
            assert donor.meta["noise"] == "" and donor.caption == r.caption
            assert donor.meta["label"] != r.meta["label"]  # a caption of other content
        if r.meta["noise"] == "off_distribution":
            assert r.meta["origin"] == "shapes" and r.meta["label"] == -1
    dups = [r for r in recs if r.meta["noise"] == "near_duplicate"]
    assert {r.meta["dup_group"] for r in dups} == {0, 1}
    for g in (0, 1):
        group = [decode_png(r.png)[0].astype(int) for r in dups if r.meta["dup_group"] == g]
        assert len({r.caption for r in dups if r.meta["dup_group"] == g}) == 1
        assert all(np.abs(a - group[0]).max() <= 2 for a in group)  # each copy: base +-1


@pytest.mark.skipif(not fashion.fashion_available(), reason="needs dataset-fashion-mnist")
def test_scene_pool_twins_and_off_distribution():
    rates = {"off_distribution": 0.1, "caption_swap": 0.1}
    recs = _generate("fashion-scenes", 300, rates, density=0.4, group=3)
    groups = collections.defaultdict(list)
    for r in recs:
        if r.meta["hard_negative_group"] >= 0:
            groups[r.meta["hard_negative_group"]].append(r)
            assert r.meta["noise"] == ""
    assert sum(len(g) for g in groups.values()) == round(0.4 * 300) // 3 * 3
    for g in groups.values():
        assert len(g) == 3
        base = next(r for r in g if r.meta["twin_edit"] == "base")
        b_items = base.meta["items"].split(";")
        for r in g:
            if r is base:
                continue
            items = r.meta["items"].split(";")
            diff = sum(x != y for x, y in zip(sorted(b_items), sorted(items), strict=True))
            assert 1 <= diff <= 2  # one item changed (a move re-sorts by cell)
            assert sorted(_parse(r.caption)) == sorted(
                (i.split("@")[0], i.split("@")[1].split("/")[0], "dark" in i, "small" in i)
                for i in items
            )
    for r in recs:
        if r.meta["noise"] == "off_distribution":
            assert "handwritten" in r.caption and r.meta["origin"] == "digits"
        if r.meta["noise"] == "":
            assert len(_parse(r.caption)) == r.meta["n_items"]


def test_too_much_noise_or_density_is_rejected():
    with pytest.raises(JestkitError, match="sum"):
        recipes.noise_rates("web-noise", {"caption_swap": 0.9})
    with pytest.raises(JestkitError, match="unknown noise kind"):
        recipes.noise_rates("clean", {"blur": 0.1})
    with pytest.raises(JestkitError, match="fashion-scenes"):
        _generate("digits", 50, {}, density=0.2)
    w = recipes.parse_class_weights("10", 10)
    assert w[0] / w[-1] == pytest.approx(10) and w.sum() == pytest.approx(1)
    assert recipes.parse_class_weights("1", 10) is None
    with pytest.raises(JestkitError, match="curated-imbalance"):
        recipes.parse_class_weights("1,2", 10)


# ---------------------------------------------------------------------------------------------
# layouts (near-twins in every super-batch) and graded noise


def _items(scene):
    return {(it.label, it.cell, it.dark, it.small) for it in scene}


def test_layout_edits_change_one_thing_each_and_pairs_two():
    rng = np.random.default_rng(11)
    for _ in range(50):
        scene = scenes.sample_scene(rng, _by_class())
        n = len(scene)
        edits = scenes.layout_edits(scene, 10)
        assert len(edits) == n * (6 - n) + 9 * n
        variants = []
        for e in edits:
            v = scenes.apply_edit(scene, e, index=99 if e[0] == "class" else None)
            assert len(_items(scene) ^ _items(v)) == 2  # one item tuple out, one in
            variants.append(scenes.describe(v))
        assert len(set(variants)) == len(edits)  # every single edit gives another scene
        pairs = [(a, b) for i, a in enumerate(edits) for b in edits[i + 1 :]]
        for a, b in pairs[:: max(1, len(pairs) // 40)]:
            if not scenes.compatible(a, b):
                assert (a[0], a[1]) == (b[0], b[1]) or (a[0] == b[0] == "move" and a[2] == b[2])
                continue
            v = scenes.apply_edit(scenes.apply_edit(scene, a, 98), b, 97)
            assert len({it.cell for it in v}) == n  # no two items in one cell
            assert scenes.describe(v) not in variants  # a pair is not one of the singles
    with pytest.raises(ValueError, match="class edit needs"):
        scenes.apply_edit(scene, ("class", 0, 3))


def test_compatible_combinations_are_every_pairwise_compatible_set():
    import itertools

    rng = np.random.default_rng(12)
    for _ in range(6):
        edits = scenes.layout_edits(scenes.sample_scene(rng, _by_class()), 10)
        for k in (1, 2, 3):
            brute = [
                c
                for c in itertools.combinations(edits, k)
                if all(scenes.compatible(a, b) for a, b in itertools.combinations(c, 2))
            ]
            assert scenes.compatible_combinations(edits, k) == brute


def _generate_plan(dataset, size, rates, n_items=(2, 4), **plan_kw):
    source = recipes.load_source(dataset, "train")
    off = None if dataset == "digits" else recipes.Source(*fashion.load_digits(), "digits", 10)
    plan = recipes.SplitPlan("pool", size, source, rates, **plan_kw)
    gen = recipes.SplitGenerator(
        dataset, plan, np.random.default_rng(0), set(), n_items=n_items, off_source=off
    )
    return gen.generate()


@pytest.mark.skipif(not fashion.fashion_available(), reason="needs dataset-fashion-mnist")
def test_layout_groups_past_the_pairs_take_triples_of_edits():
    # A 2-item scene has 26 single edits and 249 compatible pairs: a group of 300 (the large
    # pool's layouts) holds all of them and 24 triples, every variant still told apart in words.
    recs = _generate_plan(
        "fashion-scenes", 700, {}, n_items=(2, 2), hard_negative_density=0.9,
        group_size=300, twin_edits="layout",
    )  # fmt: skip
    groups = collections.defaultdict(list)
    for r in recs:
        if r.meta["hard_negative_group"] >= 0:
            groups[r.meta["hard_negative_group"]].append(r)
    assert len(groups) == 2
    for members in groups.values():
        assert len({r.caption for r in members}) == len({r.uid for r in members}) == 300
        n_edits = collections.Counter(
            0 if r.meta["twin_edit"] == "base" else len(r.meta["twin_edit"].split("+"))
            for r in members
        )
        assert n_edits == {0: 1, 1: 26, 2: 249, 3: 24}
        base = next(r for r in members if r.meta["twin_edit"] == "base")
        b_items = set(_parse(base.caption))
        for r in members:
            changed = len(b_items - set(_parse(r.caption)))
            assert changed <= 2 and (changed >= 1 or r is base)  # two items: at most both change


@pytest.mark.skipif(not fashion.fashion_available(), reason="needs dataset-fashion-mnist")
def test_layout_groups_hold_dozens_of_variants_of_one_layout():
    group = 50  # more than any scene's single edits (26-44): pairs of edits fill the rest
    recs = _generate_plan(
        "fashion-scenes", 600, {"junk_caption": 0.1}, hard_negative_density=0.8,
        group_size=group, twin_edits="layout",
    )  # fmt: skip
    groups = collections.defaultdict(list)
    for r in recs:
        if r.meta["hard_negative_group"] >= 0:
            groups[r.meta["hard_negative_group"]].append(r)
    assert len(groups) == round(0.8 * 600) // group and all(
        len(g) == group for g in groups.values()
    )
    for members in groups.values():
        assert len({r.caption for r in members}) == group  # every variant is told apart in words
        base = next(r for r in members if r.meta["twin_edit"] == "base")
        b_items = set(_parse(base.caption))
        for r in members:
            parsed = _parse(r.caption)
            assert len(parsed) == r.meta["n_items"] == base.meta["n_items"]
            described = {
                (i.split("@")[0], i.split("@")[1].split("/")[0], "dark" in i, "small" in i)
                for i in r.meta["items"].split(";")
            }
            assert set(parsed) == described  # the caption tells this variant's content
            if r is base:
                continue
            n_edits = len(r.meta["twin_edit"].split("+"))
            assert n_edits in (1, 2)
            changed = len(b_items - set(parsed))
            assert 1 <= changed <= n_edits  # one edit moves one item; two edits one or two
    # The split's structure gives the group-mates the config implies, exactly.
    groups_col = np.array([r.meta["hard_negative_group"] for r in recs])
    assert recipes.twin_group_mates(groups_col) == pytest.approx(
        len(groups) * group * (group - 1) / 600
    )


def test_near_twins_per_example_is_the_exact_expectation():
    # Brute force: every super-batch of N from a pool of 9, every example in it.
    import itertools

    groups = np.array([0, 0, 0, 1, 1, -1, 2, 2, 2])
    for n in (2, 3, 5, 9):
        total, count = 0, 0
        for batch in itertools.combinations(range(len(groups)), n):
            g = groups[list(batch)]
            for i in range(n):
                total += int(((g == g[i]) & (g >= 0)).sum()) - int(g[i] >= 0)
                count += 1
        assert recipes.near_twins_per_example(groups, n) == pytest.approx(total / count)
    assert recipes.near_twins_per_example(np.full(5, -1), 3) == 0.0


def test_degrade_image_damages_more_with_severity():
    img = np.full((1, 28, 28), 128, np.uint8)
    damage = {}
    for severity in (1, 2, 3):
        rng = np.random.default_rng(severity)
        by_kind = collections.defaultdict(list)
        for _ in range(40):
            out, detail = recipes.degrade_image(img, rng, severity)
            kind, level = detail.split("-")
            assert int(level) == severity and out.shape == img.shape and out.dtype == np.uint8
            changed = out != img
            if kind == "occlusion":
                side = round(28 * np.sqrt(0.15 * severity))
                assert changed.sum() in (0, side * side)  # 0: the occluder drew mid-grey
            by_kind[kind].append(np.abs(out.astype(int) - 128).mean())
        damage[severity] = {k: float(np.mean(v)) for k, v in by_kind.items()}
    for kind in recipes.DEGRADE_KINDS:
        assert damage[1][kind] < damage[2][kind] < damage[3][kind]
    with pytest.raises(ValueError, match="severity"):
        recipes.degrade_image(img, np.random.default_rng(0), 4)


@pytest.mark.skipif(not fashion.fashion_available(), reason="needs dataset-fashion-mnist")
def test_graded_noise_at_exact_rates_with_its_ground_truth():
    rates = {"caption_partial": 0.3, "image_degrade": 0.2, "caption_swap": 0.05}
    recs = _generate_plan("fashion-scenes", 400, rates, hard_negative_density=0.0)
    counts = collections.Counter(r.meta["noise"] for r in recs)
    assert all(counts[k] == round(v * 400) for k, v in rates.items())
    details = collections.Counter()
    for r in recs:
        if r.meta["noise"] == "caption_partial":
            error = r.meta["noise_detail"]
            details[error] += 1
            told = collections.Counter(_parse(r.caption))
            true = collections.Counter(
                (i.split("@")[0], i.split("@")[1].split("/")[0], "dark" in i, "small" in i)
                for i in r.meta["items"].split(";")
            )
            missing, extra = true - told, told - true
            if error == "missing":
                assert (sum(missing.values()), sum(extra.values())) == (1, 0)
            elif error == "extra":
                assert (sum(missing.values()), sum(extra.values())) == (0, 1)
            else:  # one item told with one field wrong
                assert sum(missing.values()) == sum(extra.values()) == 1
                (a,), (b,) = missing, extra
                field = {0: "class", 1: "move", 2: "tone", 3: "size"}
                assert [field[k] for k in range(4) if a[k] != b[k]] == [error]
        if r.meta["noise"] == "image_degrade":
            kind, level = r.meta["noise_detail"].split("-")
            assert kind in recipes.DEGRADE_KINDS and int(level) in recipes.DEGRADE_SEVERITIES
            assert len(_parse(r.caption)) == r.meta["n_items"]  # the caption stays true
    assert set(details) == {"class", "tone", "size", "move", "missing", "extra"}
    with pytest.raises(JestkitError, match=r"caption_partial.*fashion-scenes"):
        _generate_plan("digits", 50, {"caption_partial": 0.1})
