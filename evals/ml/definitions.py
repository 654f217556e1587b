"""What each metric means, in words a dashboard can show (tooltips) and docstrings can cite.

Plain strings with no imports, so the web process can read them without loading torch.
"""

PERPLEXITY_DEFINITION = (
    "Rolling log-likelihood as in lm-evaluation-harness (HFLM.loglikelihood_rolling): each text "
    "is tokenized without special tokens and cut into non-overlapping windows of the model's "
    "maximum length; the first window is prefixed with the BOS token (EOS if the tokenizer has "
    "no BOS) so that every token is predicted, and the last window is shifted left to keep a "
    "full context. Every token is scored exactly once. Over a text set, with LL the summed "
    "log-likelihood (natural log): word perplexity = exp(-LL / words), words counted as "
    "len(re.split(r'\\s+', text)) like lm-eval's wikitext task; byte perplexity = "
    "exp(-LL / UTF-8 bytes); bits per byte = -LL / bytes / ln 2. Lower is better."
)

STRIDED_PERPLEXITY_DEFINITION = (
    "Token perplexity with a sliding window (Hugging Face, 'Perplexity of fixed-length "
    "models'): the texts are joined with blank lines into one token stream; a window of the "
    "model's maximum length moves by `stride` tokens and scores only the tokens the previous "
    "window did not; with stride < max_length every token after the first is scored once, "
    "with at least max_length - stride tokens of context. token perplexity = exp(mean "
    "negative log-likelihood per scored token). A smaller stride gives more context and a "
    "lower, more accurate perplexity at more compute."
)

MULTIPLE_CHOICE_DEFINITION = (
    "Multiple choice as in lm-evaluation-harness: each choice is scored by the log-likelihood "
    "of target_delimiter + choice after the prompt. acc: the most likely choice is the answer. "
    "acc_norm: the same with each log-likelihood divided by the choice's length in characters. "
    "Standard errors are the sample standard error of the mean, sqrt(var / n) with var using "
    "n - 1 (lm-eval's mean_stderr)."
)

REWARD_ACCURACY_DEFINITION = (
    "Reward-model accuracy (RewardBench convention): the fraction of held-out preference pairs "
    "where the reward model scores the chosen reply strictly above the rejected one; a tie "
    "counts as wrong. Standard error: sample standard error of the mean (n - 1)."
)

WIN_RATE_DEFINITION = (
    "Win rate of a policy against a reference, judged by a reward model: for each prompt the "
    "policy wins if its reply scores higher than the reference's; ties (equal scores, e.g. "
    "identical replies) count half. 95% interval: Wilson score interval on (wins + ties / 2) "
    "out of n."
)

ARENA_DEFINITION = (
    "Bradley-Terry ratings as in FastChat (rating_systems.py compute_bt / "
    "compute_bootstrap_bt): maximum likelihood of P(A beats B) = 1 / (1 + 10^((R_B - R_A) / "
    "400)) over all votes, a tie counting as half a win for each side; ratings on the Elo scale "
    "(400 points per factor of 10 in odds, i.e. 400 * theta / ln 10 for natural-log strengths "
    "theta) with the reference model at 1000 (or the mean at 1000 when there is none). 95% "
    "intervals: 2.5th and 97.5th percentiles over bootstrap rounds that resample the votes "
    "with replacement. Rank = 1 + the number of models whose lower bound is above this "
    "model's upper bound."
)

# The metrics the demo loop records for each policy (evals.services.eval_run_record).
TOY_TASK = "toy-held-out"
TOY_TASK_METRICS = (
    "task_score", "task_score/learnable", "sampled_accuracy", "sampled_accuracy/learnable",
)  # fmt: skip
TOY_TASK_SCORE_DEFINITION = (
    "Toy task score (the demo loop's, loop/demo): greedy accuracy on all held-out prompts of the "
    "toy tasks (facts, reversing a word, sums, sorting a list), each reply graded by the strict "
    "checker (loop.toytask.is_correct: the reply must be the answer, nothing else). "
    "task_score/learnable: the same on the kinds the model can learn (facts and words, which "
    "the pretraining corpus holds). sampled_accuracy: each prompt's share of right answers "
    "among samples at temperature 1, averaged. 95% interval: Wilson score interval for the "
    "greedy scores, the mean ± 1.96 standard errors for the sampled ones. Higher is better."
)
