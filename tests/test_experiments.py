"""The comparison-grid runner: a tiny grid end to end (subprocess workers), resume of a half-finished cell, skip of
finished cells, equal-compute budgets (its report: tests/test_grid_report.py)."""
import json

import pytest

from dis_nbdev.core import ConfigError
from dis_nbdev import experiments as E

TINY_MODEL = {'hidden_size': 32, 'num_heads': 2, 'num_layers': 1, 'puzzle_emb_ndim': 32, 'puzzle_emb_len': 1}

def tiny_grid(out, **kw):
    g = dict(name='tiny', out=str(out), seeds=[0, 1], baseline='trm', target=0.5,
             budget={'compute': 12 * 8 * 3, 'evals': 2}, eval={'limit': 8},
             base=dict(preset='board_mlp_t_dis', model=TINY_MODEL, global_batch_size=8, lr=1e-3, lr_warmup_steps=2,
                       lr_schedule='constant', ema=None, optimizer='adamw', device='cpu', wandb_mode='disabled',
                       progress=False, log_every=6, checkpoint_every=100000),
             tasks={'sudoku4': {'puzzle': {'kind': 'sudoku', 'box': 2, 'train': 24, 'test': 8, 'remove': [4, 8], 'seed': 0},
                                'targets': {'code': 'sudoku_waves'}}},
             arms={'trm': {'method': 'trm', 'preset': 'board_mlp_t', 'model': {**TINY_MODEL, 'T': 2, 'n': 2},
                           'targets': 'label', 'injection': 'x', 'halt_max_steps': 3},
                   'dis_code': {'method': 'dis', 'targets': '@code'}})
    g.update(kw)
    return g

def test_grid_checks(tmp_path):
    with pytest.raises(ConfigError, match='unknown grid key'): E.load_grid(tiny_grid(tmp_path, arm={}))
    with pytest.raises(ConfigError, match='baseline'): E.load_grid(tiny_grid(tmp_path, baseline='nope'))
    with pytest.raises(ConfigError, match='budget'): E.load_grid(tiny_grid(tmp_path, budget={'evals': 2}))
    g = tiny_grid(tmp_path); g['arms']['bad'] = {'method': 'dis', 'targets': '@missing'}
    with pytest.raises(ConfigError, match='@missing'): E.expand_grid(E.load_grid(g))
    g = tiny_grid(tmp_path); g['arms']['trm']['halt_max_step'] = 3
    with pytest.raises(ConfigError, match='trm/seed0'): E.expand_grid(E.load_grid(g))

def test_equal_compute_and_sweep(tmp_path):
    cells = E.expand_grid(E.load_grid(tiny_grid(tmp_path, budget={'compute': 600 * 32 * 3, 'evals': 4},
                                                sweep={'lr': [1e-3, 3e-3]})))
    by = {c.key: c for c in cells}
    assert len(cells) == 2 * 2 * 2 and 'sudoku4/trm@lr=0.003/seed1' in by
    dis, trm = by['sudoku4/dis_code@lr=0.001/seed0'], by['sudoku4/trm@lr=0.001/seed0']
    assert dis.net_calls == 3 and trm.net_calls == 2 * 3 and dis.points[-1] == 2400 and trm.points[-1] == 1200   # batch 8
    assert all(p % 6 == 0 for p in dis.points), 'DIS evaluates after whole batches (6 optimizer steps each)'
    assert dis.points[-1] * dis.net_calls == trm.points[-1] * trm.net_calls, 'equal compute'
    assert by['sudoku4/trm@lr=0.003/seed0'].train['lr'] == 3e-3 and dis.train['targets'] == 'sudoku_waves'
    assert dis.eval['n_steps'] == 6 and trm.eval['n_steps'] == 3

def test_tiny_grid_end_to_end_resume_and_skip(tmp_path):
    g = E.load_grid(tiny_grid(tmp_path/'g'))
    E.prepare_grid_data(g)
    cells = E.expand_grid(g)
    half = next(c for c in cells if c.key == 'sudoku4/dis_code/seed1')
    first = E.run_cell(g, half, max_points=1)            # a half-finished cell: one of its two evaluation points
    assert len(first) == 1 and not E.cell_done(g, half)
    res = E.run_grid(g, workers=2, log=lambda *a: None)
    assert not res['failed'] and sorted(res['ran']) == sorted(c.key for c in cells) and not res['skipped']
    recs = E.read_evals(E.cell_dir(g, half))
    assert [r['opt_steps'] for r in recs] == half.points and recs[0] == first[0], 'resumed, not restarted'
    steps = [json.loads(l)['step'] for l in (E.cell_dir(g, half)/'train'/'metrics.jsonl').read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == half.points[-1]
    rows = [r for c in cells for r in E.read_evals(E.cell_dir(g, c))]
    assert len(rows) == sum(len(c.points) for c in cells) and {r['arm'] for r in rows} == {'trm', 'dis_code'}
    assert all(r['train_cpu_s'] > 0 and 0 <= r['exact'] <= 1 for r in rows)
    assert {s['step'] for r in rows if r['arm'] == 'dis_code' for s in r['per_step']} == set(range(1, 7))
    assert not (tmp_path/'g'/'results.csv').exists(), 'running a grid does not report it (grid_report does)'
    again = E.run_grid(g, workers=2, log=lambda *a: None)
    assert again['ran'] == [] and sorted(again['skipped']) == sorted(c.key for c in cells)

def test_extends_inherits_and_drops(tmp_path):
    import yaml
    (tmp_path/'base.yaml').write_text(yaml.safe_dump(tiny_grid(tmp_path/'base_out')))
    (tmp_path/'lr.yaml').write_text(yaml.safe_dump({'extends': 'base.yaml', 'seeds': [0], 'sweep': {'lr': [3e-3]},
                                                    'arms': {'trm': None}, 'baseline': 'dis_code'}))
    g = E.load_grid(tmp_path/'lr.yaml')
    assert g['name'] == 'lr' and g['out'].endswith('lr') and list(g['arms']) == ['dis_code']
    assert [c.key for c in E.expand_grid(g)] == ['sudoku4/dis_code@lr=0.003/seed0']
    (tmp_path/'bad.yaml').write_text('extends: nowhere.yaml\n')
    with pytest.raises(ConfigError, match='nowhere.yaml'): E.load_grid(tmp_path/'bad.yaml')
