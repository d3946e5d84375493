"""Preprocessing shared by training, evaluation and serving (the model's data config).

The config (size, mean, std, interpolation) comes from the model (timm's
``resolve_data_config``), is saved as ``preprocess.json`` next to the weights
and travels inside the artifact, so every stage resizes and normalises the
same way.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PREPROCESS_FILE = "preprocess.json"

# How a non-square image is brought to the model's square: ``squash`` resizes it whole (its aspect changes),
# ``crop`` takes the centred square of its shorter side (its edges are lost), ``pad`` fits it whole inside a
# square of mid-grey (0 after the [-1, 1] scaling). Square images, like Intel's 150x150, are the same in all three.
FITS = ("squash", "crop", "pad")
# Measured (`cloudalliance bench fit`, 1,311 held-out Intel images cropped at random, two models): pad never lost
# and won at 16:9 by 2.7-2.8 points over squash (0.882 vs 0.854; 0.902 vs 0.874); crop lost everywhere.
DEFAULT_FIT = "pad"


@dataclasses.dataclass
class Preprocess:
    size: int = 150
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    fit: str = DEFAULT_FIT  # how a non-square image becomes size x size: see FITS

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        fit = data.get("fit", "squash")  # artifacts made before the choice existed squashed
        if fit not in FITS:
            raise ValueError(f"Unknown fit {fit!r} in the preprocessing config; choose one of: {', '.join(FITS)}")
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
                   interpolation=data.get("interpolation", "bilinear"), fit=fit)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / PREPROCESS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Preprocess":
        path = Path(folder) / PREPROCESS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {folder} a model folder made by `cloudalliance train`?")
        return cls.from_dict(json.loads(path.read_text()))


def resolve_preprocess(model, img_size: int, interpolation: str = "bilinear",
                       normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                       fit: str = DEFAULT_FIT) -> Preprocess:
    """Mean and std of the weights (``normalization``, where their source says), else from the model's pretrained
    config; the size is ours (the images are 150 px)."""
    if normalization is None:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        normalization = (cfg["mean"], cfg["std"])
    mean, std = normalization
    return Preprocess(size=int(img_size), mean=tuple(float(x) for x in mean), std=tuple(float(x) for x in std),
                      interpolation=interpolation, fit=fit)


_PIL_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0, "lanczos": 1}

def fit_square(img, size: int, fit: str = DEFAULT_FIT, interpolation: str = "bilinear"):
    """A PIL image as ``size`` x ``size`` by ``fit`` (:data:`FITS`)."""
    from PIL import Image

    resample = _PIL_RESAMPLE.get(interpolation, 2)
    width, height = img.size
    if fit not in FITS:
        raise ValueError(f"Unknown fit {fit!r}; choose one of: {', '.join(FITS)}")
    if width != height and fit == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif width != height and fit == "pad":
        scale = size / max(width, height)
        inner = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample)
        canvas = Image.new("RGB", (size, size), (127, 127, 127))
        canvas.paste(inner, ((size - inner.size[0]) // 2, (size - inner.size[1]) // 2))
        return canvas
    return img if img.size == (size, size) else img.resize((size, size), resample)


MAX_PIXELS_ENV = "CLOUDALLIANCE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000  # a 12 MP phone photo fits three times over; Intel's images are 150x150


DECODE_PIXELS_ENV = "CLOUDALLIANCE_MAX_DECODE_PIXELS"
# What is decoded at full size (every format but JPEG, whose draft mode decodes at 1/2, 1/4 or 1/8 scale):
# a 39 MP PNG costs ~0.75 s and ~640 MB while decoding; 16 MP (a 4,900 px square) stays near 250 MB.
DEFAULT_MAX_DECODE_PIXELS = 16_000_000
# The formats the course reads (what cameras, phones and the web send). Others are refused unread: an ICO
# declares its small directory entry's size in the header but decodes its largest embedded PNG in full, so
# the header check below would not see a bomb inside it (Pillow's IcoImagePlugin).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG opens MPO too (jpeg_factory)


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the cap (a decompression bomb, or just too big)."""


def max_pixels() -> int:
    """The pixel-count cap: ``$CLOUDALLIANCE_MAX_IMAGE_PIXELS`` or 40 MP."""
    return int(os.environ.get(MAX_PIXELS_ENV) or DEFAULT_MAX_PIXELS)


def max_decode_pixels() -> int:
    """The most pixels decoded at full size: ``$CLOUDALLIANCE_MAX_DECODE_PIXELS`` or 16 MP."""
    return int(os.environ.get(DECODE_PIXELS_ENV) or DEFAULT_MAX_DECODE_PIXELS)


# EXIF Orientation (tag 0x0112) values that need a transpose; 1 (and a missing tag) means "as stored".
_EXIF_ORIENTATION = 0x0112


def _to_rgb(img):
    """Any PIL mode to 8-bit RGB: 16/32-bit grey is scaled, not clipped to white; alpha is dropped."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr.astype(np.uint32) >> 8  # 16-bit samples to their high byte
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(source: str | os.PathLike | bytes, size: int, interpolation: str = "bilinear",
             pixel_cap: int | None = None, fit: str = DEFAULT_FIT) -> np.ndarray:
    """Decode an image file or bytes to an ``HxWx3`` uint8 array of ``size`` px (RGB, any input mode).

    The one decoder that training, evaluation and serving share, so all three see the same pixels:

    - the pixel count declared in the header is checked *before* any pixel is decoded (``Image.open`` is
      lazy: it reads the header only, Pillow docs "Image.open ... the actual image data is not read from the
      file until you try to process the data"); above ``pixel_cap`` (default :func:`max_pixels`) it raises
      :class:`ImageTooLarge`, so a 420 KB PNG that declares 12000x12000 costs nothing to refuse. Pillow's own
      ``DecompressionBombError`` (raised by ``Image.open`` above 2x ``Image.MAX_IMAGE_PIXELS``,
      PIL/Image.py ``_decompression_bomb_check``) is turned into the same error;
    - only the formats in :data:`IMAGE_FORMATS` are opened (an ICO, say, hides a full-size PNG behind a small
      header size);
    - JPEGs decode at a reduced scale when much larger than ``size`` (``draft``); what would still be decoded at
      full size above :func:`max_decode_pixels` (16 MP) raises :class:`ImageTooLarge` too;
    - the EXIF Orientation is applied (``ImageOps.exif_transpose``), so a phone photo taken upright is seen
      upright, as every viewer shows it;
    - CMYK, palette (with or without alpha), LA, 16-bit grey, animated GIF (first frame) all become RGB;
      a truncated or unreadable file raises PIL's own error (``OSError``/``UnidentifiedImageError``);
    - a non-square image is brought to the square by ``fit`` (:func:`fit_square`).
    """
    import warnings

    from PIL import Image, ImageOps

    cap = max_pixels() if pixel_cap is None else pixel_cap
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap below decides
            img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source,
                             formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"The image is too large to decode ({exc})") from None
    with img:
        width, height = img.size
        if width * height > cap:
            raise ImageTooLarge(f"The image is {width}x{height} px ({width * height / 1e6:.0f} MP); "
                                f"the limit is {cap / 1e6:.0f} MP")
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger (others: no-op)
        decoded = img.size[0] * img.size[1]  # after draft: what will really be decoded
        if decoded > max_decode_pixels():
            raise ImageTooLarge(f"The image is {width}x{height} px ({width * height / 1e6:.0f} MP) in {img.format}; "
                                f"the limit for formats decoded at full size is {max_decode_pixels() / 1e6:.0f} MP")
        if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        return np.asarray(fit_square(_to_rgb(img), size, fit, interpolation), dtype=np.uint8)


def to_tensor_batch(images: np.ndarray | Sequence[np.ndarray], cfg: Preprocess):
    """uint8 ``NxHxWx3`` (or a list of ``HxWx3``) to a normalised float ``NxCxHxW`` tensor."""
    import torch

    arr = np.stack(images) if not isinstance(images, np.ndarray) else images
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    return normalize(x, cfg)


def normalize(x, cfg: Preprocess):
    """Normalise a float ``NxCxHxW`` tensor in [0, 1] with the config's mean and std."""
    import torch

    mean = torch.tensor(cfg.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess_numpy(images: np.ndarray, cfg: Preprocess) -> np.ndarray:
    """The same normalisation without torch (for ONNX Runtime in serving): ``NxHxWx3`` uint8 -> ``Nx3xHxW``.

    ``(x / 255 - mean) / std`` as one multiply-add per value into one new array, the channels moved as the
    bytes are converted (agrees with :func:`normalize` to float32 rounding, ~1e-7). On one 192 px image:
    0.13 ms against 1.8 ms for the four-pass form.
    """
    images = np.asarray(images)
    mean = np.asarray(cfg.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(cfg.std, np.float32).reshape(1, 3, 1, 1)
    x = np.empty((images.shape[0], images.shape[3], images.shape[1], images.shape[2]), np.float32)
    np.copyto(x, images.transpose(0, 3, 1, 2), casting="unsafe")
    x *= 1.0 / (255.0 * std)
    x -= mean / std
    return x
