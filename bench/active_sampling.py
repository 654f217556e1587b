"""Active sampling against random: reward-model held-out accuracy per number of labels.

    OMP_NUM_THREADS=1 .venv/bin/python bench/active_sampling.py
    # options: --seeds 5 --pool 1000 --test 500 --start 40 --step 40 --budget 800
    #          --members 5 --noise 0.1 --c 0.1 --pool-kinds hard,easy
    #          --model var/models/tiny-demo-…  (else one is built: --pretrain-steps, 150)

The toy task (loop.toytask) with simulated annotators (loop.simulation.pairwise_side: the strict
checker decides, blurred by the demo's noise, 0.1 by default). No database: the queue only
changes the order items are served in (tests/feedback/test_queue_priority.py), and this
measures what that order buys.

Pool: --pool toy questions (loop.toytask.sample), each with three candidate pairs built from
its right answer, a near miss (loop.corpus.near_miss: a number off by one or two, two list
items swapped, another fact's answer, the word unreversed) and a non-answer ("I do not know."):
right vs near miss (hard), right vs non-answer (easy), near miss vs non-answer (both wrong: the
annotator says "both bad", a label that costs a judgement and trains nothing). Sides are
shuffled. Held out: --test other questions, each with its hard and its easy pair (exactly one
right reply), scored without noise: accuracy = share of pairs where the right reply gets the
higher reward (a tie is wrong, as in evals.ml.reward).

Reward model: the tiny model's reward model with its transformer frozen. The features are the
last layer's hidden state at the last token of prompt + reply (chat template), which is exactly
what the sequence-classification head of a Llama reward model reads; only that linear head is
trained, by the Bradley-Terry loss TRL's RewardTrainer uses (a logistic regression on feature
differences, L2-regularised). Why not the full TRL reward trainer: 3 arms × 5 seeds × 20
rounds × (1 evaluated model + 5 members) is 1,800 trainings, hours of the 2 shared CPU cores;
the frozen trunk makes each one milliseconds and keeps the model class identical in every arm.

Arms, each from the same --start random labels, then --step labels per round up to --budget:
  random        the next --step pool pairs at random
  uncertainty   the pairs whose ensemble-mean P(A ≻ B) is nearest 0.5 (loop.active)
  disagreement  the pairs whose members' P(A ≻ B) spread most (loop.active)
  margin-std    the pairs whose raw margins spread most across the members: the definition
                loop.active does not use, measured here to show why
The ensemble: --members heads, each fit on a bootstrap resample of the labels so far with its
own seed (a convex model trained on the same labels with another seed would be the same model;
resampling is what makes members trained "with different seeds" differ). The accuracy is that
of one head fit on all labels so far, the same in every arm.

Prints, per arm, the mean (and min–max over seeds) held-out accuracy at each label count, then
the labels each arm needs to reach the accuracy random reaches at 25/50/75/100% of the budget
and random's best (first crossing of the mean curve, linearly interpolated) and the saving
against what random itself needed for it. Nothing is written
except the model, in a temporary directory removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NON_ANSWER = "I do not know."
PAIR_KINDS = ("hard", "easy", "both wrong")
ARMS = ("random", "uncertainty", "disagreement", "margin-std")


@dataclass
class Pair:
    question: str
    a: str
    b: str
    kind: str  # "hard" (right vs near miss), "easy" (right vs non-answer), "both wrong"


def setup_django() -> None:
    # The simulated annotator lives in a Django app module; nothing here touches a database.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DEBUG", "1")
    # The tables are the output: no progress bars from datasets, TRL or the model loader.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import django

    django.setup()


def build_pairs(
    n_questions: int, *, seed: int, test: bool, kinds: tuple[str, ...] = PAIR_KINDS
) -> list[Pair]:
    from loop.corpus import near_miss
    from loop.toytask import sample

    rng = random.Random(seed)
    pairs = []
    for question, answer in sample(n_questions, seed=seed):
        miss = near_miss(answer, rng)
        if miss == answer:
            continue
        candidates = [(answer, miss, "hard"), (answer, NON_ANSWER, "easy")]
        if not test:
            candidates.append((miss, NON_ANSWER, "both wrong"))
        for a, b, kind in candidates:
            if kind not in kinds:
                continue
            if rng.random() < 0.5:
                a, b = b, a
            pairs.append(Pair(question, a, b, kind))
    return pairs


def features(model_dir: str, texts: list[tuple[str, str]], batch_size: int = 64):
    """Last-layer hidden state at the last token of each (question, reply) as a chat: what a
    reward model's score head reads."""
    import numpy as np
    import torch

    from modeling.ml import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    # Encoded as evals.ml.reward encodes a conversational row for the reward model.
    rows = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        )
        for q, r in texts
    ]
    out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, row in enumerate(chunk):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(dim=1) - 1
            out[start : start + len(chunk)] = hidden[torch.arange(len(chunk)), last].numpy()
    return out


class Head:
    """A linear reward head fit by the Bradley-Terry loss: P(a ≻ b) = σ(w·(φa − φb))."""

    def __init__(self, c: float):
        self.c = c
        self.w = None

    def fit(self, diffs, labels) -> Head:
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        # Each pair also as its mirror image: the loss is symmetric in the sides, and both
        # classes are then present from the first label on.
        x = np.vstack([diffs, -diffs])
        y = np.concatenate([labels, 1 - labels])
        fitted = LogisticRegression(C=self.c, fit_intercept=False, max_iter=500).fit(x, y)
        self.w = fitted.coef_[0]
        return self

    def margins(self, diffs):
        return diffs @ self.w


def run_arm(arm: str, seed: int, data: dict, args) -> tuple[list[tuple[int, float]], dict]:
    """The arm's accuracy after each round, and what it had labelled at the end (pair kinds,
    and how many labels were usable: a tie or "both bad" trains nothing)."""
    import numpy as np

    from loop.active import pair_priority
    from loop.simulation import SimulationConfig, pairwise_side

    pool, diffs = data["pool"], data["pool_diffs"]
    rng = random.Random(f"{seed}:labels")  # the annotators' noise: the same stream in every arm
    pick_rng = random.Random(f"{seed}:{arm}:pick")
    config = SimulationConfig(noise=args.noise, seed=seed)
    order = list(range(len(pool)))
    random.Random(f"{seed}:start").shuffle(order)
    labelled: list[int] = []  # pool indices judged (every judgement costs one label)
    usable: list[tuple[int, int]] = []  # (index, 1 if A preferred else 0): ties train nothing
    acquired: list[int] = []  # labels spent when each usable label came in

    def judge(indices: list[int]) -> None:
        for i in indices:
            pair = pool[i]
            # Shown in the item's order; the simulation's own position bias is 0 by default.
            side = pairwise_side(pair.question, pair.a, pair.b, config, rng)
            labelled.append(i)
            if side in ("left", "right"):
                usable.append((i, 1 if side == "left" else 0))
                acquired.append(len(labelled))

    judge(order[: args.start])
    curve = []
    while True:
        head = fit_head(usable, diffs, args.c)
        curve.append((len(labelled), accuracy(head, data)))
        if len(labelled) >= args.budget:
            mix = Counter(pool[i].kind for i in labelled)
            mix["usable"] = len(usable)
            mix["labels"] = list(zip(usable, acquired, strict=True))
            return curve, mix
        rest = np.array(sorted(set(range(len(pool))) - set(labelled)))
        if arm == "random":
            chosen = pick_rng.sample(list(rest), args.step)
        else:
            members = [
                fit_head(bootstrap(usable, random.Random(f"{seed}:{arm}:{len(labelled)}:{m}")),
                         diffs, args.c)
                for m in range(args.members)
            ]  # fmt: skip
            margins = np.stack([m.margins(diffs[rest]) for m in members], axis=1)
            if arm == "margin-std":  # the spread of raw margins, which loop.active left
                scores = margins.std(axis=1)
            else:
                scores = np.array([pair_priority(arm, row) for row in margins.tolist()])
            # Highest priority first; ties (e.g. before any usable label) broken at random.
            jitter = np.array([pick_rng.random() for _ in rest]) * 1e-12
            chosen = list(rest[np.argsort(-(scores + jitter), kind="stable")[: args.step]])
        judge([int(i) for i in chosen])


def bootstrap(usable: list, rng: random.Random) -> list:
    return [rng.choice(usable) for _ in usable] if usable else []


def fit_head(usable: list, diffs, c: float) -> Head:
    import numpy as np

    head = Head(c)
    if not usable:
        head.w = np.zeros(diffs.shape[1])
        return head
    index = np.array([i for i, _ in usable])
    labels = np.array([y for _, y in usable])
    return head.fit(diffs[index], labels)


def accuracy(head: Head, data: dict) -> float:
    import numpy as np

    margins = head.margins(data["test_diffs"])
    right_is_a = data["test_right_is_a"]
    return float(np.mean(np.where(right_is_a, margins > 0, margins < 0)))


def trl_check(runs: dict, data: dict, args, model_dir: str, workdir: str) -> None:
    """The labels each arm chose, used to train the real reward model: TRL's RewardTrainer
    through modeling.ml.train, the whole tiny model trained (the same config for every arm),
    scored on the held-out pairs by evals.ml.reward.reward_accuracy (a tie is wrong)."""
    import json

    import numpy as np

    from evals.ml.reward import reward_accuracy
    from loop.toytask import is_correct
    from modeling.ml import load_reward_model, load_tokenizer, train

    def row(question: str, chosen: str, rejected: str) -> dict:
        prompt = [{"role": "user", "content": question}]
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    test_rows = []
    for pair in data["test"]:
        right_is_a = bool(is_correct(pair.question, pair.a))
        chosen, rejected = (pair.a, pair.b) if right_is_a else (pair.b, pair.a)
        test_rows.append(row(pair.question, chosen, rejected))
    budgets = [int(b) for b in args.trl_budgets.split(",")]
    arms = [a for a in ("random", "uncertainty", "disagreement") if a in runs]
    print(f"\nreal reward model (TRL RewardTrainer, {args.trl_config}) on each arm's labels, "
          f"held-out accuracy over seeds 0..{args.trl_seeds - 1}")  # fmt: skip
    print("labels  " + "  ".join(f"{arm:>24}" for arm in arms))
    means: dict[str, list[float]] = {arm: [] for arm in arms}
    for budget in budgets:
        cells = []
        for arm in arms:
            accuracies = []
            for seed in range(args.trl_seeds):
                labels = runs[arm][seed][1]["labels"]
                rows = []
                for (i, a_won), spent in labels:
                    if spent > budget:
                        break
                    pair = data["pool"][i]
                    chosen, rejected = (pair.a, pair.b) if a_won else (pair.b, pair.a)
                    rows.append(row(pair.question, chosen, rejected))
                directory = Path(workdir, f"trl-{arm}-{seed}-{budget}")
                directory.mkdir(parents=True)
                with open(directory / "train.jsonl", "w") as out:
                    out.writelines(json.dumps(r) + "\n" for r in rows)
                config = {**json.loads(args.trl_config), "seed": seed}
                train("reward", config, model_path=model_dir, dataset_dir=str(directory),
                      output_dir=str(directory / "model"))  # fmt: skip
                model = load_reward_model(directory / "model").eval()
                tokenizer = load_tokenizer(directory / "model")
                accuracies.append(reward_accuracy(model, tokenizer, test_rows)["accuracy"])
                shutil.rmtree(directory, ignore_errors=True)
            means[arm].append(float(np.mean(accuracies)))
            cells.append(f"{np.mean(accuracies):.3f} [{min(accuracies):.3f}–{max(accuracies):.3f}]")
        print(f"{budget:>6}  " + "  ".join(f"{cell:>24}" for cell in cells), flush=True)
    print_savings(budgets, means)


def print_savings(counts: list[int], mean: dict[str, list[float]]) -> None:
    """Labels each arm's mean curve needs for random's accuracy at each count ("≤" when the
    curve is past it at its first point), and the saving against random's own need."""
    if "random" not in mean:
        return
    for k, count in enumerate(counts):
        target = mean["random"][k]
        base = labels_to_reach(list(zip(counts, mean["random"], strict=True)), target)
        cells = []
        for arm in mean:
            need = labels_to_reach(list(zip(counts, mean[arm], strict=True)), target)
            if need is None:
                cells.append(f"{arm} not reached")
                continue
            bound = "≤" if need == counts[0] and mean[arm][0] > target else ""
            at_least = "≥" if bound else ""
            cells.append(f"{arm} {bound}{need:.0f} ({at_least}{1 - need / base:+.0%})")
        print(f"  random@{count} = {target:.3f}: " + "; ".join(cells))


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """Labels at which a mean curve first reaches `target`, linearly interpolated."""
    previous = None
    for labels, acc in curve:
        if acc >= target:
            if previous is None or previous[1] >= acc:
                return float(labels)
            (l0, a0) = previous
            return l0 + (target - a0) / (acc - a0) * (labels - l0)
        previous = (labels, acc)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=1000, help="questions in the pool (×3 pairs)")
    parser.add_argument("--test", type=int, default=500, help="held-out questions (×2 pairs)")
    parser.add_argument("--start", type=int, default=40, help="random labels every arm starts from")
    parser.add_argument("--step", type=int, default=40, help="labels acquired per round")
    parser.add_argument("--budget", type=int, default=800)
    parser.add_argument("--members", type=int, default=5, help="reward heads in the ensemble")
    parser.add_argument("--noise", type=float, default=0.1, help="as the demo's annotators")
    parser.add_argument("--c", type=float, default=0.1, help="inverse L2 strength of the head")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--model", help="a tiny model directory (else one is built)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument(
        "--trl-seeds",
        type=int,
        default=0,
        help="also train the real reward model (TRL) on the labels of seeds 0..N-1 of each arm",
    )
    parser.add_argument("--trl-budgets", default="200,400", help="label counts for --trl-seeds")
    parser.add_argument(
        "--trl-config",
        default='{"learning_rate": 3e-4, "epochs": 2, "batch_size": 16, "max_length": 96}',
        help="the reward job config (modeling.ml.configs) for --trl-seeds",
    )
    parser.add_argument(
        "--pool-kinds",
        default=",".join(PAIR_KINDS),
        help="which pairs the pool holds; 'hard,easy' leaves out the both-wrong ones",
    )
    args = parser.parse_args()
    setup_django()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from loop.tiny import DEFAULT_PRETRAIN_STEPS, build_tiny_model
    from loop.toytask import is_correct

    print(f"uptime: {os.popen('uptime').read().strip()}")
    started = time.perf_counter()
    workdir = None
    model_dir = args.model
    if model_dir is None:
        workdir = tempfile.mkdtemp(prefix="veredicto-active-")
        model_dir = str(Path(workdir, "tiny"))
        steps = args.pretrain_steps or DEFAULT_PRETRAIN_STEPS
        build_tiny_model(model_dir, pretrain_steps=steps, seed=0)
        print(f"built the tiny model ({steps} pretraining steps) in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    try:
        kinds = tuple(k.strip() for k in args.pool_kinds.split(","))
        pool = build_pairs(args.pool, seed=101, test=False, kinds=kinds)
        test = build_pairs(args.test, seed=202, test=True)
        texts = sorted({(p.question, r) for p in pool + test for r in (p.a, p.b)})
        index = {t: i for i, t in enumerate(texts)}
        phi = features(model_dir, texts)
        # Standardised, so one regularisation strength suits every feature.
        phi = (phi - phi.mean(axis=0)) / (phi.std(axis=0) + 1e-6)

        def diffs(pairs):
            return np.array([phi[index[(p.question, p.a)]] - phi[index[(p.question, p.b)]]
                             for p in pairs])  # fmt: skip

        data = {
            "pool": pool,
            "test": test,
            "pool_diffs": diffs(pool),
            "test_diffs": diffs(test),
            "test_right_is_a": np.array([bool(is_correct(p.question, p.a)) for p in test]),
        }
        print(f"pool {len(pool)} pairs, held out {len(test)} pairs, {len(texts)} texts "
              f"featurised in {time.perf_counter() - started:.0f} s")  # fmt: skip
        arms = [a for a in args.arms.split(",") if a]
        runs = {arm: [run_arm(arm, seed, data, args) for seed in range(args.seeds)]
                for arm in arms}  # fmt: skip
        report(runs, args)
        if args.trl_seeds:
            scratch = tempfile.mkdtemp(prefix="veredicto-active-trl-")
            try:
                trl_check(runs, data, args, model_dir, scratch)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"total {time.perf_counter() - started:.0f} s; uptime: {os.popen('uptime').read().strip()}"
    )


def report(runs: dict, args) -> None:
    import numpy as np

    curves = {arm: [curve for curve, _ in arm_runs] for arm, arm_runs in runs.items()}
    arms = list(curves)
    counts = [n for n, _ in curves[arms[0]][0]]
    mean = {arm: [float(np.mean([c[k][1] for c in curves[arm]])) for k in range(len(counts))]
            for arm in arms}  # fmt: skip
    print(f"\nheld-out accuracy, mean [min–max] over {args.seeds} seeds")
    print("labels  " + "  ".join(f"{arm:>22}" for arm in arms))
    for k, n in enumerate(counts):
        cells = []
        for arm in arms:
            values = [c[k][1] for c in curves[arm]]
            cells.append(f"{mean[arm][k]:.3f} [{min(values):.3f}–{max(values):.3f}]")
        print(f"{n:>6}  " + "  ".join(f"{cell:>22}" for cell in cells))
    print(f"\nwhat each arm had labelled at {counts[-1]} labels (mean over seeds)")
    for arm in arms:
        mixes = [mix for _, mix in runs[arm]]
        parts = [f"{key} {np.mean([m[key] for m in mixes]):.0f}"
                 for key in ("hard", "easy", "both wrong", "usable")]  # fmt: skip
        print(f"  {arm:>12}: " + ", ".join(parts))
    if "random" not in curves:
        return
    print("\nlabels to reach random's accuracy at a share of the budget (saving vs random)")
    targets = [
        (f"random@{counts[k]}", k)
        for k in (max(0, round(share * (len(counts) - 1))) for share in (0.25, 0.5, 0.75, 1.0))
    ]
    best = int(np.argmax(mean["random"]))
    targets.append((f"random's best (@{counts[best]})", best))  # fmt: skip
    for name, k in targets:
        target = mean["random"][k]
        cells = []
        for arm in arms:
            need = labels_to_reach(list(zip(counts, mean[arm], strict=True)), target)
            base = labels_to_reach(list(zip(counts, mean["random"], strict=True)), target)
            if need is None:
                cells.append(f"{arm} not reached")
            else:
                cells.append(f"{arm} {need:.0f} ({1 - need / base:+.0%})")
        print(f"  {name} = {target:.3f}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
