"""Arena ratings from pairwise votes: Bradley-Terry with bootstrap intervals, and online Elo.

    from evals.ml import bradley_terry, online_elo
    battles = [("model-x", "model-y", "model_a"), ("model-y", "model-z", "tie"), ...]
    bradley_terry(battles, reference="model-y")   # rows: model, rating, low, high, rank, votes

Conventions are FastChat's (fastchat/serve/monitor/rating_systems.py: compute_bt,
compute_bootstrap_bt, scale_and_offset; elo_analysis.py: compute_elo; monitor.py:
recompute_final_ranking), see ARENA_DEFINITION:

- winner is "model_a", "model_b", "tie" or "tie (bothbad)"; a tie is half a win for each side
  (FastChat's outcome 0.5 in a logistic likelihood);
- maximum likelihood of P(a beats b) = 1 / (1 + BASE ** (r_b - r_a)) by scipy's L-BFGS-B on
  the count-weighted log-likelihood, then rating = SCALE * r + INIT_RATING (SCALE = 400,
  BASE = 10, INIT_RATING = 1000; equivalently 400 * theta / ln 10 + 1000 for natural-log
  strengths theta). FastChat anchors a baseline model; here `reference` sits at INIT_RATING,
  and without one the mean rating is INIT_RATING (FastChat's fit starts at zero and its
  gradient sums to zero, which keeps the mean there too);
- bootstrap: `rounds` multinomial resamples of the outcome counts (numpy default_rng(seed)),
  the 2.5% and 97.5% quantiles of each model's ratings as low and high; "rating" is the fit on
  all votes;
- rank = 1 + the number of models whose low is above this model's high.

Speed: votes are first counted into (models x models) win and tie matrices; the fit works on
those counts and fits all bootstrap rounds in one vectorised L-BFGS-B run (the rounds are
independent, so the joint optimum is each round's optimum).

The maximum-likelihood estimate exists only when every split of the models into two groups has
a win or tie crossing it in both directions (mle_exists); otherwise, as in FastChat, a model that
never lost drifts upwards until the optimiser stops, and a warning is logged.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from evals.ml.definitions import ARENA_DEFINITION

__all__ = [
    "ARENA_DEFINITION",
    "BASE",
    "INIT_RATING",
    "SCALE",
    "BattleCounts",
    "battle_counts",
    "battle_groups",
    "bradley_terry",
    "length_controlled_win_rates",
    "mle_exists",
    "online_elo",
    "rank_by_intervals",
    "style_controlled",
    "style_features",
    "subset_counts",
]

logger = logging.getLogger(__name__)

SCALE = 400.0
BASE = 10.0
INIT_RATING = 1000.0
WINNERS = {"model_a": 0, "model_b": 1, "tie": 2, "tie (bothbad)": 2}


@dataclass(frozen=True)
class BattleCounts:
    """Votes counted by pair: wins[i, j] = times models[i] beat models[j]; ties[i, j] =
    ties[j, i] = tied votes between them (each tie counted once per pair)."""

    models: list[str]
    wins: np.ndarray
    ties: np.ndarray

    def __post_init__(self):
        n = len(self.models)
        if len(set(self.models)) != n:
            raise ValueError("model names must be unique")
        if self.wins.shape != (n, n) or self.ties.shape != (n, n):
            raise ValueError("wins and ties must be (models x models) matrices")
        if (self.wins < 0).any() or (self.ties < 0).any():
            raise ValueError("counts must be non-negative")
        if not np.array_equal(self.ties, self.ties.T):
            raise ValueError("ties must be symmetric")
        if np.diagonal(self.wins).any() or np.diagonal(self.ties).any():
            raise ValueError("a model cannot battle itself")

    @property
    def votes(self) -> np.ndarray:
        """Votes each model took part in."""
        return (self.wins + self.wins.T + self.ties).sum(axis=1)


def battle_counts(battles: Iterable[tuple[str, str, str]]) -> BattleCounts:
    """Count (model_a, model_b, winner) votes into a BattleCounts (models sorted by name).

    One pass of collections.Counter over the votes (hashing in C, ~0.2 s per million), then a
    loop over the few distinct (model_a, model_b, winner) keys.
    """
    try:
        distinct = Counter(battles)
    except TypeError:  # lists or other unhashable rows
        distinct = Counter(map(tuple, battles))
    for key in distinct:
        if len(key) != 3:
            raise ValueError("battles must be (model_a, model_b, winner) tuples")
        model_a, model_b, winner = key
        if winner not in WINNERS:
            raise ValueError(f"unknown winner {winner!r}; expected one of {sorted(WINNERS)}")
        if model_a == model_b:
            raise ValueError(f"a model cannot battle itself: {model_a!r}")
    models = sorted({name for key in distinct for name in key[:2]})
    index = {name: k for k, name in enumerate(models)}
    wins = np.zeros((len(models), len(models)), dtype=np.int64)
    ties = np.zeros_like(wins)
    for (model_a, model_b, winner), count in distinct.items():
        a, b = index[model_a], index[model_b]
        outcome = WINNERS[winner]
        if outcome == 0:
            wins[a, b] += count
        elif outcome == 1:
            wins[b, a] += count
        else:
            ties[a, b] += count
            ties[b, a] += count
    return BattleCounts(models=models, wins=wins, ties=ties)


def bradley_terry(
    battles: Iterable[tuple[str, str, str]] | BattleCounts,
    *,
    reference: str | None = None,
    rounds: int = 100,
    seed: int = 0,
    tol: float = 1e-9,
) -> list[dict]:
    """Bradley-Terry ratings with bootstrap 95% intervals, best first.

    Rows {"model", "rating", "low", "high", "rank", "votes"}; see the module docstring for the
    conventions. rounds=0 skips the bootstrap (low = high = rating). tol is L-BFGS-B's gradient
    tolerance on the mean log-likelihood per vote (FastChat: 1e-6 on the summed one); 1e-9
    keeps ratings well within 1e-3 of the exact optimum (tests compare with a Newton fit).
    """
    counts = battles if isinstance(battles, BattleCounts) else battle_counts(battles)
    models = counts.models
    if not models:
        return []
    if reference is not None and reference not in models:
        raise ValueError(f"reference model {reference!r} has no votes")
    anchor = models.index(reference) if reference is not None else None
    if not mle_exists(counts):
        logger.warning(
            "Bradley-Terry: some models never lost (or never won) against the rest; their "
            "maximum-likelihood ratings are unbounded and the table is not meaningful yet"
        )

    # Distinct cells: unordered pairs i < j with (i won, j won, tie) counts, as in FastChat's
    # preprocess_for_bt; the bootstrap resamples these counts.
    n = len(models)
    i, j = np.nonzero(np.triu(counts.wins + counts.wins.T + counts.ties, k=1))
    cells = np.stack([counts.wins[i, j], counts.wins[j, i], counts.ties[i, j]], axis=1)
    cells = cells.astype(np.float64)
    total = cells.sum()

    def score_matrices(cell_weights: np.ndarray) -> np.ndarray:
        """(rounds, pairs, 3) cell weights -> (rounds, n, n) scores per vote, ties half."""
        scores = np.zeros((cell_weights.shape[0], n, n))
        scores[:, i, j] = cell_weights[:, :, 0] + 0.5 * cell_weights[:, :, 2]
        scores[:, j, i] = cell_weights[:, :, 1] + 0.5 * cell_weights[:, :, 2]
        return scores / total

    ratings = _scale(_fit(score_matrices(cells[None]), tol)[0], anchor)
    if rounds > 0:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(int(total), cells.reshape(-1) / total, size=rounds)
        boot = _scale(_fit(score_matrices(draws.reshape(rounds, -1, 3)), tol), anchor)
        low, high = np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)
    else:
        low, high = ratings.copy(), ratings.copy()
    ranks = rank_by_intervals(low, high)
    votes = counts.votes
    rows = [
        {
            "model": model,
            "rating": float(ratings[k]),
            "low": float(low[k]),
            "high": float(high[k]),
            "rank": int(ranks[k]),
            "votes": int(votes[k]),
        }
        for k, model in enumerate(models)
    ]
    rows.sort(key=lambda row: (-row["rating"], row["model"]))
    return rows


def battle_groups(counts: BattleCounts) -> list[list[str]]:
    """The models split into groups that are linked by votes, directly or through a chain of
    battles; the biggest group first (by votes, then models, then name).

    Bradley-Terry only compares models through the votes that link them: two groups that never
    met have no common scale, and one fit over both anchors the second arbitrarily (intervals
    of thousands of points, every model rank 1). Each group is rated on its own.
    """
    from scipy.sparse.csgraph import connected_components

    met = (counts.wins + counts.wins.T + counts.ties) > 0
    _, labels = connected_components(met, directed=False)
    groups: dict[int, list[str]] = {}
    for model, label in zip(counts.models, labels, strict=True):
        groups.setdefault(int(label), []).append(model)
    votes = dict(zip(counts.models, counts.votes, strict=True))
    return sorted(
        groups.values(),
        key=lambda group: (-sum(votes[m] for m in group), -len(group), group[0]),
    )


def subset_counts(counts: BattleCounts, models: list[str]) -> BattleCounts:
    """The votes among `models` only (a group of battle_groups)."""
    keep = [counts.models.index(model) for model in models]
    grid = np.ix_(keep, keep)
    return BattleCounts(models=list(models), wins=counts.wins[grid], ties=counts.ties[grid])


def mle_exists(counts: BattleCounts) -> bool:
    """Whether finite maximum-likelihood ratings exist (Zermelo 1929; Ford 1957): the graph
    with an edge i -> j when i beat or tied j must be strongly connected."""
    from scipy.sparse.csgraph import connected_components

    beat_or_tied = (counts.wins + counts.ties) > 0
    n_components, _ = connected_components(beat_or_tied, directed=True, connection="strong")
    return n_components <= 1


def rank_by_intervals(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """1 + the number of models whose lower bound exceeds this model's upper bound
    (FastChat monitor.py recompute_final_ranking)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    return 1 + (low[None, :] > high[:, None]).sum(axis=1)


def online_elo(
    battles: Iterable[tuple[str, str, str]],
    k: float = 4.0,
    *,
    scale: float = SCALE,
    base: float = BASE,
    init_rating: float = INIT_RATING,
) -> dict[str, float]:
    """Sequential Elo in vote order, FastChat elo_analysis.compute_elo (K=4): each vote moves
    both ratings by K * (score - expected score); a tie scores 0.5."""
    rating: dict[str, float] = {}
    for model_a, model_b, winner in battles:
        if winner not in WINNERS:
            raise ValueError(f"unknown winner {winner!r}; expected one of {sorted(WINNERS)}")
        ra = rating.setdefault(model_a, init_rating)
        rb = rating.setdefault(model_b, init_rating)
        ea = 1 / (1 + base ** ((rb - ra) / scale))
        eb = 1 / (1 + base ** ((ra - rb) / scale))
        sa = {0: 1.0, 1: 0.0, 2: 0.5}[WINNERS[winner]]
        rating[model_a] += k * (sa - ea)
        rating[model_b] += k * (1 - sa - eb)
    return rating


def _fit(scores: np.ndarray, tol: float) -> np.ndarray:
    """Maximum-likelihood strengths (base-BASE units), one row per round.

    scores: (rounds, models, models), scores[r, i, j] = i's wins over j plus half their ties,
    normalised per vote. The loss is FastChat's bt_loss_and_grad (outcomes 1, 0 and 0.5 as
    weights on log p and log(1 - p)) summed over rounds and over ordered pairs: for a pair,
    S_ij softplus(-d_ij) + S_ji softplus(d_ij) with d_ij = ln(BASE) (r_i - r_j). Each round's
    gradient sums to zero over models, so from zero every round keeps mean strength 0. Dense
    (models x models) arrays instead of FastChat's per-cell rows: no scatter, no BLAS.
    """
    rounds, n_models, _ = scores.shape
    alpha = math.log(BASE)

    def loss_and_grad(flat: np.ndarray):
        strengths = flat.reshape(rounds, n_models)
        d = alpha * (strengths[:, :, None] - strengths[:, None, :])
        loss = (scores * np.logaddexp(0.0, -d)).sum()
        pulled = scores * expit(-d)  # d/dd of S_ij softplus(-d_ij) is -S_ij sigmoid(-d_ij)
        grad = alpha * (pulled.sum(axis=1) - pulled.sum(axis=2))
        return loss, grad.reshape(-1)

    result = minimize(
        loss_and_grad,
        np.zeros(rounds * n_models),
        jac=True,
        method="L-BFGS-B",
        # ftol=0: stop on the gradient alone; the loss is O(rounds) and its relative change
        # would end the search early.
        options={"maxiter": 1000, "gtol": tol, "ftol": 0.0},
    )
    if not result.success:
        # e.g. a model that never lost: its maximum-likelihood rating is infinite
        logger.warning("Bradley-Terry fit did not converge: %s", result.message)
    return result.x.reshape(rounds, n_models)


def _scale(strengths: np.ndarray, anchor: int | None) -> np.ndarray:
    """FastChat's scale_and_offset: SCALE * r + INIT_RATING, the anchor (or mean) at INIT."""
    ratings = SCALE * strengths + INIT_RATING
    if anchor is None:
        return ratings - (ratings.mean(axis=-1, keepdims=True) - INIT_RATING)
    return ratings - (ratings[..., [anchor]] - INIT_RATING)


# --- style control ---------------------------------------------------------------------------

STYLE_FEATURES = ("length", "headers", "lists", "bold")
_LIST_LINE = re.compile(r"\s*(?:[-*+]|\d+[.)])\s")
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def style_features(text: str) -> tuple[int, int, int, int]:
    """What lmarena's style control measures in a reply: its length (words here, tokens
    there), markdown headers, list items and bold spans."""
    lines = text.splitlines()
    return (
        len(text.split()),
        sum(1 for line in lines if line.lstrip().startswith("#")),
        sum(1 for line in lines if _LIST_LINE.match(line)),
        len(_BOLD.findall(text)),
    )


def style_controlled(
    battles: list[tuple[str, str, str]],
    styles: list[tuple[tuple[float, ...], tuple[float, ...]]],
    *,
    reference: str | None = None,
    rounds: int = 50,
    seed: int = 0,
) -> dict:
    """Bradley-Terry with style covariates, as lmarena's style control (blog post "Does style
    matter?", 2024): logit P(a beats b) = (theta_a - theta_b) + sum_k beta_k * d_k, where d_k
    is the normalised difference (f_a - f_b) / (f_a + f_b) of each style feature between the
    two replies, standardised over the battles; a tie is half a win each way, as in
    bradley_terry. The model strengths are the ratings with style held equal.

    Returns {"ratings": {model: rating}, "low": {...}, "high": {...}, "coefficients":
    {feature: beta}}: ratings on bradley_terry's scale (SCALE, BASE, the reference or the mean
    at INIT_RATING), intervals from `rounds` bootstrap resamples of the battles (seeded).
    """
    if len(battles) != len(styles):
        raise ValueError("one (style of a, style of b) per battle")
    models = sorted({name for a, b, _ in battles for name in (a, b)})
    if not models:
        return {"ratings": {}, "low": {}, "high": {}, "coefficients": {}}
    if reference is not None and reference not in models:
        raise ValueError(f"reference model {reference!r} has no votes")
    index = {name: k for k, name in enumerate(models)}
    n, m = len(battles), len(models)
    x = np.zeros((n, m + len(STYLE_FEATURES)))
    rows = np.arange(n)
    x[rows, [index[a] for a, _, _ in battles]] = 1.0
    x[rows, [index[b] for _, b, _ in battles]] = -1.0
    fa = np.array([a for a, _ in styles], dtype=float)
    fb = np.array([b for _, b in styles], dtype=float)
    total = fa + fb
    diff = np.divide(fa - fb, total, out=np.zeros_like(total), where=total > 0)
    spread = diff.std(axis=0)
    x[:, m:] = np.divide(
        diff - diff.mean(axis=0), spread, out=np.zeros_like(diff), where=spread > 0
    )
    y = np.array([{0: 1.0, 1: 0.0, 2: 0.5}[WINNERS[w]] for _, _, w in battles])

    anchor = index[reference] if reference is not None else None
    fitted = _logistic(x, y, np.ones(n))
    rng = np.random.default_rng(seed)
    boot = [_logistic(x, y, np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(rounds)]
    ratings = _scale(fitted[:m] / math.log(BASE), anchor)
    if rounds:
        boot_ratings = _scale(np.array(boot)[:, :m] / math.log(BASE), anchor)
        low, high = (
            np.quantile(boot_ratings, 0.025, axis=0),
            np.quantile(boot_ratings, 0.975, axis=0),
        )
    else:
        low, high = ratings, ratings
    return {
        "ratings": dict(zip(models, ratings.tolist(), strict=True)),
        "low": dict(zip(models, low.tolist(), strict=True)),
        "high": dict(zip(models, high.tolist(), strict=True)),
        "coefficients": dict(zip(STYLE_FEATURES, fitted[m:].tolist(), strict=True)),
    }


def length_controlled_win_rates(
    battles: list[tuple[str, str, str]],
    lengths: list[tuple[float, float]],
    *,
    baseline: str,
    rounds: int = 50,
    seed: int = 0,
) -> dict[str, dict]:
    """Each model's win rate against `baseline` over their direct battles, plain and length
    controlled as AlpacaEval 2 does it (Dubois et al. 2024): a logistic regression of the
    outcome on an intercept and tanh(d / sd(d)), d the reply's length minus the baseline's
    reply's length on the same prompt; the controlled win rate is the prediction at d = 0,
    sigmoid(intercept). A tie is half a win. AlpacaEval's third term, the prompt's difficulty,
    is left out: it needs each prompt answered by many models, and arena prompts mostly get one
    battle.

    Returns {model: {"n", "win_rate", "lc_win_rate", "low", "high", "length_effect"}}, the
    interval from `rounds` seeded bootstrap resamples of the model's battles."""
    if len(battles) != len(lengths):
        raise ValueError("one (length of a, length of b) per battle")
    outcomes: dict[str, list[tuple[float, float]]] = {}
    for (a, b, winner), (length_a, length_b) in zip(battles, lengths, strict=True):
        y = {0: 1.0, 1: 0.0, 2: 0.5}[WINNERS[winner]]
        if b == baseline and a != baseline:
            outcomes.setdefault(a, []).append((y, length_a - length_b))
        elif a == baseline and b != baseline:
            outcomes.setdefault(b, []).append((1.0 - y, length_b - length_a))
    rng = np.random.default_rng(seed)
    rates = {}
    for model, rows in sorted(outcomes.items()):
        y = np.array([outcome for outcome, _ in rows])
        d = np.array([difference for _, difference in rows], dtype=float)
        spread = d.std()
        x = np.column_stack([np.ones(len(rows)), np.tanh(d / spread) if spread > 0 else 0 * d])
        fitted = _logistic(x, y, np.ones(len(rows)))
        boot = [
            expit(_logistic(x, y, np.bincount(rng.integers(0, len(rows), len(rows)),
                                              minlength=len(rows)))[0])
            for _ in range(rounds)
        ]  # fmt: skip
        controlled = float(expit(fitted[0]))
        rates[model] = {
            "n": len(rows),
            "win_rate": float(y.mean()),
            "lc_win_rate": controlled,
            "low": float(np.quantile(boot, 0.025)) if boot else controlled,
            "high": float(np.quantile(boot, 0.975)) if boot else controlled,
            "length_effect": float(fitted[1]),
        }
    return rates


def _logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted logistic regression without intercept (natural-log units); a tiny ridge keeps
    the model strengths identifiable (they are only defined up to a shift)."""
    ridge = 1e-6
    scale = weights.sum()

    def loss_and_grad(w: np.ndarray):
        z = x @ w
        loss = (weights * (y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z))).sum()
        grad = x.T @ (weights * (expit(z) - y))
        return loss / scale + ridge * w @ w, grad / scale + 2 * ridge * w

    result = minimize(
        loss_and_grad, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B",
        options={"maxiter": 1000, "gtol": 1e-9},
    )  # fmt: skip
    return result.x
