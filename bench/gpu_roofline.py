"""Where the PPO step's GPU work sits against the card's two ceilings (matrix rate and memory bandwidth).

    python -m bench gpu_roofline                                # SmolLM2-135M-Instruct on the first CUDA GPU
    python -m bench gpu_roofline --model PATH --random-init     # the folder's architecture, random weights
    python -m bench gpu_roofline --model tiny --cpu-smoke --out /tmp/r.json   # the code path on the CPU
    python -m bench gpu_roofline --static-cache off --micro-batches "" --out bench/results/gpu_roofline_static_off.json

Measures, on one CUDA GPU, each figure the median of timed repeats (CUDA events) after warm-up:

1. the ceilings: a bf16 8192^3 matrix product on random data (TFLOP/s) and a large device-to-device copy
   (GB/s, bytes read plus bytes written);
2. the update phase's model-FLOPs utilisation: one PPO micro-step as ``components.models.policy`` runs it (LoRA r 16 on
   every projection, float32 weights, bf16 autocast, forward + backward of the reply log-probs) for several
   micro-batch sizes. Counted FLOPs: 2 per matmul weight per token forward, 2 more backward (activation
   gradients only: the base weights are frozen; LoRA's own FLOPs, under 3 %, are left out), plus attention's
   QK^T and AV (4 L T^2 d forward, 8 L T^2 d backward). MFU = counted FLOPs / time / measured matrix rate;
3. generation tokens/s with ``components.models.generation.generate`` as the rollout runs it (bf16 autocast, frozen
   weights cast once; ``--static-cache``: the rollout's ``model.static_cache``, default ``auto`` = the static cache
   and a CUDA graph per shape bucket on CUDA, ``off`` = the eager loop) for several batch sizes, against the
   memory-bandwidth bound: each decode step must
   read the bf16 weights once (embedding rows excepted) and the batch's KV cache, so
   bound tokens/s = batch x bandwidth / bytes per step;
4. for each, the share of its wall time the GPU spends running kernels (torch profiler): far under 100 % means
   the host (Python, dispatch, kernel launches) sets the pace, not the GPU.

Writes ``bench/results/gpu_roofline.json``. GPU only; the PPO-vs-TRL comparison on the GPU is
``python -m bench ppo_vs_trl --device cuda``.
"""

from __future__ import annotations

import statistics
import sys
import time

from bench import harness
from bench.prompts import PROMPTS, SYSTEM

DEVICE = "cuda"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed_ms(fn, *, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of ``fn()``, the device's queued work included."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def _matmul_ms(n: int) -> float:
    import torch

    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    return timed_ms(lambda: a @ b)


def _copy_ms(numel: int) -> float:
    import torch

    src = torch.randn(numel, device=DEVICE)
    dst = torch.empty_like(src)
    return timed_ms(lambda: dst.copy_(src))


def busy_fraction(fn) -> float | None:
    """Share of ``fn()``'s wall time the GPU spends running kernels (torch profiler; None on the CPU)."""
    if DEVICE != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t
    kernels_us = sum(e.self_device_time_total for e in prof.key_averages())
    return kernels_us / 1e6 / wall


def ceilings() -> dict:
    import torch

    n = 8192 if DEVICE == "cuda" else 512
    tflops = 2 * n**3 / (_matmul_ms(n) / 1e3) / 1e12
    numel = 2**28 if DEVICE == "cuda" else 2**22  # 1 GiB of float32 on a GPU
    gbs = 2 * numel * 4 / (_copy_ms(numel) / 1e3) / 1e9
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": tflops, "copy_gb_per_s": gbs, "matmul_n": n, "copy_bytes": numel * 4}


def load_policy(model: str, random_init: bool):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from components.models.base_model import resolve_model_dir

    folder = resolve_model_dir(model)
    tok = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if random_init:
        torch.manual_seed(0)
        policy = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)), dtype=torch.float32)
    else:
        policy = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return policy.to(DEVICE).eval().requires_grad_(False), tok, str(folder)


def matmul_params(policy) -> int:
    """Weights that take part in a matrix product per token: every Linear (the tied LM head included)."""
    import torch

    return sum(m.weight.numel() for m in policy.modules() if isinstance(m, torch.nn.Linear))


def update_mfu(policy, tok, peak_tflops: float, micro_batches: list[int], seq_len: int, reply_len: int) -> list:
    import torch
    from peft import LoraConfig, get_peft_model

    from components.models.policy import ppo_math
    from components.models.precision import autocast

    n = matmul_params(policy)  # counted before get_peft_model adds LoRA's own Linear layers
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
    lora = get_peft_model(policy, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
    lora.train()
    cfg = policy.config
    layers, d = cfg.num_hidden_layers, cfg.hidden_size
    rows = []
    for mb in micro_batches:
        g = torch.Generator(device=DEVICE).manual_seed(mb)
        ids = torch.randint(0, cfg.vocab_size, (mb, seq_len), device=DEVICE, generator=g)
        mask = torch.ones_like(ids)
        old = torch.randn(mb, reply_len, device=DEVICE, generator=g) - 5
        adv = torch.randn(mb, reply_len, device=DEVICE, generator=g)
        rmask = torch.ones(mb, reply_len, device=DEVICE)

        def step(ids=ids, mask=mask, old=old, adv=adv, rmask=rmask):
            with autocast(DEVICE):
                logits = lora(input_ids=ids, attention_mask=mask).logits[:, -reply_len - 1 : -1]
                logp = ppo_math.logprobs_from_logits(logits, ids[:, -reply_len:], 0.7)
                loss = ppo_math.clipped_policy_loss(logp, old, adv, rmask, 0.2).loss
            loss.backward()

        ms = timed_ms(step, warmup=3, repeats=10)
        busy = busy_fraction(step)
        tokens = mb * seq_len
        flops = 4 * n * tokens + 12 * layers * seq_len**2 * d * mb
        achieved = flops / (ms / 1e3) / 1e12
        rows.append(
            {
                "micro_batch": mb,
                "seq_len": seq_len,
                "ms_per_micro_step": ms,
                "tokens_per_s": tokens / (ms / 1e3),
                "counted_tflop": flops / 1e12,
                "achieved_tflops": achieved,
                "mfu": achieved / peak_tflops,
                "gpu_busy_fraction": busy,
            }
        )
        print(
            f"  update micro-batch {mb:>3}: {ms:7.2f} ms, {achieved:6.2f} TFLOP/s, MFU {achieved / peak_tflops:.2%}"
            + (f", GPU busy {busy:.0%}" if busy is not None else "")
        )
    lora.unload()  # the plain policy again, for generation
    policy.requires_grad_(False).eval()
    return rows


def generation(
    policy, tok, bandwidth_gbs: float, batches: list[int], new_tokens: int, static_cache: str = "auto"
) -> list:
    import torch

    from components.models.generation import generate
    from components.models.precision import autocast, cast_frozen_weights_once

    cfg = policy.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    embed = policy.get_input_embeddings().weight.numel()
    tied = getattr(cfg, "tie_word_embeddings", False)
    weight_bytes = 2 * (sum(p.numel() for p in policy.parameters()) - (0 if tied else embed))
    rows = []
    for b in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
        kwargs = dict(
            system=SYSTEM, max_new_tokens=new_tokens, temperature=0.7, generator_seed=0, static_cache=static_cache
        )

        def run(prompts=prompts, kwargs=kwargs):
            with torch.no_grad(), autocast(DEVICE), cast_frozen_weights_once(policy):
                return generate(policy, tok, prompts, **kwargs)

        run()  # warm-up
        seconds, produced, prompt_len = [], [], 0
        for _ in range(3):
            sync()
            t = time.perf_counter()
            out = run()
            sync()
            seconds.append(time.perf_counter() - t)
            produced.append(int(out.response_mask.sum()))
            prompt_len = out.query_ids.shape[1]
        busy = busy_fraction(run)
        s, toks = statistics.median(seconds), statistics.median(produced)
        steps = out.response_ids.shape[1]
        mean_ctx = prompt_len + steps / 2
        kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * mean_ctx * b * 2
        bound = b * bandwidth_gbs * 1e9 / (weight_bytes + kv_bytes)
        rows.append(
            {
                "batch": b,
                "decode_steps": steps,
                "prompt_tokens": prompt_len,
                "seconds": s,
                "reply_tokens": toks,
                "tokens_per_s": toks / s,
                "ms_per_decode_step": 1e3 * s / steps,
                "bytes_per_step_bound": weight_bytes + kv_bytes,
                "bandwidth_bound_tokens_per_s": bound,
                "fraction_of_bound": (b * steps / s) / bound,
                "gpu_busy_fraction": busy,
            }
        )
        print(
            f"  generate batch {b:>3}: {toks / s:9.0f} reply tok/s, {1e3 * s / steps:6.2f} ms/decode step, "
            f"bound {bound:9.0f} tok/s ({(b * steps / s) / bound:.2%} of it)"
            + (f", GPU busy {busy:.0%}" if busy is not None else "")
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, name="gpu_roofline", out="gpu_roofline.json")
    ap.add_argument("--random-init", action="store_true", help="the folder's architecture with random weights")
    ap.add_argument("--micro-batches", default="4,8,16,64", help='update micro-batch sizes ("": skip the update)')
    ap.add_argument("--static-cache", choices=["auto", "on", "off"], default="auto", help="decoding's static cache")
    ap.add_argument("--batches", default="16,64,256")
    ap.add_argument("--seq-len", type=int, default=96, help="tokens per sequence in the update (prompt + reply)")
    ap.add_argument("--reply-len", type=int, default=32)
    ap.add_argument("--cpu-smoke", action="store_true", help="run the code path on the CPU (figures meaningless)")
    args = ap.parse_args(argv)
    import torch

    global DEVICE
    DEVICE = "cpu" if args.cpu_smoke else "cuda"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_roofline needs a CUDA GPU (none is visible); --cpu-smoke runs the code path on the CPU")
    harness.set_threads(args.threads)
    print("ceilings ...", flush=True)
    ceil = ceilings()
    print(f"  bf16 matmul {ceil['bf16_matmul_tflops']:.0f} TFLOP/s, copy {ceil['copy_gb_per_s']:.0f} GB/s")
    policy, tok, folder = load_policy(args.model, args.random_init)
    print("update phase (LoRA micro-step, bf16 autocast) ...", flush=True)
    mbs = [int(x) for x in args.micro_batches.split(",") if x.strip()]
    upd = update_mfu(policy, tok, ceil["bf16_matmul_tflops"], mbs, args.seq_len, args.reply_len) if mbs else []
    print(f"generation (rollout path, static cache {args.static_cache}) ...", flush=True)
    batches = [int(x) for x in args.batches.split(",")]
    gen = generation(policy, tok, ceil["copy_gb_per_s"], batches, args.reply_len, args.static_cache)
    out = {
        "benchmark": "gpu_roofline",
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else None,
        "conditions": args.conditions,
        "model": args.model,
        "model_folder": folder,
        "weights": "random-init" if args.random_init else "pretrained",
        "static_cache": args.static_cache,
        "matmul_params": matmul_params(policy),
        "ceilings": ceil,
        "update": upd,
        "generation": gen,
    }
    harness.write_results(args.out, out)


if __name__ == "__main__":
    main()
