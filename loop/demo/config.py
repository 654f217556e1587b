"""What one run of the demo loop is: its scale (`make demo`, CI) and its report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from evals.models import RunStatus

PROJECT_NAME = "Toy tasks (demo loop)"
BASE_NAME = "tiny-demo-base"
GUIDELINES = (
    "Toy questions with one right answer: arithmetic, sorting a list, reversing a word, facts. "
    "Prefer the reply that gives the right answer; write the answer alone as a demonstration."
)

# The trainers' metrics on the snapshots' held-out rows worth a line in the summary.
HELD_OUT_METRICS = ("eval_loss", "eval_accuracy", "eval_rewards/accuracies", "eval_rewards/margins")


@dataclass(frozen=True)
class DemoScale:
    """How big one round is. `demo` fits `make demo` in 15 minutes on 2 CPU cores; `ci` only has
    to prove every link in seconds (its numbers mean nothing)."""

    prompts: int  # toy prompts imported; test_fraction of them are held out (split=test)
    pretrain_steps: int  # when the base model has to be built
    sft: dict[str, Any]
    reward: dict[str, Any]
    dpo: dict[str, Any]
    ppo: dict[str, Any] | None  # None: no PPO job
    test_fraction: float = 0.2
    # Sampled replies per prompt, ranked with its demonstration (at most MAX_RANKED in all).
    base_samples: int = 2
    sft_samples: int = 3
    sample_temperature: float = 1.0
    max_new_tokens: int = 24  # toy answers are a few tokens
    overlap: int = 1
    annotators: int = 2
    noise: float = 0.1
    next_round_prompts: int = 20
    # The base model's default suites too (trained checkpoints always get theirs, run when their
    # job succeeds, so their evaluation time counts in the sft/reward/dpo stages).
    full_evals: bool = True
    seed: int = 0  # simulated annotators (this and +1), sampling and training jobs


SCALES: dict[str, DemoScale] = {
    "demo": DemoScale(
        # 400 train prompts and 100 held out for the score; each gets a demonstration and a
        # ranking of it with up to 5 distinct sampled replies (about 5 preference rows).
        prompts=500,
        # About 2.5 minutes on 2 idle cores (0.25 s a step), several times that on a busy machine.
        pretrain_steps=600,
        # The base model learnt right answers, near misses and hedges (loop/corpus.py);
        # SFT on the demonstrations only has to make the right habit the likely one.
        sft={"learning_rate": 3e-4, "epochs": 3, "batch_size": 16, "max_length": 128},
        # From the SFT checkpoint. Its held-out accuracy stays near 0.6 whatever the learning
        # rate (5e-5 to 3e-4 gave 0.57-0.62): telling a right answer from a wrong one needs
        # knowing it, which the tiny model often does not (arithmetic, sorting).
        reward={"learning_rate": 3e-4, "epochs": 2, "batch_size": 16, "max_length": 128},
        # 120 updates, about one epoch of the ~1,900 pairs of 500 prompts (each chosen reply is
        # in 4 or 5 of them). A fixed budget, not epochs: a full epoch of 1,200 prompts' 4,900
        # pairs (305 updates) undid what SFT had taught (reversed words right 43 -> 34 of 64),
        # 120 kept it (40 of 64). 5e-6 left DPO so close to SFT that all 100 same-seed
        # next-round pairs were identical.
        dpo={
            "learning_rate": 5e-5,
            "max_steps": 120,
            "batch_size": 16,
            "max_length": 128,
            "beta": 0.1,
        },
        # A short PPO run: 8 updates of 16 rollouts, answers being a few tokens long.
        ppo={
            "learning_rate": 1e-5,
            "max_steps": 8,
            "batch_size": 16,
            "max_completion_length": 16,
            "num_ppo_epochs": 2,
            "missing_eos_penalty": 1.0,
        },
        next_round_prompts=100,
    ),
    "ci": DemoScale(
        prompts=20,
        pretrain_steps=3,
        sft={"learning_rate": 1e-3, "max_steps": 2, "batch_size": 8, "max_length": 96},
        reward={"learning_rate": 1e-3, "max_steps": 2, "batch_size": 8, "max_length": 96},
        dpo={"learning_rate": 1e-4, "max_steps": 2, "batch_size": 8, "max_length": 96},
        ppo={
            "learning_rate": 1e-5,
            "max_steps": 1,
            "batch_size": 4,
            "max_completion_length": 8,
            "num_ppo_epochs": 1,
        },
        max_new_tokens=8,
        next_round_prompts=16,  # every train prompt: tiny steps leave most pairs identical
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
    task_scores: dict[str, float] = field(default_factory=dict)  # policy role -> accuracy
    task_kinds: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> kind -> "k/n"
    task_n: int = 0  # held-out prompts the task score is measured on
    next_round: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds
    # Stage -> CPU seconds of this process (every thread; jobs and evaluations run here): unlike
    # wall time, it hardly depends on what else the machine is doing.
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)
    load_average: tuple[float, float, float] | None = None  # 1/5/15-minute, at the end

    def summary(self) -> str:
        lines = [f"Demo loop ({self.scale}) — project #{self.project_id} {PROJECT_NAME!r}"]
        lines.append(
            f"  prompts      train {self.prompts.get('train', 0)}, test "
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
                lines.append(f"  {'':<12} {'':>4}  {'':>10}  right by kind: {kinds}")
        lines.append(f"  (task score: exact match on {self.task_n} held-out toy prompts, greedy)")
        lines.append(f"  next round   {self.next_round}")
        lines.append("")
        lines.extend(self.timing_table())
        return "\n".join(lines)

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
