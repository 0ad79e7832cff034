"""The demo's part 1 (6x6 Sudoku, the targets question) answers from its own comparison rows; its ARC part is budgeted in
optimizer steps: a second run trains exactly the same steps (same metrics, same scores), its plan lines announce that
budget, and its closing lines are computed from its own numbers."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from dis_nbdev.demo import (NET_CALLS, PART1_CPU_S_PER_SEED, QUICK_RUNS, SMOKE_STEPS, expected_minutes, quick_spec,
                            quick_steps, sudoku_answer)

ENV = {**os.environ, 'MPLBACKEND': 'Agg', 'WANDB_MODE': 'disabled', 'PYTHONPATH': str(ROOT)}


def _part2(tmp_path, name):
    out = tmp_path / name
    r = subprocess.run([sys.executable, '-m', 'dis_nbdev.demo', '--part', 'arc', '--smoke', '--out', str(out)],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, json.loads((out / 'demo_summary.json').read_text()), out, r.stdout + r.stderr


def _metrics(run_dir):
    recs = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if 'time' not in k and not k.endswith('_s') and 'per_s' not in k} for r in recs]


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('demo')
    return _part2(tmp, 'first'), _part2(tmp, 'second')


def test_part2_trains_the_same_steps_twice(two_runs):
    (_, s1, d1, _), (_, s2, d2, _) = two_runs
    steps = {n: quick_steps(n, SMOKE_STEPS) for n in QUICK_RUNS}
    assert {n: f['optimizer_steps'] for n, f in s1['runs'].items()} == steps
    assert {n: f['optimizer_steps'] for n, f in s2['runs'].items()} == steps
    for n in QUICK_RUNS:
        run = quick_spec(n, steps=SMOKE_STEPS, smoke=True).run_dir.name
        m1, m2 = _metrics(d1 / run), _metrics(d2 / run)
        assert m1 and m1 == m2, n                       # same losses and accuracies at every logged step
    assert s1['results'] == s2['results'] and s1['answer'] == s2['answer']


def test_plan_lines_state_the_step_budget(two_runs):
    (_, _, _, out1), _ = two_runs
    for n, k in {n: quick_steps(n, SMOKE_STEPS) for n in QUICK_RUNS}.items():
        plan = next(line for line in out1.replace('\r', '\n').splitlines() if line.startswith(f'{n} [') and ': plan ' in line)
        assert f'plan {k} optimizer steps' in plan, plan
    assert 'time_budget' not in out1 and '1,640,625' not in out1


def test_closing_lines_are_computed_from_the_numbers(two_runs):
    (out1, s1, _, _), _ = two_runs
    tail = out1[out1.index('What these numbers say:'):]
    assert s1['answer'] and all(line in tail for line in s1['answer'])
    for n, r in s1['results'].items():
        first, last = r['per_step'][0]['token_acc'], r['per_step'][-1]['token_acc']
        assert f'{first:.2f} -> {last:.2f} ({last - first:+.2f}, {s1["runs"][n]["optimizer_steps"]} steps)' in tail
    best = max(float(r['pass@k']['2']) for r in s1['results'].values())
    assert f'best pass@2 {best:.3f}' in tail
    assert f"{s1['baselines']['majority colour']['pass@2']:.3f}" in tail


def test_equal_compute_and_expected_duration():
    calls = {n: quick_steps(n) * NET_CALLS[n] for n in QUICK_RUNS}
    assert len(set(calls.values())) == 1                # the three runs get the same compute
    spec = quick_spec('cpu_quick_trm')
    assert spec.train['max_steps'] == quick_steps('cpu_quick_trm') and spec.train['time_budget_s'] is None
    assert spec.train['lr_warmup_steps'] <= spec.train['max_steps'] // 4     # every run reaches its learning rate
    exp = expected_minutes('all')
    assert set(exp) == {'sudoku', 'arc'} and 5 < sum(exp.values()) < 30
    assert PART1_CPU_S_PER_SEED == 438 and 5 < exp['sudoku'] <= 20            # part 1 fits 20 minutes on 2 quiet cores


def test_an_interrupted_demo_says_how_to_resume(tmp_path):
    "SIGTERM (or Ctrl-C) while part 2 trains: exit 75 with one line saying how to resume, no traceback."
    import signal
    args = [sys.executable, '-m', 'dis_nbdev.demo', '--part', 'arc', '--smoke', '--runs', 'cpu_quick_dis', '--steps', '3000',
            '--out', str(tmp_path / 'demo')]
    p = subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:                                        # the trainer's plan line: training has started
        if 'cpu_quick_dis [dis]: plan 3,000 optimizer steps' in line: break
    assert p.poll() is None, 'the demo ended before its training started'
    p.send_signal(signal.SIGTERM)
    err = line + p.stderr.read()
    assert p.wait(timeout=300) == 75, err[-3000:]
    assert 'Traceback' not in err and 'demo: ' in err and 'Run the same command again to resume' in err, err[-3000:]


def test_part1_smoke_answers_from_its_comparison_rows(tmp_path):
    "`--part sudoku --smoke`: three arms, two seeds; every closing line is the report's comparison row, verdict included."
    out = tmp_path / 'demo'
    r = subprocess.run([sys.executable, '-m', 'dis_nbdev.demo', '--part', 'sudoku', '--smoke', '--out', str(out)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / 'demo_summary.json').read_text())['sudoku']
    ans, tail = s['answer'], r.stdout[r.stdout.index('What these numbers say:'):]
    assert len(ans) == 4 and all(line in tail for line in ans)
    cmp = {(c['arm'], c['endpoint']): c for c in s['comparisons'] if c['baseline'] == 'dis_label_x'}
    assert set(cmp) == {(a, e) for a in ('dis_waves_x', 'trm_T1n2') for e in ('final', 'auc')}
    fin = {row['arm']: row['per_seed'] for row in s['summary']}
    assert cmp['dis_waves_x', 'final']['per_seed'] == pytest.approx(
        [fin['dis_waves_x'][k]['final'] - fin['dis_label_x'][k]['final'] for k in ('0', '1')])   # waves minus label
    for line, key in zip(ans, [('dis_waves_x', 'final'), ('dis_waves_x', 'auc'), ('trm_T1n2', 'final')]):
        c = cmp[key]; b, t = c['boot'], c['t']
        assert c['seeds'] == [0, 1] and b is not None                          # per-puzzle records: the bootstrap ran
        assert f"{t['diff']:+.3f}" in line and f"[{b['low']:+.3f}, {b['high']:+.3f}]" in line, line
        assert f"paired t over 2 seeds [{t['low']:+.3f}, {t['high']:+.3f}]" in line, line
        sep = (b['low'] > 0 and t['low'] > 0) or (b['high'] < 0 and t['high'] < 0)
        assert ('not separated at this budget and these seeds' in line) != sep, line
    assert ans[0].startswith('Per-step targets (dis_waves_x minus dis_label_x, which differ in the targets only): '
                             'exact (mean of the last 2 points) ')
    assert ans[1].startswith('The same difference, area under exact vs compute ')
    assert ans[2].startswith('Reference line: trm_T1n2 (TRM, ACT halting, label) minus dis_label_x, exact')
    assert ans[3] == ('Caveat: --smoke (a tiny network, 12 optimizer steps, 64 training puzzles): these lines check the mechanics; '
                      'their numbers mean nothing.')
    assert (out / 'targets_smoke' / 'report.md').exists() and all(os.path.exists(f) for f in s['figures'])


def test_part1_says_help_only_where_both_intervals_exclude_zero():
    def rows(boot, t):
        return [dict(arm='dis_waves_x', baseline='dis_label_x', endpoint=e, seeds=[0, 1], per_seed=[0.1, 0.1],
                     boot=dict(diff=0.1, low=boot[0], high=boot[1]), t=dict(diff=0.1, low=t[0], high=t[1])) for e in ('final', 'auc')]
    both = sudoku_answer(rows((0.05, 0.15), (0.01, 0.2)), steps=600, a_steps=1200)
    assert both[0].endswith('the wave targets help.') and 'Caveat: 2 seeds and 600 optimizer steps (50% of experiment A' in both[-1]
    assert sudoku_answer(rows((-0.3, -0.1), (-0.4, -0.01)))[0].endswith('the wave targets hurt.')
    assert sudoku_answer(rows((0.05, 0.15), (-0.5, 0.7)))[0].endswith(
        'not separated at this budget and these seeds (the bootstrap alone excludes 0; the paired t over 2 seeds does not).')
    assert sudoku_answer(rows((-0.05, 0.15), (-0.5, 0.7)))[0].endswith('not separated at this budget and these seeds.')
    assert 'not separated at this budget and these seeds' in sudoku_answer(rows((0.05, 0.15), (float('nan'), float('nan'))))[0]
    assert 'no answer' in sudoku_answer([])[0]
