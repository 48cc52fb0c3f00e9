"""GRPO, RLOO and DPO throughput, ours against TRL 1.12's ``GRPOTrainer`` / ``RLOOTrainer`` / ``DPOTrainer``,
alternating in one run.

    python -m bench optimisers_vs_trl --algorithm grpo                  # SmolLM2-135M-Instruct, 3 steps, 2 pairs
    python -m bench optimisers_vs_trl --algorithm dpo --model tiny      # quick mode (tiny random Llama)
    python -m bench optimisers_vs_trl --algorithm rloo --bf16           # CPU, bf16 autocast for both

Both trainers get the same policy weights, the same prompts (``bench/prompts.py``), and for GRPO / RLOO the same
reward-model folder (as ``ppo_vs_trl``: the backbone with a fresh scalar head, a plain transformers sequence
classifier). The configuration is ``params.yaml``'s ``policy`` section, read when the benchmark starts: 16 replies
per step (``batch_size``), ``k`` = ``policy.grpo.k`` / ``policy.rloo.k`` replies per prompt (TRL's
``num_generations``), minibatches of ``mini_batch_size`` (one optimizer step each; TRL: ``steps_per_generation`` =
``batch_size / mini_batch_size``), micro-batches of ``micro_batch_size`` (TRL's ``per_device_train_batch_size``,
gradient accumulation over the rest of a minibatch), 32 reply tokens, temperature 0.7, LoRA r 16 / alpha 32 on
every projection, the learning rate with linear decay, Adam epsilon, gradient clipping; GRPO: ``kl_coef`` as TRL's
``beta``, ``variant`` as its ``loss_type`` (std-scaled group advantages for ``grpo``), ``clip_range`` as
``epsilon``, ``epochs`` as ``num_iterations``; RLOO: the same clip, epochs and advantage whitening. DPO: 16 fixed
preference pairs written from the benchmark prompts (a helpful reply chosen, a curt one rejected), ``batch_size /
2`` = 8 pairs per step in minibatches of ``mini_batch_size / 2`` pairs, ``policy.dpo.beta`` and its loss
(``sigmoid`` or ``ipo``) as TRL's ``beta`` / ``loss_type``, the LoRA-less base model as the reference on both
sides. TRL runs in its own virtual environment (``bench/.venv-anchors/trl-1.12``, same torch / transformers / peft
versions, created on first use).

Runs alternate ours / TRL (``--pairs`` times), each in a fresh process, so peak RSS is per trainer. The first step
of every run is warm-up and left out of the throughput means. A step is one batch: 16 sampled replies (GRPO, RLOO)
or 8 pairs (DPO) and its ``batch_size / mini_batch_size`` optimizer steps, on both sides. Writes
``bench/results/optimisers_vs_trl_<algorithm>[_tiny][_bf16].json`` and the matching row of ``docs/benchmarks.md``.

Known differences, kept because they are each library's design:

- Sampling: ours samples a prompt's k replies from one pass over the prompt and keeps the sampling step's
  log-probs as the batch's "old" log-probs; TRL repeats each prompt k times in the generation batch and, with
  more than one optimizer step per batch, recomputes the old log-probs in a forward pass of its own.
- KL: ours' RLOO penalty coefficient is the KL controller's (adaptive from ``policy.init_kl_coef``); TRL's
  ``beta`` is fixed at that initial value. GRPO's ``kl_coef`` is fixed on both sides.
- Our online optimisers and DPO stop at a KL bound (``max_kl``; offline DPO samples replies to measure it); TRL
  has none, so the benchmark turns it off (``max_kl: null``) for ours. Ours subtracts
  ``missing_eos_penalty`` from scores; TRL's GRPO / RLOO have no such penalty, so it is 0 here.
- Scoring: ours scores the user turn and the reply with the reward model's own encoding (the score read at the
  reply's closing EOS, cut at 256 tokens); TRL renders the whole conversation, system prompt included, with the
  chat template and reads the score at its last token (the newline after the end of turn), so the two sides'
  scores differ even for the same replies.
- TRL 1.12 turns gradient checkpointing on by default; ours does not checkpoint, so the benchmark turns it off
  for TRL (memory is not what limits a 135M model).
- DPO: ours computes log-probs at the sampling temperature (``policy.temperature``), TRL at temperature 1; ours
  ends each reply with EOS, TRL with the chat template's end of turn; ours draws each step's pairs with
  replacement from a seeded sampler, TRL shuffles the 16 pairs per epoch. TRL's reference pass runs inside its
  loss (timed as ``forward`` by wrapping its adapter switch); ours runs it before the update, in the forward phase.
- Metrics: ``score`` is the reward model's raw score of the step's replies (ours ``objective/score``, TRL
  ``reward``), ``KL`` ours' mean summed k1 KL per reply (``objective/kl``) and TRL's ``kl`` (GRPO: the k3
  estimate, RLOO: k1, both averaged per token, not summed per reply); DPO reports the implicit-reward accuracy
  and margin of the last step (``dpo/accuracy``, ``dpo/margin``; TRL ``rewards/accuracies``, ``rewards/margins``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from bench import harness, trl_anchor
from bench.prompts import PROMPTS, SYSTEM

ALGORITHMS = ("grpo", "rloo", "dpo")
PHASES = ("rollout", "forward", "score", "update")
SHARED_KEYS = (
    "batch_size",
    "mini_batch_size",
    "micro_batch_size",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "learning_rate",
    "lr_decay",
    "adam_eps",
    "max_grad_norm",
    "init_kl_coef",
    "seed",
)
TRL_CLASSES = {"grpo": ("GRPOConfig", "GRPOTrainer"), "rloo": ("RLOOConfig", "RLOOTrainer"), "dpo": None}


def config(algorithm: str, params: Path = harness.REPO / "params.yaml") -> dict:
    """The benchmark's configuration: ``params.yaml``'s shared policy settings and ``algorithm``'s own section."""
    import yaml

    policy = yaml.safe_load(params.read_text(encoding="utf-8"))["policy"]
    out = {k: policy[k] for k in SHARED_KEYS}
    out[algorithm] = {k: v for k, v in policy[algorithm].items() if k not in ("pairs", "kl_every", "kl_prompts")}
    out[algorithm]["max_kl"] = None  # TRL has no KL bound (module docstring)
    out["missing_eos_penalty"] = 0.0
    if out["batch_size"] % out["mini_batch_size"] or out["mini_batch_size"] % out["micro_batch_size"]:
        raise SystemExit(f"{params}: policy.batch_size / mini_batch_size / micro_batch_size must divide evenly")
    return out


def per_step(algorithm: str, c: dict) -> int:
    """Samples a step trains on: sampled replies (GRPO, RLOO), preference pairs (DPO)."""
    return c["batch_size"] // 2 if algorithm == "dpo" else c["batch_size"]


def pairs_rows() -> list[dict[str, str]]:
    """16 fixed preference pairs on the benchmark prompts: a helpful reply chosen, a curt one rejected."""
    rows = []
    for i, p in enumerate(PROMPTS):
        topic = p.rstrip(".?!").lower()
        rows.append(
            {
                "prompt": p,
                "chosen": f"Sorry about that! I can help with this: {topic}. Please share your order number and "
                "I will sort it out for you today.",
                "rejected": ["Not my problem.", "Read the FAQ.", "Try again later.", "No."][i % 4],
            }
        )
    return rows


def write_pairs(work: Path) -> None:
    """The pairs as our versioned pairs file (``pairs.parquet``) and as TRL's rows (``pairs.jsonl``)."""
    import pandas as pd

    from components.data.feedback.io import write_parquet
    from components.data.feedback.schema import PAIRS, conform

    rows = pairs_rows()
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = pd.DataFrame(
        [
            {**r, "source": "bench", "annotator": "bench", "created_at": pd.Timestamp("2026-12-01", tz="UTC")}
            for r in rows
        ]
    )
    write_parquet(conform(frame, PAIRS), work / "pairs.parquet", PAIRS)


# ---------------------------------------------------------------------------------------------
# Workers (one fresh process per run)
# ---------------------------------------------------------------------------------------------


def worker_ours(work: Path, algorithm: str, steps: int, threads: int | None, bf16: bool) -> dict:
    harness.set_threads(threads)
    from components.models.policy.train import run

    spec = trl_anchor.read_spec(work)
    c = spec["config"]
    policy = {k: c[k] for k in SHARED_KEYS}
    policy.update(
        algorithm=algorithm,
        **{algorithm: c[algorithm]},
        missing_eos_penalty=c["missing_eos_penalty"],
        steps=steps,
        save_every=10_000,
        reward_model=str(work / "reward"),
        prompts="prompts.jsonl",
        bf16=bf16,
    )
    if algorithm == "dpo":
        policy["dpo"] = {**policy["dpo"], "pairs": "pairs.parquet"}
    model = {"base": spec["policy"], "system_prompt": SYSTEM, "dtype": "float32"}
    result = run({"model": model, "policy": policy}, work, export=False)
    n = per_step(algorithm, c)
    rows = []
    for r in result.metrics:
        row = {"step": r["step"], "seconds": r["time/step"], **{p: r[f"time/{p}"] for p in PHASES}}
        row["reply_tokens"] = r["val/response_length"] * c["batch_size"]
        row["kl"] = r["objective/kl"]
        if algorithm == "dpo":
            row.update(accuracy=r["dpo/accuracy"], margin=r["dpo/margin"])
        else:
            row["reward_score"] = r["objective/score"]
        rows.append(row)
    return {
        "device": str(result.accelerator.device),
        "torch_threads": harness.set_threads(None),
        "samples_per_step": n,
        "steps": rows,
    }


def worker_trl(work: Path, algorithm: str, steps: int, device: str, threads: int | None, bf16: bool) -> dict:
    """TRL 1.12's trainer for ``algorithm``; phases are timed by wrapping the trainer's own methods, and a step is
    ``batch_size / mini_batch_size`` optimizer steps (one batch, as ours)."""
    import torch

    harness.set_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    spec = trl_anchor.read_spec(work)
    c = spec["config"]
    tok = trl_anchor.trl_tokenizer(spec["policy_dir"])
    policy = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=torch.float32)
    policy.generation_config.pad_token_id = tok.pad_token_id
    timer = trl_anchor.PhaseTimer(PHASES[:3], cuda=device == "cuda")
    optimizer_steps = c["batch_size"] // c["mini_batch_size"]  # per batch, as ours
    common = dict(
        output_dir=str(work / "trl-out"),
        gradient_accumulation_steps=c["mini_batch_size"] // c["micro_batch_size"],
        max_steps=steps * optimizer_steps,
        learning_rate=c["learning_rate"],
        lr_scheduler_type="linear" if c["lr_decay"] else "constant",
        warmup_steps=0,
        adam_epsilon=c["adam_eps"],
        max_grad_norm=c["max_grad_norm"],
        gradient_checkpointing=False,  # TRL 1.12's default is on; ours does not checkpoint (module docstring)
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=c["seed"],
        bf16=bf16,
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )
    peft = trl_anchor.lora_config(c)
    if algorithm == "dpo":
        import contextlib

        from trl import DPOConfig, DPOTrainer
        from trl.trainer import dpo_trainer as mod

        d = c["dpo"]
        rows = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]
        data = Dataset.from_dict(
            {
                "prompt": [trl_anchor.chat_prompt(r["prompt"]) for r in rows],
                "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
                "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
            }
        )
        args = DPOConfig(
            **common,
            per_device_train_batch_size=c["micro_batch_size"] // 2,  # pairs; TRL stacks chosen and rejected
            beta=d["beta"],
            loss_type=[d["loss"]],
            max_length=None,
        )
        original = mod.use_adapter

        @contextlib.contextmanager
        def timed_adapter(*a, **kw):  # the reference pass runs inside the adapter switch
            t = timer.now()
            with original(*a, **kw):
                yield
            timer.spent["forward"] += timer.now() - t

        mod.use_adapter = timed_adapter
        make = lambda cb: DPOTrainer(  # noqa: E731
            model=policy, args=args, train_dataset=data, processing_class=tok, peft_config=peft, callbacks=[cb]
        )
    else:
        import trl

        config_name, trainer_name = TRL_CLASSES[algorithm]
        cls = getattr(trl, trainer_name)
        a = c[algorithm]
        reward = AutoModelForSequenceClassification.from_pretrained(str(work / "reward"), num_labels=1)
        reward.config.pad_token_id = tok.pad_token_id
        data = Dataset.from_dict({"prompt": [trl_anchor.chat_prompt(p) for p in trl_anchor.read_prompts(work)]})
        own = dict(
            per_device_train_batch_size=c["micro_batch_size"],
            steps_per_generation=optimizer_steps,
            num_generations=a["k"],
            max_completion_length=c["max_new_tokens"],
            temperature=c["temperature"],
            top_k=c["top_k"],
            top_p=c["top_p"],
            num_iterations=a["epochs"],
        )
        if algorithm == "grpo":
            own.update(
                beta=a["kl_coef"],
                loss_type=a["variant"],
                scale_rewards="group" if a["variant"] == "grpo" else "none",
                epsilon=a["clip_range"],
            )
        else:
            clip = a["clip_range"]
            own.update(
                beta=c["init_kl_coef"],
                normalize_advantages=a["whiten_advantages"],
                epsilon=1e9 if clip is None else clip,  # null: plain REINFORCE, no clip
            )
        args = getattr(trl, config_name)(**common, **own)
        cls._generate = timer.wrap(cls._generate, lambda *a, **k: "rollout")
        cls._calculate_rewards = timer.wrap(cls._calculate_rewards, lambda *a, **k: "score")
        cls._get_per_token_logps_and_entropies = timer.wrap(
            cls._get_per_token_logps_and_entropies, lambda *a, **k: None if torch.is_grad_enabled() else "forward"
        )
        make = lambda cb: cls(  # noqa: E731
            model=policy,
            reward_funcs=reward,
            args=args,
            train_dataset=data,
            processing_class=tok,
            reward_processing_classes=tok,
            peft_config=peft,
            callbacks=[cb],
        )
    out: list[dict] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.logs: dict = {}
            self.optimizer_steps_done = 0
            self.t = timer.now()

        def on_log(self, _args, _state, _control, logs=None, **k):
            self.logs = {**self.logs, **(logs or {})}

        def on_step_end(self, *a, **k):
            self.optimizer_steps_done += 1
            if self.optimizer_steps_done % optimizer_steps:
                return
            now = timer.now()
            step = timer.take()
            step["seconds"] = now - self.t
            step["update"] = step["seconds"] - sum(step[p] for p in PHASES[:3])
            lg, nan = self.logs, float("nan")
            step.update(step=len(out) + 1, kl=lg.get("kl", nan))
            if algorithm == "dpo":
                step.update(accuracy=lg.get("rewards/accuracies", nan), margin=lg.get("rewards/margins", nan))
                step["reply_tokens"] = nan
            else:
                step["reward_score"] = lg.get("reward", nan)
                step["reply_tokens"] = lg.get("completions/mean_length", nan) * c["batch_size"]
            out.append(step)
            self.logs = {}
            self.t = timer.now()

    clock = Clock()
    trainer = make(clock)
    trainer.train()
    return {
        "device": str(trainer.accelerator.device),
        "torch_threads": torch.get_num_threads(),
        "samples_per_step": per_step(algorithm, c),
        "steps": out,
    }


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------


def summarise(run: dict) -> dict:
    timed = run["steps"][1:] or run["steps"]
    seconds = sum(s["seconds"] for s in timed)
    last, n = run["steps"][-1], run["samples_per_step"]
    out = {
        "samples_per_s": n * len(timed) / seconds,
        "reply_tokens_per_s": sum(s["reply_tokens"] for s in timed) / seconds,
        "seconds_per_step": seconds / len(timed),
        "seconds_per_phase": {p: sum(s[p] for s in timed) / len(timed) for p in PHASES},
        "peak_rss_gib": run["peak_rss_gib"],
        "kl_last": last["kl"],
        "samples_seen": n * len(run["steps"]),
    }
    for key in ("reward_score", "accuracy", "margin"):
        if key in last:
            out[f"{key}_last"] = last[key]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="optimisers_vs_trl", out="optimisers_vs_trl.json", device=True, anchor=True)
    ap.add_argument("--algorithm", choices=ALGORITHMS, required=True, help="the optimiser both sides run")
    ap.add_argument("--steps", type=int, default=None, help="steps (batches) per run (default 3; tiny: 4)")
    ap.add_argument("--pairs", type=int, default=2, help="ours/TRL run pairs, alternating")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for both on the CPU (always on with cuda)")
    args = ap.parse_args(argv)
    tiny = args.model == "tiny"
    steps = args.steps or (4 if tiny else 3)
    if args.worker:
        bf16 = args.bf16 or args.device == "cuda"
        if args.worker == "ours":
            return harness.worker(args, lambda: worker_ours(args.work, args.algorithm, steps, args.threads, bf16))
        return harness.worker(
            args, lambda: worker_trl(args.work, args.algorithm, steps, args.device, args.threads, bf16)
        )

    trl_python = args.anchor_python or harness.anchor_env(trl_anchor.TRL_ENV, trl_anchor.TRL_REQUIREMENT)
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    extra = ["--algorithm", args.algorithm, "--model", args.model, "--steps", str(steps), "--device", args.device]
    extra += ["--threads", str(args.threads)] if args.threads else []
    extra += ["--bf16"] if args.bf16 else []
    unit = "pairs" if args.algorithm == "dpo" else "samples"

    def clear(who: str, pair: int) -> None:
        for old in ("models", "metrics", "trl-out"):
            shutil.rmtree(work / old, ignore_errors=True)

    def show(run: dict) -> None:
        s = run["summary"] = summarise(run)
        print(
            f"  {s['samples_per_s']:.3f} {unit}/s, {s['seconds_per_step']:.1f} s/step "
            + ", ".join(f"{p} {v:.1f}" for p, v in s["seconds_per_phase"].items())
            + f", peak RSS {s['peak_rss_gib']:.2f} GiB, KL {s['kl_last']:.3f}",
            flush=True,
        )

    cfg = config(args.algorithm)
    with harness.workdir("optimisers-vs-trl") as tmp:
        work = Path(tmp)
        trl_anchor.prepare(work, args.model, config=cfg)
        if args.algorithm == "dpo":
            write_pairs(work)
        sides = {"ours": sys.executable, "trl": str(trl_python)}
        runs = harness.alternate(
            "optimisers_vs_trl",
            sides,
            work,
            pairs=args.pairs,
            argv=lambda w, p: extra,
            env=env,
            before=clear,
            after=show,
        )
    report(args, runs, steps, cfg, trl_python, tiny)


def report(args: argparse.Namespace, runs: list[dict], steps: int, cfg: dict, trl_python: Path, tiny: bool) -> None:
    """Write the JSON and the table row from finished runs."""
    algo, unit = args.algorithm, "pairs" if args.algorithm == "dpo" else "samples"
    ours = [r["summary"] for r in runs if r["who"] == "ours"]
    trl = [r["summary"] for r in runs if r["who"] == "trl"]
    ratios = [o["samples_per_s"] / t["samples_per_s"] for o, t in zip(ours, trl)]
    med = harness.median
    trainer = {"grpo": "GRPOTrainer", "rloo": "RLOOTrainer", "dpo": "DPOTrainer"}[algo]
    out = {
        "benchmark": "optimisers_vs_trl",
        "algorithm": algo,
        "what": f"{unit}/s of one {algo.upper()} step (a batch and its optimizer steps), ours vs TRL 1.12 {trainer}",
        "device": args.device,
        **harness.context(trl_python, ("trl",)),
        "model": args.model,
        "conditions": args.conditions,
        "bf16": args.bf16 or args.device == "cuda",
        "steps_per_run": steps,
        "warmup_steps_excluded": 1 if steps > 1 else 0,
        "config": cfg,
        "ratio_per_pair": ratios,
        "ratio_mean": sum(ratios) / len(ratios),
        "ratio_median": med(ratios),
        f"ours_{unit}_per_s": [o["samples_per_s"] for o in ours],
        f"trl_{unit}_per_s": [t["samples_per_s"] for t in trl],
        "runs": runs,
    }
    path = args.out
    if path == harness.RESULTS / "optimisers_vs_trl.json":  # the default: one file per algorithm and kind of run
        suffix = f"_{algo}" + ("_tiny" if tiny else "")
        suffix += "_cuda" if args.device == "cuda" else "_bf16" if args.bf16 else ""
        path = path.with_name(f"optimisers_vs_trl{suffix}.json")
    harness.write_results(path, out)
    print(json.dumps({k: out[k] for k in ("ratio_per_pair", "ratio_mean")}, indent=2))
    if args.no_table:
        return

    def fmt(rows: list[dict]) -> str:
        rate = "/".join(f"{r['samples_per_s']:.3f}" for r in rows) + f" {unit}/s ("
        if algo != "dpo":
            rate += f"{med([r['reply_tokens_per_s'] for r in rows]):.0f} reply tok/s; "
        phases = ", ".join(f"{p} {med([r['seconds_per_phase'][p] for r in rows]):.1f}" for p in PHASES)
        rate += f"{med([r['seconds_per_step'] for r in rows]):.1f} s/step: {phases})"
        if algo == "dpo":
            last = [("accuracy", "accuracy_last", 2), ("margin", "margin_last", 3)]
        else:
            last = [("score", "reward_score_last", 2), ("KL", "kl_last", 2)]
        quality = ", ".join(f"{label} {med([r[key] for r in rows]):.{d}f}" for label, key, d in last)
        peak = max(r["peak_rss_gib"] for r in rows)
        return f"{rate}; peak RSS {peak:.1f} GiB; after {rows[0]['samples_seen']} {unit} {quality}"

    dev = (
        f"GPU ({runs[0].get('gpu') or 'CUDA'}, bf16 autocast)"
        if args.device == "cuda"
        else "CPU (bf16 autocast, both)"
        if args.bf16
        else "CPU (float32)"
    )
    cond = f"{dev}, {harness.machine()['cpu_count']} cores, torch threads {runs[0]['torch_threads']}"
    a = cfg.get(algo, {})
    if algo == "dpo":
        sizes = f"{cfg['batch_size'] // 2} pairs a step"
    else:
        sizes = f"{cfg['batch_size']} replies a step, k {a['k']}"
    cond += f"; {sizes}, minibatch {cfg['mini_batch_size']} rows, micro-batch {cfg['micro_batch_size']} rows"
    cond += f"; {args.conditions}" if args.conditions else ""
    where = ", GPU" if args.device == "cuda" else ", CPU bf16" if args.bf16 else ""
    name = f"{algo.upper()} vs TRL 1.12 {trainer} ({'tiny' if tiny else args.model}{where})"
    flags = ["--algorithm", algo, "--model", args.model, "--steps", str(steps), "--pairs", str(len(ratios))]
    flags += ["--bf16"] if args.bf16 and args.device == "cpu" else []
    flags += ["--device", args.device] if args.device != "cpu" else []
    harness.update_row(
        name,
        [
            cond,
            fmt(ours),
            fmt(trl),
            f"**{sum(ratios) / len(ratios):.2f}x** {unit}/s, mean (pairs: {', '.join(f'{r:.2f}' for r in ratios)})",
            harness.command("optimisers_vs_trl", flags),
            f"`{harness.results_path(path)}`",
        ],
    )


if __name__ == "__main__":
    main()
