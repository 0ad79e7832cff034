"""The 4x4 Sudoku bar of issue 11: TRM with `mlp_t` should solve >= 95% of held-out boards exactly after
<= 2000 optimizer steps of batch 32 on one CPU thread (hidden 128, 2 layers).

Generates 4x4 Sudoku with `dis_nbdev.boards.build_puzzle_dataset` (unique solutions, 6-10 cells removed;
`--train` puzzles to learn from, `--test` held out), trains each arm with `dis_nbdev.train.train` and scores
the final weights (EMA when on) with `dis_nbdev.boards.evaluate_puzzle_run` on the held-out split: exact
boards and valid boards at the last supervision step, plus the best step. CPU-seconds are the process
CPU time of the training call (one torch thread), so they do not depend on how busy the machine is.

    python bench/sudoku_bar.py                        # the bar arm (mlp_t), one seed
    python bench/sudoku_bar.py --arms mlp_t rope2d mlp_t_dis --seeds 0 1 2
    python bench/sudoku_bar.py --arms mlp_t --set lr=3e-4 --set ema=null   # try a change of recipe
"""
import argparse, json, tempfile, time
from pathlib import Path

import torch

from dis_nbdev.boards import ensure_puzzle_dataset, evaluate_puzzle_run
from dis_nbdev.train import apply_overrides, train

# The recipe (tuning notes in bench/RECIPES.md). Every arm: batch 32, 2000 optimizer steps, same data.
COMMON = dict(global_batch_size=32, max_steps=2000, lr=1e-3, lr_warmup_steps=100, lr_schedule='cosine',
              lr_min_ratio=0.1, weight_decay=1.0, beta2=0.95, ema=0.99, puzzle_emb_lr=1e-3,
              puzzle_emb_weight_decay=1.0, loss='softmax', halt_max_steps=16)
ARMS = {   # name: (method, preset, TrainConfig overrides); T 2, n 2 = the equal-calls comparison
    'mlp_t':      ('trm', 'board_mlp_t', dict(model=dict(T=2, n=2))),     # TRM's Sudoku network (ACT)
    'rope2d':     ('trm', 'board_rope2d', dict(model=dict(T=2, n=2))),    # attention + 2-D rotary positions
    'rope1d':     ('trm', 'board_rope2d', dict(model=dict(T=2, n=2, pos_encodings='rope'))),  # the old default
    'mlp_t_T3n6': ('trm', 'board_mlp_t', {}),                             # TRM's own T 3, n 6
    'mlp_t_trm_dis_budget': ('trm', 'board_mlp_t', dict(model=dict(T=1, n=2, n_sup=6), halt_max_steps=6)),
    'mlp_t_dis':  ('dis', 'board_mlp_t_dis', {}),                         # DIS: T 1, n 2, 6 steps, input-to-label path
}


def run_arm(name, seed, data, out, args):
    method, preset, over = ARMS[name]
    cfg = dict(COMMON, name=f'{name}_s{seed}', method=method, preset=preset, data_dir=str(data),
               out_dir=str(out / f'{name}_s{seed}'), seed=seed, device='cpu', wandb_mode='disabled',
               progress=False, log_every=100, checkpoint_every=10 ** 9)
    cfg = apply_overrides({**cfg, **{k: v for k, v in over.items() if k != 'model'}, 'model': dict(over.get('model', {}))},
                          args.set)
    if args.steps: cfg['max_steps'] = args.steps
    c0, t0 = time.process_time(), time.time()
    summary = train(cfg)
    cpu_s, wall_s = time.process_time() - c0, time.time() - t0
    ev = evaluate_puzzle_run(cfg['out_dir'])
    best = max(ev['per_step'], key=lambda r: r['exact'])
    return dict(arm=name, seed=seed, steps=cfg['max_steps'], exact=ev['exact'], valid=ev['valid'],
                best_step=best['step'], best_exact=best['exact'], cpu_s=round(cpu_s, 1), wall_s=round(wall_s, 1),
                stopped=summary.get('stopped'))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--arms', nargs='+', default=['mlp_t'], choices=sorted(ARMS))
    ap.add_argument('--seeds', nargs='+', type=int, default=[0])
    ap.add_argument('--train', type=int, default=3000, help='training puzzles (default 3000)')
    ap.add_argument('--test', type=int, default=1000, help='held-out puzzles (default 1000)')
    ap.add_argument('--steps', type=int, default=None, help='optimizer steps (default 2000)')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                    help='TrainConfig override for every arm (model.x=v for the network)')
    ap.add_argument('--out', default=None, help='folder for data and runs (default: a temporary folder)')
    ap.add_argument('--json', default=None, help='also write the rows to this JSON file')
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out or tempfile.mkdtemp(prefix='sudoku_bar_'))
    data = ensure_puzzle_dataset(root / f'sudoku4_{args.train}_{args.test}', kind='sudoku', box=2, train=args.train,
                                 test=args.test, remove=(6, 10), seed=0)
    rows = []
    print(f"{'arm':10s} {'seed':>4s} {'steps':>5s} {'exact':>6s} {'valid':>6s} {'best(step)':>11s} {'CPU-s':>7s} {'wall-s':>7s}")
    for name in args.arms:
        for seed in args.seeds:
            r = run_arm(name, seed, data, root / 'runs', args)
            rows.append(r)
            print(f"{r['arm']:10s} {r['seed']:4d} {r['steps']:5d} {r['exact']:6.1%} {r['valid']:6.1%} "
                  f"{r['best_exact']:6.1%} ({r['best_step']:2d}) {r['cpu_s']:7.1f} {r['wall_s']:7.1f}", flush=True)
    if args.json: Path(args.json).write_text(json.dumps(dict(common=COMMON, overrides=args.set, rows=rows), indent=1))


if __name__ == '__main__':
    main()
