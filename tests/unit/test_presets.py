"""presets.load_rgb: the one decoder of training, evaluation and serving (bombs, EXIF, odd modes)."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from cloudalliance import presets
from cloudalliance.presets import ImageTooLarge, load_rgb


def bomb_png(side: int = 12000) -> bytes:
    """A real grey PNG of ``side`` x ``side`` zeros (~140 KB for 12000 px): decoding it costs side² bytes+."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + one byte per pixel
    idat = b"".join(comp.compress(row * 500) for _ in range(side // 500)) + comp.compress(row * (side % 500))
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def halves(w: int = 120, h: int = 60) -> np.ndarray:
    """Left half red, right half blue, a green top-left square: every rotation/flip looks different."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2:] = (0, 0, 255)
    a[: h // 4, : h // 4] = (0, 255, 0)
    return a


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bomb_png()


def test_bomb_is_refused_from_the_header_before_any_pixel_is_decoded(bomb):
    assert len(bomb) < 1_000_000
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="12000x12000"):
        load_rgb(bomb, 64)
    # decoding 144 MP takes seconds and ~0.5 GB; reading the header takes milliseconds
    assert time.perf_counter() - t0 < 0.5


def test_the_pixel_cap_is_configurable(monkeypatch):
    img = encode(Image.fromarray(halves(200, 100)), "PNG")  # 20,000 px
    assert load_rgb(img, 32).shape == (32, 32, 3)
    monkeypatch.setenv(presets.MAX_PIXELS_ENV, "19999")
    with pytest.raises(ImageTooLarge, match="limit"):
        load_rgb(img, 32)
    assert load_rgb(img, 32, pixel_cap=20_000).shape == (32, 32, 3)


def test_pillows_own_bomb_error_becomes_image_too_large(monkeypatch):
    # Pillow raises DecompressionBombError in Image.open above 2 x MAX_IMAGE_PIXELS (PIL/Image.py,
    # _decompression_bomb_check); it must reach callers as our ValueError, not as a crash.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLarge):
        load_rgb(encode(Image.fromarray(halves(200, 100)), "PNG"), 32, pixel_cap=10**9)


@pytest.mark.parametrize("orientation, turn", [(6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                                (3, lambda a: np.rot90(a, 2)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(orientation, turn):
    """A phone photo stored landscape with Orientation=6 is shown (and must be classified) portrait."""
    src = halves()
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg = encode(Image.fromarray(src), "JPEG", quality=95, exif=exif)
    got = load_rgb(jpeg, 60, fit="squash").astype(int)
    want = np.asarray(Image.fromarray(np.ascontiguousarray(turn(src))).resize((60, 60), Image.BILINEAR)).astype(int)
    assert np.abs(got - want).mean() < 6  # JPEG noise only
    plain = load_rgb(encode(Image.fromarray(src), "JPEG", quality=95), 60, fit="squash").astype(int)
    assert np.abs(got - plain).mean() > 40  # and it is not the unrotated picture


def _gif_animated() -> bytes:
    frames = [Image.fromarray(halves()).convert("P"), Image.new("P", (120, 60), 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


@pytest.mark.parametrize("name, data", [
    ("cmyk jpeg", lambda: encode(Image.fromarray(halves()).convert("CMYK"), "JPEG")),
    ("palette + alpha png", lambda: encode(Image.fromarray(halves()).convert("P"), "PNG", transparency=0)),
    ("LA png", lambda: encode(Image.fromarray(halves()).convert("LA"), "PNG")),
    ("RGBA png", lambda: encode(Image.fromarray(halves()).convert("RGBA"), "PNG")),
    ("animated gif", _gif_animated),
    ("1-bit png", lambda: encode(Image.fromarray(halves()).convert("1"), "PNG")),
])
def test_odd_modes_become_rgb(name, data):
    out = load_rgb(data(), 40)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert out.std() > 10, f"{name} decoded to a flat picture"


def test_16_bit_grey_is_scaled_not_clipped():
    grey = np.full((50, 50), 40000, np.uint16)
    grey[:, 25:] = 10000
    png = encode(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    out = load_rgb(png, 50)
    assert abs(int(out[0, 0, 0]) - 40000 // 256) <= 1 and abs(int(out[0, 49, 0]) - 10000 // 256) <= 1


def test_truncated_and_garbage_raise_pil_errors_not_crash():
    jpeg = encode(Image.fromarray(halves()), "JPEG")
    with pytest.raises(OSError):
        load_rgb(jpeg[: len(jpeg) // 2], 40)
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError is an OSError
        load_rgb(b"this is not an image", 40)


def test_an_ico_hiding_a_big_png_is_refused_unread():
    """An ICO's header gives its directory entry's size (16x16 here), but Pillow decodes the largest PNG inside
    it in full (PIL/IcoImagePlugin.py): the format is not one the course reads, so it is refused before decoding."""
    inner = bomb_png(6000)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 6 + 16)
    ico = struct.pack("<HHH", 0, 1, 1) + entry + inner
    t0 = time.perf_counter()
    with pytest.raises(Exception) as info:
        load_rgb(ico, 64)
    assert not isinstance(info.value, MemoryError)
    assert time.perf_counter() - t0 < 0.5, "the embedded 36 MP PNG was decoded"


def test_formats_decoded_at_full_size_have_a_lower_cap_than_jpeg(monkeypatch):
    """A PNG is decoded whole (~0.75 s and ~640 MB for 39 MP); a JPEG of the same size decodes at 1/8 scale."""
    monkeypatch.setenv(presets.DECODE_PIXELS_ENV, "1000000")
    big = Image.new("RGB", (1500, 1000), (30, 120, 200))  # 1.5 MP
    with pytest.raises(ImageTooLarge, match="full size"):
        load_rgb(encode(big, "PNG"), 64)
    assert load_rgb(encode(big, "JPEG"), 64).shape == (64, 64, 3)  # draft decodes it at 188x125
    assert load_rgb(encode(big.resize((1000, 900)), "PNG"), 64).shape == (64, 64, 3)


@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.498,) * 3, (0.502,) * 3)])
def test_serving_normalisation_is_trainings_to_float32_rounding(mean, std):
    """ONNX Runtime's input (numpy, serving) against the torch tensor training and evaluation feed the model."""
    rng = np.random.default_rng(0)
    cfg = presets.Preprocess(size=24, mean=mean, std=std)
    batch = rng.integers(0, 256, size=(3, 24, 24, 3), dtype=np.uint8)
    batch[0, 0, 0] = (0, 128, 255)
    for images in (batch, batch[:, ::-1]):  # and a view that is not contiguous
        served = presets.preprocess_numpy(images, cfg)
        trained = presets.to_tensor_batch(np.ascontiguousarray(images), cfg).numpy()
        assert served.dtype == np.float32 and served.shape == (3, 3, 24, 24) and served.flags.c_contiguous
        np.testing.assert_allclose(served, trained, rtol=0, atol=1e-6)
