"""The demo's ARC part is budgeted in optimizer steps: a second run trains exactly the same steps (same metrics, same
scores), its plan lines announce that budget, and its closing lines are computed from its own numbers."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from dis_nbdev.demo import NET_CALLS, QUICK_RUNS, SMOKE_STEPS, expected_minutes, quick_spec, quick_steps

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
