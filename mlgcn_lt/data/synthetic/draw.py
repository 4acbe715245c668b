"""Procedural chest-X-ray-like images for :mod:`mlgcn_lt.data.synthetic`.

An image is an attenuation map in [0, 1] (bright = dense) built in *anatomical* coordinates ``(u, v)``
(``u`` left to right, ``v`` top to bottom, the chest spanning about [-1, 1]), seen through a per-image pose
(shift, scale, rotation), brightness/contrast/gamma and noise. Anatomy: body, two dark lung fields cut by
the diaphragm domes, mediastinum/spine, heart shadow, aortic knob, ribs, lung markings, low-frequency
variation. Each finding adds one cue with its own place, shape or texture (see ``CUES``); every cue has
about the same contrast-to-noise, ``contrast * factor * visibility`` with a factor near 1, so rare findings
are hard because they are rare, not because their cue is fainter or stronger.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: Default peak contrast of a cue on the [0, 1] attenuation scale (the pixel noise is ``NOISE_SIGMA``).
CUE_CONTRAST = 0.25
NOISE_SIGMA = 0.035
Pt = tuple[float, float]
Rng = np.random.Generator


def _sig(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _radius(u: np.ndarray, v: np.ndarray, e: list[float]) -> np.ndarray:
    return np.sqrt(((u - e[0]) / e[2]) ** 2 + ((v - e[1]) / e[3]) ** 2)


def _ellipse(u: np.ndarray, v: np.ndarray, e: list[float], edge: float = 0.02) -> np.ndarray:
    return _sig((1.0 - _radius(u, v, e)) * min(e[2], e[3]) / edge)


def _polyline(u: np.ndarray, v: np.ndarray, pts: list[Pt], width: float) -> np.ndarray:
    """Soft line of half-width ``width`` through ``pts``."""
    d2 = np.full(u.shape, np.inf)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((u - x0) * dx + (v - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        d2 = np.minimum(d2, (u - x0 - t * dx) ** 2 + (v - y0 - t * dy) ** 2)
    return np.exp(-d2 / width**2)


@functools.lru_cache(maxsize=8)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 1) bilinear interpolation weights."""
    pos = np.linspace(0.0, cells, size)
    lo = np.minimum(pos.astype(int), cells - 1)
    w = np.zeros((size, cells + 1))
    w[np.arange(size), lo] = 1.0 - (pos - lo)
    w[np.arange(size), lo + 1] = pos - lo
    return w


def _field(rng: Rng, size: int, cells: int) -> np.ndarray:
    """Smooth random field with about unit standard deviation."""
    m = _interp_matrix(size, cells)
    return m @ rng.standard_normal((cells + 1, cells + 1)) @ m.T * 1.6


@dataclass
class Anatomy:
    """Geometry of one chest as seen in one view; ellipses are ``[cx, cy, ax, ay]``."""

    lateral: bool
    lungs: list[list[float]]  # side 0 = image left (patient right), side 1 = image right
    dome: list[float]  # v of each costophrenic angle
    dome_h: float  # height of the domes above the angles
    heart: list[float]
    med: list[float]  # [x, half-width] of the mediastinum / spine
    med_extra: float  # widening of the upper mediastinum
    knob: list[float]
    body_w: float
    lucency: float
    markings: float


@dataclass
class Scene:
    """One image being drawn: coordinates, anatomy, the cue map and a marking gain."""

    u: np.ndarray
    v: np.ndarray
    rng: Rng
    an: Anatomy
    delta: np.ndarray = field(init=False)
    gain: np.ndarray = field(init=False)
    _masks: dict[int, np.ndarray] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.delta = np.zeros_like(self.u)
        self.gain = np.ones_like(self.u)

    def dome(self, s: int) -> np.ndarray:
        """Diaphragm dome of side ``s`` (v of the lung base for each u)."""
        cx, _, ax, _ = self.an.lungs[s]
        return self.an.dome[s] - self.an.dome_h * np.clip(1.0 - ((self.u - cx) / ax) ** 2, 0.0, 1.0)

    def lung(self, s: int) -> np.ndarray:
        if s not in self._masks:
            self._masks[s] = _ellipse(self.u, self.v, self.an.lungs[s]) * _sig((self.dome(s) - self.v) / 0.015)
        return self._masks[s]

    def lungs(self) -> np.ndarray:
        return np.maximum(self.lung(0), self.lung(1))

    def side(self) -> tuple[int, float, list[float]]:
        """A random side: index, lateral direction (-1 or +1) and its lung ellipse."""
        s = int(self.rng.integers(2))
        return s, (-1.0 if s == 0 else 1.0), self.an.lungs[s]

    def in_lung(self, s: int, fx: tuple[float, float], fy: tuple[float, float]) -> Pt:
        """A random point of lung ``s``, as fractions of its half-axes (x measured laterally)."""
        cx, cy, ax, ay = self.an.lungs[s]
        d = -1.0 if s == 0 else 1.0
        return cx + d * self.rng.uniform(*fx) * ax, cy + self.rng.uniform(*fy) * ay


def sample_anatomy(view: str, prng: Rng) -> Anatomy:
    """Patient anatomy (from the patient's generator) for a view ("PA", "AP" or "LATERAL")."""
    p = prng.uniform(-1.0, 1.0, 12)
    lax, lay, heart_w, dome = 0.30 + 0.03 * p[0], 0.58 + 0.04 * p[1], 0.29 + 0.025 * p[2], 0.46 + 0.03 * p[3]
    common = ([0.12, -0.36, 0.065, 0.065], 1.0, 0.30 + 0.03 * p[5], 1.0 + 0.2 * p[6])
    if view == "LATERAL":  # one lung field (both lungs superimposed), heart in front, spine behind
        lungs = [[-0.02, -0.05, 0.60, lay], [0.03, -0.03, 0.58, lay]]
        heart = [-0.30, 0.28, heart_w, 0.26]
        return Anatomy(True, lungs, [dome, dome + 0.04], 0.10, heart, [0.74 + 0.03 * p[4], 0.09], 0.0, *common)
    ap = view == "AP"  # portable: magnified heart, shallower inspiration
    lungs = [[-0.39 - 0.02 * p[7], -0.07, lax, lay], [0.38 + 0.02 * p[8], -0.05, lax * 0.97, lay * 0.98]]
    geo = (False, lungs, [dome - 0.04 * ap, dome + 0.04 - 0.04 * ap], 0.12 + 0.02 * p[9])
    heart = [0.11, 0.28, heart_w * (1.1 if ap else 1.0), 0.21]
    return Anatomy(*geo, heart, [0.02, 0.085 + 0.01 * p[10]], 0.0, common[0], 0.90 + 0.04 * p[11], *common[2:])


# ---------------------------------------------------------------------------------------------- anatomy cues
def _cardiomegaly(an: Anatomy, rng: Rng) -> None:
    an.heart[2] *= rng.uniform(1.12, 1.3)
    an.heart[3] *= rng.uniform(1.0, 1.1)


def _emphysema(an: Anatomy, rng: Rng) -> None:
    an.dome = [d + rng.uniform(0.03, 0.07) for d in an.dome]
    an.dome_h *= 0.35
    an.lucency += rng.uniform(0.03, 0.06)
    an.markings *= 0.6


def _enlarged_cm(an: Anatomy, rng: Rng) -> None:
    an.med_extra = rng.uniform(0.025, 0.05)


MODIFIERS: dict[str, Callable[[Anatomy, Rng], None]] = {
    "Cardiomegaly": _cardiomegaly,
    "Emphysema": _emphysema,
    "Enlarged Cardiomediastinum": _enlarged_cm,
}


# ------------------------------------------------------------------------------------------------ local cues
def _atelectasis(sc: Scene, a: float) -> None:
    s, _, _ = sc.side()
    x, y = sc.in_lung(s, (-0.4, 0.5), (0.25, 0.6))
    ang, half = sc.rng.uniform(-0.35, 0.35), sc.rng.uniform(0.12, 0.2)
    dx, dy = half * np.cos(ang), half * np.sin(ang)
    sc.delta += 1.3 * a * _polyline(sc.u, sc.v, [(x - dx, y - dy), (x + dx, y + dy)], 0.022) * sc.lung(s)


def _calcification(sc: Scene, a: float) -> None:
    cx, cy, r, _ = sc.an.knob
    t = np.linspace(np.pi * sc.rng.uniform(0.8, 1.0), np.pi * sc.rng.uniform(1.9, 2.2), 8)
    pts = [(cx + r * np.cos(k), cy + r * np.sin(k)) for k in t]
    sc.delta += 1.25 * a * _polyline(sc.u, sc.v, pts, 0.014)


def _consolidation(sc: Scene, a: float) -> None:
    s, _, _ = sc.side()
    x, y = sc.in_lung(s, (-0.3, 0.6), (-0.3, 0.5))
    e = [x, y, sc.rng.uniform(0.1, 0.16), sc.rng.uniform(0.1, 0.16)]
    r4 = ((sc.u - e[0]) / e[2]) ** 4 + ((sc.v - e[1]) / e[3]) ** 4
    sc.delta += 1.1 * a * _sig((1.0 - r4) * 6.0) * sc.lung(s)


def _edema(sc: Scene, a: float) -> None:
    m = np.zeros_like(sc.u)
    for s in (0, 1):
        cx, cy, ax, ay = sc.an.lungs[s]
        hx, hy = cx * 0.55, cy + 0.1 * ay + sc.rng.uniform(-0.05, 0.05)
        m += np.exp(-(((sc.u - hx) / (0.55 * ax)) ** 2 + ((sc.v - hy) / (0.4 * ay)) ** 2)) * sc.lung(s)
    sc.delta += 1.0 * a * m * (1.0 + 0.5 * _field(sc.rng, sc.u.shape[0], 12))
    sc.gain *= 1.0 + 0.6 * m


def _fibrosis(sc: Scene, a: float) -> None:
    per = sc.rng.uniform(0.05, 0.07)
    th = sc.rng.uniform(0, np.pi)
    p1 = np.cos(2 * np.pi * (np.cos(th) * sc.u + np.sin(th) * sc.v) / per)
    p2 = np.cos(2 * np.pi * (-np.sin(th) * sc.u + np.cos(th) * sc.v) / per)
    net = np.maximum(p1, p2) ** 8
    base = np.maximum(
        *(_sig((sc.v - sc.an.lungs[s][1] - 0.15 * sc.an.lungs[s][3]) / 0.05) * sc.lung(s) for s in (0, 1))
    )
    sc.delta += 1.0 * a * net * base


def _fracture(sc: Scene, a: float) -> None:
    _, d, (cx, cy, ax, ay) = sc.side()
    x, y = cx + d * ax * sc.rng.uniform(0.6, 0.95), cy + ay * sc.rng.uniform(-0.6, 0.3)
    tilt, step = sc.rng.uniform(0.2, 0.5), sc.rng.uniform(0.025, 0.04)
    for k in (-1, 1):  # two rib fragments, displaced across the break
        x0, x1 = x + k * 0.02 * d, x + k * 0.13 * d
        y0 = y + (k > 0) * step
        sc.delta += 1.4 * a * _polyline(sc.u, sc.v, [(x0, y0), (x1, y0 + k * tilt * 0.11)], 0.018)


def _hernia(sc: Scene, a: float) -> None:
    hx, hy = sc.an.heart[0], sc.an.heart[1]
    r = sc.rng.uniform(0.07, 0.1)
    x, y = hx + sc.rng.uniform(-0.06, 0.06), hy + sc.rng.uniform(0.02, 0.1)
    sc.delta += 1.1 * a * _ellipse(sc.u, sc.v, [x, y, r, r * 0.85], 0.012)
    sc.delta -= 1.1 * a * _ellipse(sc.u, sc.v, [x, y - 0.3 * r, 0.45 * r, 0.3 * r], 0.008)


def _infiltration(sc: Scene, a: float) -> None:
    s, _, _ = sc.side()
    x0, y0 = sc.in_lung(s, (-0.3, 0.5), (-0.6, 0.2))
    for _ in range(int(sc.rng.integers(5, 9))):
        x, y = x0 + sc.rng.normal(0, 0.07), y0 + sc.rng.normal(0, 0.09)
        r = sc.rng.uniform(0.02, 0.035)
        sc.delta += 1.1 * a * np.exp(-((sc.u - x) ** 2 + (sc.v - y) ** 2) / r**2) * sc.lung(s)


def _lung_lesion(sc: Scene, a: float) -> None:
    s, _, _ = sc.side()
    x, y = sc.in_lung(s, (-0.4, 0.6), (-0.6, 0.4))
    r = sc.rng.uniform(0.045, 0.07)
    rr = np.sqrt((sc.u - x) ** 2 + (sc.v - y) ** 2)
    sc.delta += 1.4 * a * np.exp(-(((rr - r) / 0.016) ** 2))  # cavity: thick bright wall


def _lung_opacity(sc: Scene, a: float) -> None:
    s, _, _ = sc.side()
    x, y = sc.in_lung(s, (-0.3, 0.5), (-0.5, 0.5))
    sx, sy = sc.rng.uniform(0.13, 0.2), sc.rng.uniform(0.15, 0.25)
    g = np.exp(-(((sc.u - x) / sx) ** 2 + ((sc.v - y) / sy) ** 2))
    sc.delta += 1.0 * a * g * sc.lung(s) * (1.0 + 0.4 * _field(sc.rng, sc.u.shape[0], 10))


def _blob(sc: Scene, a: float, r: tuple[float, float], factor: float, lobes: float = 0.0) -> None:
    """Round opacity; ``lobes`` > 0 gives a lobulated margin (a mass)."""
    s, _, _ = sc.side()
    x, y = sc.in_lung(s, (-0.4, 0.6), (-0.6, 0.45))
    rad = sc.rng.uniform(*r) * (1.0 + lobes * np.sin(int(sc.rng.integers(4, 8)) * np.arctan2(sc.v - y, sc.u - x)))
    rr = np.sqrt((sc.u - x) ** 2 + ((sc.v - y) / sc.rng.uniform(0.85, 1.15)) ** 2)
    sc.delta += factor * a * _sig((rad - rr) / (0.1 * rad))


def _effusion(sc: Scene, a: float) -> None:
    for s in (0, 1) if sc.rng.random() < 0.35 else (sc.side()[0],):
        cx, _, ax, _ = sc.an.lungs[s]
        t = np.clip((sc.u - cx) / ax * (-1.0 if s == 0 else 1.0), 0.0, 1.0)
        level = sc.an.dome[s] - sc.rng.uniform(0.07, 0.2) * (0.35 + 0.65 * t**1.5)
        sc.delta += 1.2 * a * _sig((sc.v - level) / 0.012) * _ellipse(sc.u, sc.v, sc.an.lungs[s])


def _pleural_other(sc: Scene, a: float) -> None:
    s, d, (cx, cy, ax, ay) = sc.side()
    y = cy + ay * sc.rng.uniform(-0.5, 0.3)
    e = [cx + d * ax * 0.97, y, sc.rng.uniform(0.04, 0.06), sc.rng.uniform(0.11, 0.16)]
    sc.delta += 1.1 * a * _ellipse(sc.u, sc.v, e, 0.012) * sc.lung(s)


def _pleural_thickening(sc: Scene, a: float) -> None:
    s, _, e = sc.side()
    r = _radius(sc.u, sc.v, e)
    upper = _sig((e[1] - sc.rng.uniform(0.3, 0.6) * e[3] - sc.v) / 0.03)
    sc.delta += 1.3 * a * np.exp(-(((r - 0.96) / 0.035) ** 2)) * upper * sc.lung(s)


def _pneumomediastinum(sc: Scene, a: float) -> None:
    mx, mw = sc.an.med
    top, bot = sc.rng.uniform(-0.95, -0.7), sc.an.heart[1] - sc.rng.uniform(0.0, 0.1)
    for k in (-1, 1):
        x = mx + k * (mw + sc.an.med_extra + 0.012)
        sc.delta -= 1.5 * a * _polyline(sc.u, sc.v, [(x, top), (x + k * 0.01, bot)], 0.012)


def _pneumonia(sc: Scene, a: float) -> None:
    s, _, _ = sc.side()
    x, y = sc.in_lung(s, (-0.2, 0.5), (0.0, 0.55))
    g = np.exp(-(((sc.u - x) / 0.11) ** 2 + ((sc.v - y) / 0.11) ** 2))
    sc.delta += 1.2 * a * g * sc.lung(s)
    for _ in range(3):  # air bronchograms: dark branches inside the opacity
        ang = sc.rng.uniform(0, 2 * np.pi)
        p0 = (x - 0.03 * np.cos(ang), y - 0.03 * np.sin(ang))
        p1 = (x + 0.1 * np.cos(ang), y + 0.1 * np.sin(ang))
        sc.delta -= 0.8 * a * _polyline(sc.u, sc.v, [p0, p1], 0.01) * g


def _pneumoperitoneum(sc: Scene, a: float) -> None:
    s = 0 if sc.rng.random() < 0.75 else 1
    cx, _, ax, _ = sc.an.lungs[s]
    dome = sc.dome(s)
    th = sc.rng.uniform(0.025, 0.04)
    band = _sig((sc.v - dome - 0.012) / 0.006) * _sig((dome + 0.012 + th - sc.v) / 0.006)
    sc.delta -= 1.4 * a * band * _sig((0.8 - np.abs(sc.u - cx) / ax) / 0.05)


def _pneumothorax(sc: Scene, a: float) -> None:
    s, _, e = sc.side()
    r = _radius(sc.u, sc.v, e)
    r0 = sc.rng.uniform(0.72, 0.85)
    upper = _sig((e[1] - sc.rng.uniform(0.2, 0.45) * e[3] - sc.v) / 0.04) * sc.lung(s)
    rim = _sig((r - r0) / 0.01) * upper
    sc.gain *= 1.0 - rim
    sc.delta += a * (-0.9 * rim + 1.0 * np.exp(-(((r - r0) / 0.012) ** 2)) * upper)


def _subcutaneous(sc: Scene, a: float) -> None:
    _, d, (cx, cy, ax, ay) = sc.side()
    edge = cx + d * ax
    for _ in range(int(sc.rng.integers(4, 7))):
        x = edge + d * sc.rng.uniform(0.03, max(0.05, sc.an.body_w - abs(edge) - 0.02))
        y = cy + ay * sc.rng.uniform(-0.8, 0.4)
        ang = sc.rng.uniform(-1.2, 1.2)
        p1 = (x + 0.05 * np.sin(ang), y + 0.09 * np.cos(ang))
        sc.delta -= 1.4 * a * _polyline(sc.u, sc.v, [(x, y), p1], 0.012)


def _support_devices(sc: Scene, a: float) -> None:
    mx = sc.an.med[0] + sc.rng.uniform(-0.03, 0.03)
    for kind in sc.rng.choice(4, size=int(sc.rng.integers(1, 3)), replace=False):
        if kind == 0:  # endotracheal or nasogastric tube along the midline
            end = sc.rng.uniform(-0.45, -0.25) if sc.rng.random() < 0.6 else sc.rng.uniform(0.6, 0.9)
            pts = [(mx, -1.2), (mx + 0.01, end)]
        elif kind == 1:  # central line from a shoulder
            k = sc.rng.choice([-1.0, 1.0])
            pts = [(k * 0.75, -0.9), (k * 0.3, -0.62), (mx + k * 0.05, -0.2 + sc.rng.uniform(-0.1, 0.1))]
        elif kind == 2:  # ECG leads
            for _ in range(int(sc.rng.integers(2, 4))):
                x, y, h = sc.rng.uniform(-0.7, 0.7), sc.rng.uniform(-0.7, 0.5), sc.rng.uniform(0.025, 0.035)
                sc.delta += 1.3 * a * _ellipse(sc.u, sc.v, [x, y, h, h], 0.006)
            continue
        else:  # pacemaker box and lead
            k = sc.rng.choice([-1.0, 1.0])
            box = [k * 0.55, -0.68, 0.07, 0.045]
            r4 = ((sc.u - box[0]) / box[2]) ** 4 + ((sc.v - box[1]) / box[3]) ** 4
            sc.delta += 1.3 * a * _sig((1.0 - r4) * 8.0)
            pts = [(box[0], box[1]), (k * 0.2, -0.5), (sc.an.heart[0], sc.an.heart[1])]
        sc.delta += 1.6 * a * _polyline(sc.u, sc.v, pts, 0.012)


def _tortuous_aorta(sc: Scene, a: float) -> None:
    mx, mw = sc.an.med
    x0 = mx + mw + sc.an.med_extra + 0.02
    amp, per, ph = sc.rng.uniform(0.03, 0.05), sc.rng.uniform(0.3, 0.4), sc.rng.uniform(0, 2 * np.pi)
    ys = np.linspace(-0.35, sc.an.heart[1], 9)
    pts = [(x0 + amp * (1 + np.sin(2 * np.pi * y / per + ph)), float(y)) for y in ys]
    sc.delta += 1.1 * a * _polyline(sc.u, sc.v, pts, 0.03)


CUES: dict[str, Callable[[Scene, float], None]] = {
    "Atelectasis": _atelectasis,
    "Calcification of the Aorta": _calcification,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Fibrosis": _fibrosis,
    "Fracture": _fracture,
    "Hernia": _hernia,
    "Infiltration": _infiltration,
    "Lung Lesion": _lung_lesion,
    "Lung Opacity": _lung_opacity,
    "Mass": functools.partial(_blob, r=(0.09, 0.14), factor=1.0, lobes=0.12),
    "Nodule": functools.partial(_blob, r=(0.03, 0.045), factor=1.4),
    "Pleural Effusion": _effusion,
    "Pleural Other": _pleural_other,
    "Pleural Thickening": _pleural_thickening,
    "Pneumomediastinum": _pneumomediastinum,
    "Pneumonia": _pneumonia,
    "Pneumoperitoneum": _pneumoperitoneum,
    "Pneumothorax": _pneumothorax,
    "Subcutaneous Emphysema": _subcutaneous,
    "Support Devices": _support_devices,
    "Tortuous Aorta": _tortuous_aorta,
}


# ----------------------------------------------------------------------------------------------- the image
def _base(sc: Scene) -> np.ndarray:
    """Attenuation of the normal anatomy (without lung markings)."""
    u, v, an = sc.u, sc.v, sc.an
    body = _sig((1.0 - (u / an.body_w) ** 4 - (v / 1.35) ** 4) * 6.0)
    a = 0.08 + 0.42 * body - an.lucency * sc.lungs()
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * (v + 0.35 * u**2) / 0.17)) ** 6
    a += 0.05 * ribs * body * (0.3 + 0.7 * sc.lungs()) * (not an.lateral)
    mx, mw = an.med
    upper = _sig((an.heart[1] - an.heart[3] - v) / 0.04)
    width = mw + an.med_extra * upper
    a += (0.1 + 0.14 * upper) * _sig((width - np.abs(u - mx)) / 0.012) * _sig((v + 1.1) / 0.05)
    a += 0.25 * _ellipse(u, v, an.heart, 0.015) + 0.2 * _ellipse(u, v, an.knob, 0.01)
    below = np.minimum(sc.dome(0), sc.dome(1))
    a += 0.1 * _sig((v - below) / 0.02) * body * (1.0 - sc.lungs())
    if not an.lateral and sc.rng.random() < 0.5:  # gastric bubble under the left dome
        x, y = an.lungs[1][0] + sc.rng.uniform(-0.05, 0.1), an.dome[1] + sc.rng.uniform(0.06, 0.12)
        a -= 0.12 * _ellipse(u, v, [x, y, 0.07, 0.045], 0.015)
    if sc.rng.random() < 0.3:  # nipple shadows: a normal look-alike of a nodule
        for s in (0, 1):
            x, y = sc.in_lung(s, (0.3, 0.5), (0.35, 0.55))
            a += 0.1 * _ellipse(u, v, [x, y, 0.035, 0.035], 0.01)
    return a


#: A cue's box covers the pixels where its own contribution reaches this fraction of its peak.
BOX_LEVEL = 0.25
#: Box in pixels of the stored image: x (column), y (row) of the top-left corner, width, height.
Box = tuple[int, int, int, int]


def _box(mask: np.ndarray) -> Box | None:
    """Bounding box (x, y, w, h) of a boolean mask; ``None`` when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _cue_box(change: np.ndarray) -> Box | None:
    peak = float(np.abs(change).max(initial=0.0))
    return _box(np.abs(change) >= BOX_LEVEL * peak) if peak > 0 else None


def draw_image(
    findings: set[str], view: str, size: int, rng: Rng, patient_rng: Rng, contrast: float = CUE_CONTRAST
) -> np.ndarray:
    """One uint8 (size, size) image of a chest with the visual cues of ``findings`` (class names)."""
    return draw_image_with_boxes(findings, view, size, rng, patient_rng, contrast)[0]


def draw_image_with_boxes(
    findings: set[str], view: str, size: int, rng: Rng, patient_rng: Rng, contrast: float = CUE_CONTRAST
) -> tuple[np.ndarray, dict[str, Box]]:
    """:func:`draw_image` and where each finding's cue was drawn (pixel box per finding that has a local cue).

    Local cues: the box of their own change to the attenuation (``|Δ| >= BOX_LEVEL · max |Δ|``); Cardiomegaly:
    the enlarged heart's ellipse. Emphysema and Enlarged Cardiomediastinum (diffuse) have no box. Recording boxes
    draws nothing from ``rng``: the images are the same as without them.
    """
    an = sample_anatomy(view, patient_rng)
    for name, mod in MODIFIERS.items():
        if name in findings:
            mod(an, rng)
    shift, scale, rot = rng.uniform(-0.06, 0.06, 2), rng.uniform(0.92, 1.08), rng.uniform(-0.07, 0.07)
    g = np.linspace(-1.0, 1.0, size)
    x, y = np.meshgrid(g, g)
    c, s = np.cos(rot), np.sin(rot)
    u = (c * x + s * y) / scale - shift[0]
    v = (-s * x + c * y) / scale - shift[1]
    sc = Scene(u, v, rng, an)
    boxes: dict[str, Box] = {}
    for name, cue in CUES.items():
        if name in findings:
            before = sc.delta.copy()
            cue(sc, contrast * rng.uniform(0.5, 1.3))
            if (box := _cue_box(sc.delta - before)) is not None:
                boxes[name] = box
    if "Cardiomegaly" in findings and (box := _box(_ellipse(u, v, an.heart, 0.015) >= 0.5)) is not None:
        boxes["Cardiomegaly"] = box
    a = _base(sc)
    hilum = np.exp(-(((np.abs(u) - 0.2) / 0.35) ** 2))
    a += 0.035 * an.markings * sc.gain * _field(rng, size, max(4, size // 6)) * sc.lungs() * (0.5 + hilum)
    a += sc.delta + 0.05 * _field(rng, size, 3)
    lo, hi, gamma = rng.uniform(-0.06, 0.06), rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.2)
    img = np.clip(lo + hi * np.clip(a, 0.0, 1.0), 0.0, 1.0) ** gamma
    img = img + rng.normal(0.0, NOISE_SIGMA * (1.25 if view == "AP" else 1.0), img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), boxes
