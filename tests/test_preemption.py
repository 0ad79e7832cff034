"""Preemption under torchrun: `dis-run --gpus 2` (2 gloo workers) stopped by SIGUSR1 (a scheduler's warning) and by
SIGTERM (preemption) exits 75 with no worker left behind, and the resumed run equals an uninterrupted one; the
distributed variables of a Slurm step; the torchrun command lines of one node and of several."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dis_nbdev.core import EXIT_INTERRUPTED, ConfigError, launch_env
from dis_nbdev.runner import STOP_SIGNALS, launch_training, load_run_spec, read_metrics, torchrun_command, torchrun_env

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / 'papermill_runs' / 'configs' / 'ci_tiny.yaml'
ENV = {**os.environ, 'WANDB_MODE': 'disabled', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}
STEPS = 120                     # 20 batches of 6 supervision steps
SETS = [f'max_steps={STEPS}', 'evaluate=false', 'log_every=1', 'checkpoint_every=100000']


def _processes_naming(text: str) -> list[str]:
    "Command lines of the live processes that mention `text` (the run folder: torchrun and its workers name it)."
    out = []
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try:
            cmd = (p / 'cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
            if text in cmd and (p / 'stat').read_text().split(')')[-1].split()[0] != 'Z': out.append(f'{p.name}: {cmd}')
        except OSError: pass
    return out


def _last_step(run_dir) -> int:
    return max((r['step'] for r in read_metrics(run_dir)), default=0) if (Path(run_dir) / 'metrics.jsonl').exists() else 0


def _interrupt(cmd, run_dir, sig, after_step, timeout=300):
    "Start dis-run, send `sig` once the workers have logged a step past `after_step`; returns (exit status, stderr)."
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while _last_step(run_dir) <= after_step:
            assert proc.poll() is None, f'dis-run ended before the signal: {proc.communicate()}'
            assert time.time() - t0 < timeout, 'no training progress'
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None: proc.kill()
    return proc.returncode, err


@pytest.mark.skipif(not hasattr(signal, 'SIGUSR1'), reason='POSIX signals')
def test_usr1_and_term_under_torchrun_exit_75_leave_no_worker_and_resume_identically(tmp_path):
    out = tmp_path / 'runs'; d = out / 'ci_tiny'
    cmd = [sys.executable, '-m', 'dis_nbdev.runner', str(CI), '--out', str(out), '--gpus', '2', '--quiet', '--grace', '60']
    cmd += [a for s in SETS for a in ('--set', s)]
    steps = []
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        rc, err = _interrupt(cmd, d, sig, after_step=_last_step(d) + 2)
        assert rc == EXIT_INTERRUPTED == 75, err[-3000:]
        assert not _processes_naming(str(d)), 'a torchrun worker outlived dis-run'
        assert f'interrupted (signal {sig.name})' in err
        nb = (d / 'train.ipynb').read_text()                  # the kernel got it as SIGTERM, and logged the stop time:
        assert 'SIGTERM: the 2 workers stopped' in nb and 'grace 60s' in nb and 'killed' not in nb
        summary = json.loads((d / 'summary.json').read_text())
        assert summary['state'] == 'interrupted' and summary['world_size'] == 2 and summary['step'] < STEPS, summary
        assert json.loads((d / 'run.json').read_text())['status'] == 'interrupted'
        steps.append(summary['step'])
    assert steps[0] < steps[1]                                # the second attempt resumed from the first checkpoint
    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((d / 'summary.json').read_text())['step'] == STEPS

    ref = load_run_spec(CI, out=tmp_path / 'ref', overrides=SETS)     # the same run on 2 workers, never interrupted
    assert launch_training(ref, gpus=2, echo=False)['state'] == 'finished'
    a = torch.load(d / 'checkpoint.pt', map_location='cpu', weights_only=False)
    b = torch.load(ref.run_dir / 'checkpoint.pt', map_location='cpu', weights_only=False)
    assert a['model'].keys() == b['model'].keys() and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    ra, rb = read_metrics(d), read_metrics(ref.run_dir)
    assert [r['step'] for r in ra] == [r['step'] for r in rb] == list(range(1, STEPS + 1))
    assert [r['loss'] for r in ra] == [r['loss'] for r in rb]


def test_torchrun_handles_usr1_and_waits_the_grace():
    env = torchrun_env(2, grace_s=300, environ={'PATH': '/bin'})
    for var in ('TORCHELASTIC_SIGNALS_TO_HANDLE', 'PET_SIGNALS_TO_HANDLE'):
        assert set(env[var].split(',')) == set(STOP_SIGNALS.split(',')) >= {'SIGTERM', 'SIGUSR1', 'SIGINT'}
    assert env['TORCH_ELASTIC_SHUTDOWN_TIMEOUT'] == env['PET_SHUTDOWN_TIMEOUT'] == '300'


@pytest.mark.parametrize('kw, want, absent', [
    (dict(), ['--standalone', '--nproc_per_node=4'], ['--nnodes=2']),
    (dict(nnodes=2, node_rank=1, rdzv_endpoint='gpu03:29400', run_id='r-train'),
     ['--nnodes=2', '--node_rank=1', '--rdzv_backend=c10d', '--rdzv_endpoint=gpu03:29400', '--rdzv_id=r-train',
      '--nproc_per_node=4'], ['--standalone']),
])
def test_torchrun_command_one_node_and_several(kw, want, absent):
    cmd = torchrun_command('runs/r/train_config.yaml', 4, resume=True, **kw)
    assert cmd[1:3] == ['-m', 'torch.distributed.run'] and cmd[-4:] == ['dis_nbdev.runner', '--worker', 'runs/r/train_config.yaml', '--resume']
    assert all(w in cmd for w in want) and not any(a in cmd for a in absent)
    assert cmd.index('--nproc_per_node=4') < cmd.index('dis_nbdev.runner')       # torchrun's options before the module


def test_several_nodes_need_an_endpoint():
    with pytest.raises(ConfigError, match='--rdzv-endpoint'): torchrun_command('c.yaml', 2, nnodes=2)


@pytest.mark.parametrize('argv, message', [
    (['--nnodes', '2'], '--rdzv-endpoint'),
    (['--nnodes', '2', '--node-rank', '2', '--rdzv-endpoint', 'h:1'], '--node-rank 2: must be in 0..1'),
    (['--grace', '0'], '--grace must be > 0'),
])
def test_dis_run_refuses_a_bad_launch_naming_the_option(argv, message, capsys):
    from dis_nbdev.runner import run_cli
    with pytest.raises(SystemExit): run_cli([str(CI), *argv])
    err = capsys.readouterr().err
    assert message in err and err.count('error:') == 1


SLURM_STEP = {'SLURM_STEP_NUM_TASKS': '8', 'SLURM_PROCID': '5', 'SLURM_LOCALID': '1', 'SLURM_JOB_ID': '424242',
              'SLURM_STEP_NODELIST': 'gpu[03-04,09]', 'SLURM_NTASKS': '8'}


@pytest.mark.parametrize('env, want', [
    ({}, dict(source='none', rank=0, world_size=1, local_rank=0)),
    ({'RANK': '3', 'WORLD_SIZE': '4', 'LOCAL_RANK': '1'}, dict(source='torchrun', rank=3, world_size=4, local_rank=1)),
    ({**SLURM_STEP, 'RANK': '0', 'WORLD_SIZE': '2', 'LOCAL_RANK': '0'}, dict(source='torchrun', world_size=2)),  # srun torchrun
    (SLURM_STEP, dict(source='slurm', rank=5, world_size=8, local_rank=1, master_addr='gpu03', master_port='24242')),
    ({**SLURM_STEP, 'MASTER_ADDR': '10.0.0.7', 'MASTER_PORT': '12345'}, dict(master_addr='10.0.0.7', master_port='12345')),
    ({**SLURM_STEP, 'SLURM_STEP_NODELIST': 'a17,b2'}, dict(master_addr='a17')),
    ({'SLURM_STEP_NUM_TASKS': '2', 'SLURM_PROCID': '1', 'SLURM_LAUNCH_NODE_IPADDR': '10.1.2.3'},
     dict(master_addr='10.1.2.3', master_port='29500', local_rank=0)),
    ({'SLURM_NTASKS': '4', 'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}, dict(source='none', world_size=1)),  # a batch script
])
def test_launch_env_reads_torchrun_then_a_slurm_step(env, want):
    got = launch_env(env)
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize('env, field', [
    ({'RANK': 'x', 'WORLD_SIZE': '2'}, "RANK='x'"),
    ({'SLURM_STEP_NUM_TASKS': '0', 'SLURM_PROCID': '0'}, "SLURM_STEP_NUM_TASKS='0'"),
    ({'SLURM_STEP_NUM_TASKS': '2', 'SLURM_PROCID': '2'}, 'SLURM_PROCID=2'),
])
def test_launch_env_names_the_bad_variable(env, field):
    with pytest.raises(ConfigError) as e: launch_env(env)
    assert field in str(e.value) and '\n' not in str(e.value)


WORKER = '''
import os, torch, torch.distributed as dist
from dis_nbdev.core import dist_info
from dis_nbdev.checkpoint import setup_distributed
info, dev, created = setup_distributed('cpu')
t = torch.tensor([float(info.rank)]); dist.all_reduce(t)
print(info.rank, info.world_size, info.local_rank, int(t.item()), created, flush=True)
dist.destroy_process_group()
'''


def test_srun_without_torchrun_forms_one_process_group(tmp_path):
    "Two processes with only a Slurm step's variables (as `srun -n 2 python ...` starts them) find each other."
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    base = {k: v for k, v in ENV.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    base.update(SLURM_STEP_NUM_TASKS='2', SLURM_JOB_ID='7', SLURM_STEP_NODELIST='127.0.0.1', MASTER_PORT=str(port))
    procs = [subprocess.Popen([sys.executable, '-c', WORKER], env={**base, 'SLURM_PROCID': str(r), 'SLURM_LOCALID': str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert sorted(o[0].split()[:4] for o in outs) == [['0', '2', '0', '1'], ['1', '2', '1', '1']]


def test_two_nodes_train_one_run(tmp_path):
    "`dis-run --nnodes 2`: node 0 runs the notebook and owns the folder, node 1 joins its training (here both on localhost)."
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    out = tmp_path / 'runs'; d = out / 'ci_tiny'
    base = [sys.executable, '-m', 'dis_nbdev.runner', str(CI), '--out', str(out), '--gpus', '1', '--quiet', '--nnodes', '2',
            '--rdzv-endpoint', f'127.0.0.1:{port}', '--set', 'max_steps=12', '--set', 'evaluate=false']
    procs = [subprocess.Popen(base + ['--node-rank', str(r)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    try: outs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None: p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert 'node 1 of 2: joining the training' in outs[1][0]
    summary = json.loads((d / 'summary.json').read_text())
    assert summary['world_size'] == 2 and summary['state'] == 'finished' and summary['step'] == 12
    assert json.loads((d / 'run.json').read_text())['status'] == 'finished'
    assert '--nnodes=2' in (d / 'train.ipynb').read_text()


FAKE_DIS_RUN = '''#!/bin/bash
echo "dis-run $*" >> "$LOG"
trap 'echo "dis-run got TERM" >> "$LOG"; sleep 0.3; exit 75' TERM
for i in $(seq 1 ${FAKE_SECONDS:-100}); do sleep 0.1; done
exit 0
'''


@pytest.mark.parametrize('sig, rc, requeued', [('USR1', 75, True), ('TERM', 75, True), (None, 0, False)])
def test_sbatch_script_stops_dis_run_and_requeues_on_75(tmp_path, sig, rc, requeued):
    "The job script's own logic, with `dis-run` and `scontrol` standing in: a signal becomes SIGTERM, exit 75 requeues."
    bin_ = tmp_path / 'bin'; bin_.mkdir(); log = tmp_path / 'log'
    (bin_ / 'dis-run').write_text(FAKE_DIS_RUN)
    (bin_ / 'scontrol').write_text('#!/bin/bash\necho "scontrol $*" >> "$LOG"\n')
    for f in bin_.iterdir(): f.chmod(0o755)
    env = {**os.environ, 'PATH': f'{bin_}:{os.environ["PATH"]}', 'LOG': str(log), 'SLURM_JOB_ID': '4242',
           'SLURM_GPUS_ON_NODE': '2', 'SLURM_SUBMIT_DIR': str(tmp_path), 'FAKE_SECONDS': '100' if sig else '3'}
    p = subprocess.Popen(['bash', str(ROOT / 'papermill_runs' / 'slurm' / 'dis_run.sbatch'), 'cfg.yaml', '--out', 'runs'],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (log.exists() and 'dis-run' in log.read_text()): assert time.time() - t0 < 30; time.sleep(0.05)
    if sig: p.send_signal(getattr(signal, f'SIG{sig}'))
    out, _ = p.communicate(timeout=60)
    lines = log.read_text().splitlines()
    assert p.returncode == rc, out
    assert lines[0] == 'dis-run cfg.yaml --out runs --gpus 2 --grace 240'
    assert ('dis-run got TERM' in lines) == bool(sig) and ('scontrol requeue 4242' in lines) == requeued
