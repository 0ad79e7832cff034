"""dis-grid cells through submitit: the Slurm request is checked field by field, a tiny grid run by submitit's
LocalExecutor equals the local pool's, and a cell preempted mid-training (real signal, real requeue, or its
checkpoint() submission run by hand) resumes and ends with the records and losses of an uninterrupted run."""
import json, os, signal, sys, time

import pytest
import submitit

from dis_nbdev.core import ConfigError
from dis_nbdev import experiments as E
from dis_nbdev import grid_submit as S
from dis_nbdev.callbacks import Callback

TINY_MODEL = {'hidden_size': 32, 'num_heads': 2, 'num_layers': 1, 'puzzle_emb_ndim': 32, 'puzzle_emb_len': 1}
from test_experiments import tiny_grid as _experiments_grid  # noqa: E402

TIMING = ('train_cpu_s', 'train_wall_s', 'eval_cpu_s')

def tiny_grid(out, steps=48, **kw):
    "Two cells (TRM, DIS) of the tiny Sudoku grid of test_experiments, one seed, evaluated at steps/2 and steps."
    g = _experiments_grid(out, seeds=[0], budget={'steps': steps, 'evals': 2})
    for k in ('baseline', 'target'): g.pop(k)
    g['base'] = {**g['base'], 'log_every': 1}
    g.update(kw)
    return g

def records(g, cell):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in E.read_evals(E.cell_dir(g, cell))]

def losses(g, cell):
    lines = (E.cell_dir(g, cell)/'train'/'metrics.jsonl').read_text().splitlines()
    return [(r['step'], r['loss']) for r in map(json.loads, lines) if 'loss' in r]

def test_slurm_section_checked_field_by_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        S.load_submit_grid(tiny_grid(tmp_path, slurm={'partiton': 'gpu', 'time': '4h', 'mem': 'lots', 'cpus': 0}))
    msg = str(e.value)
    for part in ("slurm.partiton: unknown Slurm field; did you mean 'partition'?", "slurm.time='4h'", "slurm.mem='lots'",
                 'slurm.cpus=0: expected a whole number >= 1'):
        assert part in msg
    p = S.slurm_params({'partition': 'gpu', 'account': 'acct', 'time': '1-02:00:00', 'gpus_per_task': 1, 'cpus': 8,
                        'mem': '500M', 'array_parallelism': 4, 'signal_delay_s': 300, 'extra': {'mail-type': 'FAIL'}})
    assert p['timeout_min'] == 26 * 60 and p['gpus_per_node'] == 1 and p['cpus_per_task'] == 8 and p['mem_gb'] == 500 / 1024
    assert p['slurm_partition'] == 'gpu' and p['slurm_account'] == 'acct' and p['slurm_array_parallelism'] == 4
    assert p['slurm_signal_delay_s'] == 300 and p['slurm_additional_parameters'] == {'mail-type': 'FAIL'}
    assert S.parse_minutes('90:30') == 91 and S.parse_minutes(5) == 5 and S.parse_minutes('2-0') == 2880
    with pytest.raises(ConfigError, match='--submit \'pbs\''): S.submit_grid(tiny_grid(tmp_path/'x'), cluster='pbs')

def test_slurm_section_with_extends(tmp_path):
    (tmp_path/'grids').mkdir()
    (tmp_path/'grids'/'base.json').write_text(json.dumps(tiny_grid(tmp_path/'base')))
    (tmp_path/'grids'/'child.yaml').write_text('extends: base.json\nseeds: [1]\nslurm: {partition: gpu, time: 30}\n')
    g, slurm = S.load_submit_grid(tmp_path/'grids'/'child.yaml')
    assert g['name'] == 'child' and g['seeds'] == [1] and slurm == {'partition': 'gpu', 'time': 30} and g['slurm'] == slurm
    assert g['_where'] == str(tmp_path/'grids'/'child.yaml') and [c.key for c in E.expand_grid(g)][0] == 'sudoku4/trm/seed1'

def _parser():
    "dis-grid's parser as the lead extends it: the grid parser's flags plus add_submit_arguments."
    from dis_nbdev.parsers import grid_parser
    ap = grid_parser()
    return ap if any('--submit' in a.option_strings for a in ap._actions) else S.add_submit_arguments(ap)

def _fake_slurm(tmp_path, monkeypatch):
    "srun and sbatch stand-ins on PATH: sbatch keeps the script it was given and answers with job 4242."
    bin_ = tmp_path/'bin'; bin_.mkdir()
    (bin_/'srun').write_text('#!/bin/sh\nexit 0\n')
    (bin_/'sbatch').write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/sbatch.sh\necho "Submitted batch job 4242"\n')
    for f in bin_.iterdir(): f.chmod(0o755)
    monkeypatch.setenv('PATH', f"{bin_}{os.pathsep}{os.environ['PATH']}")

def test_submit_to_slurm_writes_the_request_and_job_ids(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch)
    grid = tiny_grid(tmp_path/'g', slurm={'partition': 'gpu', 'time': '02:00:00', 'cpus': 4, 'array_parallelism': 1})
    (tmp_path/'g.yaml').write_text(json.dumps(grid))
    ap = _parser()
    log = []
    assert S.submit_cli(ap.parse_args([str(tmp_path/'g.yaml'), '--submit', 'slurm', '--slurm', 'account=acct', 'mem=8G']),
                        log=log.append) == 0
    sb = (tmp_path/'sbatch.sh').read_text()
    for line in ('--partition=gpu', '--account=acct', '--time=120', '--cpus-per-task=4', '--mem=8GB', '--array=0-1%1',
                 '--signal=USR2@90', '--job-name=dis-grid-tiny'):
        assert line in sb, (line, sb)
    jobs = json.loads((tmp_path/'g'/'submit'/'jobs.json').read_text())['cells']
    assert {k: v['job_id'] for k, v in jobs.items()} == {'sudoku4/trm/seed0': '4242_0', 'sudoku4/dis_code/seed0': '4242_1'}
    assert all(v['cluster'] == 'slurm' for v in jobs.values()) and any('4242_1' in x for x in log)
    pickled = sorted((tmp_path/'g'/'submit'/'logs').glob('4242_*_submitted.pkl'))
    fn = submitit.helpers.DelayedSubmission.load(pickled[0]).function
    assert isinstance(fn, S.CellJob) and fn.threads == 4 and fn.device == 'cpu' and fn.cwd == os.getcwd()
    # no sacct here: the jobs' state is UNKNOWN, which counts as live, so nothing is submitted twice
    again = S.submit_grid(tmp_path/'g.yaml', log=lambda *a: None)
    assert again['submitted'] == {} and sorted(again['live']) == sorted(jobs) and 'UNKNOWN' in again['live']['sudoku4/trm/seed0']
    assert sorted(S.submit_grid(tmp_path/'g.yaml', force=True, log=lambda *a: None)['submitted']) == sorted(jobs)

def test_submit_cli_flags(tmp_path):
    with pytest.raises(ConfigError, match="--slurm 'partition': expected KEY=VALUE"): S.parse_slurm_overrides(['partition'])
    ap = _parser()
    (tmp_path/'g.yaml').write_text(json.dumps(tiny_grid(tmp_path/'g')))
    with pytest.raises(ConfigError, match='slurm.gpus_per_task=1 but --device cpu'):
        S.submit_cli(ap.parse_args([str(tmp_path/'g.yaml'), '--submit', 'slurm', '--slurm', 'gpus_per_task=1']))
    assert S.submit_cli(ap.parse_args([str(tmp_path/'g.yaml')])) is None, 'no --submit: the local pool runs'

def test_grid_cli_submits_or_hands_over_to_the_local_pool(tmp_path, capsys):
    (tmp_path/'g.yaml').write_text(json.dumps(tiny_grid(tmp_path/'g')))    # (a slurm: section once GRID_KEYS lists it)
    assert S.grid_cli([str(tmp_path/'g.yaml'), '--list']) == 0           # grid_report.grid_cli: the cells and budgets
    out = capsys.readouterr().out
    assert 'sudoku4/dis_code/seed0' in out and '0/2 points' in out
    assert S.grid_cli([str(tmp_path/'g.yaml'), '--slurm', 'cpus=2']) == 2
    assert '--slurm needs --submit' in capsys.readouterr().err
    assert S.grid_cli([str(tmp_path/'g.yaml'), '--submit', 'slurm', '--slurm', 'tme=5']) == 2       # no traceback
    assert "slurm.tme: unknown Slurm field; did you mean 'time'?" in capsys.readouterr().err
    assert S.grid_cli([str(tmp_path/'g.yaml'), '--jobs']) == 0 and 'not submitted' in capsys.readouterr().out

def test_missing_submitit_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'submitit', None)
    with pytest.raises(S.MissingExtraError, match=r'pip install "dis_nbdev\[cluster\]"'):
        S.submit_grid(tiny_grid(tmp_path), cluster='local')

class _PreemptAt(Callback):
    "Sends this process submitit's warning signal once training has passed `step` (a preemption mid-training)."
    def __init__(self, step): self.step, self.sent = step, False
    def after_batch(self, st):
        if not self.sent and st.step >= self.step: self.sent = True; os.kill(os.getpid(), signal.SIGUSR2)

def test_checkpoint_submission_resumes_a_preempted_cell(tmp_path, monkeypatch):
    ref = E.load_grid(tiny_grid(tmp_path/'ref', steps=24)); E.prepare_grid_data(ref)
    key = 'sudoku4/dis_code/seed0'
    rcell = {c.key: c for c in E.expand_grid(ref)}[key]
    E.run_cell(ref, rcell)                                            # uninterrupted
    g = E.load_grid(tiny_grid(tmp_path/'g', steps=24)); E.prepare_grid_data(g)
    cell = {c.key: c for c in E.expand_grid(g)}[key]
    gpath = E.atomic_write_json(tmp_path/'g'/'grid.json', {k: v for k, v in g.items() if k != '_where'})
    real = E.train
    monkeypatch.setattr(E, 'train', lambda cfg, resume=False: real(cfg, resume=resume, callbacks=[_PreemptAt(6)]))
    job = S.CellJob(str(gpath), key)
    with pytest.raises(S.CellPreempted, match='stopped on SIGUSR2 with 0/2 evaluation points'): job()
    state = json.loads(S.job_state_path(g, cell).read_text())
    assert state['state'] == 'preempted' and state['trained_to'] == 6 < cell.points[0], 'stopped mid-training'
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL, 'handlers restored'
    monkeypatch.setattr(E, 'train', real)
    nxt = job.checkpoint()
    assert isinstance(nxt, submitit.helpers.DelayedSubmission) and nxt.function.attempt == 2
    out = nxt.result()                                                # the requeued job
    assert out['points'] == cell.points and E.cell_done(g, cell)
    assert records(g, cell) == records(ref, rcell) and losses(g, cell) == losses(ref, rcell)
    st = json.loads(S.job_state_path(g, cell).read_text())
    assert st['state'] == 'done' and st['attempt'] == 2 and [h['state'] for h in st['history']] == ['running', 'preempted', 'running']

def _wait(pred, timeout, what):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout: raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.02)

def test_local_executor_grid_equals_pool_and_requeues_on_preemption(tmp_path):
    ref = E.load_grid(tiny_grid(tmp_path/'ref'))
    E.run_grid(ref, workers=0, log=lambda *a: None)                   # the local pool, in this process
    g = E.load_grid(tiny_grid(tmp_path/'g'))
    ex = submitit.LocalExecutor(folder=tmp_path/'g'/'submit'/'logs')
    ex.update_parameters(timeout_min=10)
    res = S.submit_grid(g, executor=ex, log=lambda *a: None)
    assert sorted(res['submitted']) == sorted(c.key for c in E.expand_grid(g)) and not res['done']
    jobs = json.loads((tmp_path/'g'/'submit'/'jobs.json').read_text())['cells']
    assert {r['job_id'] for r in jobs.values()} == {str(j.job_id) for j in res['jobs']}
    again = S.submit_grid(g, executor=ex, log=lambda *a: None)        # while they run: nothing is submitted twice
    assert again['submitted'] == {} and sorted(again['live']) == sorted(res['submitted'])
    cells = {c.key: c for c in E.expand_grid(g)}
    cell = cells['sudoku4/dis_code/seed0']
    metrics = E.cell_dir(g, cell)/'train'/'metrics.jsonl'
    _wait(lambda: metrics.exists() and metrics.read_text().strip(), 900, 'the DIS cell to start training')
    pid = json.loads(S.job_state_path(g, cell).read_text())['pid']
    os.kill(pid, signal.SIGSTOP)                     # freeze it mid-training, so the warning lands there
    try: os.kill(pid, signal.SIGUSR2)                # what submitit / Slurm send before preempting or timing out
    finally: os.kill(pid, signal.SIGCONT)
    for j in res['jobs']: j.result()
    state = json.loads(S.job_state_path(g, cell).read_text())
    pre = [h for h in state['history'] if h['state'] == 'preempted']
    assert state['state'] == 'done' and state['attempt'] == 2 and len(pre) == 1 and pre[0]['signal'] == 'SIGUSR2'
    assert 0 < pre[0]['trained_to'] < cell.points[0], f'preempted mid-training: {pre[0]}'
    assert pre[0]['job_id'] == state['job_id'] == jobs[cell.key]['job_id'], 'the same job, requeued'
    for k, c in cells.items():
        rc = {x.key: x for x in E.expand_grid(ref)}[k]
        assert records(g, c) == records(ref, rc) and losses(g, c) == losses(ref, rc), k
    rows = S.submit_status(g, log=lambda *a: None)
    assert all(r['done'] and r['job_state'] == 'done' for r in rows)
    final = S.submit_grid(g, executor=ex, log=lambda *a: None)
    assert final['submitted'] == {} and sorted(final['done']) == sorted(cells)
