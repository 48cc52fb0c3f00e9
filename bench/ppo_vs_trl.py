"""PPO throughput, ours against TRL 1.12's ``trl.experimental.ppo.PPOTrainer``, alternating in one run.

    python -m bench ppo_vs_trl                       # SmolLM2-135M-Instruct, 3 steps per run, 2 pairs
    python -m bench ppo_vs_trl --model tiny          # quick mode (tiny random Llama)
    python -m bench ppo_vs_trl --device cuda         # on a GPU: bf16 autocast for both
    python -m bench ppo_vs_trl --bf16                # CPU, bf16 autocast for both (CPUs with native bf16)
    python -m bench ppo_vs_trl --device cuda --batch-size 128   # a GPU-sized configuration

Both trainers get the same policy weights, the same reward-model folder (a transformers
``AutoModelForSequenceClassification`` folder written by ``components.models.reward.model.RewardModel.save``),
the same prompts and the same PPO configuration: 16 prompts x 32 reply tokens per step, temperature 0.7,
2 PPO epochs x 2 minibatches of 8, micro-batch 4, LoRA r 16 / alpha 32 on every projection, lr 5e-4 with
linear decay, k1 KL, missing-EOS penalty 0.5. TRL runs in its own virtual environment
(``bench/.venv-anchors/trl-1.12``, same torch / transformers / peft versions, created on first use).

``--batch-size N`` (a GPU-sized configuration) gives both N prompts per step in 2 minibatches of N/2, one
micro-batch each; ``--static-cache`` sets ours' ``model.static_cache`` (default ``auto``: the static cache and a
CUDA graph for decoding on CUDA, the eager loop on the CPU), so one command can measure ours before (``off``) and
after (``on``) on the same card.

Runs alternate ours / TRL (``--pairs`` times), each in a fresh process, so peak RSS is per trainer. The
first step of every run is warm-up and left out of the throughput means. Writes
``bench/results/ppo_vs_trl[_tiny|_cuda].json`` and the matching row of ``docs/benchmarks.md``.
Known differences, kept because they are each library's design: TRL trains a separate value model
(a full copy of the backbone, all weights trainable, one optimizer with the policy's LoRA) and, with
gradient accumulation over the 16 samples, steps its optimizer once per two minibatches; ours reads
values from the policy's own trunk (a linear head) and steps once per minibatch. TRL's KL coefficient
is fixed at our initial 0.4; ours adapts it toward KL 4.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from bench import harness, trl_anchor
from bench.prompts import SYSTEM

CONFIG = {
    "batch_size": 16,
    "mini_batch_size": 8,
    "micro_batch_size": 4,
    "ppo_epochs": 2,
    "max_new_tokens": 32,
    "temperature": 0.7,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
    "learning_rate": 5e-4,
    "kl_coef": 0.4,
    "missing_eos_penalty": 0.5,
    "vf_coef": 0.1,
    "clip_range": 0.2,
    "clip_range_value": 0.2,
    "gamma": 1.0,
    "lam": 0.95,
    "adam_eps": 1e-5,
    "seed": 0,
}
PHASES = ("rollout", "forward", "score", "update")


# ---------------------------------------------------------------------------------------------
# Workers (one fresh process per run)
# ---------------------------------------------------------------------------------------------


def configure(batch_size: int) -> None:
    """The configuration for ``--batch-size``: 16 is the benchmark's own (micro-batch 4); another N gives both
    trainers N prompts per step, 2 minibatches of N/2, each one micro-batch."""
    if batch_size == 16:
        return
    if batch_size < 4 or batch_size % 2:
        raise SystemExit(f"--batch-size must be an even number >= 4, got {batch_size}")
    CONFIG.update(batch_size=batch_size, mini_batch_size=batch_size // 2, micro_batch_size=batch_size // 2)


def worker_ours(
    work: Path, steps: int, device: str, threads: int | None, bf16: bool, static_cache: str = "auto"
) -> dict:
    harness.set_threads(threads)
    from components.models.policy.train import run

    spec = trl_anchor.read_spec(work)
    ppo = {
        k: CONFIG[k]
        for k in (
            "batch_size",
            "mini_batch_size",
            "micro_batch_size",
            "ppo_epochs",
            "max_new_tokens",
            "temperature",
            "lora_r",
            "lora_alpha",
            "learning_rate",
            "missing_eos_penalty",
            "vf_coef",
            "clip_range",
            "clip_range_value",
            "gamma",
            "lam",
            "adam_eps",
            "seed",
        )
    }
    ppo.update(
        lora_target_modules=CONFIG["lora_target_modules"],
        init_kl_coef=CONFIG["kl_coef"],
        steps=steps,
        save_every=10_000,
        reward_model=str(work / "reward"),
        prompts="prompts.jsonl",
        bf16=bf16,
    )
    model = {"base": spec["policy"], "system_prompt": SYSTEM, "dtype": "float32", "static_cache": static_cache}
    result = run({"model": model, "policy": ppo}, work, export=False)
    rows = [
        {
            "step": r["step"],
            "seconds": r["time/step"],
            **{p: r[f"time/{p}"] for p in PHASES},
            "reply_tokens": r["val/response_length"] * CONFIG["batch_size"],
            "reward_score": r["objective/score_penalised"],
            "kl": r["objective/kl"],
        }
        for r in result.metrics
    ]
    return {
        "device": str(result.accelerator.device),
        "gpu": harness.gpu_name(),
        "torch_threads": harness.set_threads(None),
        "steps": rows,
    }


def worker_trl(work: Path, steps: int, device: str, threads: int | None, bf16: bool) -> dict:
    """TRL 1.12's PPOTrainer; phases are timed by wrapping the module's own functions."""
    import torch

    harness.set_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as mod

    spec = trl_anchor.read_spec(work)
    tok = trl_anchor.trl_tokenizer(spec["policy_dir"])
    dtype = torch.float32
    policy = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=dtype)
    policy.generation_config.pad_token_id = tok.pad_token_id
    reward = AutoModelForSequenceClassification.from_pretrained(str(work / "reward"), num_labels=1, dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(str(work / "reward"), num_labels=1, dtype=dtype)
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id
    ids = trl_anchor.prompt_ids(tok, trl_anchor.read_prompts(work))
    data = Dataset.from_dict({"input_ids": ids})
    c = CONFIG
    args = PPOConfig(
        output_dir=str(work / "trl-out"),
        per_device_train_batch_size=c["micro_batch_size"],
        gradient_accumulation_steps=c["batch_size"] // c["micro_batch_size"],
        num_mini_batches=c["batch_size"] // c["mini_batch_size"],
        num_ppo_epochs=c["ppo_epochs"],
        local_rollout_forward_batch_size=c["batch_size"],
        total_episodes=steps * c["batch_size"],
        response_length=c["max_new_tokens"],
        temperature=c["temperature"],
        learning_rate=c["learning_rate"],
        adam_epsilon=c["adam_eps"],
        kl_coef=c["kl_coef"],
        kl_estimator="k1",
        missing_eos_penalty=c["missing_eos_penalty"],
        stop_token="eos",
        vf_coef=c["vf_coef"],
        cliprange=c["clip_range"],
        cliprange_value=c["clip_range_value"],
        gamma=c["gamma"],
        lam=c["lam"],
        whiten_rewards=False,
        num_sample_generations=0,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=c["seed"],
        bf16=bf16,
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )
    peft = trl_anchor.lora_config(c)
    timer = trl_anchor.PhaseTimer(PHASES[:3], cuda=device == "cuda")
    mod.batch_generation = timer.wrap(mod.batch_generation, lambda *a, **k: "rollout")
    mod.forward = timer.wrap(mod.forward, lambda *a, **k: None if torch.is_grad_enabled() else "forward")
    mod.get_reward = timer.wrap(mod.get_reward, lambda model, *a, **k: "score" if model is reward else "forward")
    rows: list[dict] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t = timer.now()

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "objective/kl" in logs:
                self.last = logs

        def on_step_end(self, *a, **k):
            now = timer.now()
            step = timer.take()
            step["seconds"] = now - self.t
            step["update"] = step["seconds"] - sum(step[p] for p in PHASES[:3])
            logs = getattr(self, "last", {})
            step.update(
                step=len(rows) + 1,
                reply_tokens=float(rt[0]) if (rt := getattr(self, "tokens", None)) else float("nan"),
                reward_score=logs.get("objective/scores", float("nan")),
                kl=logs.get("objective/kl", float("nan")),
            )
            rows.append(step)
            self.t = timer.now()

    clock = Clock()
    # Reply lengths (to the first EOS, inclusive) from the trainer's own truncation function.
    original_truncate = mod.truncate_response

    def truncate(stop_id, pad_id, responses):
        out = original_truncate(stop_id, pad_id, responses)
        ended = (responses == stop_id).any(1)
        first = (responses == stop_id).float().argmax(1)
        lengths = torch.where(ended, first + 1, torch.full_like(first, responses.shape[1]))
        clock.tokens = [float(lengths.sum())]
        return out

    mod.truncate_response = truncate
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=data,
        eval_dataset=data,
        value_model=value,
        peft_config=peft,
        callbacks=[clock],
    )
    trainer.train()
    return {
        "device": str(trainer.accelerator.device),
        "gpu": harness.gpu_name(),
        "torch_threads": torch.get_num_threads(),
        "steps": rows,
    }


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------


def summarise(run: dict) -> dict:
    timed = run["steps"][1:] or run["steps"]
    seconds = sum(s["seconds"] for s in timed)
    last = run["steps"][-1]
    return {
        "samples_per_s": CONFIG["batch_size"] * len(timed) / seconds,
        "reply_tokens_per_s": sum(s["reply_tokens"] for s in timed) / seconds,
        "seconds_per_step": seconds / len(timed),
        "seconds_per_phase": {p: sum(s[p] for s in timed) / len(timed) for p in PHASES},
        "peak_rss_gib": run["peak_rss_gib"],
        "score_last": last["reward_score"],
        "kl_last": last["kl"],
        "samples_seen": CONFIG["batch_size"] * len(run["steps"]),
    }


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="ppo_vs_trl", out="ppo_vs_trl.json", device=True, anchor=True)
    ap.add_argument("--steps", type=int, default=None, help="PPO steps per run (default 3; tiny: 4)")
    ap.add_argument("--pairs", type=int, default=2, help="ours/TRL run pairs, alternating")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for both on the CPU (always on with cuda)")
    ap.add_argument("--collect", type=Path, default=None, help="report from the runs kept in DIR (BENCH_KEEP=DIR)")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per step (16: the benchmark's configuration)")
    ap.add_argument("--static-cache", choices=["auto", "on", "off"], default="auto", help="ours' model.static_cache")
    args = ap.parse_args(argv)
    configure(args.batch_size)
    tiny = args.model == "tiny"
    steps = args.steps or (4 if tiny else 3)
    if args.worker:
        bf16 = args.bf16 or args.device == "cuda"
        if args.worker == "ours":
            return harness.worker(
                args, lambda: worker_ours(args.work, steps, args.device, args.threads, bf16, args.static_cache)
            )
        return harness.worker(args, lambda: worker_trl(args.work, steps, args.device, args.threads, bf16))

    trl_python = args.anchor_python or harness.anchor_env(trl_anchor.TRL_ENV, trl_anchor.TRL_REQUIREMENT)
    if args.collect:
        runs = [json.loads(f.read_text()) for f in sorted(args.collect.glob("*-*.json"))]
        for run in runs:
            run["summary"] = summarise(run)
        return report(args, runs, len(runs[0]["steps"]), trl_python, tiny)
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    extra = ["--model", args.model, "--steps", str(steps), "--device", args.device]
    extra += ["--threads", str(args.threads)] if args.threads else []
    extra += ["--bf16"] if args.bf16 else []
    extra += ["--batch-size", str(args.batch_size), "--static-cache", args.static_cache]

    def clear(who: str, pair: int) -> None:
        for old in ("models", "metrics", "trl-out"):
            shutil.rmtree(work / old, ignore_errors=True)

    def show(run: dict) -> None:
        s = run["summary"] = summarise(run)
        print(
            f"  {s['samples_per_s']:.3f} samples/s, {s['seconds_per_step']:.1f} s/step "
            + ", ".join(f"{p} {v:.1f}" for p, v in s["seconds_per_phase"].items())
            + f", peak RSS {s['peak_rss_gib']:.2f} GiB, score {s['score_last']:.3f}, KL {s['kl_last']:.3f}",
            flush=True,
        )

    with harness.workdir("ppo-vs-trl") as tmp:
        work = Path(tmp)
        trl_anchor.prepare(work, args.model)
        sides = {"ours": sys.executable, "trl": str(trl_python)}
        runs = harness.alternate(
            "ppo_vs_trl", sides, work, pairs=args.pairs, argv=lambda w, p: extra, env=env, before=clear, after=show
        )
    report(args, runs, steps, trl_python, tiny)


def report(args: argparse.Namespace, runs: list[dict], steps: int, trl_python: Path, tiny: bool) -> None:
    """Write the JSON and the table row from finished runs (pairs with both sides only)."""
    pairs = {r["pair"] for r in runs if r["who"] == "ours"} & {r["pair"] for r in runs if r["who"] == "trl"}
    runs = [r for r in runs if r["pair"] in pairs]
    args.pairs = len(pairs)
    ours = [r["summary"] for r in runs if r["who"] == "ours"]
    trl = [r["summary"] for r in runs if r["who"] == "trl"]
    ratios = [o["samples_per_s"] / t["samples_per_s"] for o, t in zip(ours, trl)]
    med = harness.median
    out = {
        "benchmark": "ppo_vs_trl",
        "what": "samples/s of one PPO step (rollout + forward + score + update), ours vs TRL 1.12 PPOTrainer",
        "device": args.device,
        **harness.context(trl_python, ("trl",)),
        "model": args.model,
        "steps_per_run": steps,
        "warmup_steps_excluded": 1 if steps > 1 else 0,
        "config": CONFIG,
        "ratio_samples_per_s_per_pair": ratios,
        "ratio_median": med(ratios),
        "ours_samples_per_s": [o["samples_per_s"] for o in ours],
        "trl_samples_per_s": [t["samples_per_s"] for t in trl],
        "runs": runs,
    }
    path = args.out
    if path == harness.RESULTS / "ppo_vs_trl.json":  # the default: one file per kind of run
        suffix = "_tiny" if tiny else ""
        suffix += "_cuda" if args.device == "cuda" else "_bf16" if args.bf16 else ""
        suffix += f"_b{args.batch_size}" if args.batch_size != 16 else ""
        suffix += f"_static_{args.static_cache}" if args.static_cache != "auto" else ""
        path = path.with_name(f"ppo_vs_trl{suffix}.json")
    harness.write_results(path, out)
    print(json.dumps({k: out[k] for k in ("ratio_samples_per_s_per_pair", "ratio_median")}, indent=2))
    if args.no_table:
        return

    def fmt(rows: list[dict]) -> str:
        sps = "/".join(f"{r['samples_per_s']:.3f}" for r in rows)
        ph = med([r["seconds_per_step"] for r in rows])
        phases = ", ".join(f"{p} {med([r['seconds_per_phase'][p] for r in rows]):.1f}" for p in PHASES)
        return (
            f"{sps} samples/s ({med([r['reply_tokens_per_s'] for r in rows]):.0f} reply tok/s; "
            f"{ph:.1f} s/step: {phases}); peak RSS {max(r['peak_rss_gib'] for r in rows):.1f} GiB; "
            f"after {rows[0]['samples_seen']} samples score {med([r['score_last'] for r in rows]):.2f}, "
            f"KL {med([r['kl_last'] for r in rows]):.2f}"
        )

    dev = (
        f"GPU ({runs[0].get('gpu') or 'CUDA'}, bf16 autocast)"
        if args.device == "cuda"
        else "CPU (bf16 autocast, both)"
        if args.bf16
        else "CPU (float32)"
    )
    cond = f"{dev}, {harness.machine()['cpu_count']} cores, torch threads {runs[0]['torch_threads']}"
    cond += f"; {args.conditions}" if args.conditions else ""
    where = ", GPU" if args.device == "cuda" else ", CPU bf16" if args.bf16 else ""
    where += f", batch {args.batch_size}" if args.batch_size != 16 else ""
    where += f", static cache {args.static_cache}" if args.static_cache != "auto" else ""
    name = f"PPO vs TRL 1.12 PPOTrainer ({'tiny' if tiny else args.model}{where})"
    flags = ["--model", args.model, "--steps", str(steps), "--pairs", str(args.pairs)]
    flags += ["--bf16"] if args.bf16 and args.device == "cpu" else []
    flags += ["--device", args.device] if args.device != "cpu" else []
    flags += ["--batch-size", str(args.batch_size)] if args.batch_size != 16 else []
    flags += ["--static-cache", args.static_cache] if args.static_cache != "auto" else []
    harness.update_row(
        name,
        [
            cond,
            fmt(ours),
            fmt(trl),
            f"**{med(ratios):.2f}x** (pairs: {', '.join(f'{r:.2f}' for r in ratios)})",
            harness.command("ppo_vs_trl", flags),
            f"`{harness.results_path(path)}`",
        ],
    )


if __name__ == "__main__":
    main()
