"""Sources and image preparation, without Ray: real files, real PIL, real pyarrow."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from pipelines.data.image_encode import EncodeOptions, ImageRejected, prepare_image, target_size
from pipelines.data.sources import Decoded, Rejected, build_source, source_section
from pipelines.data.sources.base import make_key
from pipelines.data.sources.fractal import class_params, render


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- image preparation ---------------------------------------------------------------------


def test_bad_inputs_are_rejected_with_reasons():
    jpeg = _encode(_noise(64, 48), "JPEG", quality=90)
    options = EncodeOptions(max_pixels=10_000)
    cases = {
        "zero_bytes": b"",
        "not_an_image": b"just some text, not a JPEG\n",
        "truncated": jpeg[: len(jpeg) // 2],
        "too_many_pixels": _encode(_noise(200, 100), "PNG"),
    }
    for reason, data in cases.items():
        with pytest.raises(ImageRejected) as err:
            prepare_image(data, options)
        assert err.value.reason == reason, (reason, err.value.detail)


def test_decompression_bomb_is_a_reject_not_a_crash():
    with pytest.raises(ImageRejected) as err:
        prepare_image(_png_header_only(30_000, 30_000), EncodeOptions(max_pixels=10**12))
    assert err.value.reason == "too_many_pixels"
    with pytest.raises(ImageRejected) as err:
        prepare_image(_png_header_only(5_000, 5_000), EncodeOptions(max_pixels=1_000_000))
    assert err.value.reason == "too_many_pixels"
    assert "shard.max_pixels" in err.value.detail


def test_truncation_detected_even_if_someone_enabled_load_truncated_images():
    jpeg = _encode(_noise(64, 48), "JPEG")
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageRejected) as err:
            prepare_image(jpeg[:-200], EncodeOptions())
        assert err.value.reason == "truncated"
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def test_modes_become_rgb():
    rgb = _noise(40, 30)
    grey16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque; the rest fully transparent -> white
    inputs = {
        "cmyk": _encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "i16": _encode(Image.fromarray(grey16), "PNG"),
        "rgba": _encode(Image.fromarray(rgba), "PNG"),
        "la": _encode(rgb.convert("LA"), "PNG"),
        "p": _encode(rgb.convert("P"), "PNG"),
        "l": _encode(rgb.convert("L"), "JPEG"),
        "bmp": _encode(rgb, "BMP"),
    }
    for name, data in inputs.items():
        out = prepare_image(data, EncodeOptions(image_format="png"))
        image = _decode(out.data)
        assert (out.ext, image.mode) == ("png", "RGB"), name
    cmyk = np.asarray(_decode(prepare_image(inputs["cmyk"], EncodeOptions("png")).data))
    assert np.abs(cmyk.astype(int) - np.asarray(rgb).astype(int)).mean() < 12
    grey = np.asarray(_decode(prepare_image(inputs["i16"], EncodeOptions("png")).data))
    assert grey[0, :, 0].tolist() == [0, 1, 128, 255]
    composite = np.asarray(_decode(prepare_image(inputs["rgba"], EncodeOptions("png")).data))
    assert composite[0, 0].tolist() == [10, 20, 30]
    assert composite[1, 1].tolist() == [255, 255, 255]


def test_resize_keeps_aspect_and_never_enlarges():
    assert target_size(400, 300, 160) == (213, 160)
    assert target_size(300, 400, 160) == (160, 213)
    assert target_size(100, 50, 160) == (100, 50)
    assert target_size(100, 50, None) == (100, 50)
    out = prepare_image(_encode(_noise(400, 300), "JPEG"), EncodeOptions("jpeg", max_size=160))
    assert (out.ext, out.original_size, _decode(out.data).size) == ("jpg", (400, 300), (213, 160))


def test_keep_passes_original_bytes_through_only_when_nothing_changes():
    jpeg = _encode(_noise(64, 48), "JPEG")
    png = _encode(_noise(64, 48), "PNG")
    keep = EncodeOptions("keep")
    assert prepare_image(jpeg, keep).data is jpeg
    assert prepare_image(png, keep).data is png
    resized = prepare_image(jpeg, EncodeOptions("keep", max_size=32))
    assert (resized.ext, _decode(resized.data).size) == ("jpg", (43, 32))
    grey = prepare_image(_encode(_noise(64, 48).convert("L"), "PNG"), keep)
    assert (grey.ext, _decode(grey.data).mode) == ("png", "RGB")
    cmyk = prepare_image(_encode(_noise(64, 48).convert("CMYK"), "JPEG"), keep)
    assert cmyk.ext == "jpg"
    bmp = prepare_image(_encode(_noise(64, 48), "BMP"), keep)
    assert bmp.ext == "png"


def test_encoding_is_deterministic():
    data = _encode(_noise(300, 200), "PNG")
    for fmt in ("jpeg", "png"):
        options = EncodeOptions(fmt, max_size=100)
        assert prepare_image(data, options).data == prepare_image(data, options).data


# -- keys ----------------------------------------------------------------------------------


def test_keys_are_safe_and_stable():
    assert make_key("cat/img_001", "cat/img_001.jpg") == "cat_img_001"
    dotted = make_key("cat/img.v2 (copy)", "cat/img.v2 (copy).jpg")
    assert "." not in dotted and " " not in dotted and dotted.startswith("cat_img_v2")
    assert dotted == make_key("cat/img.v2 (copy)", "cat/img.v2 (copy).jpg")
    assert len(make_key("x" * 300, "id")) <= 80


# -- image folder --------------------------------------------------------------------------


def test_imagefolder_index(tmp_path):
    (tmp_path / "dog").mkdir()
    (tmp_path / "cat" / "nested").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    jpeg = _encode(_noise(20, 20), "JPEG")
    for rel in ("cat/a.jpg", "cat/a.png", "cat/nested/b.jpg", "dog/x.y.jpg", "dog/.DS_Store"):
        (tmp_path / rel).write_bytes(jpeg)
    (tmp_path / ".hidden" / "z.jpg").write_bytes(jpeg)
    (tmp_path / "README.txt").write_text("hi")
    source = build_source(source_section(kind="imagefolder", path=str(tmp_path)))
    index = source.index()
    assert index.classes == ("cat", "dog")
    by_id = {r.source_id: r for r in index.refs}
    assert sorted(by_id) == ["cat/a.jpg", "cat/a.png", "cat/nested/b.jpg", "dog/x.y.jpg"]
    keys = [r.key for r in index.refs]
    assert len(set(keys)) == len(keys)
    assert all("." not in k and "/" not in k for k in keys)
    assert by_id["cat/nested/b.jpg"].key == "cat_nested_b"
    assert by_id["cat/a.jpg"].key != by_id["cat/a.png"].key  # collision resolved by a hash
    assert [r.label for r in index.refs] == [0, 0, 0, 1]
    assert [(r.source_id, r.reason) for r in index.rejected] == [("README.txt", "label_missing")]
    loaded = list(source.load(index.refs[:1]))
    assert loaded[0][1] == jpeg
    (tmp_path / "cat" / "a.jpg").unlink()
    assert isinstance(next(iter(source.load(index.refs[:1])))[1], Rejected)


# -- parquet -------------------------------------------------------------------------------


def _hf_parquet(path, images, labels, names=None, row_group_size=None):
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {"image": pa.array(images, type=image_type), "label": pa.array(labels, pa.int64())}
    )
    if names is not None:
        features = {
            "image": {"_type": "Image"},
            "label": {"names": names, "_type": "ClassLabel"},
        }
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = table.replace_schema_metadata(meta)
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_huggingface_layout(tmp_path):
    pngs = [_encode(_noise(16, 12, seed=i), "PNG") for i in range(7)]
    (tmp_path / "side.png").write_bytes(pngs[6])
    images = [{"bytes": b, "path": f"img{i}.png"} for i, b in enumerate(pngs[:6])]
    images.append({"bytes": None, "path": "side.png"})  # bytes elsewhere, path relative
    images.append({"bytes": None, "path": None})
    labels = [0, 1, 2, 0, -1, 5, 1, 2]
    _hf_parquet(tmp_path / "train.parquet", images, labels, ["ant", "bee", "cow"], 3)
    section = source_section(kind="parquet", path=str(tmp_path / "train.parquet"))
    source = build_source(section)
    index = source.index()
    assert index.classes == ("ant", "bee", "cow")
    assert sorted((r.source_id, r.reason) for r in index.rejected) == [
        ("train.parquet#4", "label_missing"),
        ("train.parquet#5", "label_out_of_range"),
    ]
    refs = list(reversed(index.refs))  # tasks load in any order, across row groups
    loaded = list(source.load(refs))
    assert [r for r, _ in loaded] == refs
    items = {r.source_id: item for r, item in loaded}
    assert items["train.parquet#0"] == pngs[0]
    assert items["train.parquet#3"] == pngs[3]
    assert items["train.parquet#6"] == pngs[6]
    assert isinstance(items["train.parquet#7"], Rejected)
    assert {r.source_id: r.label for r in index.refs}["train.parquet#2"] == 2


def test_parquet_without_metadata_numbers_classes(tmp_path):
    png = _encode(_noise(8, 8), "PNG")
    _hf_parquet(tmp_path / "a.parquet", [{"bytes": png, "path": None}] * 3, [0, 3, 1])
    index = build_source(source_section(kind="parquet", path=str(tmp_path))).index()
    assert index.classes == ("0", "1", "2", "3")
    assert [r.source_id for r in index.refs] == ["a.parquet#0", "a.parquet#1", "a.parquet#2"]


def test_parquet_missing_column_names_it(tmp_path):
    _hf_parquet(tmp_path / "a.parquet", [{"bytes": b"x", "path": None}], [0])
    section = source_section(kind="parquet", path=str(tmp_path), label_column="target")
    with pytest.raises(Exception, match="label_column"):
        build_source(section).index()


# -- csv -----------------------------------------------------------------------------------


def test_csv_names_ints_and_relative_paths(tmp_path):
    (tmp_path / "img").mkdir()
    png = _encode(_noise(8, 8), "PNG")
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "img" / name).write_bytes(png)
    (tmp_path / "named.csv").write_text(
        "path,label\nimg/a.png,zebra\nimg/b.png,ant\nimg/c.png,\nimg/missing.png,ant\n"
    )
    source = build_source(source_section(kind="csv", path=str(tmp_path / "named.csv")))
    index = source.index()
    assert index.classes == ("ant", "zebra")
    assert [(r.source_id, r.label) for r in index.refs] == [
        ("img/a.png", 1),
        ("img/b.png", 0),
        ("img/missing.png", 0),
    ]
    assert [(r.source_id, r.reason) for r in index.rejected] == [("img/c.png", "label_missing")]
    items = [item for _, item in source.load(index.refs)]
    assert items[0] == png
    assert isinstance(items[2], Rejected) and items[2].reason == "file_missing"

    (tmp_path / "ints.csv").write_text(f"file,y\n{tmp_path}/img/a.png,2\nimg/b.png,-1\n")
    section = source_section(
        kind="csv", path=str(tmp_path / "ints.csv"), path_column="file", label_column="y"
    )
    index = build_source(section).index()
    assert index.classes == ("0", "1", "2")
    assert [r.label for r in index.refs] == [2]
    assert [r.reason for r in index.rejected] == ["label_out_of_range"]


# -- built-in sources ----------------------------------------------------------------------


def test_digits():
    source = build_source(source_section(kind="digits", image_size=24))
    index = source.index()
    assert len(index.refs) == 1797 and index.classes == tuple(str(i) for i in range(10))
    assert {r.label for r in index.refs} == set(range(10))
    (ref, item), *_ = source.load(index.refs[:1])
    assert isinstance(item, Decoded)
    assert (item.image.size, item.image.mode, item.original_size) == ((24, 24), "RGB", (8, 8))
    pixels = np.stack([np.asarray(item.image) for _, item in source.load(index.refs[:20])])
    assert pixels.max() == 255 and pixels.min() == 0
    assert set(np.unique(pixels)) <= {round(v * 255 / 16) for v in range(17)}


def test_fractal_is_deterministic_and_distinct_per_class():
    section = source_section(
        kind="fractal", num_classes=4, images_per_class=3, image_size=32, num_points=3000
    )
    source = build_source(section)
    index = source.index()
    assert [r.key for r in index.refs[:2]] == ["fractal_c0000_i000000", "fractal_c0000_i000001"]
    first = [np.asarray(item.image) for _, item in source.load(index.refs)]
    again = [np.asarray(item.image) for _, item in build_source(section).load(index.refs)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(img.shape == (32, 32, 3) and img.max() > 0 for img in first)
    params = [class_params(0, c) for c in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert params[i].shape != params[j].shape or not np.allclose(params[i], params[j])
    for p in params:
        a = p[:, :4].reshape(-1, 2, 2)
        assert np.linalg.svd(a, compute_uv=False).max() <= 0.9 + 1e-9
    other_seed = np.asarray(render(1, 0, 0, 32, 3000))
    assert not np.array_equal(other_seed, first[0])
    # images of one class vary, and differ more across classes than within a class
    assert not np.array_equal(first[0], first[1])


def test_fractal_without_random_orientation_keeps_classes_upright():
    # Digits-style downstream tasks are orientation-sensitive: the demo pretrains on upright
    # fractals. Only the flip/quarter-turn draws change; the image is one of the 8 orientations
    # of the default one, and sources left at the default keep their description (and shards).
    section = source_section(
        kind="fractal", num_classes=3, images_per_class=4, image_size=24, num_points=2000
    )
    upright_section = section.model_copy(update={"random_orientation": False})
    default, upright = build_source(section), build_source(upright_section)
    assert "random_orientation" not in default.describe()
    assert upright.describe()["random_orientation"] is False
    refs = default.index().refs
    turned = [np.asarray(item.image) for _, item in default.load(refs)]
    fixed = [np.asarray(item.image) for _, item in upright.load(refs)]
    for a, b in zip(turned, fixed, strict=True):
        orientations = [np.rot90(b, k) for k in range(4)]
        orientations += [o[:, ::-1] for o in orientations]
        assert any(np.array_equal(a, o) for o in orientations)
    assert any(not np.array_equal(a, b) for a, b in zip(turned, fixed, strict=True))


def test_glyphs_are_deterministic_digit_free_and_distinct_per_class():
    from pipelines.data.sources.glyphs import DEFAULT_CHARACTERS, is_number

    assert not [c for c in DEFAULT_CHARACTERS if is_number(c) or c.isdigit()]
    assert len(set(DEFAULT_CHARACTERS)) == len(DEFAULT_CHARACTERS)
    section = source_section(kind="glyphs", num_classes=5, images_per_class=4, image_size=16)
    source = build_source(section)
    index = source.index()
    assert len(index.refs) == 20 and index.classes[0] == "U+0041 LATIN CAPITAL LETTER A"
    assert [r.key for r in index.refs[:2]] == ["glyph_c0000_i000000", "glyph_c0000_i000001"]
    first = [np.asarray(item.image) for _, item in source.load(index.refs)]
    again = [np.asarray(item.image) for _, item in build_source(section).load(index.refs[::-1])]
    assert all(np.array_equal(a, b) for a, b in zip(first, again[::-1], strict=True))
    for image in first:  # grey, bright ink on black, the ink fills a good part of the frame
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8
        assert np.array_equal(image[..., 0], image[..., 2]) and image.max() == 255
        assert 0.08 < (image[..., 0] > 128).mean() < 0.7
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        assert np.median(border) < 60
    assert not np.array_equal(first[0], first[1])  # images of a class vary
    means = np.stack([np.stack(first[c * 4 : c * 4 + 4]).mean(0) for c in range(5)])
    within = np.mean([np.abs(first[i].astype(float) - means[i // 4]).mean() for i in range(20)])
    across = np.mean([np.abs(means[a] - means[b]).mean() for a in range(5) for b in range(a)])
    assert across > 0.5 * within  # classes differ (A, B, C, D, E)
    describe = source.describe()
    assert describe["characters"] == "ABCDE" and len(describe["fonts_sha256"]) == 16
    assert not any("/" in name for name in describe["fonts"])  # names, not paths


def test_glyphs_low_res_is_blocky_and_keys_are_validated():
    section = source_section(
        kind="glyphs", num_classes=3, images_per_class=2, image_size=32, low_res=8, seed=3
    )
    image = np.asarray(
        next(iter(build_source(section).load(build_source(section).index().refs)))[1].image
    )
    blocks = image[..., 0].reshape(8, 4, 8, 4)
    assert (blocks == blocks[:, :1, :, :1]).all()  # 8x8 pixels scaled up 4x, nearest
    custom = build_source(source_section(kind="glyphs", characters="xy", num_classes=2))
    assert custom.index().classes == ("U+0078 LATIN SMALL LETTER X", "U+0079 LATIN SMALL LETTER Y")
    for bad, field in (
        ({"num_classes": 1000}, "num_classes=1000"),
        ({"characters": "aa", "num_classes": 1}, "characters='aa'"),
        ({"low_res": 40, "image_size": 32}, "low_res=40"),
    ):
        with pytest.raises(ValueError, match=field):
            source_section(kind="glyphs", **bad)
    from pipelines.errors import DataError

    with pytest.raises(DataError, match="no font draws"):
        build_source(source_section(kind="glyphs", characters="\u0f00", num_classes=1)).index()
