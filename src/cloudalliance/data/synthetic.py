"""Procedural scenes for the six Intel classes, written in Kaggle's layout.

Each class is drawn from its own scene grammar (sky, horizon, water, ridges,
trees, facades, roads in perspective) with random colours, positions, light,
weather, blur, noise and JPEG quality, so a classifier has to learn the
structure of a scene rather than memorise pixels. The pairs that the real data
confuses are close here too: glacier/mountain share ridges, street/buildings
share facades, sea/glacier share pale horizons.

Everything is seeded: the same seed writes the same bytes.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .folders import CLASSES, SPLITS

SIZE = 150
_SS = 2  # supersampling factor
_W = SIZE * _SS


# --------------------------------------------------------------------------- helpers


def _jitter(rng: np.random.Generator, rgb, amount: float = 18.0) -> tuple[int, int, int]:
    arr = np.asarray(rgb, dtype=float) + rng.normal(0, amount, 3)
    return tuple(int(v) for v in np.clip(arr, 0, 255))


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    return (np.asarray(top, float) * (1 - t) + np.asarray(bottom, float) * t) * np.ones((1, w, 1))


def _sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    weather = rng.choice(["clear", "clear", "hazy", "overcast", "dusk"])
    if weather == "clear":
        top, bottom = _jitter(rng, (60, 120, 210)), _jitter(rng, (170, 205, 240))
    elif weather == "hazy":
        top, bottom = _jitter(rng, (140, 170, 205)), _jitter(rng, (215, 220, 225))
    elif weather == "overcast":
        top, bottom = _jitter(rng, (150, 155, 165), 12), _jitter(rng, (200, 200, 205), 12)
    else:
        top, bottom = _jitter(rng, (70, 80, 150)), _jitter(rng, (245, 170, 110))
    sky = _gradient(h, w, top, bottom)
    # soft clouds: a few blurred blobs
    n_clouds = int(rng.integers(0, 5 if weather != "overcast" else 9))
    if n_clouds:
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        for _ in range(n_clouds):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h * 0.8)
            rx, ry = rng.uniform(w * 0.08, w * 0.3), rng.uniform(h * 0.04, h * 0.15)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.uniform(90, 200)))
        soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(w * 0.03)), float)[:, :, None] / 255.0
        sky = sky * (1 - soft) + 245.0 * soft
    return sky


def _ridge(rng: np.random.Generator, w: int, base: float, amplitude: float, roughness: float) -> np.ndarray:
    """A 1-D ridge line (y per x) by midpoint displacement."""
    n = 1 << int(np.ceil(np.log2(w)))
    y = np.zeros(n + 1)
    y[0], y[-1] = rng.normal(0, amplitude * 0.5), rng.normal(0, amplitude * 0.5)
    step, scale = n, amplitude
    while step > 1:
        half = step // 2
        mids = (y[0:-1:step] + y[step::step]) / 2 + rng.normal(0, scale, len(y[0:-1:step]))
        y[half::step] = mids
        step, scale = half, scale * roughness
    x = np.linspace(0, n, w)
    return base + np.interp(x, np.arange(n + 1), y)


def _fill_below(img: np.ndarray, line: np.ndarray, color_top, color_bottom, texture: float, rng) -> None:
    h, w, _ = img.shape
    rows = np.arange(h)[:, None]
    mask = rows >= line[None, :]
    shade = _gradient(h, w, color_top, color_bottom)
    noise = rng.normal(0, texture, (h // 4 + 1, w // 4 + 1))
    noise = np.kron(noise, np.ones((4, 4)))[:h, :w, None]
    img[mask] = np.clip(shade + noise, 0, 255)[mask]


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- scenes


def _mountain(rng: np.random.Generator) -> Image.Image:
    h = w = _W
    horizon = rng.uniform(0.35, 0.6) * h
    img = _sky(rng, h, w)
    layers = int(rng.integers(1, 4))
    far = _jitter(rng, (120, 130, 150), 15)
    near = _jitter(rng, rng.choice([(95, 80, 65), (70, 85, 60), (90, 90, 95)]), 15)
    snow = rng.random() < 0.55
    for i in range(layers):
        t = (i + 1) / layers
        base = horizon + (i - layers + 1) * 0.08 * h + h * 0.1
        line = _ridge(rng, w, base, rng.uniform(0.12, 0.25) * h * (1.2 - 0.3 * t), rng.uniform(0.5, 0.65))
        color = _mix(far, near, t)
        _fill_below(img, line, color, _mix(color, (40, 45, 35), 0.5), 10 + 8 * t, rng)
        if snow and i == 0:
            peak = line.min()
            cap = peak + rng.uniform(0.04, 0.12) * h
            rows = np.arange(h)[:, None]
            m = (rows >= line[None, :]) & (rows < cap + rng.normal(0, 2, w)[None, :])
            img[m] = np.clip(np.array([235.0, 238, 245]) + rng.normal(0, 8, (m.sum(), 1)), 0, 255)
    if rng.random() < 0.6:  # grassy or rocky foreground
        line = _ridge(rng, w, h * rng.uniform(0.78, 0.92), 0.04 * h, 0.5)
        _fill_below(img, line, _jitter(rng, (90, 110, 60)), _jitter(rng, (60, 75, 40)), 14, rng)
    return _to_image(img)


def _glacier(rng: np.random.Generator) -> Image.Image:
    h = w = _W
    img = _sky(rng, h, w)
    horizon = rng.uniform(0.25, 0.55) * h
    ice_far = _jitter(rng, (205, 220, 235), 10)
    ice_near = _jitter(rng, (150, 190, 215), 14)
    line = _ridge(rng, w, horizon, rng.uniform(0.05, 0.2) * h, rng.uniform(0.45, 0.6))
    _fill_below(img, line, ice_far, ice_near, 7, rng)
    if rng.random() < 0.5:  # dark rock bands in the ice
        rock = _ridge(rng, w, horizon + rng.uniform(0.05, 0.2) * h, 0.06 * h, 0.55)
        rows = np.arange(h)[:, None]
        band = (rows >= rock[None, :]) & (rows < rock[None, :] + rng.uniform(3, 12) * _SS)
        img[band] = img[band] * 0.55
    pil = _to_image(img)
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(6, 25))):  # crevasses
        y = rng.uniform(horizon + 0.1 * h, h)
        x = rng.uniform(0, w)
        length = rng.uniform(0.05, 0.25) * w
        tilt = rng.normal(0, 0.15) * length
        shade = _jitter(rng, (60, 100, 140), 15)
        draw.line([(x, y), (x + length, y + tilt)], fill=shade, width=int(rng.integers(1, 4)) * _SS)
    if rng.random() < 0.3:  # meltwater lake
        y0 = rng.uniform(0.75, 0.9) * h
        draw.rectangle([0, y0, w, h], fill=_jitter(rng, (70, 120, 150), 12))
    return pil


def _sea(rng: np.random.Generator) -> Image.Image:
    h = w = _W
    img = _sky(rng, h, w)
    horizon = int(rng.uniform(0.3, 0.6) * h)
    near_color = _jitter(rng, rng.choice([(20, 70, 120), (20, 100, 120), (30, 60, 100)]), 15)
    far_color = _mix(near_color, (170, 200, 220), rng.uniform(0.3, 0.6))
    water = _gradient(h - horizon, w, far_color, near_color)
    img[horizon:] = water
    pil = _to_image(img)
    draw = ImageDraw.Draw(pil)
    if rng.random() < 0.35:  # distant land on the horizon
        land = _ridge(rng, w, horizon - 2, 0.03 * h, 0.5)
        pts = [(x, land[x]) for x in range(0, w, 4)] + [(w, horizon), (0, horizon)]
        draw.polygon(pts, fill=_jitter(rng, (90, 100, 100), 15))
    for _ in range(int(rng.integers(30, 120))):  # wave highlights, denser and longer near the viewer
        depth = rng.random() ** 1.5
        y = horizon + depth * (h - horizon)
        length = (0.01 + 0.08 * depth) * w
        x = rng.uniform(-length, w)
        tone = _mix(near_color, (235, 240, 245), rng.uniform(0.4, 0.9))
        draw.line([(x, y), (x + length, y + rng.normal(0, 1))], fill=tone, width=max(1, int(1 + 3 * depth)))
    if rng.random() < 0.4:  # beach
        shore = _ridge(rng, w, h * rng.uniform(0.78, 0.92), 0.04 * h, 0.5)
        pts = [(x, shore[x]) for x in range(0, w, 4)] + [(w, h), (0, h)]
        draw.polygon(pts, fill=_jitter(rng, (210, 190, 150), 15))
        draw.line([(x, shore[x]) for x in range(0, w, 4)], fill=(240, 245, 245), width=2 * _SS)
    return pil


def _forest(rng: np.random.Generator) -> Image.Image:
    h = w = _W
    green = _jitter(rng, rng.choice([(40, 80, 35), (55, 95, 40), (35, 65, 45), (80, 95, 40)]), 12)
    img = _gradient(h, w, _mix(green, (200, 220, 200), rng.uniform(0.1, 0.5)), _mix(green, (20, 25, 15), 0.5))
    if rng.random() < 0.4:
        sky_h = int(rng.uniform(0.05, 0.25) * h)
        img[:sky_h] = _sky(rng, sky_h, w)
    pil = _to_image(img)
    draw = ImageDraw.Draw(pil)
    bark = _jitter(rng, (70, 50, 35), 12)
    for _ in range(int(rng.integers(8, 30))):  # trunks
        x = rng.uniform(0, w)
        width = rng.uniform(2, 14) * _SS
        top = rng.uniform(-0.1, 0.5) * h
        draw.rectangle([x, top, x + width, h], fill=_mix(bark, (20, 15, 10), rng.uniform(0, 0.6)))
    for _ in range(int(rng.integers(60, 220))):  # foliage
        cx, cy = rng.uniform(0, w), rng.uniform(-0.05, 0.85) * h
        r = rng.uniform(4, 22) * _SS
        tone = _mix(green, rng.choice([(10, 30, 10), (150, 190, 90), (60, 110, 40)]), rng.uniform(0, 0.7))
        draw.ellipse([cx - r, cy - r * rng.uniform(0.6, 1.4), cx + r, cy + r], fill=tone)
    for _ in range(int(rng.integers(0, 25))):  # sun flecks
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 4) * _SS
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng, (200, 220, 140), 20))
    if rng.random() < 0.5:  # forest floor
        floor = int(rng.uniform(0.8, 0.95) * h)
        draw.rectangle([0, floor, w, h], fill=_jitter(rng, (75, 60, 40), 15))
    return pil


def _facade(draw: ImageDraw.ImageDraw, rng, box, wall, window) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=wall)
    cols = int(rng.integers(2, 8))
    rows = int(rng.integers(3, 14))
    cw, rh = (x1 - x0) / cols, (y1 - y0) / rows
    fill = rng.uniform(0.45, 0.75)
    lit = _mix(window, (250, 230, 160), 0.7)
    for r in range(rows):
        for c in range(cols):
            wx, wy = x0 + c * cw + cw * (1 - fill) / 2, y0 + r * rh + rh * (1 - fill) / 2
            colour = lit if rng.random() < 0.08 else window
            draw.rectangle([wx, wy, wx + cw * fill, wy + rh * fill], fill=colour)


_WALLS = [(150, 150, 150), (170, 90, 70), (200, 185, 160), (110, 130, 160), (190, 190, 180), (120, 100, 90)]


def _buildings(rng: np.random.Generator) -> Image.Image:
    h = w = _W
    img = _sky(rng, h, w)
    pil = _to_image(img)
    draw = ImageDraw.Draw(pil)
    x = rng.uniform(-0.2, 0.0) * w
    while x < w:
        bw = rng.uniform(0.25, 0.7) * w
        top = rng.uniform(-0.1, 0.45) * h
        wall = _jitter(rng, _WALLS[int(rng.integers(len(_WALLS)))], 15)
        window = _jitter(rng, rng.choice([(40, 50, 70), (90, 120, 150), (30, 30, 35)]), 12)
        _facade(draw, rng, (x, top, x + bw, h), wall, window)
        if rng.random() < 0.4:  # roof line
            draw.rectangle([x - 2 * _SS, top - 4 * _SS, x + bw + 2 * _SS, top], fill=_mix(wall, (30, 30, 30), 0.5))
        x += bw + rng.uniform(-0.05, 0.08) * w
    if rng.random() < 0.3:  # trees or street furniture in front
        for _ in range(int(rng.integers(1, 4))):
            cx, r = rng.uniform(0, w), rng.uniform(8, 20) * _SS
            draw.ellipse([cx - r, h - 2.5 * r, cx + r, h - 0.5 * r], fill=_jitter(rng, (60, 100, 50), 15))
    return pil


def _street(rng: np.random.Generator) -> Image.Image:
    h = w = _W
    img = _sky(rng, h, w)
    pil = _to_image(img)
    draw = ImageDraw.Draw(pil)
    vx, vy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.3, 0.5) * h
    asphalt = _jitter(rng, (85, 85, 90), 12)
    left_edge, right_edge = rng.uniform(-0.4, 0.1) * w, rng.uniform(0.9, 1.4) * w
    for side in (-1, 1):  # facades in perspective on both sides
        if rng.random() < 0.15:
            continue
        wall = _jitter(rng, _WALLS[int(rng.integers(len(_WALLS)))], 15)
        near_x = 0 if side < 0 else w
        far_x = vx + side * rng.uniform(0.04, 0.12) * w
        top_near, top_far = rng.uniform(-0.2, 0.1) * h, vy - rng.uniform(0.05, 0.2) * h
        draw.polygon([(near_x, top_near), (far_x, top_far), (far_x, vy + 0.03 * h), (near_x, h)], fill=wall)
        dark = _mix(wall, (20, 20, 30), 0.6)
        for i in range(1, int(rng.integers(4, 10))):  # window columns shrinking with distance
            t = 1 - (0.75 ** i)
            x = near_x + (far_x - near_x) * t
            yt = top_near + (top_far - top_near) * t
            yb = h + (vy - h) * t
            draw.line([(x, yt + (yb - yt) * 0.1), (x, yb - (yb - yt) * 0.35)], fill=dark, width=max(1, int(6 * _SS * (1 - t))))
    road = [(left_edge, h), (vx - 0.01 * w, vy), (vx + 0.01 * w, vy), (right_edge, h)]
    draw.polygon(road, fill=asphalt)
    sidewalk = _jitter(rng, (160, 155, 150), 10)
    draw.polygon([(left_edge, h), (vx - 0.01 * w, vy), (left_edge - 0.25 * w, h)], fill=sidewalk)
    draw.polygon([(right_edge, h), (vx + 0.01 * w, vy), (right_edge + 0.25 * w, h)], fill=sidewalk)
    paint = (235, 230, 200) if rng.random() < 0.7 else (240, 200, 60)
    for i in range(int(rng.integers(4, 9))):  # dashed centre line
        t0, t1 = 1 - 0.7 ** (i + 0.0), 1 - 0.7 ** (i + 0.5)
        ya, yb = h + (vy - h) * t0, h + (vy - h) * t1
        xa = (left_edge + right_edge) / 2 + (vx - (left_edge + right_edge) / 2) * t0
        xb = (left_edge + right_edge) / 2 + (vx - (left_edge + right_edge) / 2) * t1
        draw.line([(xa, ya), (xb, yb)], fill=paint, width=max(1, int(5 * _SS * (1 - t0))))
    for _ in range(int(rng.integers(0, 4))):  # cars
        t = rng.uniform(0.2, 0.8)
        cy = h + (vy - h) * t
        cx = vx + (rng.uniform(-0.3, 0.3) * w) * (1 - t)
        s = 18 * _SS * (1 - t)
        draw.rectangle([cx - s, cy - s * 0.6, cx + s, cy], fill=_jitter(rng, (150, 40, 40), 60))
    return pil


SCENES: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "buildings": _buildings,
    "forest": _forest,
    "glacier": _glacier,
    "mountain": _mountain,
    "sea": _sea,
    "street": _street,
}


def _finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Light, colour cast, blur, sensor noise, then down to 150x150."""
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, float)
    gain = rng.uniform(0.7, 1.25)
    cast = rng.normal(1.0, 0.06, 3)
    arr = (arr - 128) * rng.uniform(0.75, 1.2) + 128
    arr = arr * gain * cast
    img = _to_image(arr)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 2.0)))
    img = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    arr = np.asarray(img, float) + rng.normal(0, rng.uniform(1, 8), (SIZE, SIZE, 3))
    return _to_image(arr)


def render(cls: str, seed: int) -> Image.Image:
    """One 150x150 RGB scene of class ``cls``; the same (cls, seed) gives the same image."""
    if cls not in SCENES:
        raise ValueError(f"Unknown class {cls!r}; choose one of: {', '.join(CLASSES)}")
    rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
    return _finish(SCENES[cls](rng), rng)


def encode_jpeg(img: Image.Image, seed: int) -> bytes:
    quality = int(np.random.default_rng(seed).integers(70, 96))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_problem_files(folder: Path, seed: int = 0) -> list[Path]:
    """Files the loader must name instead of crashing on (the real data has such files)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = encode_jpeg(render("sea", seed), seed)
    problems = {
        "problem_truncated.jpg": good[: len(good) // 3],
        "problem_not_a_jpeg.jpg": b"this is not an image\n" * 20,
        "problem_empty.jpg": b"",
    }
    written = []
    for name, data in problems.items():
        (folder / name).write_bytes(data)
        written.append(folder / name)
    gray = render("glacier", seed + 1).convert("L")
    gray.save(folder / "problem_grayscale.jpg", quality=90)
    odd = render("sea", seed + 2).resize((150, 113))
    odd.save(folder / "problem_odd_size.jpg", quality=90)
    written += [folder / "problem_grayscale.jpg", folder / "problem_odd_size.jpg"]
    return written


# --------------------------------------------------------------------------- the data set on disk


@dataclasses.dataclass
class SyntheticSpec:
    train_per_class: int = 40
    test_per_class: int = 10
    pred: int = 12
    seed: int = 0
    problem_files: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _write_one(job: tuple[str, int, str]) -> None:
    cls, seed, path = job
    data = encode_jpeg(render(cls, seed), seed)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _seed(base: int, split: str, cls: str, index: int) -> int:
    return (base * 1_000_003 + SPLITS.index(split) * 100_003 + CLASSES.index(cls) * 10_007 + index) % (2**31)


def generate_synthetic(
    dest: str | os.PathLike,
    spec: SyntheticSpec | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the synthetic data set in Kaggle's layout under ``dest``; return ``dest``.

    Files that already exist are kept (the same seed writes the same bytes),
    so a rerun after an interruption only writes what is missing.
    """
    from tqdm.auto import tqdm

    spec = spec or SyntheticSpec()
    root = Path(dest)
    jobs: list[tuple[str, int, str]] = []
    for split, per_class in (("train", spec.train_per_class), ("test", spec.test_per_class)):
        for cls in CLASSES:
            folder = root / f"seg_{split}" / f"seg_{split}" / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                jobs.append((cls, _seed(spec.seed, split, cls, i), str(folder / f"{i:05d}.jpg")))
    pred_folder = root / "seg_pred" / "seg_pred"
    pred_folder.mkdir(parents=True, exist_ok=True)
    pred_rng = np.random.default_rng(spec.seed + 7)
    for i in range(spec.pred):
        cls = CLASSES[int(pred_rng.integers(len(CLASSES)))]
        jobs.append((cls, _seed(spec.seed, "pred", cls, i), str(pred_folder / f"{i:05d}.jpg")))
    todo = [j for j in jobs if not os.path.exists(j[2])]
    workers = workers or min(4, os.cpu_count() or 1)
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="synthetic scenes", unit="img",
              disable=not progress) as bar:
        if workers > 1 and len(todo) > 50:
            with cf.ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_write_one, todo, chunksize=16):
                    bar.update(1)
        else:
            for job in todo:
                _write_one(job)
                bar.update(1)
    if spec.problem_files:
        write_problem_files(root / "seg_train" / "seg_train" / CLASSES[0], spec.seed)
    (root / "synthetic.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return root
