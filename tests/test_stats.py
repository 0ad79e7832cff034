"""Issue 18's statistics against hand computations, the hierarchical bootstrap's coverage on simulated two-level
experiments, the lookup baseline on built boards, and the frames-equal-label flag on real target families."""
import json
import math

import numpy as np
import pytest
import torch

from dis_nbdev.dataset import open_split
from dis_nbdev.stats import (FREE_TOKENS, StatsError, auc_normalised, compute_units, frames_equal_label_share,
                             hierarchical_bootstrap, lookup_baseline, mean_last, paired_t_interval, primary_endpoint,
                             reached_fraction, stratified_accuracy, t_quantile, time_to_target, wilson_interval)
from dis_nbdev.targets import get_target_generator

from dis_nbdev.boards import build_puzzle_dataset


# -- per-run binomial interval ------------------------------------------------------------------------------------
def test_wilson_interval_by_hand():
    # 8 of 10 at 95%: z = 1.959964; centre (p + z^2/2n)/(1 + z^2/n), half z sqrt(p(1-p)/n + z^2/4n^2)/(1 + z^2/n)
    z = 1.959964; p, n = 0.8, 10
    den = 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / den, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    acc, lo, hi = wilson_interval(8, 10)
    assert acc == 0.8 and lo == pytest.approx(centre - half, abs=1e-6) and hi == pytest.approx(centre + half, abs=1e-6)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)             # the textbook values
    assert wilson_interval(0, 50)[1] == 0.0 and wilson_interval(50, 50)[2] == 1.0 and wilson_interval(50, 50)[1] < 1
    lo99 = wilson_interval(99, 100)[1]; assert 0.94 < lo99 < 0.95      # 99/100 is not [0.990, 0.990]
    for k, n in [(3, 2), (-1, 5), (0, 0)]:
        with pytest.raises(StatsError): wilson_interval(k, n)


# -- paired t over seeds ------------------------------------------------------------------------------------------
def test_t_quantile_matches_the_printed_table():
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 29: 2.0452}
    for df, t in table.items(): assert t_quantile(0.95, df) == pytest.approx(t, abs=1e-4)
    assert t_quantile(0.99, 5) == pytest.approx(4.0321, abs=1e-4) and t_quantile(0.90, 3) == pytest.approx(2.3534, abs=1e-4)
    with pytest.raises(StatsError): t_quantile(0.95, 2.5)
    with pytest.raises(StatsError): t_quantile(1.2, 3)


def test_paired_t_interval_by_hand():
    a, b = [0.5, 0.6, 0.7, 0.4], [0.4, 0.4, 0.6, 0.4]         # differences 0.1, 0.2, 0.1, 0.0
    mean = 0.1
    sd = math.sqrt(((0.1 - mean) ** 2 + (0.2 - mean) ** 2 + (0.1 - mean) ** 2 + (0.0 - mean) ** 2) / 3)   # 0.08165
    half = 3.182446 * sd / math.sqrt(4)                        # t(0.975, df 3) from the table
    r = paired_t_interval(a, b)
    assert r['diff'] == pytest.approx(0.1) and r['sd'] == pytest.approx(sd) and r['df'] == 3
    assert (r['low'], r['high']) == (pytest.approx(0.1 - half, abs=1e-6), pytest.approx(0.1 + half, abs=1e-6))
    one = paired_t_interval([0.3], [0.2]); assert one['diff'] == pytest.approx(0.1) and math.isnan(one['low'])
    with pytest.raises(StatsError): paired_t_interval([0.1, 0.2], [0.1])


# -- hierarchical bootstrap -----------------------------------------------------------------------------------------
def test_hierarchical_bootstrap_pairs_arms_and_checks_shapes():
    rng = np.random.default_rng(0)
    a = (rng.random((3, 50)) < 0.6).astype(int)
    r = hierarchical_bootstrap(a, a.copy())                  # identical arms: every paired resample differs by 0
    assert (r['diff'], r['low'], r['high'], r['p_le_0']) == (0.0, 0.0, 0.0, 1.0) and (r['n'], r['n_puzzles']) == (3, 50)
    one = hierarchical_bootstrap(a)                           # one arm: its accuracy, interval around it
    assert one['low'] < a.mean() < one['high']
    assert hierarchical_bootstrap(a, n_boot=500, seed=1) == hierarchical_bootstrap(a, n_boot=500, seed=1)
    with pytest.raises(StatsError, match='shape'): hierarchical_bootstrap(a, a[:, :40])
    with pytest.raises(StatsError): hierarchical_bootstrap(np.zeros((2, 3, 4)))


def _simulate(S, P, sd_seed, sd_diff, reps=200, n_boot=500, delta=0.05):
    "Coverage of the true difference: hierarchical bootstrap vs a percentile bootstrap over the per-seed values only."
    rng = np.random.default_rng(2026); hier = seeds_only = 0
    for r in range(reps):
        u, v = rng.normal(0, sd_seed, S), rng.normal(0, sd_diff, S)     # seed effect (both arms), seed x arm effect
        pb, pa = np.clip(0.5 + u, 0, 1), np.clip(0.5 + delta + u + v, 0, 1)
        a, b = rng.random((S, P)) < pa[:, None], rng.random((S, P)) < pb[:, None]      # Bernoulli puzzles
        h = hierarchical_bootstrap(a, b, n_boot=n_boot, seed=r)
        hier += h['low'] <= delta <= h['high']
        d = a.mean(1) - b.mean(1)
        lo, hi = np.quantile(d[rng.integers(0, S, (n_boot, S))].mean(1), [0.025, 0.975])
        seeds_only += lo <= delta <= hi
    return hier / reps, seeds_only / reps


@pytest.mark.parametrize('S,P', [(5, 100), (3, 200)])
def test_hierarchical_bootstrap_coverage_on_a_simulated_two_level_experiment(S, P):
    hier, seeds_only = _simulate(S, P, sd_seed=0.1, sd_diff=0.05)
    assert 0.88 <= hier <= 0.99, hier
    assert seeds_only < hier - 0.05, (seeds_only, hier)      # resampling the seed values alone under-covers


# -- primary endpoint, time to target, strata ------------------------------------------------------------------------
def test_primary_endpoint_by_hand():
    # trapezoids: (1-0) * (0+1)/2 + (3-1) * (1+1)/2 = 2.5 over a compute range of 3
    assert auc_normalised([0, 1, 3], [0, 1, 1]) == pytest.approx(2.5 / 3)
    assert auc_normalised([1, 2], [1, 1], origin=True) == pytest.approx((0.5 + 1) / 2)
    assert mean_last([0.1, 0.5, 0.7, 0.9]) == pytest.approx(0.8) and mean_last([0.4]) == 0.4
    assert primary_endpoint([200, 400, 600], [0.025, 0.54, 0.80]) == pytest.approx(
        dict(final=0.67, auc=(200 * (0.025 + 0.54) / 2 + 200 * (0.54 + 0.80) / 2) / 400))
    for bad in [([1, 1], [0, 1]), ([1], [0])]:
        with pytest.raises(StatsError): auc_normalised(*bad)


def test_time_to_target_counts_censored_runs_as_not_reached():
    runs = [([100, 200, 300], [0.96, 0.97, 0.99]), ([100, 200, 300], [0.5, 0.95, 0.99]),
            ([100, 200, 300], [0.5, 0.8, 0.9]), ([100, 200, 300], [0.2, 0.6, 0.951])]
    assert [time_to_target(c, v, 0.95) for c, v in runs] == [100, 200, None, 300]
    assert reached_fraction(runs, 0.95, [50, 100, 200, 300, 400]).tolist() == [0, 0.25, 0.5, 0.75, 0.75]


def test_stratified_accuracy_by_hand():
    rows = stratified_accuracy([1, 0, 1, 1, 0], ['2 waves', '2 waves', '3 waves', '3 waves', '4 waves'])
    assert [(r['stratum'], r['n'], r['acc']) for r in rows] == [('2 waves', 2, 0.5), ('3 waves', 2, 1.0), ('4 waves', 1, 0.0)]
    assert (rows[0]['low'], rows[0]['high']) == wilson_interval(1, 2)[1:]
    seeds = stratified_accuracy(np.array([[1, 0, 1], [1, 1, 1]]), [2, 2, 3], n_boot=200)
    assert seeds[0]['acc'] == pytest.approx(0.75) and seeds[1]['acc'] == 1.0 and seeds[1]['low'] == 1.0
    with pytest.raises(StatsError): stratified_accuracy([1, 0], [1, 2, 3])


# -- compute -------------------------------------------------------------------------------------------------------
def test_compute_units_charges_no_grad_cycles_forward_only():
    t3n6, t1n2 = compute_units(3, 6, 10, 32), compute_units(1, 2, 10, 32)
    assert t3n6['per_sample_step'] == 2 * 7 * 1 + 7 * 3 == 35 and t1n2['per_sample_step'] == 3 * 3 == 9
    assert t3n6['units'] == 10 * 32 * 35 and t3n6['net_calls'] == 10 * 32 * 21
    assert t3n6['overcharge'] == pytest.approx(63 / 35) and t1n2['overcharge'] == 1.0
    dis = compute_units(1, 2, 1200, 32, n_sup=6)
    assert dis['samples'] == 6400 and dis['units'] == 1200 * 32 * 9
    with pytest.raises(StatsError): compute_units(0, 2, 10, 32)


# -- lookup baseline -------------------------------------------------------------------------------------------------
def test_lookup_baseline_memorises_4x4_sudoku(tmp_path):
    d = build_puzzle_dataset(tmp_path/'s4', dict(kind='sudoku', box=2, train=3000, test=60, remove=[6, 10], seed=0))
    r = lookup_baseline(d)
    assert r['mode'] == 'givens' and r['n'] == 60 and r['exact'] == 1.0 and r['in_train_share'] == 1.0
    assert r['correct'].tolist() == [1] * 60


def test_lookup_baseline_scores_exactly_the_test_solutions_it_has_seen(tmp_path):
    # unique-solution Sudoku: a stored label consistent with the givens IS the solution, so exact = the seen share
    d = build_puzzle_dataset(tmp_path/'s4', dict(kind='sudoku', box=2, train=40, test=80, remove=[6, 10], seed=1))
    r = lookup_baseline(d)
    te, tr = open_split(d, 'test'), open_split(d, 'train')
    seen = {y.tobytes() for y in np.asarray(tr.labels)}
    by_hand = np.array([y.tobytes() in seen for y in np.asarray(te.labels)])
    assert 0 < by_hand.mean() < 1
    assert r['correct'].astype(bool).tolist() == by_hand.tolist() and r['exact'] == r['in_train_share'] == by_hand.mean()
    assert r['no_candidate_share'] == pytest.approx(1 - by_hand.mean())
    inp = lookup_baseline(d, mode='input')                      # the ARC rule: identical input -> its stored label
    tr_inputs = {x.tobytes() for x in np.asarray(tr.inputs)}
    assert inp['correct'].astype(bool).tolist() == [x.tobytes() in tr_inputs for x in np.asarray(te.inputs)]
    assert lookup_baseline(d, limit=10)['n'] == 10


def test_lookup_baseline_on_hard_6x6_and_mazes_and_its_errors(tmp_path):
    d6 = build_puzzle_dataset(tmp_path/'s6', dict(kind='sudoku', box=[2, 3], train=200, test=40, remove=[18, 24], seed=0))
    r = lookup_baseline(d6)
    assert r['exact'] == 0.0 and r['in_train_share'] == 0.0
    dm = build_puzzle_dataset(tmp_path/'m', dict(kind='maze', n=7, train=30, test=10, seed=0))
    assert json.loads((dm/'puzzles.json').read_text())['kind'] == 'maze' and FREE_TOKENS['maze'] == (0, 2)
    rm = lookup_baseline(dm)
    assert rm['mode'] == 'givens' and rm['n'] == 10 and rm['exact'] <= rm['in_train_share']
    with pytest.raises(StatsError, match='mode'): lookup_baseline(d6, mode='nearest')
    assert lookup_baseline(d6, mode='input')['mode'] == 'input'      # the input rule (the default where no kind is recorded)


# -- frames equal to the label --------------------------------------------------------------------------------------
def _split_tensors(d):
    s = open_split(d, 'test')
    return torch.tensor(np.array(s.inputs)).long(), torch.tensor(np.array(s.labels)).long()


def test_a_family_whose_frames_all_equal_the_label_is_flagged(tmp_path):
    x, y = _split_tensors(build_puzzle_dataset(tmp_path/'s6', dict(kind='sudoku', box=[2, 3], train=50, test=100,
                                                                    remove=[18, 24], seed=0)))
    label = frames_equal_label_share(get_target_generator('label')(x, y, 6), y)
    assert label['flagged'] and label['all_steps'] == 1.0 and label['per_step'] == [1.0] * 6 and label['n'] == 100
    path = frames_equal_label_share(get_target_generator('input_to_label')(x, y, 6, torch.Generator().manual_seed(0)), y)
    assert not path['flagged'] and path['all_steps'] == 0.0 and path['per_step'][0] == 0.0 and path['per_step'][-1] == 1.0
    waves = frames_equal_label_share(get_target_generator('sudoku_waves')(x, y, 6), y)   # 18-24 blanks: 2+ waves
    assert not waves['flagged'] and waves['per_step'][0] < 0.05      # 99% need 2+ waves


def test_wave_frames_of_easy_6x6_sudoku_are_the_label(tmp_path):
    x, y = _split_tensors(build_puzzle_dataset(tmp_path/'e6', dict(kind='sudoku', box=[2, 3], train=50, test=100,
                                                                    remove=[4, 8], seed=0)))
    r = frames_equal_label_share(get_target_generator('sudoku_waves')(x, y, 6), y)
    assert r['flagged'] and r['all_steps'] > 0.9


def test_frames_equal_label_share_by_hand_and_ignored_cells():
    IGN = -100
    y = np.array([[2, 3, IGN], [4, 5, 6]])
    frames = np.array([[[2, 3, 9], [4, 1, 6]],                  # step 1: puzzle 0 equal (its differing cell is ignored)
                       [[2, 3, 0], [4, 5, 6]]])                 # step 2: both equal
    r = frames_equal_label_share(frames, y)
    assert r['per_step'] == [0.5, 1.0] and r['all_steps'] == 0.5 and not r['flagged']
    assert frames_equal_label_share(frames, y, most=0.4)['flagged']
    assert frames_equal_label_share(torch.tensor(frames), torch.tensor(y)) == r
    with pytest.raises(StatsError, match='steps, puzzles, cells'): frames_equal_label_share(frames[0], y)
