"""Multiple-choice and generative evaluation speed against lm-evaluation-harness, shipped tasks.

    .venv/bin/python bench/eval_tasks_throughput.py                          # every shipped task
    .venv/bin/python bench/eval_tasks_throughput.py --tasks facts_mc,toy_qa_gen --repeats 3
    .venv/bin/python bench/eval_tasks_throughput.py --model var/models/tiny --repeats 5

Timed runs on a shared machine hold the bench lock:
`flock /tmp/veredicto-bench.lock .venv/bin/python bench/eval_tasks_throughput.py --repeats 5`.

Issue #19's second goal, under the perplexity goal's rules (bench/eval_throughput.py): on a
CPU, never slower than lm-eval's HF backend at any of its batch sizes (1, its default; 8;
`auto`), with the same results. For every shipped task (evals.ml.shipped_tasks) the same model
object and the same requests go through both:

- Multiple choice: ours is evals.ml.evaluate_mc at its default batch size (64 rows on a CPU,
  each pass at most 512 positions: evals.ml.lm.CPU_DEFAULT_ROWS), all of it
  (chat template, encode_pair, loglikelihood_tokens, acc/acc_norm). lm-eval's side is
  HFLM(pretrained=model).loglikelihood on the identical (context, continuation) strings our
  evaluation scores: the item's prompt through the chat template (the shipped tasks are chat
  tasks; HFLM.apply_chat_template, once per item, as lm-eval's evaluator renders a document)
  and target_delimiter + choice, which it tokenizes itself (_encode_pair); the bench checks
  that it gets our strings and our token ids. Both sides' timed runs include rendering the
  prompts. Agreement: every per-choice log-likelihood to 1e-6 relative (|a - b| <= 1e-6 *
  max(1, |b|)), and acc/acc_norm computed from lm-eval's numbers as lm-eval's multiple_choice
  task does equal evaluate_mc's. Tokens counted: the tokens of every request, context +
  continuation (what is scored, or read as its condition), the same for both sides.
- Generative: ours is evals.ml.evaluate_generative at its defaults (greedy, max_new_tokens
  32, the batch automatic: every prompt up to 64 at once, fewer if their KV cache would pass
  2 GiB; evals.ml.generation_batch_size). lm-eval's side is HFLM.generate_until on the same
  prompt strings (chat template applied by HFLM.apply_chat_template in the timed run, checked
  equal to ours) with {"until": task.stop, "max_gen_toks": 32, "do_sample": False}.
  Agreement: the same output text for every prompt, and the same score (task.scorer).
  Tokens counted: generated tokens, as each prompt generates them alone (a batch of one, greedy,
  up to and including the token that ends it: EOS or the token that completes a stop string,
  at most max_new_tokens), found once, untimed. Those runs alone are a third check of the
  outputs. Rows that finished early but keep their place in a batch are not counted.

Each contestant runs once untimed (warm-up: the head probe, allocator, lazy imports), once
more untimed to count its passes, then --repeats times, alternating, all on --threads torch
threads (default 1, as eval_throughput.py: one thread per process keeps CPU time a measure of
work on a shared machine). Printed: the median wall and CPU seconds, tokens per second of
each, and the ratio of ours to each lm-eval batch size in tokens per CPU second, lm-eval's
default (1) first. `auto` is what HFLM(batch_size="auto") picks (64 on a CPU with memory to
spare): found once, untimed, and then timed at that size, as eval_throughput.py does.
"passes" and "positions" count the decoder's forward calls and the token positions they
computed (rows x width, padding included) in the counting run, from a hook on the decoder
body: they explain the times.

Each task's block also prints the load average before and after its timed runs, and the share
of the machine's CPU that other processes took meanwhile (/proc/stat busy time less this
process's own CPU time): figures taken while others took a large share are not worth much.

The model is the project's tiny Llama, built here (loop.tiny.build_tiny_model, --pretrain-steps,
default the project's 150, so that answers end at EOS as the shipped model's do) or loaded from
--model. Nothing is written but the model, in a temporary directory removed afterwards.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.eval_throughput import lm_eval_batches  # noqa: E402

MC_TOLERANCE = 1e-6  # per-choice log-likelihood, relative (absolute below |ll| = 1)


# --- machine load -----------------------------------------------------------------------------


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class LoadMeter:
    """Load average before and after, and the share of all cores that other processes took."""

    def __enter__(self) -> LoadMeter:
        self.load_before, self.started = _loadavg(), time.perf_counter()
        self.ticks, self.cpu = _machine_ticks(), _own_cpu()
        return self

    def __exit__(self, *exc) -> None:
        seconds = time.perf_counter() - self.started
        busy, total = _machine_ticks()
        cores = os.cpu_count() or 1
        capacity = seconds * cores
        busy_share = (busy - self.ticks[0]) / max(1, total - self.ticks[1])
        own = _own_cpu() - self.cpu
        self.load_after = _loadavg()
        self.seconds = seconds
        self.other_share = max(0.0, busy_share - own / capacity)
        self.idle_share = 1.0 - busy_share

    def line(self) -> str:
        return (
            f"load average {self.load_before:.2f} -> {self.load_after:.2f}; over the "
            f"{self.seconds:.0f} s of timed runs other processes took "
            f"{100 * self.other_share:.0f}% of the {os.cpu_count()} cores "
            f"(idle {100 * self.idle_share:.0f}%)"
        )


# --- counting the model's work ------------------------------------------------------------------


class PassCounter:
    """Forward calls of the decoder body and the token positions they computed (rows x width,
    padding included): both ours (which calls the body directly) and lm-eval (the whole model)
    go through it."""

    def __init__(self, model):
        self.body = model.get_decoder()

    def __enter__(self) -> PassCounter:
        self.passes = self.positions = 0

        def count(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs["inputs_embeds"]
            self.passes += 1
            self.positions += ids.shape[0] * ids.shape[1]

        self.handle = self.body.register_forward_pre_hook(count, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# --- timing ---------------------------------------------------------------------------------------


def timed(contestants: dict, repeats: int, model) -> dict:
    """Every contestant twice untimed (a warm-up, then a run counting its passes), then
    `repeats` times, alternating. Returns name -> {"wall", "cpu" (medians), "walls", "cpus",
    "result", "passes", "positions"}; result is the last run's."""
    out = {}
    for name, fn in contestants.items():
        fn()  # warm-up: the first call also probes the model (evals.ml.lm._body_and_head)
        with PassCounter(model) as counter:
            fn()
        out[name] = {
            "walls": [],
            "cpus": [],
            "passes": counter.passes,
            "positions": counter.positions,
        }
    for _ in range(repeats):
        for name, fn in contestants.items():  # alternate, so that load changes hit all alike
            started, started_cpu = time.perf_counter(), time.process_time()
            result = fn()
            out[name]["walls"].append(time.perf_counter() - started)
            out[name]["cpus"].append(time.process_time() - started_cpu)
            out[name]["result"] = result
    for entry in out.values():
        entry["wall"] = statistics.median(entry["walls"])
        entry["cpu"] = statistics.median(entry["cpus"])
    return out


def hflm_at(model, tokenizer, labels: list[str]) -> dict:
    """label -> (batch size, HFLM at that size); "auto" at the size HFLM(batch_size="auto")
    finds, found once here, untimed (see eval_throughput.py)."""
    from lm_eval.models.huggingface import HFLM

    out = {}
    for label in labels:
        if label == "auto":
            size = HFLM(pretrained=model, tokenizer=tokenizer, batch_size="auto")
            size = size._detect_batch_size()
        else:
            size = int(label)
        out[label] = (size, HFLM(pretrained=model, tokenizer=tokenizer, batch_size=size))
    return out


# --- multiple choice ------------------------------------------------------------------------------


def bench_mc(model, tokenizer, task, hflms: dict, args) -> dict:
    import numpy as np
    from lm_eval.api.instance import Instance

    import evals.ml.multiple_choice as mc
    from evals.ml import evaluate_mc
    from evals.ml.lm import encode_pair

    def lm_eval_requests(hflm) -> tuple[list, list[str], list[str]]:
        """The requests as lm-eval builds them: the prompt through HFLM.apply_chat_template
        (once per item, as its evaluator renders a document's context) for chat tasks, then
        one loglikelihood Instance per choice."""
        contexts, continuations = [], []
        for item in task.items:
            context = item.prompt
            if task.chat:
                context = hflm.apply_chat_template([{"role": "user", "content": item.prompt}])
            for choice in item.choices:
                contexts.append(context)
                continuations.append(f"{task.target_delimiter}{choice}")
        requests = [
            Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
            for i, (c, x) in enumerate(zip(contexts, continuations, strict=True))
        ]
        return requests, contexts, continuations

    some_hflm = next(iter(hflms.values()))[1]
    requests, contexts, continuations = lm_eval_requests(some_hflm)
    ours_contexts = [
        mc.mc_prompt(tokenizer, task, item.prompt) for item in task.items for _ in item.choices
    ]
    pairs = [encode_pair(tokenizer, c, x) for c, x in zip(contexts, continuations, strict=True)]
    same_tokens = ours_contexts == contexts and all(
        some_hflm._encode_pair(c, x) == pair
        for c, x, pair in zip(contexts, continuations, pairs, strict=True)
    )

    recorded: list[list[float]] = []
    scorer = mc.loglikelihood_tokens

    def recording(*a, **kw):  # evaluate_mc's per-choice numbers, for the agreement check
        scores = scorer(*a, **kw)
        recorded.append(scores)
        return scores

    def ours():
        recorded.clear()
        metrics = evaluate_mc(
            model, tokenizer, task, **({"batch_size": args.batch_size} if args.batch_size else {})
        )
        return metrics, list(recorded[0])

    def theirs(hflm):
        def run():
            requests, _, _ = lm_eval_requests(hflm)
            lls = [ll for ll, _ in hflm.loglikelihood(requests, disable_tqdm=True)]
            acc, acc_norm, position = [], [], 0
            for item in task.items:  # lm-eval's multiple_choice process_results
                item_lls = np.array(lls[position : position + len(item.choices)])
                position += len(item.choices)
                lengths = np.array([float(len(choice)) for choice in item.choices])
                acc.append(float(np.argmax(item_lls) == item.answer))
                acc_norm.append(float(np.argmax(item_lls / lengths) == item.answer))
            return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm))}, lls

        return run

    contestants = {"ours": ours}
    for label, (_, hflm) in hflms.items():
        contestants[f"lm_eval {label}"] = theirs(hflm)
    mc.loglikelihood_tokens = recording
    try:
        with LoadMeter() as load:
            runs = timed(contestants, args.repeats, model)
    finally:
        mc.loglikelihood_tokens = scorer

    metrics, ours_lls = runs["ours"]["result"]
    agreement = {}
    for label in hflms:
        their_metrics, their_lls = runs[f"lm_eval {label}"]["result"]
        diffs = [abs(a - b) for a, b in zip(ours_lls, their_lls, strict=True)]
        rels = [d / max(1.0, abs(b)) for d, b in zip(diffs, their_lls, strict=True)]
        agreement[label] = {
            "max_abs": max(diffs),
            "max_rel": max(rels),
            "ll_ok": max(rels) <= MC_TOLERANCE,
            "metrics_ok": their_metrics["acc"] == metrics["acc"]
            and their_metrics["acc_norm"] == metrics["acc_norm"],
            "metrics": their_metrics,
        }
    return {
        "kind": "multiple choice",
        "items": len(task.items),
        "requests": len(requests),
        "tokens": sum(len(c) + len(x) for c, x in pairs),
        "token_what": "context+continuation tokens",
        "same_tokens": same_tokens,
        "chat": task.chat,
        "runs": runs,
        "load": load,
        "agreement": agreement,
        "metrics": metrics,
    }


# --- generative -----------------------------------------------------------------------------------


def solo_generations(model, tokenizer, task, max_new_tokens: int) -> tuple[list[int], list[str]]:
    """Greedy generation of each prompt alone: its token count (up to and including the token
    that ends it) and its output, as evaluate_generative cuts it."""
    import torch

    from evals.ml.generative import _prompts, cut_at_stop
    from modeling.ml.generation import stop_token_ids, until_stop

    _, _, encoded = _prompts(model, tokenizer, task, None, max_new_tokens)
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    counts, outputs = [], []
    with torch.inference_mode():
        for ids in encoded:
            input_ids = torch.tensor([ids])
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                stop_strings=task.stop or None,
                tokenizer=tokenizer if task.stop else None,
                eos_token_id=stops or None,
                pad_token_id=pad_id,
            )
            new = generated[0, len(ids) :].tolist()
            counts.append(len(new))  # a batch of one: nothing after its end
            text = tokenizer.decode(until_stop(new, stops), skip_special_tokens=True)
            outputs.append(cut_at_stop(text, task.stop))
    return counts, outputs


def bench_generative(model, tokenizer, task, hflms: dict, args) -> dict:
    from lm_eval.api.instance import Instance

    from evals.ml import evaluate_generative
    from evals.ml.generative import _prompts, score_output

    gen_kwargs = {"until": list(task.stop), "max_gen_toks": args.max_new_tokens, "do_sample": False}

    def lm_eval_requests(hflm) -> list:
        """The prompts as lm-eval builds them (HFLM.apply_chat_template for chat tasks), one
        generate_until Instance each."""
        prompts = [
            hflm.apply_chat_template([{"role": "user", "content": item.prompt}])
            if task.chat
            else item.prompt
            for item in task.items
        ]
        return [
            Instance(request_type="generate_until", doc={}, arguments=(p, dict(gen_kwargs)), idx=i)
            for i, p in enumerate(prompts)
        ]

    _, prompts, _ = _prompts(model, tokenizer, task, None, args.max_new_tokens)
    requests = lm_eval_requests(next(iter(hflms.values()))[1])
    same_prompts = [r.arguments[0] for r in requests] == prompts
    counts, solo = solo_generations(model, tokenizer, task, args.max_new_tokens)

    def ours():
        kwargs = {"max_new_tokens": args.max_new_tokens}
        if args.batch_size:
            kwargs["batch_size"] = args.batch_size
        result = evaluate_generative(model, tokenizer, task, **kwargs)
        return result[task.scorer], [s["output"] for s in result["samples"]]

    def theirs(hflm):
        def run():
            outputs = hflm.generate_until(lm_eval_requests(hflm), disable_tqdm=True)
            correct = [
                score_output(task.scorer, out, item.target)
                for out, item in zip(outputs, task.items, strict=True)
            ]
            return sum(correct) / len(correct), outputs

        return run

    contestants = {"ours": ours}
    for label, (_, hflm) in hflms.items():
        contestants[f"lm_eval {label}"] = theirs(hflm)
    with LoadMeter() as load:
        runs = timed(contestants, args.repeats, model)

    score, outputs = runs["ours"]["result"]
    agreement = {}
    for label in hflms:
        their_score, their_outputs = runs[f"lm_eval {label}"]["result"]
        differ = sum(a != b for a, b in zip(outputs, their_outputs, strict=True))
        agreement[label] = {
            "differ": differ,
            "score": their_score,
            "ok": differ == 0 and their_score == score,
        }
    return {
        "kind": "generative",
        "items": len(task.items),
        "requests": len(requests),
        "tokens": sum(counts),
        "token_what": "generated tokens",
        "solo_differ": sum(a != b for a, b in zip(outputs, solo, strict=True)),
        "same_prompts": same_prompts,
        "chat": task.chat,
        "runs": runs,
        "load": load,
        "agreement": agreement,
        "score": score,
        "scorer": task.scorer,
        "max_tokens": max(counts),
    }


# --- report ---------------------------------------------------------------------------------------


def report(name: str, out: dict, hflms: dict, args) -> tuple[str, float, bool]:
    """Print one task's block; return its SUMMARY part, its worst CPU ratio and agreement."""
    tokens = out["tokens"]
    head = (
        f"  {name} ({out['kind']}, {out['items']} items, {out['requests']} requests, "
        f"{tokens:,} {out['token_what']}{', chat template' if out['chat'] else ''}), "
        f"median of {args.repeats}"
    )
    if out["kind"] == "generative":
        head += f", max_new_tokens {args.max_new_tokens} (longest answer {out['max_tokens']})"
    print(head)
    print(
        f"    {'':<38}{'wall s':>8}{'tokens/s':>10}{'CPU s':>8}{'tokens/CPU s':>14}"
        f"{'passes':>8}{'positions':>11}"
    )
    ours_label = "evaluate_mc" if out["kind"] == "multiple choice" else "evaluate_generative"
    from evals.ml.lm import CPU_DEFAULT_ROWS

    default = str(CPU_DEFAULT_ROWS) if out["kind"] == "multiple choice" else "auto"
    labels = {"ours": f"ours, {ours_label}, batch {args.batch_size or default}"}
    for label, (size, _) in hflms.items():
        labels[f"lm_eval {label}"] = f"lm-eval HFLM, batch {label}" + (
            f" ({size})" if label == "auto" else ""
        )
    for key, label in labels.items():
        r = out["runs"][key]
        print(
            f"    {label:<38}{r['wall']:>8.3f}{tokens / r['wall']:>10.0f}{r['cpu']:>8.3f}"
            f"{tokens / r['cpu']:>14.0f}{r['passes']:>8}{r['positions']:>11,}"
        )
    ours = out["runs"]["ours"]
    parts, worst, all_ok = [], math.inf, True
    for label in hflms:
        theirs = out["runs"][f"lm_eval {label}"]
        work = theirs["cpu"] / ours["cpu"]
        wall = theirs["wall"] / ours["wall"]
        worst = min(worst, work)
        agree = out["agreement"][label]
        if out["kind"] == "multiple choice":
            ok = agree["ll_ok"] and agree["metrics_ok"]
            text = (
                f"per-choice ll max diff {agree['max_abs']:.1e} abs, {agree['max_rel']:.1e} rel; "
                f"acc {agree['metrics']['acc']:.4f} acc_norm {agree['metrics']['acc_norm']:.4f}"
                f" ({'same' if agree['metrics_ok'] else 'DIFFERENT'})"
            )
        else:
            ok = agree["ok"]
            same = "same" if agree["score"] == out["score"] else "DIFFERENT"
            text = (
                f"outputs differing {agree['differ']}/{out['requests']}; {out['scorer']} "
                f"{agree['score']:.4f} ({same})"
            )
        all_ok &= ok
        default = " (its default)" if label == "1" else ""
        print(
            f"    vs lm-eval at batch {label}{default}: {work:.2f}x CPU time, {wall:.2f}x wall; "
            f"{text}"
        )
        parts.append(f"{work:.2f}x at {label}")
    if out["kind"] == "multiple choice":
        m = out["metrics"]
        print(
            f"    ours: acc {m['acc']:.4f} acc_norm {m['acc_norm']:.4f}; lm-eval renders and "
            f"tokenizes the requests {'as ours does' if out['same_tokens'] else 'DIFFERENTLY'}"
        )
        all_ok &= out["same_tokens"]
    else:
        print(
            f"    ours: {out['scorer']} {out['score']:.4f}; outputs differing from each prompt "
            f"generated alone: {out['solo_differ']}/{out['requests']}; lm-eval renders the "
            f"prompts {'as ours does' if out['same_prompts'] else 'DIFFERENTLY'}"
        )
        all_ok &= out["same_prompts"]
    print(f"    {out['load'].line()}")
    summary = f"{name} {', '.join(parts)} ({'agree' if all_ok else 'DISAGREE'})"
    return summary, worst, all_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: build the tiny model)")
    parser.add_argument(
        "--pretrain-steps", type=int, help="when building (default: the project's 150)"
    )
    parser.add_argument("--tasks", help="comma-separated shipped task names (default: all)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="ours (default: evaluate_mc's, 64 on a CPU, and evaluate_generative's, automatic)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="generative (default 32)")
    parser.add_argument(
        "--lm-eval-batch",
        type=lm_eval_batches,
        default="1,8,auto",
        help="lm-eval's batch sizes, comma-separated: numbers and 'auto' (default 1,8,auto)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    args = parser.parse_args()

    import torch
    import transformers

    from evals.ml import load_gen_task, load_mc_task, shipped_tasks
    from evals.ml.tasks import task_kind
    from loop.tiny import DEFAULT_PRETRAIN_STEPS, build_tiny_model
    from modeling.ml import load_causal_lm, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("lm-eval is not installed: pip install lm-eval==0.4.13 -c constraints.txt")
        return 1
    from importlib.metadata import version

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()

    tasks = shipped_tasks()
    if args.tasks:
        names = [n.strip() for n in args.tasks.split(",") if n.strip()]
        unknown = sorted(set(names) - set(tasks))
        if unknown:
            parser.error(f"unknown tasks {unknown}; shipped: {sorted(tasks)}")
        tasks = {n: tasks[n] for n in names}

    steps = DEFAULT_PRETRAIN_STEPS if args.pretrain_steps is None else args.pretrain_steps
    with tempfile.TemporaryDirectory(prefix="eval-tasks-throughput-") as tmp:
        path = args.model
        if path is None:
            path = str(Path(tmp, "tiny"))
            build_tiny_model(path, pretrain_steps=steps, seed=0)
        model = load_causal_lm(path, dtype=torch.float32).eval()
        tokenizer = load_tokenizer(path)

    print("eval_tasks_throughput")
    print(
        f"  machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), lm-eval {version('lm_eval')}"
    )
    print(
        f"  model: {args.model or f'tiny Llama built with {steps} pretraining steps'} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, fp32, CPU)"
    )
    hflms = hflm_at(model, tokenizer, args.lm_eval_batch)
    summary, worst, all_ok = [], math.inf, True
    for name, path in tasks.items():
        if task_kind(path) == "multiple_choice":
            out = bench_mc(model, tokenizer, load_mc_task(path), hflms, args)
        else:
            out = bench_generative(model, tokenizer, load_gen_task(path), hflms, args)
        part, task_worst, ok = report(name, out, hflms, args)
        summary.append(part)
        worst, all_ok = min(worst, task_worst), all_ok and ok
    met = worst >= 1.0 and all_ok
    print(
        f"SUMMARY: ours vs lm-eval {version('lm_eval')} HFLM, CPU time: {'; '.join(summary)}. "
        f"Goal never slower, same results: {'met' if met else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
