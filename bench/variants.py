"""CPU throughput of the network's backbone variants, side by side in one run.

Variants (all options of `dis_nbdev.model.RecursiveModel`): attention + 1-D RoPE (the default), attention +
2-D RoPE (`rope2d`), attention + learned positions, attention without positions, and TRM's MLP across
positions (`mlp_t`, no positions). Each is timed on one supervision step with its backward pass (T 1, n 2:
three net calls, the last cycle differentiated, AdamW-free: forward + backward only) at board sizes 4x4,
9x9 and the 30x30 ARC canvas, with the board presets' width (hidden 128, 2 layers, 4 heads, a 1-position
puzzle prefix). Variants are timed round-robin (so a busy machine slows them alike) and the best of
`--reps` repetitions is kept. Times are the process's CPU time (`time.process_time`: with one thread it does
not grow when other processes share the cores, where wall time does); the table gives examples per
CPU-second and the ratio to attention + RoPE at the same size.

    python bench/variants.py                  # one thread, CPU
    python bench/variants.py --sizes 4 9 --threads 2
"""
import argparse, time

import torch

from dis_nbdev.model import RecursiveModel, model_config

VARIANTS = {
    'attn+rope':    dict(pos_encodings='rope'),
    'attn+rope2d':  dict(pos_encodings='rope2d'),
    'attn+learned': dict(pos_encodings='learned'),
    'attn+none':    dict(pos_encodings='none'),
    'mlp_t':        dict(mlp_t=True, pos_encodings='none'),
}
BATCH = {4: 32, 9: 32, 30: 4}


def make(side, over, seed=0):
    torch.manual_seed(seed)
    cfg = model_config('board_rope2d', seq_len=side * side, vocab_size=12, T=1, n=2, **over)
    m = RecursiveModel(cfg)
    B = BATCH.get(side, 8)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 12, (B, side * side), generator=g)
    return m, x, torch.zeros(B, dtype=torch.long)


def one_step(m, x, pid):
    out = m(m.initial_carry(x.shape[0]), x, pid, step=None)
    out.logits.float().square().mean().backward()
    m.zero_grad(set_to_none=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', nargs='+', type=int, default=[4, 9, 30], help='board sides (30: the ARC canvas)')
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--iters', type=int, default=None, help='steps per repetition (default: by size)')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (CPU time then sums over threads)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, {args.threads} thread(s); one supervision step (T 1, n 2) forward + backward, '
          f'hidden 128, 2 layers; best of {args.reps}')
    print(f"{'board':>6s} {'batch':>5s} {'variant':13s} {'params':>8s} {'CPU-ms/step':>11s} {'examples/CPU-s':>14s} {'vs attn+rope':>12s}")
    for side in args.sizes:
        built = {k: make(side, v) for k, v in VARIANTS.items()}
        iters = args.iters or {4: 20, 9: 10}.get(side, 2)
        for m, x, p in built.values(): one_step(m, x, p)          # warm-up
        best = {k: float('inf') for k in built}
        for _ in range(args.reps):
            for k, (m, x, p) in built.items():
                t = time.process_time()
                for _ in range(iters): one_step(m, x, p)
                best[k] = min(best[k], (time.process_time() - t) / iters)
        base = best['attn+rope']
        for k, (m, x, p) in built.items():
            n_par = sum(q.numel() for q in m.dense_parameters())
            print(f"{f'{side}x{side}':>6s} {x.shape[0]:5d} {k:13s} {n_par:8,d} {best[k] * 1e3:11.2f} "
                  f"{x.shape[0] / best[k]:14.1f} {base / best[k]:11.2f}x", flush=True)


if __name__ == '__main__':
    main()
