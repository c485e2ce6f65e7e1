"""Front-facing face images for the synthetic world, drawn with PIL.

An image is built in three stages:

1. the head of the identity in a canonical frame (head height = 1 unit), with the
   identity's geometry (face width and jaw from gender and size, features), colours (skin,
   hair greying with age), gender cues (every man's stubble or beard, women's lined upper
   lids), age cues (wrinkles, eye bags, receding hairline) and the image's
   expression (smile, open mouth, raised brows, blinks) and pose (yaw and pitch move the
   features against the outline);
2. an affine transform for roll, scale and position, composited over a random background;
3. lighting: a directional gradient, brightness, a colour cast and sensor noise.

Drawing happens on a canvas twice the output size and is reduced to it, which antialiases
the polygons. The face reveals its shared attributes without noise: head size and face
width are functions of gender and size only, and the wrinkles' contrast a function
of age only (``world.face_traits``), which the Bayes ceiling relies on. They are drawn large
against the per-photo nuisance: the photo's scale jitter (3 %) is under half of what one
unit of size changes (7 %).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .world import FACE, FaceTraits, Identity, WorldConfig, rng_for

SUPERSAMPLE = 2


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _scale(c, k: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(x * k), 0, 255)) for x in c)


def _ellipse(draw, cx, cy, rx, ry, **kw):
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], **kw)


def _outline(f: FaceTraits, unit: float, cx: float, cy: float, squeeze: float) -> list:
    """Face contour: an ellipse above the eyes, a superellipse narrowing to the jaw below."""
    half_w = 0.5 * f.width * unit * squeeze
    top = [(cx + half_w * math.cos(a), cy - 0.5 * unit * math.sin(a))
           for a in np.linspace(0, math.pi, 24)]
    bottom = []
    for t in np.linspace(0, 1, 24):
        w = half_w * (1 - t ** f.squareness) ** (1 / f.squareness) * (1 - (1 - f.jaw) * t)
        bottom.append((w, cy + 0.5 * unit * t))
    left = [(cx - w, y) for w, y in bottom]
    right = [(cx + w, y) for w, y in reversed(bottom)]
    return top + left + right


def _draw_head(f: FaceTraits, gender: str, size: int, rng: np.random.Generator) -> Image.Image:
    """The head on a transparent ``size`` canvas, canonical position, with this image's
    expression and pose drawn from ``rng``."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    unit = 0.6 * size * f.scale                          # head height in pixels
    cx, cy = size / 2, 0.47 * size
    yaw, pitch = rng.uniform(-0.25, 0.25), rng.uniform(-0.15, 0.15)
    smile = rng.uniform(-0.2, 1.0)
    mouth_open = rng.uniform(0.2, 0.6) if rng.random() < 0.25 else 0.0
    brow_raise = rng.normal(0, 0.012) * unit
    blink = rng.random() < 0.06
    squeeze = 1 - 0.12 * abs(yaw)
    # features move against the outline: the nose (nearer) more than the eyes
    fx, fy = cx + 0.09 * yaw * unit, cy + 0.04 * pitch * unit
    hair = _mix(f.hair, (205, 205, 208), f.grey)
    skin = f.skin
    shade = _scale(skin, 0.86)
    half_w = 0.5 * f.width * unit * squeeze

    # clothes, neck, hair behind the head
    clothes = tuple(int(c) for c in rng.integers(30, 220, 3))
    shoulder_w = 1.05 * f.width * unit * (1.12 if gender == "m" else 1.0)
    _ellipse(d, cx, cy + 0.95 * unit, shoulder_w, 0.4 * unit, fill=clothes)
    neck_w = half_w * (0.62 if gender == "m" else 0.5)
    d.rectangle([cx - neck_w, cy + 0.2 * unit, cx + neck_w, cy + 0.7 * unit], fill=shade)
    if f.hair_style in ("long", "bob"):
        length = 0.55 if f.hair_style == "long" else 0.22
        d.rounded_rectangle([cx - 1.18 * half_w, cy - 0.45 * unit, cx + 1.18 * half_w,
                             cy + length * unit], radius=0.25 * unit, fill=hair)

    # ears, face
    ear_h = f.ear_size * unit
    for side in (-1, 1):
        far = 1 - 0.5 * max(0.0, side * yaw)                 # the far ear shows less
        _ellipse(d, cx + side * (half_w - 0.01 * unit), cy + 0.03 * unit, 0.045 * unit * far,
                 ear_h / 2, fill=shade)
    outline = _outline(f, unit, cx, cy, squeeze)
    d.polygon(outline, fill=shade)
    inner = [(cx + 0.93 * (x - cx), cy + 0.95 * (y - cy) - 0.01 * unit) for x, y in outline]
    d.polygon(inner, fill=skin)

    # beard or stubble: the lower face in a darker hair colour, at the beard's density
    if f.beard > 0:
        lower = [(x, y) for x, y in outline if y > cy + 0.1 * unit]
        beard = Image.new("RGBA", layer.size, (0, 0, 0, 0))
        ImageDraw.Draw(beard).polygon(lower + [(cx + 0.8 * half_w, cy + 0.08 * unit),
                                               (cx - 0.8 * half_w, cy + 0.08 * unit)],
                                      fill=_scale(hair, 0.7) + (int(200 * f.beard),))
        layer.alpha_composite(beard)

    # age: forehead lines, nasolabial folds, crow's feet, eye bags, a stroke of about one
    # output pixel whose contrast follows age exactly: none at 18, dark at 85
    line = _mix(skin, _scale(skin, 0.35), f.wrinkles)
    width = max(1, int(0.006 * unit))
    age_width = max(2, round(0.03 * unit))
    for k in range(3):
        y = cy - (0.2 + 0.05 * k) * unit
        d.arc([fx - 0.22 * unit, y - 0.03 * unit, fx + 0.22 * unit, y + 0.03 * unit],
              200, 340, fill=line, width=age_width)
    for side in (-1, 1):
        x0 = fx + side * 0.07 * unit
        d.line([(x0, cy + 0.12 * unit), (x0 + side * 0.05 * unit, cy + 0.3 * unit)],
               fill=line, width=age_width)
        x1 = fx + side * (f.eye_spacing + 0.1) * unit                  # crow's feet
        for dy in (-0.025, 0.0, 0.025):
            d.line([(x1, fy), (x1 + side * 0.05 * unit, fy + 1.6 * dy * unit)], fill=line,
                   width=age_width)

    # eyes, brows
    ew, eh = 1.4 * f.eye_size * unit, 0.5 * 1.4 * f.eye_size * unit
    brow_col = _mix(f.hair, (205, 205, 208), 0.6 * f.grey)
    for side in (-1, 1):
        ex, ey = fx + side * f.eye_spacing * unit, fy
        d.arc([ex - ew, ey + 0.2 * eh, ex + ew, ey + 1.6 * eh], 20, 160, fill=line,
              width=age_width)                                 # eye bag
        if blink:
            d.line([(ex - ew, ey), (ex + ew, ey)], fill=_scale(skin, 0.5), width=2 * width)
        else:
            _ellipse(d, ex, ey, ew, eh, fill=(240, 240, 236))
            gaze = ex + 0.3 * ew * yaw                         # irises follow the head
            _ellipse(d, gaze, ey, 0.5 * eh, 0.8 * eh, fill=f.eye_colour)
            _ellipse(d, gaze, ey, 0.22 * eh, 0.35 * eh, fill=(15, 15, 15))
            if gender == "f":                                  # upper lid: lined
                d.arc([ex - ew, ey - eh, ex + ew, ey + eh], 180, 360, fill=(25, 20, 22),
                      width=3 * width)
            else:
                d.arc([ex - ew, ey - eh, ex + ew, ey + eh], 180, 360, fill=_scale(skin, 0.45),
                      width=width)
        by = ey - 1.9 * eh - brow_raise
        bw = f.brow * unit
        d.line([(ex - side * 1.1 * ew, by + 0.4 * bw), (ex, by - 0.3 * bw),
                (ex + side * 1.2 * ew, by + 0.2 * bw)], fill=brow_col, width=int(bw) + 1,
               joint="curve")

    # nose
    nx = cx + 0.14 * yaw * unit
    ny = fy + f.nose_length * unit
    nw = f.nose_width * unit
    d.line([(nx - 0.2 * nw, fy + 0.02 * unit), (nx - 0.35 * nw, ny - 0.2 * nw)],
           fill=_scale(skin, 0.75), width=width)
    d.arc([nx - nw, ny - 0.6 * nw, nx + nw, ny + 0.5 * nw], 20, 160, fill=_scale(skin, 0.6),
          width=max(1, int(1.5 * width)))
    _ellipse(d, nx - 0.45 * nw, ny, 0.18 * nw, 0.12 * nw, fill=_scale(skin, 0.45))
    _ellipse(d, nx + 0.45 * nw, ny, 0.18 * nw, 0.12 * nw, fill=_scale(skin, 0.45))

    # mouth: corners lift with the smile; an open mouth shows teeth
    mx, my = fx, cy + 0.3 * unit + 0.03 * pitch * unit
    mw = 0.5 * f.mouth_width * unit * (1 + 0.15 * smile)
    lift = 0.035 * unit * smile
    lip = f.lips * unit
    gap = mouth_open * 0.06 * unit
    upper = ([(mx - mw, my - lift)]
             + [(mx + mw * s, my - (lip + 0.4 * lift) * (1 - s * s))
                for s in np.linspace(-0.8, 0.8, 7)]
             + [(mx + mw, my - lift)])
    lower = [(mx + mw * s, my + gap + lip * 1.2 * (1 - s * s) + 0.5 * lift * (s * s - 1))
             for s in np.linspace(0.8, -0.8, 7)]
    if gap > 0:
        inside = [(mx + mw * s, my + (gap - 0.3 * lift) * (1 - s * s))
                  for s in np.linspace(-1, 1, 9)]
        d.polygon([(mx - mw, my - lift)] + inside + [(mx + mw, my - lift)], fill=(60, 20, 25))
        d.rectangle([mx - 0.5 * mw, my - 0.2 * lip, mx + 0.5 * mw, my + 0.35 * gap],
                    fill=(235, 232, 225))
    d.polygon(upper + lower if gap == 0 else upper + [(mx + mw, my - lift), (mx - mw, my - lift)],
              fill=f.lip_colour)
    if gap > 0:
        d.polygon([(mx + mw, my - lift)] + lower + [(mx - mw, my - lift)], fill=f.lip_colour)

    # hair on top: a cap above the hairline, which recedes with hairline (balding)
    cap_col = hair if f.hair_style != "buzz" else _mix(skin, hair, 0.55)
    top_y = cy - 0.56 * unit
    hairline_y = cy - (0.32 + 0.2 * f.hairline) * unit
    arc = [(cx + 1.07 * half_w * math.cos(a), cy - 0.02 * unit - 0.54 * unit * math.sin(a))
           for a in np.linspace(-0.15, math.pi + 0.15, 30)]
    inner_top = max(hairline_y, top_y + 0.04 * unit + 0.12 * unit * (1 - f.hairline))
    inner = [(cx + 0.95 * half_w * math.cos(a), inner_top + (cy - 0.05 * unit - inner_top)
              * (1 - math.sin(a)) ** 2) for a in np.linspace(math.pi + 0.1, -0.1, 30)]
    if f.hairline > 0.6:      # bald crown: keep the sides only
        for side in (-1, 1):
            pts = [p for p in arc + inner if side * (p[0] - cx) > 0.7 * half_w]
            if len(pts) > 2:
                d.polygon(pts, fill=cap_col)
    else:
        d.polygon(arc + inner, fill=cap_col)
    if f.hair_style == "side":
        d.polygon([(cx - 0.9 * half_w, hairline_y), (cx + 0.6 * half_w, hairline_y - 0.04 * unit),
                   (cx - 0.5 * half_w, hairline_y + 0.08 * unit)], fill=cap_col)
    elif f.hair_style == "curly":
        for a in np.linspace(0.1, math.pi - 0.1, 9):
            x, y = cx + 1.02 * half_w * math.cos(a), cy - (0.02 + 0.52 * math.sin(a)) * unit
            _ellipse(d, x, y, 0.07 * unit, 0.07 * unit, fill=cap_col)
    elif f.hair_style == "bun":
        _ellipse(d, cx, top_y - 0.02 * unit, 0.12 * unit, 0.09 * unit, fill=cap_col)

    if f.glasses:
        for side in (-1, 1):
            ex = fx + side * f.eye_spacing * unit
            _ellipse(d, ex, fy, 1.5 * ew, 1.3 * ew, outline=(30, 30, 30), width=max(2, width))
        inner = f.eye_spacing * unit - 1.5 * ew
        d.line([(fx - inner, fy), (fx + inner, fy)], fill=(30, 30, 30), width=max(2, width))
    return layer


def _muted(rng: np.random.Generator) -> np.ndarray:
    colour = rng.uniform(30, 230, 3)
    return colour + (colour.mean() - colour) * rng.uniform(0.3, 0.8)


def render_face(identity: Identity, number: int, config: WorldConfig) -> np.ndarray:
    """Face image ``number`` of ``identity``: uint8 ``[S, S, 3]``, ``S = config.face_size``.

    Deterministic in ``(config.seed, identity.index, number)``.
    """
    rng = rng_for(config.seed, FACE, identity.index, number)
    canvas_size = SUPERSAMPLE * config.face_size
    head = _draw_head(identity.face, identity.gender, canvas_size, rng)

    # roll, scale and position: the affine map takes output pixels to head-canvas pixels
    roll = math.radians(rng.normal(0, 4.0))
    scale = rng.uniform(0.97, 1.03)     # within the 7 % that one unit of size makes
    shift = rng.uniform(-0.04, 0.04, 2) * canvas_size
    cos, sin = math.cos(roll) / scale, math.sin(roll) / scale
    c = canvas_size / 2
    ox, oy = c + shift
    matrix = (cos, sin, c - cos * ox - sin * oy, -sin, cos, c + sin * ox - cos * oy)
    head = head.transform(head.size, Image.Transform.AFFINE, matrix,
                          resample=Image.Resampling.BILINEAR)

    # background: a vertical gradient between two muted colours
    top, bottom = (_muted(rng) for _ in range(2))
    ramp = np.linspace(0, 1, canvas_size)[:, None, None]
    bg = np.broadcast_to(top + (bottom - top) * ramp, (canvas_size, canvas_size, 3))
    canvas = Image.fromarray(bg.astype(np.uint8), "RGB").convert("RGBA")
    canvas.alpha_composite(head)
    size = config.face_size
    img = canvas.convert("RGB").resize((size, size), Image.Resampling.BOX)
    img = np.asarray(img, dtype=np.float32)

    # lighting: directional gradient, brightness, colour cast, sensor noise
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    light = 1 + rng.uniform(0, 0.35) * (math.cos(angle) * xx + math.sin(angle) * yy) * 2
    light *= rng.uniform(0.85, 1.12)
    img = img * light[..., None] * rng.normal(1.0, 0.03, 3)
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)
