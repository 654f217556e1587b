"""What one run of the demo loop is: its scale (`make demo`, CI) and its report."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from evals.ml.definitions import TOY_TASK_SCORE_DEFINITION
from evals.models import RunStatus

PROJECT_NAME = "Toy tasks (demo loop)"
BASE_NAME = "tiny-demo-base"
GUIDELINES = (
    "Toy questions with one right answer: arithmetic, sorting a list, reversing a word, facts. "
    "Prefer the reply that gives the right answer; write the answer alone as a demonstration."
)

# One definition of the toy task's score: the summary prints it, the dashboard's tooltip shows it.
TASK_SCORE = TOY_TASK_SCORE_DEFINITION

# The trainers' metrics on the snapshots' held-out rows worth a line in the summary.
HELD_OUT_METRICS = ("eval_loss", "eval_accuracy", "eval_rewards/accuracies", "eval_rewards/margins")


# The kinds a ~2M-parameter model pretrained for minutes can get right (their items are in the
# corpus), and those it cannot (held-out sums and lists are not): reported apart.
LEARNABLE_KINDS = ("facts", "reversing")
UNLEARNABLE_KINDS = ("arithmetic", "sorting")


@dataclass(frozen=True)
class DemoScale:
    """How big the two rounds are. `demo` fits `make demo` in 15 minutes on 2 CPU cores; `ci`
    only has to prove every link quickly (its numbers mean nothing)."""

    # Prompts per kind, held out (split=test) and for training. Facts and words: the first n
    # facts or words, one phrasing each; training asks the held-out ones too, in another
    # phrasing (steps.prompt_plan).
    held_out: dict[str, int]
    train: dict[str, int]
    # Train prompts per kind that get a demonstration, the first ones of `train`: SFT learns
    # from these only. The others are asked in training through the cheaper labels alone
    # (rankings of the policy's own samples, the online stage's checker), which is what leaves
    # the preference stages something to teach greedy decoding that SFT did not.
    demonstrated: dict[str, int]
    pretrain_steps: int  # when the base model has to be built
    sft: dict[str, Any]
    reward: dict[str, Any]
    dpo: dict[str, Any]
    grpo: dict[str, Any]
    ppo: dict[str, Any]  # runs only when the reward model's best-of-8 beats a random sample
    # SFT samples per prompt, ranked with its demonstration (at most MAX_RANKED in all).
    sft_samples: int = 6
    sample_temperature: float = 1.0
    max_new_tokens: int = 24  # toy answers are a few tokens
    # Samples per training prompt that pick the online stage's prompts: those the policy gets
    # right sometimes, not always or never (a group all right or all wrong has no advantage).
    probe_samples: int = 4
    eval_samples: int = 8  # sampled accuracy: the mean over this many samples at T=1
    overlap: int = 1
    annotators: int = 2
    noise: float = 0.1
    next_round_prompts: int = 500  # round two's comparisons: every train prompt
    # The base model's default suites too (trained checkpoints always get theirs, run when their
    # job succeeds, so their evaluation time counts in the training stages).
    full_evals: bool = True
    seed: int = 0  # simulated annotators, sampling and training jobs

    @property
    def prompts(self) -> int:
        return sum(self.count(split) for split in ("test", "train"))

    def count(self, split: str) -> int:
        sizes = self.held_out if split == "test" else self.train
        return sum(sizes.values())


# RPO: DPO's sigmoid loss plus the chosen reply's NLL (TRL loss_type ["sigmoid", "sft"]). Plain
# DPO at 5e-5 left the policy where SFT had (120 updates, +0.01); an analysis of on-policy pairs
# found the SFT term at 3e-4 raised sampled accuracy by about +0.1 without undoing SFT.
_RPO = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0], "beta": 0.1}

SCALES: dict[str, DemoScale] = {
    "demo": DemoScale(
        # 400 held out (240 of them learnable: all 120 facts and 120 words, one phrasing each).
        held_out={"facts": 120, "reversing": 120, "arithmetic": 80, "sorting": 80},
        # 360 for training: the same facts and words in another phrasing, 60 sums, 60 lists.
        train={"facts": 120, "reversing": 120, "arithmetic": 60, "sorting": 60},
        # Half the facts and words demonstrated: SFT alone already answered 235 of the 240
        # learnable held-out prompts greedily when every one was (seed 0), leaving the later
        # stages nothing to show on greedy accuracy.
        demonstrated={"facts": 60, "reversing": 60, "arithmetic": 60, "sorting": 60},
        # About 4 minutes on 2 idle cores (0.25 s a step): the 240 facts and words need the
        # steps, each asked in about 20 chats.
        pretrain_steps=1000,
        sft={"learning_rate": 3e-4, "epochs": 3, "batch_size": 16, "max_length": 128},
        # From the SFT checkpoint, judged honestly in the summary (accuracy, calibration,
        # best-of-8 against a random sample). Centred so PPO could use its scores as they are.
        reward={
            "learning_rate": 3e-4,
            "epochs": 1,
            "batch_size": 16,
            "max_length": 128,
            "center_rewards_coefficient": 0.01,
        },
        # Chosen when every train prompt had a demonstration (kept since: its gain grew).
        # lr 1e-4 for 2 epochs: on seed 0's preference snapshot (learnable sampled accuracy
        # against SFT) 3e-4 for 1 epoch gave +0.012 [-0.020, +0.044], 1e-4 for 1 epoch +0.028
        # [+0.003, +0.053], 2e-4 with beta 0.3 +0.023 [-0.006, +0.052], 2e-4 with the DPO
        # term at half weight +0.024 [-0.003, +0.052], this +0.035 [+0.006, +0.064].
        dpo={"learning_rate": 1e-4, "epochs": 2, "batch_size": 16, "max_length": 128, **_RPO},
        # From the DPO policy, the strict checker as reward, on prompts it is sometimes right on.
        # 80 updates of 4 prompts x 8 samples; beta 0 (no reference model: the strict checker
        # cannot be gamed by drifting, and the held-out measurement would show a collapse).
        # lr 2e-4: against the DPO policy (learnable sampled accuracy, from each seed's own DPO
        # checkpoint and online snapshot) 1e-4 gave +0.029 / +0.021 [-0.004, +0.046] / +0.054
        # on seeds 0 / 1 / 2, this +0.067 / +0.036 [+0.011, +0.061] / +0.035 [+0.009, +0.061]
        # (trained with seed 0); 120 steps at 1e-4 gave +0.031 on seed 1. The demo's own runs
        # then gave +0.067 / +0.031 / +0.052, each CI above zero; with half the train prompts
        # demonstrated, +0.051 / +0.062 / +0.061 (README).
        grpo={
            "learning_rate": 2e-4,
            "max_steps": 80,
            "batch_size": 32,
            "num_generations": 8,
            "max_completion_length": 16,
            "temperature": 1.0,
            "beta": 0.0,
            "reward_functions": ["toy_task"],
        },
        ppo={
            "learning_rate": 1e-5,
            "max_steps": 8,
            "batch_size": 16,
            "max_completion_length": 16,
            "num_ppo_epochs": 2,
            "missing_eos_penalty": 1.0,
        },
    ),
    "ci": DemoScale(
        held_out={"facts": 3, "reversing": 2, "arithmetic": 2, "sorting": 2},
        train={"facts": 3, "reversing": 2, "arithmetic": 2, "sorting": 2},
        demonstrated={"facts": 2, "reversing": 1, "arithmetic": 2, "sorting": 2},
        pretrain_steps=3,
        sft={"learning_rate": 1e-3, "max_steps": 2, "batch_size": 8, "max_length": 96},
        reward={"learning_rate": 1e-3, "max_steps": 2, "batch_size": 8, "max_length": 96},
        dpo={"learning_rate": 1e-4, "max_steps": 2, "batch_size": 8, "max_length": 96, **_RPO},
        grpo={
            "learning_rate": 1e-5,
            "max_steps": 1,
            "batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 8,
            "reward_functions": ["toy_task"],
            "beta": 0.0,
        },
        ppo={
            "learning_rate": 1e-5,
            "max_steps": 1,
            "batch_size": 4,
            "max_completion_length": 8,
            "num_ppo_epochs": 1,
        },
        sft_samples=3,
        max_new_tokens=8,
        eval_samples=2,
        full_evals=False,
    ),
}


@dataclass
class DemoReport:
    """Every link of the round, for the summary table and for the test that checks each one."""

    scale: str
    project_id: int | None = None
    prompts: dict[str, int] = field(default_factory=dict)  # split -> prompts created this run
    base_checkpoint_id: int | None = None
    items_created: Counter = field(default_factory=Counter)  # kind -> items
    judgements: Counter = field(default_factory=Counter)  # kind -> simulated judgements
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> id/hash/rows
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> id/status/checkpoint
    checkpoints: dict[str, int] = field(default_factory=dict)  # role (base, sft, ...) -> id
    evals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # role -> runs
    task_scores: dict[str, float] = field(default_factory=dict)  # policy role -> TASK_SCORE
    task_kinds: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> kind -> "k/n"
    task_n: int = 0  # held-out prompts the task score is measured on
    # role -> kind -> sampled accuracy (mean of eval_samples samples at T=1)
    sampled_kinds: dict[str, dict[str, float]] = field(default_factory=dict)
    # Each stage against its parent on the same held-out prompts: role, parent, and per group
    # (learnable, unlearnable, all) the paired greedy and sampled differences and McNemar's p.
    paired: list[dict[str, Any]] = field(default_factory=list)
    reward_judgement: dict[str, Any] = field(default_factory=dict)
    ppo_decision: str = ""
    online_prompts: dict[str, Any] = field(default_factory=dict)
    split_checks: dict[str, Any] = field(default_factory=dict)
    next_round: dict[str, Any] = field(default_factory=dict)  # round one's comparisons
    round_two: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    # Stage -> CPU seconds of this process (every thread; jobs and evaluations run here): unlike
    # wall time, it hardly depends on what else the machine is doing.
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)
    load_average: tuple[float, float, float] | None = None  # 1/5/15-minute, at the end

    def summary(self) -> str:
        lines = [f"Demo loop ({self.scale}) — project #{self.project_id} {PROJECT_NAME!r}"]
        lines.append(
            f"  prompts      train {self.prompts.get('train', 0)} "
            f"({self.prompts.get('no-demonstration', 0)} without a demonstration), test "
            f"{self.prompts.get('test', 0)} (created this run)"
        )
        lines.append(f"  items        {dict(self.items_created)}")
        lines.append(f"  judgements   {dict(self.judgements)} (simulated)")
        for kind, snap in self.snapshots.items():
            lines.append(
                f"  snapshot     {kind:<10} #{snap['id']} {snap['hash'][:12]} rows {snap['rows']}"
            )
        for kind, job in self.jobs.items():
            lines.append(
                f"  job          {kind:<10} #{job['id']} {job['status']:<9} "
                f"-> checkpoint #{job['checkpoint_id']} {job['checkpoint'] or job['error']}"
            )
            # Measured by the trainer on the snapshot's held-out rows (the test prompts' labels).
            held_out = {
                name.removeprefix("eval_"): value
                for name, value in job["metrics"].items()
                if name in HELD_OUT_METRICS
            }
            if held_out:
                lines.append(
                    f"  {'':<12} {'':<10} held out: "
                    + ", ".join(f"{name} {value:.3f}" for name, value in held_out.items())
                )
        lines.append("")
        lines.append(f"  {'checkpoint':<12} {'id':>4}  {'task score':>10}  evaluations")
        for role, checkpoint_id in self.checkpoints.items():
            score = self.task_scores.get(role)
            shown = f"{score:.3f}" if score is not None else "-"
            runs = self.evals.get(role, [])
            ok = sum(run["status"] == RunStatus.SUCCEEDED for run in runs)
            headline = ", ".join(
                f"{run['task']} {run['metric']}={run['value']:.3f}"
                for run in runs
                if run["metric"] and run["suite"] in ("generative", "reward_accuracy")
            )
            lines.append(
                f"  {role:<12} {checkpoint_id:>4}  {shown:>10}  {ok}/{len(runs)} ok  {headline}"
            )
            if role in self.task_kinds:
                kinds = ", ".join(f"{k} {v}" for k, v in self.task_kinds[role].items())
                sampled = ", ".join(
                    f"{k} {v:.3f}" for k, v in self.sampled_kinds.get(role, {}).items()
                )
                lines.append(f"  {'':<12} {'':>4}  {'':>10}  greedy right by kind: {kinds}")
                lines.append(f"  {'':<12} {'':>4}  {'':>10}  sampled accuracy by kind: {sampled}")
        lines.append(f"  ({TASK_SCORE}; {self.task_n} held-out prompts)")
        lines.append("")
        lines.extend(self.paired_table())
        lines.append("")
        judgement = self.reward_judgement
        if judgement:
            lines.append(
                f"  reward model  held-out pairs {judgement['pairs']}: accuracy "
                f"{judgement['accuracy']:.3f}, ECE {judgement['ece']:.3f}, Brier "
                f"{judgement['brier']:.3f}; best-of-{judgement['best_of']} vs a random sample "
                f"of {judgement['policy']} on held-out prompts: {judgement['best_of_n']} (all), "
                f"{judgement['best_of_n_learnable']} (learnable)"
            )
        lines.append(f"  ppo          {self.ppo_decision}")
        lines.append(f"  online       {self.online_prompts}")
        lines.append(f"  splits       {self.split_checks}")
        lines.append(f"  next round   {self.next_round}")
        lines.append(f"  round two    {self.round_two}")
        lines.append("")
        lines.extend(self.timing_table())
        lines.append("")
        lines.extend(self.links())
        return "\n".join(lines)

    def links(self, site: str = "") -> list[str]:
        """Where to look in the app once it runs (`make demo` starts it on PORT, 8000)."""
        from django.urls import reverse

        site = site or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
        lines = ["  open in the app:"]
        if self.project_id is not None:
            records = reverse("feedback:records", args=[self.project_id])
            board = reverse("evals:leaderboard", args=[self.project_id])
            lines.append(f"    records      {site}{records}")
            lines.append(f"    leaderboard  {site}{board}?simulated=1  (the annotators' votes)")
        dashboard = reverse("evals:dashboard")
        if self.project_id is not None:  # opens on the toy task's score across the checkpoints
            dashboard += f"?project={self.project_id}"
        lines.append(f"    dashboard    {site}{dashboard}")
        compare = reverse("evals:eval-compare")
        final = "round two" if "round two" in self.checkpoints else None
        for after, before in (("sft", "base"), ("dpo", "sft"), (final, "sft")):
            if after in self.checkpoints and before in self.checkpoints:
                a, b = self.checkpoints[before], self.checkpoints[after]
                lines.append(f"    compare      {site}{compare}?a={a}&b={b}  ({after} vs {before})")
        for role, checkpoint_id in self.checkpoints.items():
            page = reverse("modeling:checkpoint", args=[checkpoint_id])
            lines.append(f"    checkpoint   {site}{page}  ({role})")
        return lines

    def paired_table(self) -> list[str]:
        """Each stage against its parent: mean difference [95% CI] on the same prompts."""
        lines = [
            f"  {'stage vs parent':<18} {'prompts':<18} {'greedy diff [95% CI]':>26} "
            f"{'McNemar p':>9}  {'sampled diff [95% CI]':>26}"
        ]
        for row in self.paired:
            for group, result in row["groups"].items():
                stage = f"{row['role']} vs {row['parent']}"
                lines.append(
                    f"  {stage:<18} {group + ' ' + str(result['n']):<18} "
                    f"{result['greedy']:>26} {result['mcnemar_p']:>9.3g}  {result['sampled']:>26}"
                )
        return lines

    def timing_table(self) -> list[str]:
        lines = [f"  {'stage':<14} {'wall s':>8} {'cpu s':>8}"]
        for name, wall in self.stage_seconds.items():
            lines.append(f"  {name:<14} {wall:>8.1f} {self.stage_cpu_seconds.get(name, 0):>8.1f}")
        total_wall, total_cpu = (
            sum(self.stage_seconds.values()),
            sum(self.stage_cpu_seconds.values()),
        )
        lines.append(f"  {'total':<14} {total_wall:>8.1f} {total_cpu:>8.1f}")
        if self.load_average is not None:
            lines.append(
                "  load average at the end: " + ", ".join(f"{v:.2f}" for v in self.load_average)
            )
        return lines
