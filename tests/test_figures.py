"""Figures and Table 1 from real tasks and real (tiny) run folders."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import matplotlib
matplotlib.use('Agg')

from dis_nbdev.figures import (PAPER_ROWS, TARGETS, figure_blueprint, figure_corruption, figure_cost,
                               figure_table1, figure_training_curves, figures_cli, load_runs, make_all_figures,
                               pick_tasks, read_metrics, save_figure, step_targets, table1)


pytestmark = pytest.mark.usefixtures('one_torch_thread')   # see conftest.py


def _ok(paths):
    assert [p.suffix for p in paths] == ['.png', '.pdf']
    png, pdf = paths
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert pdf.stat().st_size > 1000 and pdf.read_bytes()[:5] == b'%PDF-'


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    """make_all_figures on an empty runs folder: trains tiny DIS and TRM runs first, then draws everything."""
    root = tmp_path_factory.mktemp('figs')
    out = make_all_figures(root / 'runs', root / 'figures', max_examples=6, log=lambda *a: None)
    return root, out


def test_make_all_figures_trains_when_empty_and_draws_everything(made):
    root, out = made
    runs = load_runs(root / 'runs')
    assert sorted(r.method for r in runs) == ['dis', 'trm']
    for r in runs:
        assert r.metrics and r.eval is not None and (r.path / 'checkpoint.pt').exists()
    expected = {'figure1_blueprint', 'table1', 'training_curves', 'cost_per_sample', 'improvement_curves',
                *(f'figure4_corruption_{t}' for t in TARGETS),
                *(f'policy_delta_vs_advantage_{r.name}' for r in runs), *(f'policy_pi_vs_pu_{r.name}' for r in runs)}
    assert expected <= set(out)
    for name in expected: _ok(out[name][:2])
    an = json.loads((root / 'figures' / 'analysis.json').read_text())
    assert len(an) == 2 and all(a['identity_max_error'] < 1e-5 for a in an.values())


def test_each_figure_function_writes_png_and_pdf(made, tmp_path):
    root, _ = made
    runs = load_runs(root / 'runs')
    tasks = pick_tasks(k=2)
    _ok(save_figure(figure_blueprint(tasks[0]), tmp_path, 'f1'))
    _ok(save_figure(figure_corruption(tasks, 'mask'), tmp_path, 'f4'))
    _ok(save_figure(figure_table1(table1(runs)), tmp_path, 't1'))
    _ok(save_figure(figure_training_curves(runs), tmp_path, 'curves'))
    _ok(save_figure(figure_cost(runs), tmp_path, 'cost'))


def test_step_targets_end_at_the_answer():
    t = pick_tasks(k=1)[0]
    for name in TARGETS:
        st = step_targets(t, name)
        assert st['frames'].shape[0] == 6 and (st['frames'][-1] == st['y']).all()


def test_table1_marks_missing_runs(made, tmp_path):
    root, _ = made
    empty = table1([])
    assert [r['model'] for r in empty['rows']] == [p['model'] for p in PAPER_ROWS]
    assert all(r['run (this package)'] == 'no run' for r in empty['rows'])
    runs = load_runs(root / 'runs')
    tb = table1(runs)
    by = {r['model']: r for r in tb['rows'] if r['model']}
    assert by['DIS-compact']['run (this package)'].startswith('tiny_dis')
    assert by['TRM-compact']['run (this package)'].startswith('tiny_trm')
    for m in ('TRM', 'DIS-medium', 'HRM'):
        assert by[m]['run (this package)'] == 'no run'
    float(by['DIS-compact']['run pass@2'])                       # a measured number
    assert tb['markdown'].count('no run') == len(PAPER_ROWS) - 2
    # a run folder without eval.json is shown as not evaluated
    dis = next(r for r in runs if r.method == 'dis')
    copy = tmp_path / 'runs' / 'copy'
    shutil.copytree(dis.path, copy)
    (copy / 'eval.json').unlink()
    assert table1(tmp_path / 'runs')['rows'][4]['run pass@2'] == 'not evaluated'


def test_read_metrics_skips_a_half_written_line(made, tmp_path):
    root, _ = made
    src = next(r for r in load_runs(root / 'runs') if r.method == 'dis').path / 'metrics.jsonl'
    text = src.read_text()
    (tmp_path / 'm.jsonl').write_text(text + '{"step": 99, "lo')
    assert read_metrics(tmp_path / 'm.jsonl') == read_metrics(src) and len(read_metrics(src)) > 0


def test_figures_cli_from_saved_runs(made, tmp_path):
    root, _ = made
    # exactly what the dis-figures console script does: sys.exit(figures_cli())
    r = subprocess.run([sys.executable, '-c', 'import sys; from dis_nbdev.figures import figures_cli; sys.exit(figures_cli())',
                        '--runs', str(root / 'runs'), '--out', str(tmp_path / 'f'), '--no-train', '--no-analysis'],
                       capture_output=True, text=True, env={**os.environ, 'MPLBACKEND': 'Agg'}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'files in' in r.stdout
    assert (tmp_path / 'f' / 'table1.md').read_text().startswith('| model |')
    assert (tmp_path / 'f' / 'training_curves.pdf').exists() and not (tmp_path / 'f' / 'improvement_curves.png').exists()
    (tmp_path / 'nothing').mkdir()
    with pytest.raises(SystemExit) as e:
        figures_cli(['--runs', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'g'), '--no-train'])
    assert e.value.code == 2


def test_two_runs_of_one_config_get_two_figures_and_dis_eval_results_count(made, tmp_path):
    """Runs are named by their folder: two seeds of one config (same config name) give two per-run figures, and a run
    scored by dis-eval (eval/eval.json) is shown with its score, not as 'not evaluated'."""
    root, _ = made
    dis = next(r for r in load_runs(root / 'runs') if r.method == 'dis')
    runs = tmp_path / 'runs'
    for seed in ('seed0', 'seed1'): shutil.copytree(dis.path, runs / seed)
    (runs / 'seed1' / 'eval').mkdir()
    (runs / 'seed1' / 'eval.json').rename(runs / 'seed1' / 'eval' / 'eval.json')      # where dis-eval writes it
    loaded = load_runs(runs)
    assert [r.name for r in loaded] == ['seed0', 'seed1'] and {r.config['name'] for r in loaded} == {dis.config['name']}
    assert loaded[1].eval == dis.eval
    row = next(r for r in table1(loaded)['rows'] if r['model'] == 'DIS-compact')
    assert row['run pass@2'] != 'not evaluated' and float(row['run pass@2']) >= 0
    out = make_all_figures(runs, tmp_path / 'f', max_examples=4, log=lambda *a: None)
    per_run = sorted(k for k in out if k.startswith('policy_delta_vs_advantage_'))
    assert per_run == ['policy_delta_vs_advantage_seed0', 'policy_delta_vs_advantage_seed1']
    for k in per_run: _ok(out[k][:2])
