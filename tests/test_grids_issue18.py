"""The grids of issue 18 (experiments A and B) load, expand to the declared cells, and their control arms differ from
each other in the one factor each is meant to isolate; every arm runs at the same compute and evaluation points."""
from pathlib import Path

from dis_nbdev.experiments import expand_grid, load_grid
from dis_nbdev.stats import compute_units

GRIDS = Path(__file__).resolve().parents[1]/'papermill_runs'/'grids'
FIELDS = ('method', 'preset', 'model', 'targets', 'injection', 'q_loss_weight', 'halt_max_steps')


def _arms(cells):
    return {c.arm: c for c in cells if c.seed == 0}


def _lr(c):
    return float(c.train['lr'])


def _diff(a, b):
    return sorted(k for k in FIELDS if a.train.get(k) != b.train.get(k))


def test_experiment_A_controls_isolate_one_factor_each():
    g = load_grid(GRIDS/'grid_targets_A.yaml'); cells = expand_grid(g)
    assert len(cells) == 4 * 5 + 3 * 3 and g['seeds'] == [0, 1, 2, 3, 4]
    seeds = {a: sorted(c.seed for c in cells if c.arm == a) for a in g['arms']}
    assert all(seeds[a] == [0, 1, 2, 3, 4] for a in ('trm_T1n2', 'dis_label_x', 'dis_waves_x', 'dis_waves_x_lr2e3')), 'the primary arms run 5 seeds'
    assert all(seeds[a] == [0, 1, 2] for a in ('trm_T1n2_nohalt', 'dis_waves_prev', 'dis_corrupt'))
    arms = _arms(cells)
    assert _diff(arms['trm_T1n2'], arms['trm_T1n2_nohalt']) == ['q_loss_weight'] and arms['trm_T1n2_nohalt'].train['q_loss_weight'] == 0
    assert _diff(arms['dis_label_x'], arms['dis_waves_x']) == ['targets'], 'and the lr: each arm at its tuned value'
    assert _diff(arms['dis_label_x'], arms['dis_waves_x_lr2e3']) == ['targets'] and _lr(arms['dis_waves_x_lr2e3']) == _lr(arms['dis_label_x'])
    assert {k: v for k, v in arms['dis_waves_x_lr2e3'].train.items() if k not in ('name', 'out_dir', 'lr')} == \
        {k: v for k, v in arms['dis_waves_x'].train.items() if k not in ('name', 'out_dir', 'lr')}, 'the same arm at another lr'
    tune = load_grid(GRIDS/'grid_targets_A_tune.yaml')['sweep']['lr']
    assert all(any(abs(_lr(c) - v) < 1e-12 for v in tune) for c in arms.values()), 'every lr is one of the tuning trials'
    assert arms['dis_label_x'].train['targets'] == 'label' and arms['dis_waves_x'].train['targets'] == 'sudoku_waves'
    assert _diff(arms['dis_waves_x_lr2e3'], arms['dis_waves_prev']) == ['injection'] and arms['dis_waves_x'].train['injection'] == 'x'
    assert _lr(arms['dis_waves_x_lr2e3']) == _lr(arms['dis_waves_prev']), 'the injection contrast at one lr'
    assert arms['dis_corrupt'].train['targets'] == 'input_to_label' and arms['dis_corrupt'].train['injection'] == 'prev_argmax'
    spec = g['tasks']['sudoku6_hard']['puzzle']
    assert (spec['box'], spec['remove'], spec['train'], spec['test'], spec['test_seed']) == ([2, 3], [18, 24], 3000, 500, 1)
    for c in cells:    # same optimizer steps, batch, evaluation points and FLOP-weighted units for every arm
        assert (c.points, c.batch, c.net_calls, c.train['max_steps']) == ([300, 600, 900, 1200], 32, 3, 1200)
        assert c.eval['limit'] == 500 and all(p % 6 == 0 for p in c.points)
        assert c.flops_per_sample == 9 and c.train['lr_warmup_steps'] == 60, 'FLOP-weighted budget, warm-up 5% of it'
    assert compute_units(1, 2, 1200, 32)['units'] == 1200 * 32 * 9


def test_experiment_B_varies_only_the_training_set_size():
    g = load_grid(GRIDS/'grid_scarce_B.yaml'); cells = expand_grid(g)
    assert sorted(g['tasks']) == ['train100', 'train1000', 'train300'] and g['out'].endswith('scarce_B')
    assert sorted(_arms(cells)) == ['dis_label_x', 'dis_waves_x', 'dis_waves_x_lr2e3', 'trm_T1n2'] and len(cells) == 3 * (3 + 3 + 3 + 1)
    sizes = {t: s['puzzle']['train'] for t, s in g['tasks'].items()}
    assert sizes == {'train100': 100, 'train300': 300, 'train1000': 1000}
    rest = [{k: v for k, v in s['puzzle'].items() if k != 'train'} for s in g['tasks'].values()]
    assert all(r == rest[0] for r in rest) and rest[0]['remove'] == [18, 24] and rest[0]['test'] == 500
    assert {c.train['max_steps'] for c in cells} == {300} and len({c.train['data_dir'] for c in cells}) == 3
    assert {tuple(c.points) for c in cells} == {(60, 120, 180, 240, 300)}, 'DIS and TRM evaluated at the same compute'
    assert all(c.eval['also'] == ['train'] for c in cells) and {r['test_seed'] for r in rest} == {1}


def test_tuning_grid_gives_every_arm_the_same_trials_on_a_validation_split():
    a = load_grid(GRIDS/'grid_targets_A.yaml'); g = load_grid(GRIDS/'grid_targets_A_tune.yaml'); cells = expand_grid(g)
    arms = {c.arm.split('@')[0] for c in cells}
    assert arms == set(a['arms']) - {'dis_waves_x_lr2e3'}
    assert len(cells) == len(arms) * len(g['sweep']['lr']) >= len(arms) * 3, 'the same learning rates for every arm, one seed'
    assert {c.seed for c in cells} == {100} and not {100} & set(a['seeds'])
    assert all(c.eval['split'] == 'val' for c in cells)
    tune, test = g['tasks']['sudoku6_hard_val']['puzzle'], a['tasks']['sudoku6_hard']['puzzle']
    assert {k: v for k, v in tune.items() if k != 'val'} == test and tune['val'] == 500, 'val is carved from A\'s training puzzles'


def test_demo_part1_compares_arms_that_differ_in_the_targets_only():
    cells = expand_grid(load_grid(GRIDS/'grid_demo_targets.yaml')); arms = _arms(cells)
    assert sorted(arms) == ['dis_label_x', 'dis_waves_x', 'trm_T1n2']
    rest = lambda c: {k: v for k, v in c.train.items() if k not in ('name', 'out_dir', 'targets')}
    assert rest(arms['dis_label_x']) == rest(arms['dis_waves_x']), 'the learning rate too: the demo says "the targets only"'
    assert arms['dis_label_x'].train['targets'] == 'label' and arms['dis_waves_x'].train['targets'] == 'sudoku_waves'
