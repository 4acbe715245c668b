"""Label model of the synthetic CXR-LT (:mod:`mlgcn_lt.data.synthetic`): CXR-LT-like multi-label statistics.

Each study is *normal* (``No Finding``, sometimes with ``Support Devices``) with the real No Finding rate, or
*abnormal*: latent conditions (``LATENTS``: heart failure, infection, ICU, air leak, trauma, elderly, chronic
lung disease, neoplasm; correlated priors) and a severity level switch findings on through a noisy-OR
(``LINKS``), conditioned on at least one finding. The per-class scales are calibrated exactly (enumeration of
all latent states, no sampling) so that the marginals equal the real long tail ``CXR_LT_2023_TRAIN_COUNTS /
CXR_LT_2023_TRAIN_IMAGES``. Hence No Finding co-occurs only with Support Devices, every image has at least one
label (about 1.9 on average, as the real marginals imply), and findings co-occur in clinical clusters.

Minimum positives: with 600 evaluation images the rarest class would have about one positive, leaving its AP
undefined or meaningless. ``top_up`` therefore gives every class at least ``min_positives(split, n)`` positive
images: ``MIN_POSITIVES`` (8 in train, 3 in development and test) capped at ``n // 30`` for tiny splits. It
replaces a few random studies (only ones whose removal costs no class its own minimum) by studies drawn from
the model *conditioned on* the class, so co-occurrences stay realistic; the rarest classes get slightly more
frequent than in reality (e.g. 3/600 instead of 1/600).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, CXR_LT_2023_TRAIN_COUNTS, CXR_LT_2023_TRAIN_IMAGES

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
LATENTS = ("heart_failure", "infection", "icu", "air_leak", "trauma", "elderly", "chronic_lung", "neoplasm")
#: Hazard each latent condition adds to each finding (a strong link is 1; see ``label_model``).
LINKS: dict[str, dict[str, float]] = {
    "heart_failure": {
        "Cardiomegaly": 1.0,
        "Edema": 1.0,
        "Pleural Effusion": 1.0,
        "Enlarged Cardiomediastinum": 0.6,
        "Atelectasis": 0.6,
        "Lung Opacity": 0.4,
        "Support Devices": 0.3,
    },
    "infection": {
        "Pneumonia": 1.0,
        "Consolidation": 0.8,
        "Lung Opacity": 1.0,
        "Infiltration": 0.7,
        "Atelectasis": 0.5,
        "Pleural Effusion": 0.5,
        "Support Devices": 0.2,
        "Cardiomegaly": 0.2,
    },
    "icu": {
        "Support Devices": 1.5,
        "Atelectasis": 0.8,
        "Pleural Effusion": 0.8,
        "Edema": 0.5,
        "Lung Opacity": 0.5,
        "Cardiomegaly": 0.3,
        "Enlarged Cardiomediastinum": 0.3,
        "Consolidation": 0.3,
        "Pneumothorax": 0.2,
    },
    "air_leak": {
        "Pneumothorax": 1.0,
        "Subcutaneous Emphysema": 1.0,
        "Pneumomediastinum": 1.0,
        "Pneumoperitoneum": 1.0,
        "Enlarged Cardiomediastinum": 0.4,
        "Support Devices": 0.6,
        "Fracture": 0.2,
    },
    "trauma": {
        "Fracture": 1.0,
        "Pneumothorax": 0.5,
        "Subcutaneous Emphysema": 0.4,
        "Lung Opacity": 0.2,
        "Atelectasis": 0.2,
    },
    "elderly": {
        "Calcification of the Aorta": 1.0,
        "Tortuous Aorta": 1.0,
        "Hernia": 1.0,
        "Cardiomegaly": 0.5,
        "Fracture": 0.3,
        "Emphysema": 0.3,
    },
    "chronic_lung": {
        "Emphysema": 1.0,
        "Fibrosis": 1.0,
        "Pleural Thickening": 1.0,
        "Pleural Other": 0.8,
        "Nodule": 0.3,
        "Lung Opacity": 0.2,
        "Mass": 0.2,
        "Lung Lesion": 0.2,
    },
    "neoplasm": {
        "Mass": 1.0,
        "Nodule": 1.0,
        "Lung Lesion": 1.0,
        "Pleural Other": 0.3,
        "Pleural Effusion": 0.3,
        "Atelectasis": 0.3,
        "Consolidation": 0.2,
    },
}
#: Hazard of every finding without any latent condition (sporadic findings).
LEAK = 0.03
#: Prior rates of the latent conditions in abnormal studies (see ``latent_prior`` for their dependence).
PRIOR = {
    "heart_failure": 0.25,
    "infection": 0.25,
    "icu": 0.35,
    "air_leak": 0.02,
    "trauma": 0.05,
    "elderly": 0.15,
    "chronic_lung": 0.06,
    "neoplasm": 0.04,
}
#: Severity levels of an abnormal study: (prior, multiplier of all its hazards); sicker, more findings.
SEVERITY = ((0.4, 0.5), (0.4, 1.0), (0.2, 2.0))
#: Share of normal studies that show a support device.
NORMAL_DEVICE_RATE = 0.18
MIN_POSITIVES = {"train": 8, "development": 3, "test": 3}


def _bern(x: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    return np.where(x, p, 1.0 - p)


def latent_prior(configs: np.ndarray) -> np.ndarray:
    """Joint prior of the latent conditions of an abnormal study (rows of ``configs``: one per state)."""
    hf, inf, icu, air, tra, eld, chl, neo = configs.T
    p = PRIOR
    return (
        _bern(icu, p["icu"])
        * _bern(tra, p["trauma"])
        * _bern(eld, p["elderly"])
        * _bern(air, p["air_leak"] * (1 + 3 * icu + 6 * tra))
        * _bern(hf, p["heart_failure"] * (1 + 0.7 * eld + 0.7 * icu))
        * _bern(inf, p["infection"] * (1 + 0.7 * icu))
        * _bern(chl, p["chronic_lung"] * (1 + eld))
        * _bern(neo, p["neoplasm"] * (1 + 0.7 * eld + chl))
    )


@dataclass(frozen=True)
class LabelModel:
    """Calibrated label model; a state is an abnormal latent configuration with a severity, or normal."""

    classes: tuple[str, ...]
    configs: np.ndarray  # (S - 1, K) bool
    state_prob: np.ndarray  # (S,) probability of each state
    prob: np.ndarray  # (S, C) P(label | state) before conditioning on at least one finding
    posterior: np.ndarray  # (S, C) P(label | state), after that conditioning
    finding: np.ndarray  # (C,) bool: classes other than No Finding and Support Devices

    @property
    def normal(self) -> int:
        return len(self.state_prob) - 1


def target_rates() -> np.ndarray:
    """Real per-image positive rates of the 26 classes (official order)."""
    counts = np.array([CXR_LT_2023_TRAIN_COUNTS[c] for c in CXR_LT_2023_CLASSES], dtype=float)
    return counts / CXR_LT_2023_TRAIN_IMAGES


@functools.lru_cache(maxsize=1)
def label_model() -> LabelModel:
    """Calibrate the per-class scales so that the marginals equal ``target_rates()`` (exact, no sampling)."""
    classes = CXR_LT_2023_CLASSES
    nf, sd = classes.index(NO_FINDING), classes.index(SUPPORT_DEVICES)
    finding = np.ones(len(classes), bool)
    finding[[nf, sd]] = False
    base = np.array(list(itertools.product([False, True], repeat=len(LATENTS))))
    configs = np.repeat(base, len(SEVERITY), axis=0)
    sev_prior, sev_mult = (np.tile(np.array(v), len(base)) for v in zip(*SEVERITY, strict=True))
    weights = np.zeros((len(LATENTS), len(classes)))
    for k, name in enumerate(LATENTS):
        for cls, w in LINKS[name].items():
            weights[k, classes.index(cls)] = w
    hazard = (LEAK * finding + configs @ weights) * sev_mult[:, None]  # (S-1, C)
    prior = latent_prior(configs) * sev_prior
    t = target_rates()
    q = t[nf]
    target = t / (1.0 - q)
    target[sd] = (t[sd] - q * NORMAL_DEVICE_RATE) / (1.0 - q)
    scale = np.full(len(classes), 0.3)
    for _ in range(500):
        p = 1.0 - np.exp(-scale * hazard)
        any_ = 1.0 - np.prod(1.0 - p[:, finding], axis=1)
        got = prior @ (p * any_[:, None]) / (prior @ any_)
        got[finding] = (prior @ p[:, finding]) / (prior @ any_)
        ratio = np.where(hazard.any(0), target / np.maximum(got, 1e-12), 1.0)
        ratio[nf] = 1.0
        scale = np.minimum(scale * ratio**0.8, 1e3)
    p = 1.0 - np.exp(-scale * hazard)
    p[:, nf] = 0.0
    any_ = 1.0 - np.prod(1.0 - p[:, finding], axis=1)
    post = p.copy()
    post[:, finding] /= any_[:, None]
    post[:, nf] = 0.0
    w = prior * any_
    state_prob = np.append((1.0 - q) * w / w.sum(), q)
    normal_row = np.zeros(len(classes))
    normal_row[sd] = NORMAL_DEVICE_RATE
    post_normal = normal_row.copy()
    post_normal[nf] = 1.0
    return LabelModel(classes, configs, state_prob, np.vstack([p, normal_row]), np.vstack([post, post_normal]), finding)


def sample_given_states(
    states: np.ndarray, rng: np.random.Generator, model: LabelModel, force: int | None = None
) -> np.ndarray:
    """(n, C) uint8 labels for given states; ``force`` a class index set to 1 (not No Finding)."""
    nf = model.classes.index(NO_FINDING)

    def draw(idx: np.ndarray) -> np.ndarray:
        y = rng.random((len(idx), len(model.classes))) < model.prob[states[idx]]
        if force is not None:
            y[:, force] = True
        return y

    y = draw(np.arange(len(states)))
    todo = (states != model.normal) & ~y[:, model.finding].any(1)
    while todo.any():  # rejection: an abnormal study has at least one finding
        idx = np.flatnonzero(todo)
        y[idx] = draw(idx)
        todo[idx] = ~y[idx][:, model.finding].any(1)
    y[:, nf] = ~y[:, model.finding].any(1)
    return y.astype(np.uint8)


def sample_states(n: int, rng: np.random.Generator, model: LabelModel, cls: int | None = None) -> np.ndarray:
    """``n`` states from the model, or from the model conditioned on class ``cls`` being positive."""
    p = model.state_prob if cls is None else model.state_prob * model.posterior[:, cls]
    return rng.choice(len(p), size=n, p=p / p.sum())


def sample_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent label vectors (n, 26) uint8 in official class order (no images, no top-up)."""
    model = label_model()
    return sample_given_states(sample_states(n, rng, model), rng, model)


def min_positives(split: str, n_images: int) -> int:
    """Guaranteed positive images per class in a split of ``n_images`` images."""
    return min(MIN_POSITIVES[split], n_images // 30)


def top_up(labels: np.ndarray, n_img: np.ndarray, states: np.ndarray, minimum: int, rng: np.random.Generator) -> None:
    """Give every class ``minimum`` positive images by replacing studies in place (see module doc)."""
    model = label_model()
    order = np.argsort(model.state_prob @ model.posterior, kind="stable")  # rarest classes first
    nf = model.classes.index(NO_FINDING)
    for _ in range(3):
        for j in order:
            counts = n_img @ labels.astype(np.int64)
            while counts[j] < minimum:
                pos = labels.astype(bool)
                slack = counts - minimum
                safe = ~pos[:, j] & np.where(pos, n_img[:, None] <= slack[None, :], True).all(1)
                if not safe.any():
                    break
                k = rng.choice(np.flatnonzero(safe))
                state = sample_states(1, rng, model, cls=int(j))
                new = sample_given_states(state, rng, model, force=None if j == nf else int(j))
                counts += n_img[k] * (new[0].astype(np.int64) - labels[k])
                labels[k], states[k] = new[0], state[0]
