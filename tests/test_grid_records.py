"""Issue 18's run side of a grid: a validation split carved from training, test puzzles independent of the training
size, FLOP-weighted budgets with a warm-up fraction, per-arm seed lists, and evaluation records that carry the
per-puzzle correctness (for the hierarchical bootstrap and the strata) and the train-split score (for the gap)."""
import json

import numpy as np
import pytest

from dis_nbdev.core import ConfigError
from dis_nbdev import experiments as E
from dis_nbdev.boards import board_spec_problems, build_puzzle_dataset, load_puzzle_split

SPEC = dict(kind='sudoku', box=[2, 3], remove=[18, 24], seed=0)


def test_val_split_is_carved_from_training_and_test_seed_fixes_the_test_set(tmp_path):
    a = build_puzzle_dataset(tmp_path/'a', **SPEC, train=40, val=10, test=12, test_seed=1)
    b = build_puzzle_dataset(tmp_path/'b', **SPEC, train=70, test=12, test_seed=1)
    c = build_puzzle_dataset(tmp_path/'c', **SPEC, train=40, test=12)
    _, Xa, _ = load_puzzle_split(a, 'train'); _, Va, _ = load_puzzle_split(a, 'val'); _, Ta, _ = load_puzzle_split(a, 'test')
    _, Xc, _ = load_puzzle_split(c, 'train')
    assert Xa.shape == (30, 36) and Va.shape == (10, 36) and Ta.shape == (12, 36)
    assert (np.concatenate([Xa, Va]) == Xc).all(), 'train + val are the 40 training puzzles the same seed draws'
    assert (Ta == load_puzzle_split(b, 'test')[1]).all(), 'test_seed: the same test puzzles whatever the training size'
    assert not (Ta == load_puzzle_split(c, 'test')[1]).all(), 'without test_seed the test puzzles follow the training ones'
    info = json.loads((a/'puzzles.json').read_text())
    assert (info['val'], info['test_seed'], info['val_examples'], info['test_in_train']) == (10, 1, 10, 0)
    assert 'val' not in json.loads((c/'puzzles.json').read_text()), 'defaults are not stored: older builds keep their fingerprint'
    assert board_spec_problems(**SPEC, train=10, val=10) == ['val=10: must be < train=10 (carved from the training puzzles)']
    assert 'test_seed' in board_spec_problems(**SPEC, test_seed=-2)[0]


def _grid(out, **kw):
    tiny = {'hidden_size': 32, 'num_heads': 2, 'num_layers': 1, 'puzzle_emb_ndim': 32, 'puzzle_emb_len': 1}
    g = dict(name='rec', out=str(out), seeds=[0, 1], budget={'flops': 12 * 8 * 9, 'evals': 2, 'warmup': 0.25},
             eval={'limit': 8, 'also': ['train']},
             base=dict(preset='board_mlp_t_dis', model=tiny, global_batch_size=8, lr=1e-3, lr_schedule='constant', ema=None,
                       optimizer='adamw', device='cpu', wandb_mode='disabled', progress=False, log_every=6,
                       checkpoint_every=100000),
             tasks={'s6': {'puzzle': {**SPEC, 'train': 24, 'val': 8, 'test': 8, 'test_seed': 3}, 'targets': {'code': 'sudoku_waves'}}},
             arms={'dis_code': {'method': 'dis', 'targets': '@code', 'injection': 'x'},
                   'dis_label': {'method': 'dis', 'targets': 'label', 'injection': 'x', 'seeds': [1]}})
    g.update(kw)
    return g


def test_flops_budget_warmup_fraction_and_arm_seeds(tmp_path):
    cells = E.expand_grid(E.load_grid(_grid(tmp_path)))
    assert sorted(c.key for c in cells) == ['s6/dis_code/seed0', 's6/dis_code/seed1', 's6/dis_label/seed1']
    c = cells[0]
    assert (c.flops_per_sample, c.train['max_steps'], c.train['lr_warmup_steps'], c.points) == (9.0, 12, 3, [6, 12])
    with pytest.raises(ConfigError, match='one of compute / flops / steps'):
        E.load_grid(_grid(tmp_path, budget={'flops': 10, 'steps': 3}))
    with pytest.raises(ConfigError, match=r'budget.warmup=1.5'): E.load_grid(_grid(tmp_path, budget={'steps': 6, 'warmup': 1.5}))
    with pytest.raises(ConfigError, match="unknown eval key"): E.load_grid(_grid(tmp_path, eval={'splitz': 'val'}))
    g = _grid(tmp_path); g['arms']['dis_label']['seeds'] = [7]
    with pytest.raises(ConfigError, match="seeds \\[7\\] must be among the grid's seeds"): E.expand_grid(E.load_grid(g))


def test_records_carry_per_puzzle_correctness_flops_and_the_train_score(tmp_path):
    g = E.load_grid(_grid(tmp_path, eval={'limit': 8, 'split': 'val', 'also': ['train']}))
    E.prepare_grid_data(g)
    cell = next(c for c in E.expand_grid(g) if c.key == 's6/dis_label/seed1')
    recs = E.run_cell(g, cell)
    assert [r['opt_steps'] for r in recs] == [6, 12] and all(r['split'] == 'val' for r in recs)
    for r in recs:
        assert len(r['correct']) == r['n_test'] == 8 and set(r['correct']) <= {'0', '1'}
        assert r['correct'].count('1') / 8 == pytest.approx(r['exact'])
        assert r['flops'] == r['opt_steps'] * 8 * 9 and r['train_n'] == 8 and 0 <= r['train_exact'] <= 1
