"""Reward-model training, ours against TRL's ``RewardTrainer`` (current release), alternating in one run.

    python -m bench reward_vs_trl                    # SmolLM2-135M-Instruct backbone
    python -m bench reward_vs_trl --model tiny       # quick mode

Same preference pairs, backbone, max length (256), batch (8 pairs), epochs and held-out split for both.
Two comparisons, each ours then TRL in a fresh process:
- ``full``: the same trainable parameters (every weight), float32, lr 1e-4 with 5 % warmup and linear
  decay, margins in the loss, no gradient checkpointing;
- ``default``: each library's own default: ours ``reward.trainable: top`` (the top 4 blocks, final norm
  and head, lr 3e-4, bf16 autocast where the CPU has native bf16, the frozen blocks' output cached once:
  that pass counts in our training time), as in params.yaml; TRL's ``RewardConfig()`` (full fine-tune,
  lr 1e-4, gradient checkpointing and bf16 on).
Pairs: the demo task's 240 customer-support prompts, each with six replies assembled from stock phrases
(friendly or curt opening, on- or off-topic body, a closing or a cut-off) and the best and worst by the
demo's gold annotator as chosen / rejected (margin = their gold gap); held out by prompt (20 %).
Reports pairs/s of the training loop (model loading and tokenisation excluded for both), peak RSS and
held-out accuracy (each library's own evaluation). Writes ``bench/results/reward_vs_trl[_tiny].json``
and the matching rows of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from bench import harness

TRL_REQUIREMENT = "trl==1.16.0"
COMMON = {"max_length": 256, "batch_size": 8, "epochs": 1, "seed": 0, "eval_fraction": 0.2}

OPENERS = ["Thanks for reaching out!", "I'm so sorry about this.", "Happy to help.", "Ugh.", "Not my problem.", ""]
BODIES = [
    "About your {topic}: I have checked it and will fix it today.",
    "Please send your order number and I will look into the {topic} right away.",
    "Our store opens at nine.",
    "I do not know anything about that.",
    "{topic} {topic} {topic} {topic}",
]
CLOSERS = ["Have a great day!", "Let me know if there is anything else.", "Whatever.", "and then", ""]


def make_pairs(path: Path, n_prompts: int | None, seed: int = 0) -> dict:
    """Write ``pairs.jsonl`` (prompt, chosen, rejected, margin) labelled by the demo's gold annotator."""
    from components.demo_task import gold, load_prompts

    rng = random.Random(seed)
    prompts = [p["prompt"] for p in load_prompts()][:n_prompts]
    rows = []
    for prompt in prompts:
        words = [w.strip("?.,!\"'").lower() for w in prompt.split() if len(w) > 4]
        topic = " ".join(rng.sample(words, min(2, len(words)))) or "order"
        replies = {
            " ".join(x for x in (rng.choice(OPENERS), rng.choice(BODIES).format(topic=topic), rng.choice(CLOSERS)) if x)
            for _ in range(6)
        }
        ranked = sorted(replies, key=lambda r: -gold.score(prompt, r))
        best, worst = gold.score(prompt, ranked[0]), gold.score(prompt, ranked[-1])
        if len(ranked) >= 2 and best - worst >= 0.05:
            rows.append(
                {"prompt": prompt, "chosen": ranked[0], "rejected": ranked[-1], "margin": round(best - worst, 6)}
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"prompts": len(prompts), "pairs": len(rows)}


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


def worker_ours(work: Path, mode: str, model: str, threads: int | None) -> dict:
    threads = harness.set_threads(threads)
    from components.config.reward import RewardConfig
    from components.models.reward.trainer import train_reward

    if mode == "full":  # float32 like TRL's run in this mode; no frozen blocks to cache
        extra = {"trainable": "all", "lr": 1e-4, "bf16": False}
    else:  # params.yaml's defaults: top 4 blocks, bf16 autocast where native, frozen-block cache
        extra = {"trainable": "top", "train_layers": 4, "lr": 3e-4}
    cfg = RewardConfig(backbone=model, warmup_ratio=0.05, use_margin=True, log_every=1000, **COMMON, **extra)
    result = train_reward(work / "pairs.jsonl", cfg, work / f"ours-{mode}", work / f"metrics-{mode}", project_root=work)
    train = result.metrics["train"]
    return {
        "pairs": train["pairs"],
        "epochs": train["epochs"],
        # the one-off pass that caches the frozen blocks' output is part of training's cost
        "train_seconds": train["seconds"] + train.get("frozen_cache_seconds", 0.0),
        "frozen_cache_seconds": train.get("frozen_cache_seconds", 0.0),
        "trainable_params": train["trainable_params"],
        "eval_accuracy": result.eval_accuracy,
        "eval_pairs": result.metrics["eval"].get("pairs"),
        "torch_threads": threads,
    }


def worker_trl(work: Path, mode: str, model: str, threads: int | None) -> dict:
    import torch

    harness.set_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    spec = json.loads((work / "spec.json").read_text())
    split = json.loads((work / "split.json").read_text())
    rows = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]

    def dataset(idx: list[int]) -> Dataset:
        # Conversational format, so TRL applies the same chat template as ours.
        return Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": rows[i]["prompt"]}],
                    "chosen": [{"role": "assistant", "content": rows[i]["chosen"]}],
                    "rejected": [{"role": "assistant", "content": rows[i]["rejected"]}],
                    "margin": rows[i]["margin"],
                }
                for i in idx
            ]
        )

    tok = AutoTokenizer.from_pretrained(spec["backbone_dir"])
    net = AutoModelForSequenceClassification.from_pretrained(spec["backbone_dir"], num_labels=1, dtype=torch.float32)
    common = {
        "output_dir": str(work / f"trl-{mode}"),
        "per_device_train_batch_size": COMMON["batch_size"],
        "per_device_eval_batch_size": 16,
        "num_train_epochs": COMMON["epochs"],
        "max_length": COMMON["max_length"],
        "seed": COMMON["seed"],
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1000,
        "disable_tqdm": True,
        "use_cpu": not torch.cuda.is_available(),
    }
    if mode == "full":
        args = RewardConfig(
            **common,
            learning_rate=1e-4,
            warmup_steps=0.05,  # transformers 5: a float below 1 is a fraction of the steps (was warmup_ratio)
            lr_scheduler_type="linear",
            weight_decay=0.0,
            max_grad_norm=1.0,
            gradient_checkpointing=False,
            bf16=False,
        )
    else:
        args = RewardConfig(**common)  # TRL's defaults: lr 1e-4, gradient checkpointing, bf16
    trainer = RewardTrainer(
        model=net,
        args=args,
        train_dataset=dataset(split["train"]),
        eval_dataset=dataset(split["eval"]),
        processing_class=tok,
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    ev = trainer.evaluate()
    return {
        "pairs": len(trainer.train_dataset),
        "epochs": COMMON["epochs"],
        "train_seconds": seconds,
        "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "eval_accuracy": ev.get("eval_accuracy"),
        "eval_pairs": len(split["eval"]),
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16": args.bf16,
        "learning_rate": args.learning_rate,
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="reward_vs_trl", out="reward_vs_trl.json", anchor=True)
    ap.add_argument("--prompts", type=int, default=None, help="demo prompts used (default: all 240)")
    ap.add_argument("--modes", default="full,default", help="comma list of full, default")
    ap.add_argument("--pairs", type=int, default=1, help="ours/TRL run pairs per mode, alternating")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_trl

        def one() -> dict:
            out = fn(args.work, args.mode, args.model, args.threads)
            return {**out, "pairs_per_s": out["pairs"] * out["epochs"] / out["train_seconds"]}

        return harness.worker(args, one)

    from components.models.base_model import resolve_model_dir
    from components.models.reward.pairs import read_pairs, split_by_prompt

    trl_python = args.anchor_python or harness.anchor_env("trl-latest", TRL_REQUIREMENT)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    modes = [m for m in args.modes.split(",") if m]
    runs: list[dict] = []

    def show(run: dict) -> None:
        print(
            f"  {run['pairs_per_s']:.2f} pairs/s ({run['train_seconds']:.1f} s for {run['pairs']} pairs), "
            f"peak RSS {run['peak_rss_gib']:.2f} GiB, held-out accuracy {run['eval_accuracy']}",
            flush=True,
        )

    with harness.workdir("reward-vs-trl") as tmp:
        work = Path(tmp)
        data = make_pairs(work / "pairs.jsonl", args.prompts)
        pairs = read_pairs(work / "pairs.jsonl")
        # The same split ours makes internally (by prompt, seeded), handed to TRL explicitly.
        train_idx, eval_idx = split_by_prompt(pairs, COMMON["eval_fraction"], COMMON["seed"])
        split = {"train": [int(i) for i in train_idx], "eval": [int(i) for i in eval_idx]}
        (work / "split.json").write_text(json.dumps(split))
        (work / "spec.json").write_text(json.dumps({"backbone_dir": str(resolve_model_dir(args.model))}))
        for mode in modes:
            print(f"mode {mode}:", flush=True)
            extra = ["--mode", mode, "--model", args.model]
            extra += ["--threads", str(args.threads)] if args.threads else []
            done = harness.alternate(
                "reward_vs_trl",
                {"ours": sys.executable, "trl": str(trl_python)},
                work,
                pairs=args.pairs,
                argv=lambda w, p, extra=extra: extra,
                env=env,
                after=show,
            )
            runs += [{**r, "mode": mode} for r in done]
    summary = {}
    for mode in modes:
        ours = [r for r in runs if r["who"] == "ours" and r["mode"] == mode]
        trl = [r for r in runs if r["who"] == "trl" and r["mode"] == mode]
        ratios = [o["pairs_per_s"] / t["pairs_per_s"] for o, t in zip(ours, trl)]
        summary[mode] = {"ratios": ratios, "ours": ours, "trl": trl}
    tiny = args.model == "tiny"
    out = {
        "benchmark": "reward_vs_trl",
        "what": "reward-model training loop pairs/s, ours vs TRL RewardTrainer",
        "device": "cpu",
        **harness.context(trl_python, ("trl",)),
        "model": args.model,
        "data": data,
        "split": {k: len(v) for k, v in split.items()},
        "config": COMMON,
        "ratios": {m: s["ratios"] for m, s in summary.items()},
        "runs": runs,
    }
    path = args.out
    if tiny and path == harness.RESULTS / "reward_vs_trl.json":
        path = path.with_name("reward_vs_trl_tiny.json")
    harness.write_results(path, out)
    print(json.dumps(out["ratios"], indent=2))
    if args.no_table:
        return

    def fmt(rs: list[dict], label: str) -> str:
        sps = "/".join(f"{r['pairs_per_s']:.2f}" for r in rs)
        acc = "/".join(f"{r['eval_accuracy']:.3f}" for r in rs)
        return (
            f"{label}: {sps} pairs/s; peak RSS {max(r['peak_rss_gib'] for r in rs):.1f} GiB; "
            f"held-out accuracy {acc} ({rs[0]['eval_pairs']} pairs)"
        )

    cond = (
        f"CPU (float32 unless said), {harness.machine()['cpu_count']} cores, torch threads {runs[0]['torch_threads']}"
    )
    cond += f"; {args.conditions}" if args.conditions else ""
    labels = {
        "full": ("all weights train, lr 1e-4", "all weights train, lr 1e-4, no gradient checkpointing"),
        "default": (
            "default: top 4 blocks + head, lr 3e-4, bf16, frozen-block cache",
            "default RewardConfig: full, grad. checkpointing, bf16",
        ),
    }
    for mode, s in summary.items():
        ratios = s["ratios"]
        ratio = sorted(ratios)[len(ratios) // 2]
        flags = ["--model", args.model, "--modes", mode, "--pairs", str(args.pairs)]
        flags += ["--prompts", str(args.prompts)] if args.prompts else []
        harness.update_row(
            f"Reward model vs TRL {out['versions']['anchor_env']['trl']} RewardTrainer, {mode} ({args.model})",
            [
                cond + f"; {out['split']['train']} train pairs x {COMMON['epochs']} epoch, batch 8, max length 256",
                fmt(s["ours"], labels[mode][0]),
                fmt(s["trl"], labels[mode][1]),
                f"**{ratio:.2f}x** pairs/s",
                harness.command("reward_vs_trl", flags),
                f"`{harness.results_path(path)}`",
            ],
        )


if __name__ == "__main__":
    main()
