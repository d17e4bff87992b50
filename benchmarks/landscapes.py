"""LoRA-HPO landscapes the search benchmark replays: five analytic models and the measured tables.

Each landscape is an experiment-like `space:` dict (the exact form of
experiment.yaml, read by core.space.SearchSpace) and a function of the decoded
hyperparameters {rank, alpha, dropout, lr} -> validation loss (lower is better).

The analytic model (formulas and constants in docs/benchmarks.md):

    s      = lr * alpha / rank                        effective LoRA step
    s*(r)  = s_ref * sqrt(r_ref / r)                   best step; rsLoRA: larger ranks want a smaller alpha/r
    u      = log2(s / s*(r))                           octaves away from the best step
    h(u)   = 1 / (1 + (u / w_lo)^2)          u <= 0    too small a step: part of the gain
           = max(1 - (u / w_hi)^2, -h_div)   u > 0     too large: falls fast, then diverges (capped)
    G(r)   = G0 + G_slope * log2(r / r_ref) - G_curv * log2(r / r_peak)^2     gain of a well-tuned adapter
    loss   = L_base - G(r) * h(u) + c_d * dropout / 0.1 + c_k * log2(alpha / rank^k_pow / k_pref)^2
             + c_dq * ((dropout - d_pref) / 0.1)^2 + noise

noise is Gaussian with standard deviation `noise`, seeded by the point itself
(landscape name + decoded hyperparameters), so asking a point twice gives the
same value, as the project's run store does.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Model:
    """Constants of the analytic landscape (see the module docstring)."""
    L_base: float  # validation loss of an adapter that learnt nothing
    G0: float  # gain of a well-tuned adapter at rank r_ref ...
    G_slope: float  # ... plus G_slope per octave of rank above r_ref ...
    G_curv: float  # ... minus G_curv per squared octave away from r_peak
    r_peak: int
    s_ref: float  # best effective step lr * alpha / r at rank r_ref
    r_ref: int
    w_lo: float = 3.0  # octaves: width of the too-small-step side
    w_hi: float = 1.9  # octaves: width of the too-large-step side
    h_div: float = 3.0  # cap of the divergence penalty, in units of G(r)
    c_d: float = 0.0  # loss added by dropout 0.1 (linear in dropout)
    c_k: float = 0.0  # loss per squared octave of alpha/r^k_pow away from k_pref
    k_pref: float = 1.0
    noise: float = 0.001  # standard deviation of the evaluation noise
    k_pow: float = 1.0  # 1: the preferred alpha scales with r (LoRA); 0.5: with sqrt(r) (rsLoRA)
    c_dq: float = 0.0  # loss per squared 0.1 of dropout away from d_pref (dropout that matters)
    d_pref: float = 0.0

    def gain(self, rank: int) -> float:
        return (self.G0 + self.G_slope * math.log2(rank / self.r_ref)
                - self.G_curv * math.log2(rank / self.r_peak) ** 2)

    def h(self, u: float) -> float:
        if u <= 0:
            return 1.0 / (1.0 + (u / self.w_lo) ** 2)
        return max(1.0 - (u / self.w_hi) ** 2, -self.h_div)

    def value(self, hp: dict, noise_key: str | None) -> float:
        r, alpha, dropout, lr = hp["rank"], hp["alpha"], hp["dropout"], hp["lr"]
        step = lr * alpha / r
        best_step = self.s_ref * math.sqrt(self.r_ref / r)
        u = math.log2(step / best_step)
        loss = self.L_base - self.gain(r) * self.h(u) + self.c_d * dropout / 0.1
        if self.c_k:
            loss += self.c_k * math.log2(alpha / r ** self.k_pow / self.k_pref) ** 2
        if self.c_dq:
            loss += self.c_dq * ((dropout - self.d_pref) / 0.1) ** 2
        if noise_key is not None and self.noise:
            loss += self.noise * _gauss(noise_key, hp)
        return loss


def _gauss(name: str, hp: dict) -> float:
    """A standard normal draw fixed by the point: same point, same noise."""
    key = json.dumps([name, hp["rank"], hp["alpha"], hp["dropout"], f"{hp['lr']:.6g}"])
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return random.Random(seed).gauss(0.0, 1.0)


class Landscape:
    """name, space (experiment-like dict), __call__(hp) -> loss, optimum (the best loss in the space)."""

    name: str
    space: dict
    optimum: float
    description: str

    def __call__(self, hp: dict) -> float:
        raise NotImplementedError

    def truth(self, hp: dict) -> float:
        """What the point is really worth (without evaluation noise): what a user's choice is judged by."""
        return self(hp)


class Noisy(Landscape):
    """A landscape evaluated with relative noise `rel` (a training seed's spread, e.g. 0.0045 measured on the
    demo), one realisation per `world`: the same point in the same world gets the same value, as a stored run
    does; another world is another choice of train.seed for the whole search."""

    def __init__(self, inner: Landscape, rel: float, world: int):
        self.inner, self.rel, self.world = inner, rel, world
        self.name, self.space, self.optimum = inner.name, inner.space, inner.optimum
        self.description = f"{inner.description}, noise {rel:.2%}"

    def __call__(self, hp: dict) -> float:
        return self.truth(hp) * (1 + self.rel * _gauss(f"{self.name}/world{self.world}", hp))

    def truth(self, hp: dict) -> float:
        return self.inner.truth(hp)


class Analytic(Landscape):
    def __init__(self, name: str, space: dict, model: Model, description: str):
        self.name, self.space, self.model, self.description = name, space, model, description
        self.optimum, self.argmin = self._optimum()

    def __call__(self, hp: dict) -> float:
        return self.model.value(hp, self.name)

    def noise_free(self, hp: dict) -> float:
        return self.model.value(hp, None)

    def truth(self, hp: dict) -> float:
        return self.noise_free(hp)

    def _optimum(self):
        """The noise-free minimum: every discrete combination; a searched lr at its best value for that
        combination (the step s = s*(r), where h peaks), clamped to the lr range."""
        from core.space import SearchSpace

        space = SearchSpace.from_dict(self.space)
        discrete = [v for v in space.searched if v.input_type == "I"]
        others = [v for v in space.searched if v.input_type != "I"]
        if [v.name for v in others] not in ([], ["lr"]) or (others and others[0].kind != "log10"):
            raise ValueError("analytic optimum: only lr (log10) may be real-valued")
        best = (math.inf, None)
        for combo in itertools.product(*[range(int(v.bounds[0]), int(v.bounds[1]) + 1) for v in discrete]):
            coords = dict(zip([v.name for v in discrete], combo))
            if others:
                lr_var = others[0]
                hp = space.decode([coords.get(v.name, lr_var.lower) for v in space.searched])
                best_lr = self.model.s_ref * math.sqrt(self.model.r_ref / hp["rank"]) * hp["rank"] / hp["alpha"]
                low, high = lr_var.value_bounds
                coords["lr"] = lr_var.encode(min(max(best_lr, low), high))
            hp = space.decode([coords[v.name] for v in space.searched])
            best = min(best, (self.noise_free(hp), tuple(sorted(hp.items()))))
        return best[0], dict(best[1])


# The original's experiment 3 (copied in tests/data/original-bbo3): rank x alpha multiple x dropout, lr fixed at 10^-3.5.
# Shape from the literature, scale read by eye off that run (q,v-only LoRA, where rank mattered):
# best r=64, alpha/r ~ 20, loss 0.820; r=8 at X0 0.876; untrained ~0.895; dropout 0.1 costs ~0.007.
EXP3_SPACE = {
    "rank": {"choices": [4, 8, 16, 32, 64], "x0": 8},
    "alpha": {"times_rank": [1, 64], "x0": 8},
    "dropout": {"choices": [0.0, 1.0e-4, 1.0e-3, 1.0e-2, 0.1], "x0": 0.0},
    "lr": 3.1622777e-4,
}
EXP3_MODEL = Model(L_base=0.895, G0=0.035, G_slope=0.0133, G_curv=0.0, r_peak=64,
                   s_ref=20 * 3.1622777e-4 * math.sqrt(64 / 8), r_ref=8, c_d=0.007, noise=0.001)

# The original's experiment 1 space (rank, dropout, alpha 1..64, log10 lr in [-6, -3]) with literature priors for
# all-linear-layer LoRA: rank matters little (best near 32, -9% gain at r=4), best lr*alpha/r ~ 4e-4 at r=8
# (lr 2e-4, alpha = 2r), a mild preference for alpha/r near 2, dropout nearly irrelevant.
EXP1_SPACE = {
    "rank": {"choices": [4, 8, 16, 32, 64, 128], "x0": 8},
    "dropout": {"choices": [0.0, 1.0e-4, 1.0e-3, 1.0e-2, 0.1], "x0": 0.1},
    "alpha": {"range": [1, 64], "x0": 32},
    "lr": {"log10": [-6, -3], "x0": 1.0e-5},
}
EXP1_MODEL = Model(L_base=1.30, G0=0.25, G_slope=0.0, G_curv=0.0025, r_peak=32, s_ref=4e-4, r_ref=8,
                   c_d=0.004, c_k=0.0005, k_pref=2.0, noise=0.001)


# An optimum at the lowest rank right below a divergence cliff in lr: the too-large-step side is a quarter of an
# octave wide (w_hi), so 1.2x the best lr loses the whole gain and 1.4x diverges; the best lr*alpha/r is 1e-3 at r=4
# and the gain falls with rank (r_peak = 4). Alpha as a multiple of rank, dropout fixed.
CLIFF_SPACE = {
    "rank": {"choices": [4, 8, 16, 32, 64], "x0": 16},
    "alpha": {"times_rank": [1, 4], "x0": 2},
    "dropout": 0.05,
    "lr": {"log10": [-5, -2], "x0": 1.0e-4},
}
CLIFF_MODEL = Model(L_base=1.20, G0=0.20, G_slope=0.0, G_curv=0.004, r_peak=4, s_ref=1e-3, r_ref=4,
                    w_hi=0.25, noise=0.001)

# Rank almost irrelevant (0.0002 per squared octave), dropout matters: 0.1 is best, 0 or 0.2 cost 2% (small data,
# overfitting). Alpha as a multiple of rank, lr searched.
FLAT_SPACE = {
    "rank": {"choices": [4, 8, 16, 32, 64, 128], "x0": 8},
    "dropout": {"choices": [0.0, 0.05, 0.1, 0.2, 0.3], "x0": 0.0},
    "alpha": {"times_rank": [1, 4], "x0": 2},
    "lr": {"log10": [-5, -3], "x0": 1.0e-4},
}
FLAT_MODEL = Model(L_base=1.40, G0=0.30, G_slope=0.0, G_curv=0.0002, r_peak=16, s_ref=6e-4, r_ref=8,
                   c_dq=0.02, d_pref=0.1, noise=0.001)

# rsLoRA-like: the best alpha grows with sqrt(rank) (alpha / sqrt(r) near 8: alpha 64 at r=64), the gain grows with
# rank up to ~128; alpha an integer 1..128 and lr searched, so lr * alpha is a ridge that alpha/sqrt(r) pins.
RSLORA_SPACE = {
    "rank": {"choices": [4, 8, 16, 32, 64, 128, 256], "x0": 8},
    "alpha": {"range": [1, 128], "x0": 16},
    "dropout": 0.05,
    "lr": {"log10": [-5, -3], "x0": 1.0e-4},
}
RSLORA_MODEL = Model(L_base=1.10, G0=0.15, G_slope=0.01, G_curv=0.004, r_peak=64, s_ref=4e-4, r_ref=16,
                     c_k=0.002, k_pref=8.0, k_pow=0.5, noise=0.001)


def cliff_like() -> Analytic:
    return Analytic("low-rank-cliff", CLIFF_SPACE, CLIFF_MODEL,
                    "best at r=4 right below an lr divergence cliff; alpha=k*rank, log10 lr in [-5,-2]")


def flat_rank() -> Analytic:
    return Analytic("flat-rank-dropout", FLAT_SPACE, FLAT_MODEL,
                    "rank nearly irrelevant, dropout 0.1 best (0 or 0.2 cost 2%); alpha=k*rank, log10 lr in [-5,-3]")


def rslora_like() -> Analytic:
    return Analytic("rslora-like", RSLORA_SPACE, RSLORA_MODEL,
                    "best alpha grows with sqrt(rank) (alpha/sqrt(r)=8); alpha 1..128, log10 lr in [-5,-3]")


def analytic_landscapes() -> list[Analytic]:
    """Every analytic landscape, the original's two first."""
    return [exp3_like(), exp1_like(), cliff_like(), flat_rank(), rslora_like()]


def exp3_like() -> Analytic:
    return Analytic("exp3-like", EXP3_SPACE, EXP3_MODEL,
                    "rank x alpha=k*rank x dropout, lr fixed 10^-3.5 (the original's experiment 3)")


def exp1_like() -> Analytic:
    return Analytic("exp1-like", EXP1_SPACE, EXP1_MODEL,
                    "rank, dropout, alpha 1..64, log10 lr in [-6,-3] (the original's experiment 1/2b space)")


# ---------------------------------------------------------------- the measured table

class Tabulated(Landscape):
    """A CSV of benchmarks/make_landscape.py, replayed by lookup; a real lr is snapped to the nearest grid lr (log10)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        lines = self.path.read_text().splitlines()
        comments = [line[2:] for line in lines if line.startswith("# ")]
        space_lines = [c for c in comments if c.startswith("space: ")]
        if not space_lines:
            raise ValueError(f"{path}: no '# space: {{...}}' line")
        self.space = json.loads(space_lines[-1][len("space: "):])
        self.provenance = comments
        rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
        self.table = {}
        for row in rows:
            if row["state"] != "ok":
                continue
            key = (int(row["rank"]), int(row["alpha"]), float(row["dropout"]), round(float(row["log10_lr"]), 6))
            self.table[key] = float(row["val_loss"])
        self.log_lrs = sorted({k[3] for k in self.table})
        self.name = f"measured ({self.path.stem})"
        models = [c[len("model: "):].split(",")[0] for c in comments if c.startswith("model: ")]
        model = models[-1] if models else "tiny LLaMA"  # the tiny model's CSVs predate the model line
        self.description = f"{model}, real training, {len(self.table)} grid points ({self.path.name})"
        self._check_complete()
        self.optimum = min(self.table.values())

    def _check_complete(self):
        from core.space import SearchSpace

        space = SearchSpace.from_dict(self.space)
        axes = [list(range(int(v.bounds[0]), int(v.bounds[1]) + 1)) if v.input_type == "I" else self.log_lrs
                for v in space.searched]
        missing = [c for c in itertools.product(*axes) if self._key(space.decode(list(c))) not in self.table]
        if missing:
            raise ValueError(f"{self.path}: {len(missing)} grid points of its space are missing (unfinished run?)")

    def _key(self, hp: dict):
        x = math.log10(hp["lr"])
        snapped = min(self.log_lrs, key=lambda g: abs(g - x))
        return (int(hp["rank"]), int(hp["alpha"]), float(hp["dropout"]), snapped)

    def __call__(self, hp: dict) -> float:
        return self.table[self._key(hp)]


def all_landscapes(csv_path: Path | None = None) -> list[Landscape]:
    """The analytic ones, plus the measured table when its CSV exists."""
    out = analytic_landscapes()
    path = csv_path or DATA / "landscape_small.csv"
    if path.exists():
        out.append(Tabulated(path))
    return out


# ---------------------------------------------------------------- fit check against the original's real run

def read_bbo3_history(path: Path) -> list[tuple[dict, float]]:
    """The 50 (hyperparameters, val loss) of tests/data/original-bbo3/history.0.txt (the original run)."""
    from core.space import SearchSpace

    space = SearchSpace.from_dict(EXP3_SPACE)
    out = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        coords = [int(float(x)) for x in parts[:3]]
        out.append((space.decode(coords), float(parts[3])))
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(xs):
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        r = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
