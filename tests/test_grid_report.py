"""The grid report (issue 18 items 1 and 4): each statistic of the report against a hand computation on evaluation
records of the run_cell contract's shape, the puzzle resampling the report uses against a simulated crossed design, the
frames-equal-label flag on a family whose frames are all the label, the tuning table, and `dis-grid --report` on a tiny
grid run end to end."""
import csv, json, math

import numpy as np
import pytest
import yaml

from dis_nbdev import experiments as E
from dis_nbdev import grid_report as R
from dis_nbdev.files import append_jsonl
from dis_nbdev.stats import hierarchical_bootstrap, t_quantile
from dis_nbdev.boards.targets import puzzle_difficulty

TINY_MODEL = {'hidden_size': 32, 'num_heads': 2, 'num_layers': 1, 'puzzle_emb_ndim': 32, 'puzzle_emb_len': 1}

def grid(out, remove=(4, 8), test=12, **kw):
    g = dict(name='tiny', out=str(out), seeds=[0, 1, 2], baseline=['dis_label'], target=0.5,
             budget={'compute': 18 * 8 * 3, 'evals': 3}, eval={'limit': test},
             base=dict(preset='board_mlp_t_dis', model=TINY_MODEL, global_batch_size=8, lr=1e-3, lr_warmup_steps=2,
                       lr_schedule='constant', ema=None, optimizer='adamw', device='cpu', wandb_mode='disabled',
                       progress=False, log_every=6, checkpoint_every=100000),
             tasks={'sudoku4': {'puzzle': {'kind': 'sudoku', 'box': 2, 'train': 40, 'test': test, 'remove': list(remove), 'seed': 0},
                                'targets': {'code': 'sudoku_waves'}}},
             arms={'dis_label': {'method': 'dis', 'targets': 'label', 'injection': 'x'},
                   'dis_waves': {'method': 'dis', 'targets': '@code', 'injection': 'x'}})
    g.update(kw)
    return E.load_grid(g)

def write_records(g, correct):
    "Evaluation records of the contract's shape for every cell; `correct(cell, i)` gives point i's 0/1 array."
    for c in E.expand_grid(g):
        d = E.cell_dir(g, c); d.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(c.points):
            ok = np.asarray(correct(c, i), int)
            append_jsonl(d/'evals.jsonl', dict(task=c.task, arm=c.arm, seed=c.seed, opt_steps=p, batch=c.batch, net_calls=c.net_calls,
                compute=p * c.batch * c.net_calls, flops=p * c.batch * 9, train_cpu_s=0.1 * p, train_wall_s=0.1 * p, eval_cpu_s=0.5,
                device='cpu', split='test', valid=ok.mean(), exact=ok.mean(), token_acc=ok.mean(), best_step_exact=ok.mean(),
                n_test=len(ok), correct=''.join(map(str, ok)), train_exact=1.0, train_n=40,
                per_step=[dict(step=s, valid=ok.mean(), exact=ok.mean(), token_acc=ok.mean()) for s in range(1, 7)]))

# hand-made correctness: 12 puzzles; arm dis_label solves the first 4+seed at the last point, dis_waves 2 more
def _hand(c, i):
    n = [2, 3, 4 + c.seed][i] + (2 if c.arm == 'dis_waves' else 0) * (i == 2) + (1 if c.arm == 'dis_waves' else 0) * (i == 1)
    return (np.arange(12) < n).astype(int)


def test_endpoints_paired_interval_and_reach_by_hand(tmp_path):
    g = grid(tmp_path/'g'); E.prepare_grid_data(g); write_records(g, _hand)
    runs = R.collect_runs(g)
    summ = {r['arm']: r for r in R.summarize(runs, n_boot=500)}
    lab = summ['dis_label']
    pts = runs[('sudoku4', 'dis_label', 1)]['recs']; x = [r['flops'] for r in pts]
    assert lab['x'] == 'flops' and lab['seeds'] == [0, 1, 2]
    # seed 1: exact 2/12, 3/12, 5/12 -> final = (3 + 5) / 24; auc from 0: trapezoids over flops, divided by the last flops
    assert lab['per_seed'][1]['final'] == pytest.approx(8 / 24)
    auc = (x[0] * (0 + 2) / 2 + (x[1] - x[0]) * (2 + 3) / 2 + (x[2] - x[1]) * (3 + 5) / 2) / 12 / x[2]
    assert lab['per_seed'][1]['auc'] == pytest.approx(auc)
    assert lab['per_seed'][1]['final_p'].tolist() == [1] * 3 + [0.5] * 2 + [0] * 7
    # paired differences per seed: dis_waves solves 1 more at point 2 and 2 more at point 3 -> (1 + 2) / 24 every seed
    cmp = {(c['arm'], c['endpoint']): c for c in R.compare(list(summ.values()), ['dis_label'], n_boot=500)}
    f = cmp[('dis_waves', 'final')]
    assert f['per_seed'] == pytest.approx([3 / 24] * 3) and f['t']['diff'] == pytest.approx(3 / 24) and f['t']['sd'] == pytest.approx(0)
    assert f['boot']['diff'] == pytest.approx(3 / 24) and f['boot']['low'] <= 3 / 24 <= f['boot']['high']
    assert ('dis_label', 'final') not in cmp
    # a spread of per-seed differences: the paired t by hand (mean, sd ddof 1, t quantile 4.303 for 2 df)
    summ['dis_waves']['per_seed'][0]['final'] += 0.1; summ['dis_waves']['per_seed'][2]['final'] -= 0.05
    t = {(c['arm'], c['endpoint']): c for c in R.compare(list(summ.values()), ['dis_label'], n_boot=200)}[('dis_waves', 'final')]['t']
    d = np.array([3 / 24 + 0.1, 3 / 24, 3 / 24 - 0.05])
    half = t_quantile(0.95, 2) * d.std(ddof=1) / math.sqrt(3)
    assert (t['low'], t['high']) == pytest.approx((d.mean() - half, d.mean() + half)) and abs(t_quantile(0.95, 2) - 4.303) < 1e-3
    # reached fraction at target 0.5 (6 of 12) by each point: dis_label ends at 4, 5, 6 solved (seed 2 only), dis_waves at 6, 7, 8
    reach = R.reach_table(list(summ.values()), runs, 0.5)['sudoku4']
    assert reach['arms']['dis_label'].tolist() == pytest.approx([0, 0, 1 / 3]) and reach['arms']['dis_waves'].tolist() == [0, 0, 1]
    reach = R.reach_table(list(summ.values()), runs, 7 / 12)['sudoku4']
    assert reach['arms']['dis_waves'].tolist() == pytest.approx([0, 0, 2 / 3]), 'a seed that never reached the target stays in the denominator'


def test_strata_count_the_waves_and_split_the_endpoint(tmp_path):
    g = grid(tmp_path/'g', remove=(6, 10), test=40, eval={'limit': 40}); dd = E.prepare_grid_data(g)['sudoku4']
    waves = puzzle_difficulty(dd, 'test')
    write_records(g, lambda c, i: (waves == 1).astype(int) if i else np.zeros(40, int))   # solves exactly the 1-wave puzzles
    summ = R.summarize(R.collect_runs(g), n_boot=200)
    st = R.strata_table(summ, n_boot=200)['sudoku4']
    assert st['measure'] == 'propagation waves' and st['counts'] == {int(k): int(v) for k, v in zip(*np.unique(waves, return_counts=True))}
    rows = {r['stratum']: r for r in st['arms']['dis_waves']}
    assert rows[1]['acc'] == 1.0 and all(r['acc'] == 0.0 for s, r in rows.items() if s > 1) and len(rows) >= 2


def test_the_report_puzzle_resampling_covers_a_crossed_design():
    "Every seed scores the same puzzles, with strong puzzle effects: one puzzle draw for all seeds (what the report uses)"
    " covers the population difference; independent draws per seed under-cover."
    rng = np.random.default_rng(7); S, P, reps, delta = 5, 100, 200, 0.05
    def probs(u, v, b, c): return (np.clip(0.5 + delta + (u + v)[:, None] + (b + c)[None], 0, 1), np.clip(0.5 + u[:, None] + b[None], 0, 1))
    big = probs(rng.normal(0, 0.05, 400), rng.normal(0, 0.03, 400), rng.normal(0, 0.5, 4000), rng.normal(0, 0.4, 4000))
    true = float((big[0] - big[1]).mean()); shared = nested = 0
    for r in range(reps):
        pa, pb = probs(rng.normal(0, 0.05, S), rng.normal(0, 0.03, S), rng.normal(0, 0.5, P), rng.normal(0, 0.4, P))
        A, B = rng.random((S, P)) < pa, rng.random((S, P)) < pb
        h = hierarchical_bootstrap(A, B, n_boot=400, seed=r, shared_puzzles=True); shared += h['low'] <= true <= h['high']
        h = hierarchical_bootstrap(A, B, n_boot=400, seed=r); nested += h['low'] <= true <= h['high']
    assert shared / reps >= 0.93 and nested / reps < shared / reps - 0.05, (shared, nested)


def test_a_family_whose_frames_all_equal_the_label_is_flagged(tmp_path):
    easy = grid(tmp_path/'easy', remove=(1, 2)); E.prepare_grid_data(easy); write_records(easy, _hand)
    summ = R.summarize(R.collect_runs(easy), n_boot=100)
    st = R.data_checks(summ, R.collect_runs(easy))['sudoku4']['targets']['sudoku_waves']
    assert st['all_frames_label'] == 1.0 and st['flagged']
    text = '\n'.join(R.format_checks('sudoku4', R.data_checks(summ, R.collect_runs(easy))['sudoku4']))
    assert 'FLAGGED: ' + R.TARGETS_FLAG in text and 'label' not in R.data_checks(summ, R.collect_runs(easy))['sudoku4']['targets']
    hard = E.load_grid({**{k: v for k, v in easy.items() if k != '_where'}, 'out': str(tmp_path/'hard'),
                        'tasks': {'sudoku6': {'puzzle': {'kind': 'sudoku', 'box': [2, 3], 'train': 40, 'test': 12, 'remove': [18, 24], 'seed': 0},
                                              'targets': {'code': 'sudoku_waves'}}}})
    E.prepare_grid_data(hard); write_records(hard, _hand)
    st = R.data_checks(R.summarize(R.collect_runs(hard), n_boot=100), R.collect_runs(hard))['sudoku6']['targets']['sudoku_waves']
    assert not st['flagged'] and st['all_frames_label'] < 0.5


def test_tuning_table_and_tuned_yaml(tmp_path):
    g = grid(tmp_path/'g', sweep={'lr': [1e-3, 3e-3]}, seeds=[0, 1], baseline=None)
    E.prepare_grid_data(g)
    write_records(g, lambda c, i: (np.arange(12) < (3 + 3 * ('3e-3' in c.arm or '0.003' in c.arm) * (c.arm.startswith('dis_waves')) + i)).astype(int))
    for c in E.expand_grid(g):                       # one trial of dis_label unfinished: unequal trials
        if c.arm == 'dis_label@lr=0.003': (E.cell_dir(g, c)/'evals.jsonl').unlink()
    rep = R.grid_report(g, log=lambda *a: None, figures=False, n_boot=100)
    tuned = yaml.safe_load((tmp_path/'g'/'tuned.yaml').read_text())
    assert tuned == {'sudoku4': {'dis_label': {'lr': 1e-3}, 'dis_waves': {'lr': 3e-3}}}
    assert not rep['tuning']['equal_trials'] and 'NOT the same number of finished trials' in rep['table']
    assert 'chosen on the test split' in rep['table']


def test_dis_grid_runs_then_reports_a_tiny_grid(tmp_path, capsys):
    g = grid(tmp_path/'g', seeds=[0, 1], budget={'compute': 12 * 8 * 3, 'evals': 2}, eval={'limit': 8, 'also': ['train']})
    p = tmp_path/'grid.yaml'; p.write_text(yaml.safe_dump({k: v for k, v in g.items() if k != '_where'}))
    assert R.grid_cli([str(p), '--workers', '0']) == 0
    capsys.readouterr()
    assert R.grid_cli([str(p), '--report']) == 0
    text = capsys.readouterr().out
    out = tmp_path/'g'
    rows = list(csv.DictReader(open(out/'results.csv')))
    assert len(rows) == 2 * 2 * 2 and {r['arm'] for r in rows} == {'dis_label', 'dis_waves'}
    assert (out/'report.md').read_text().strip() == text.strip()
    for f in ('acc_vs_compute.png', 'acc_per_step.png', 'results_steps.csv'): assert (out/f).stat().st_size > 0
    seeds = [[json.loads(l) for l in (out/'runs'/'sudoku4'/'dis_waves'/f'seed{s}'/'evals.jsonl').read_text().splitlines()] for s in (0, 1)]
    recs = seeds[1]
    per_seed = ', '.join(f"{np.mean([r['exact'] for r in rs[-2:]]):.3f}" for rs in seeds)
    assert f'| dis_waves | 2 | {per_seed} |' in text, 'per-seed primary endpoint, from the records'
    assert 'Differences against dis_label' in text and 'lookup baseline' in text
    assert len(recs[0]['correct']) == recs[0]['n_test'] == 8 and recs[0]['split'] == 'test' and recs[0]['flops'] > 0
    assert 'propagation waves' in text and 'seeds x puzzles' in text and '(flops)' in text
    assert recs[-1]['train_n'] == 8 and 'Train-test gap' in text
    assert 'Share of seeds at exact >= 0.5' in text and 'sudoku_waves' in text


def test_a_malformed_correct_string_is_one_clear_error(tmp_path, capsys):
    g = grid(tmp_path/'g', seeds=[0]); E.prepare_grid_data(g); write_records(g, _hand)
    f = E.cell_dir(g, E.expand_grid(g)[0])/'evals.jsonl'
    recs = [json.loads(l) for l in f.read_text().splitlines()]; recs[1]['correct'] = '01x'
    f.write_text(''.join(json.dumps(r) + '\n' for r in recs))
    p = tmp_path/'grid.yaml'; p.write_text(yaml.safe_dump({k: v for k, v in g.items() if k != '_where'}))
    assert R.grid_cli([str(p), '--report']) == 2
    err = capsys.readouterr().err
    assert "sudoku4/dis_label/seed0 step" in err and "`correct` must be a string of '0'/'1'" in err and 'Traceback' not in err
