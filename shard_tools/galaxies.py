"""Synthetic galaxies: a morphology (smooth, disk, spiral with 1-5+ arms and a winding, bar, bulge,
edge-on, odd features such as rings, dust lanes, mergers), an SDSS-like 424×424 cut-out rendered from it
(dark noisy sky, stars, PSF-soft light profiles, asinh stretch), and simulated volunteers walking the GZ2
decision tree, so the labels obey the tree exactly and carry the signal a CNN can read off the pixels.
How clearly volunteers agree depends on how bright and large the galaxy is, which spreads the label
confidence over all three tiers. `synth.py` (the Kaggle layout) and `synth_catalogs.py` (catalogue
layouts) write files of these galaxies; every galaxy is fixed by (seed, id).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .layout import IMAGE_SIDE

SIZE = IMAGE_SIDE
_NOISE_BANK = 768  # side of the per-process pre-drawn sky-noise field; images take random windows of it
_STRETCH_Q = 30.0  # asinh softening, in flux units
_STRETCH_MAX = 2048

# RGB tints of SDSS gri composites: old stellar light is yellow-white, star-forming arms are bluer.
_OLD = np.array([1.0, 0.86, 0.66], np.float32)
_YOUNG = np.array([0.72, 0.82, 1.0], np.float32)


# --------------------------------------------------------------------------------------------------
# morphology
# --------------------------------------------------------------------------------------------------

def sample_morphology(rng: np.random.Generator) -> dict:
    """Draws the intrinsic description of one galaxy."""
    m = {}
    u = rng.random()
    m["kind"] = ("star" if u < 0.02 else "smooth" if u < 0.42 else "edgeon" if u < 0.55 else "disk")
    m["size"] = float(rng.uniform(9, 34))           # scale length in px
    m["bright"] = float(rng.lognormal(np.log(110), 0.5))  # peak surface brightness, 0-255 units
    m["angle"] = float(rng.uniform(0, np.pi))
    m["q"] = float(rng.uniform(0.3, 1.0)) if m["kind"] == "smooth" else (
        float(rng.uniform(0.08, 0.22)) if m["kind"] == "edgeon" else float(rng.uniform(0.55, 1.0)))
    m["bulge"] = int(rng.integers(0, 4))             # Q5: none, noticeable, obvious, dominant
    m["spiral"] = m["kind"] == "disk" and rng.random() < 0.7
    m["arms"] = int(rng.choice([1, 2, 2, 2, 3, 4, 5])) if m["spiral"] else 0
    m["winding"] = int(rng.integers(0, 3)) if m["spiral"] else -1  # Q10: tight, medium, loose
    m["bar"] = m["kind"] == "disk" and rng.random() < 0.35
    m["boxy"] = int(rng.integers(0, 3))              # Q9: rounded, boxy, none
    odd = None
    if m["kind"] != "star" and rng.random() < 0.22:
        choices = ["ring", "lens", "disturbed", "irregular", "merger"] + (["dust"] if m["kind"] == "edgeon" else [])
        odd = str(rng.choice(choices))
    m["odd"] = odd
    # Foreground stars close to the galaxy make volunteers wonder whether something is odd (Q6), visibly.
    m["near_stars"] = int(rng.choice([0, 0, 0, 0, 1, 1, 2, 3]))
    m["doubt"] = float(rng.beta(1.0, 3.0))  # the part of that doubt no pixel explains
    return m


# --------------------------------------------------------------------------------------------------
# volunteers
# --------------------------------------------------------------------------------------------------

def _answer_probs(n: int, true: int, clarity: float) -> np.ndarray:
    """Probabilities over n answers: `clarity` of the mass on the true one, the rest spread."""
    p = np.full(n, (1 - clarity) / max(n - 1, 1))
    p[true] = clarity if n > 1 else 1.0
    return p


def vote_probabilities(m: dict, clarity: float) -> dict[int, np.ndarray]:
    """Per question, the chance of each answer for a volunteer who reaches it."""
    c = clarity
    kind = m["kind"]
    p = {}
    p[1] = {"smooth": np.array([c, 1 - c, 0.0]),
            "star": np.array([0.1, 0.05, 0.85]),
            }.get(kind, np.array([1 - c, c, 0.0]))
    p[1] = p[1] * 0.995 + 0.005 / 3  # a few voters always click "star or artifact"
    p[2] = _answer_probs(2, 0 if kind == "edgeon" else 1, min(0.98, c + 0.1))
    p[3] = _answer_probs(2, 0 if m["bar"] else 1, min(0.98, c + 0.05))
    p[4] = _answer_probs(2, 0 if m["spiral"] else 1, c)
    p[5] = _answer_probs(4, m["bulge"], 0.45 + 0.5 * c)
    odd = m["odd"] is not None
    if odd:
        p6 = 0.3 + 0.5 * c
    else:  # most volunteers see nothing odd on a clean image; fainter ones draw more doubt
        p6 = min(0.6, 0.08 * m["near_stars"] + 0.3 * (1 - c) ** 2 + 0.05 * m["doubt"])
    p[6] = np.array([p6, 1 - p6])
    # roundness is perceived smoothly around the answer boundaries (axis ratio 0.8 and 0.45)
    p_round = 1 / (1 + np.exp(-(m["q"] - 0.8) / 0.05))
    p_cigar = 1 / (1 + np.exp(-(0.45 - m["q"]) / 0.05))
    perceived = np.array([p_round, max(0.0, 1 - p_round - p_cigar), p_cigar])
    p[7] = c * perceived + (1 - c) / 3
    odd_index = {"ring": 0, "lens": 1, "disturbed": 2, "irregular": 3, "merger": 5, "dust": 6}
    p[8] = _answer_probs(7, odd_index.get(m["odd"], 4), 0.3 + 0.6 * c)
    p[9] = _answer_probs(3, m["boxy"], 0.4 + 0.5 * c)
    p[10] = _answer_probs(3, max(m["winding"], 0), 0.35 + 0.5 * c)
    arms = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}.get(m["arms"], 5)
    p[11] = _answer_probs(6, arms, 0.3 + 0.55 * c)
    return p


def simulate_counts(probs: dict[int, np.ndarray], n_voters: int, rng: np.random.Generator) -> np.ndarray:
    """Walks `n_voters` volunteers down the GZ2 tree; returns each answer's vote count, in the tree's order.

    Q6 is asked of everybody (the Kaggle quirk: it sums to 1, star/artifact voters included)."""
    def ask(q, n):
        return rng.multinomial(n, probs[q] / probs[q].sum())
    counts = {}
    counts[1] = ask(1, n_voters)
    counts[7] = ask(7, counts[1][0])
    counts[2] = ask(2, counts[1][1])
    counts[9] = ask(9, counts[2][0])
    face_on = counts[2][1]
    counts[3] = ask(3, face_on)
    counts[4] = ask(4, face_on)
    counts[10] = ask(10, counts[4][0])
    counts[11] = ask(11, counts[4][0])
    counts[5] = ask(5, face_on)
    counts[6] = ask(6, n_voters)
    counts[8] = ask(8, counts[6][0])
    return np.concatenate([counts[q] for q in range(1, 12)])


def simulate_votes(probs: dict[int, np.ndarray], n_voters: int, rng: np.random.Generator) -> np.ndarray:
    """The vote fractions (float64, Kaggle's cumulative ones) of `n_voters` volunteers walking the tree."""
    return simulate_counts(probs, n_voters, rng).astype(np.float64) / n_voters


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------

class Renderer:
    """Renders morphologies into 424×424×3 uint8 SDSS-like cut-outs. One per process (holds noise)."""

    def __init__(self, seed: int = 0):
        self.noise = np.random.default_rng([seed, 7]).standard_normal((_NOISE_BANK, _NOISE_BANK, 3)).astype(np.float32)
        yy, xx = np.mgrid[-SIZE // 2:SIZE // 2, -SIZE // 2:SIZE // 2].astype(np.float32) + 0.5
        self.yy, self.xx = yy, xx
        # SDSS colour cut-outs are asinh-stretched (Lupton et al. 2004): faint outskirts, arms and rings
        # stay visible while cores saturate. A lookup table over quarter-unit fluxes keeps it cheap.
        flux = np.arange(_STRETCH_MAX * 4, dtype=np.float64) / 4
        self.stretch = np.clip(np.arcsinh(flux / _STRETCH_Q) * (255 / np.arcsinh(255 / _STRETCH_Q)), 0, 255).astype(np.uint8)

    def _sky(self, rng) -> np.ndarray:
        sigma = rng.uniform(0.85, 1.35)  # in flux units: about 3-4 grey levels after the stretch
        oy, ox = rng.integers(0, _NOISE_BANK - SIZE, 2)
        img = self.noise[oy:oy + SIZE, ox:ox + SIZE] * sigma
        img = img + rng.uniform(1.5, 4.5)
        return img

    def _stars(self, img, rng, n, lo=8, hi=SIZE - 8, bright=1.0):
        for _ in range(n):
            y, x = rng.integers(lo, hi, 2)
            amp, w = bright * rng.lognormal(np.log(60), 0.8), rng.uniform(0.9, 2.2) * np.sqrt(bright)
            r = int(4 * w) + 1
            ys, xs = slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1)
            d2 = (self.yy[ys, xs] - self.yy[y, x]) ** 2 + (self.xx[ys, xs] - self.xx[y, x]) ** 2
            tint = np.array([1.0, rng.uniform(0.8, 1.05), rng.uniform(0.6, 1.1)], np.float32)
            img[ys, xs] += (amp * np.exp(-d2 / (2 * w * w)))[..., None] * tint

    def render(self, m: dict, rng: np.random.Generator) -> np.ndarray:
        img = self._sky(rng)
        self._stars(img, rng, int(rng.integers(0, 4)))
        self._stars(img, rng, m.get("near_stars", 0), SIZE // 2 - 60, SIZE // 2 + 60, bright=3.0)
        if m["kind"] == "star":
            self._star_artifact(img, rng, m)
        else:
            self._galaxy(img, m, rng, cx=rng.normal(0, 2), cy=rng.normal(0, 2))
            if m["odd"] == "merger":  # a companion close by, distorted toward the main galaxy
                comp = dict(m, size=m["size"] * rng.uniform(0.4, 0.8), odd=None, spiral=False, bar=False,
                            kind="smooth", q=rng.uniform(0.5, 1.0), angle=rng.uniform(0, np.pi))
                a, d = rng.uniform(0, 2 * np.pi), m["size"] * rng.uniform(1.8, 3.0)
                self._galaxy(img, comp, rng, cx=d * np.cos(a), cy=d * np.sin(a))
        return self.stretch[np.clip(img * 4, 0, _STRETCH_MAX * 4 - 1).astype(np.int32)]

    def _star_artifact(self, img, rng, m):
        r = self.xx ** 2 + self.yy ** 2
        core = m["bright"] * 2.5 * np.exp(-r / (2 * 2.0 ** 2)) + m["bright"] * 0.3 * np.exp(-np.sqrt(r) / 6)
        spikes = (np.exp(-np.abs(self.xx) / 1.2) + np.exp(-np.abs(self.yy) / 1.2)) * np.exp(-np.sqrt(r) / 60)
        img += (core + 40 * spikes)[..., None] * np.array([1.0, 0.95, 0.9], np.float32)

    def _galaxy(self, img, m, rng, cx, cy):
        s = m["size"]
        half = int(min(SIZE // 2, max(24, 5.5 * s)))
        x0, y0 = SIZE // 2 + int(cx), SIZE // 2 + int(cy)
        ys = slice(max(y0 - half, 0), min(y0 + half, SIZE))
        xs = slice(max(x0 - half, 0), min(x0 + half, SIZE))
        x = self.xx[ys, xs] - float(cx)
        y = self.yy[ys, xs] - float(cy)
        ca, sa = float(np.cos(m["angle"])), float(np.sin(m["angle"]))  # python floats keep float32 math
        u = x * ca + y * sa
        v = (-x * sa + y * ca) / m["q"]
        r = np.sqrt(u * u + v * v) + 1e-3
        b = m["bright"]
        old = np.zeros_like(r)
        young = np.zeros_like(r)
        if m["kind"] == "smooth":  # de Vaucouleurs-like, softened in the core by the PSF
            old += b * np.exp(-2.0 * ((r / s) ** 0.5))
        else:
            disk = b * 0.55 * np.exp(-r / s)
            if m["spiral"]:
                theta = np.arctan2(v, u)
                pitch = float(np.radians([12, 22, 38][m["winding"]]))
                phase = m["arms"] * (theta - np.log(r / s + 0.3) / np.tan(pitch))
                arm = (0.5 + 0.5 * np.cos(phase)) ** 3
                disk = disk * (0.25 + 1.6 * arm * np.clip(r / (0.7 * s), 0, 1))
            young += disk
            bulge_frac = [0.0, 0.25, 0.6, 1.3][m["bulge"]]
            if m["kind"] == "edgeon":
                bulge_frac = [0.7, 0.9, 0.0][m["boxy"]]
                if bulge_frac:  # rounded or boxy bulge seen from the side
                    pu, pv = (2.0 if m["boxy"] == 0 else 6.0), 0.45
                    rb = ((np.abs(u) / (0.45 * s)) ** pu + (np.abs(v * m["q"]) / (pv * s)) ** pu) ** (1 / pu)
                    old += b * bulge_frac * np.exp(-2.5 * rb)
            elif bulge_frac:
                old += b * bulge_frac * np.exp(-r / (0.22 * s))
            if m["bar"]:
                ub, vb = u, v * m["q"]
                old += b * 0.5 * np.exp(-(ub / (1.3 * s)) ** 2 - (vb / (0.22 * s)) ** 2)
        odd = m["odd"]
        if odd == "ring":
            young += b * 0.45 * np.exp(-((r - 2.6 * s) / (0.3 * s)) ** 2)
        elif odd == "lens":
            arc = np.exp(-((np.sqrt(x * x + y * y) - 3.5 * s) / 3.0) ** 2) * (np.cos(np.arctan2(y, x) - m["angle"]) > 0.6)
            young += b * 0.5 * arc
        elif odd in ("disturbed", "irregular"):
            k = 5 if odd == "disturbed" else 10
            for _ in range(k):
                a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 2.2) * s
                w = rng.uniform(0.15, 0.5) * s
                young += b * rng.uniform(0.3, 0.9) * np.exp(-((x - d * np.cos(a)) ** 2 + (y - d * np.sin(a)) ** 2) / (2 * w * w))
            if odd == "irregular":
                young *= 1.4
                old *= 0.3
        elif odd == "dust":
            lane = 1 - 0.85 * np.exp(-(v * m["q"] / (0.06 * s + 0.5)) ** 2)
            old *= lane
            young *= lane
        # a smooth edge to the window, or the stretch would show its box around bright profiles
        taper = np.exp(-(((x * x + y * y) / (0.8 * half) ** 2) ** 4))
        img[ys, xs] += (old * taper)[..., None] * _OLD + (young * taper)[..., None] * _YOUNG


# --------------------------------------------------------------------------------------------------
# one galaxy, and the set
# --------------------------------------------------------------------------------------------------

def clarity_of(m: dict, rng: np.random.Generator) -> float:
    """How decisively volunteers answer: brighter, larger galaxies are clearer."""
    visibility = np.clip((np.log(m["bright"]) - np.log(33)) / 2.0, 0, 1) * np.clip(m["size"] / 20, 0.3, 1)
    return float(np.clip(0.45 + 0.5 * visibility + rng.normal(0, 0.04), 0.4, 0.99))


def draw_galaxy(galaxy_id: int, seed: int, renderer: Renderer) -> tuple[np.random.Generator, dict, np.ndarray, float]:
    """The random stream of one galaxy, its morphology, its 424×424 RGB image and the volunteers' clarity."""
    rng = np.random.default_rng([seed, galaxy_id])
    m = sample_morphology(rng)
    img = renderer.render(m, rng)
    # Volunteers agree more on bright, large galaxies; small faint ones leave them unsure.
    return rng, m, img, clarity_of(m, rng)


def make_galaxy(galaxy_id: int, seed: int, renderer: Renderer) -> tuple[bytes, np.ndarray]:
    """JPEG bytes and the vote fractions (Kaggle columns) of one synthetic galaxy."""
    rng, m, img, clarity = draw_galaxy(galaxy_id, seed, renderer)
    labels = simulate_votes(vote_probabilities(m, clarity), int(rng.integers(30, 71)), rng)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(80, 90)))
    return buf.getvalue(), labels


_worker_renderer: Renderer | None = None


def _init_worker(seed):
    global _worker_renderer
    _worker_renderer = Renderer(seed)


def _make_one(job):
    galaxy_id, seed, path = job
    data, labels = make_galaxy(galaxy_id, seed, _worker_renderer)
    Path(path).write_bytes(data)
    return galaxy_id, labels


