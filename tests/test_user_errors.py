"""One clear error for every bad input a user writes (issue 21): configs, overrides, grids, devices, files, names.

Each row is an input and a substring of the message the user must see. Library rows call the function; CLI rows run
the console entry point in-process and check its exit status, its message, and that no traceback reaches the user."""
import errno

import pytest
import torch
import yaml

from dis_nbdev import experiments as E
from dis_nbdev import grid_report as GR
from dis_nbdev import files as F
from dis_nbdev import runner as R
from dis_nbdev import train as T
from dis_nbdev.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, write_checkpoint
from dis_nbdev.config import TrainConfig, apply_overrides, as_train_config, describe_plan, load_yaml, start_problems
from dis_nbdev.core import ConfigError, CheckpointError, get_device, parse_device

GOOD = dict(data_dir='data/x', out_dir='runs/x', device='cpu')

# ------------------------------------------------------------------------------------ training configs (library)
CONFIG_ROWS = [
    (dict(seed=-5), 'seed=-5: out of range'),
    (dict(seed=2**70), 'seed=1180591620717411303424: out of range'),
    (dict(model={'rope_theta': 'abc'}), 'model.rope_theta='),
    (dict(model={'rope_theta': 0}), 'model.rope_theta=0.0: out of range'),
    (dict(model={'rms_eps': -1}), 'model.rms_eps=-1.0: out of range'),
    (dict(model={'num_layers': True}), 'model.num_layers=True: expected an integer'),
    (dict(model={'puzzle_emb_ndim': 1.5}), 'model.puzzle_emb_ndim=1.5: expected an integer'),
    (dict(model={'step_embed': 'maybe'}), 'model.step_embed='),
    (dict(model={'hiden_size': 64}), "did you mean 'hidden_size'"),
    (dict(model=[1, 2]), 'model=[1, 2]: expected a mapping'),
    (dict(lrr=1e-3), "did you mean 'lr'"),
    (dict(loss='stablemx'), "did you mean 'stablemax'"),
    (dict(device='tpu'), "'tpu' is not a device"),
    (dict(device='cpu:0:1'), 'is not a device'),
    (dict(device=''), 'is not a device'),
    (dict(out_dir=''), 'out_dir: empty'),
    (dict(epochs='many'), 'epochs='),
]

@pytest.mark.parametrize('fields,message', CONFIG_ROWS, ids=[m for _, m in CONFIG_ROWS])
def test_config_rows(fields, message):
    with pytest.raises(ConfigError, match=None) as e:
        as_train_config({**GOOD, **fields}, 'my_run.yaml')
    assert message in str(e.value) and 'my_run.yaml' in str(e.value)


def test_all_problems_of_a_file_together_with_field_paths():
    with pytest.raises(ConfigError) as e:
        as_train_config({**GOOD, 'seed': -5, 'lrr': 1, 'model': {'rms_eps': -1, 'num_layers': True}}, 'f.yaml')
    assert len(e.value.errors) == 4 and 'model.rms_eps' in str(e.value) and 'model.num_layers' in str(e.value)


def test_booleans_are_booleans():
    assert as_train_config({**GOOD, 'model': {'step_embed': 'no'}}).model['step_embed'] is False
    assert as_train_config({**GOOD, 'model': {'hidden_size': '64', 'num_heads': 4}}).model['hidden_size'] == 64


# ------------------------------------------------------------------------------------ files and YAML
FILE_ROWS = [
    ('dir', None, 'is a folder'),
    ('missing', None, 'not found'),
    ('empty.yaml', b'', 'is empty'),
    ('comments.yaml', b'# nothing\n', 'holds no fields'),
    ('latin1.yaml', b'name: caf\xe9\n', ':1: not UTF-8'),
    ('dup.yaml', b'lr: 1e-3\nepochs: 2\nlr: 1e-2\n', ":3: duplicate key 'lr' (first on line 1)"),
    ('syntax.yaml', b'lr: [1,\n', 'not valid YAML'),
    ('tag.yaml', b'x: !!python/object/apply:os.system ["true"]\n', ':1:'),
    ('list.yaml', b'- 1\n- 2\n', 'expected a mapping'),
    ('bomb.yaml', ('a: &a [1,1,1,1,1,1,1,1,1,1]\n' + ''.join(f'{c}: &{c} [{",".join(["*" + p] * 10)}]\n'
                                                          for p, c in zip('abcdefgh', 'bcdefghi'))).encode(), 'alias bomb'),
]

@pytest.mark.parametrize('name,content,message', FILE_ROWS, ids=[r[0] for r in FILE_ROWS])
def test_file_rows(tmp_path, name, content, message):
    p = tmp_path / name
    if name == 'dir': p.mkdir()
    elif content is not None: p.write_bytes(content)
    with pytest.raises(ConfigError) as e: load_yaml(p)
    assert message in str(e.value) and str(p) in str(e.value) and '\n' not in str(e.value)


# ------------------------------------------------------------------------------------ overrides (one syntax)
OVERRIDE_ROWS = [
    (['lr=[1,'], 'not valid YAML'),
    (['x=!!python/object/apply:os.system ["true"]'], 'python/object'),
    (['noequals'], 'expected key=value'),
    (['../x=1'], 'is not a field name'),
]

@pytest.mark.parametrize('sets,message', OVERRIDE_ROWS, ids=[m for _, m in OVERRIDE_ROWS])
def test_override_rows(sets, message):
    with pytest.raises(ConfigError, match=None) as e: apply_overrides({}, sets)
    assert message in str(e.value)


def test_dis_train_and_dis_run_read_overrides_alike():
    sets = ['lr=5e-4', 'model.hidden_size=64', 'eval_ks=[1, 2]']
    want = {'lr': 5e-4, 'model': {'T': 2, 'hidden_size': 64}, 'eval_ks': [1, 2]}
    assert T.apply_overrides({'model': {'T': 2}}, sets) == want == apply_overrides({'model': {'T': 2}}, sets)


# ------------------------------------------------------------------------------------ devices
@pytest.mark.parametrize('device', ['tpu', 'meta', '', 'cpu:0:1', 'mps:1', 'gpu'])
def test_device_rows(device):
    with pytest.raises(ConfigError, match='is not a device'): parse_device(device, 'TrainConfig.device')


def test_device_parser_accepts_any_case_and_refuses_missing_ordinals(monkeypatch):
    assert [parse_device(d) for d in ('AUTO', 'Cpu', 'CUDA:1', ' mps ')] == ['auto', 'cpu', 'cuda:1', 'mps']
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    with pytest.raises(ConfigError, match='has 2 CUDA device'): get_device('cuda:5')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ConfigError, match='no CUDA device'): get_device('cuda')


# ------------------------------------------------------------------------------------ names and paths
@pytest.mark.parametrize('name,message', [('../escaped', 'separator'), ('a..b', '".."'), ('/abs', 'absolute'), ('a/b', 'separator'),
                                          ('2024', 'is a number'), (2024, 'quote it'), ('x\x00y', 'NUL'), ('', 'is empty')])
def test_run_name_rows(name, message):
    with pytest.raises(ConfigError, match=None) as e: R.load_run_spec({'name': name})
    assert 'run name' in str(e.value) and message in str(e.value)


RUN_SPEC_ROWS = [
    (dict(eval_ks=[0]), 'eval_ks=[0]: must be a list of k >= 1'),
    (dict(eval_ks='abc'), "eval_ks='abc': expected a list"),
    (dict(eval_n_steps=0), 'eval_n_steps=0: must be >= 1'),
    (dict(cfg_weight='nan'), 'cfg_weight=nan: must be finite'),
    (dict(data_seed=-1), 'data_seed=-1: must be in [0, 2**32)'),
    (dict(num_aug=-1), 'num_aug=-1'),
    (dict(puzzle={'kind': 'sudoku', 'boxx': 2}), "puzzle.boxx: not a sudoku field"),
    (dict(lrr=1e-3, side=40), "lrr: unknown field; did you mean 'lr'?"),      # data and training problems together
]

@pytest.mark.parametrize('fields,message', RUN_SPEC_ROWS, ids=[m[:40] for _, m in RUN_SPEC_ROWS])
def test_run_yaml_rows(fields, message):
    with pytest.raises(ConfigError) as e: R.load_run_spec({'name': 'x', **fields})
    assert message in str(e.value)


def test_out_that_is_a_file(tmp_path):
    f = tmp_path / 'file'; f.write_text('mine')
    with pytest.raises(ConfigError, match='is a file'): R.load_run_spec({'name': 'x'}, out=f)
    with pytest.raises(ConfigError, match='empty'): R.load_run_spec({'name': 'x'}, out='')
    assert f.read_text() == 'mine'


def test_symlinked_metrics_and_lock_are_refused(tmp_path):
    outside = tmp_path / 'outside.txt'; outside.write_text('keep')
    d = tmp_path / 'run'; d.mkdir()
    (d / 'metrics.jsonl').symlink_to(outside); (d / '.train.lock').symlink_to(outside)
    with pytest.raises(ConfigError, match='symbolic link'): F.RunDir(d).append_metrics({'step': 1})
    with pytest.raises(ConfigError, match='symbolic link'): F.RunDir(d).truncate_metrics(0)
    with pytest.raises(ConfigError, match='symbolic link'): F.RunDir(d).lock('train').acquire()
    assert outside.read_text() == 'keep'


def test_flock_unsupported_warns_and_continues(tmp_path, monkeypatch):
    def no_flock(fh): raise OSError(errno.ENOSYS, 'Function not implemented')
    monkeypatch.setattr(F, '_try_lock', no_flock)
    with pytest.warns(UserWarning, match='does not support file locks'):
        lock = F.FolderLock(tmp_path / 'run' / '.train.lock', 'training').acquire()
    assert lock.held and not lock.os_lock
    lock.release()


def test_one_finished_rule_and_one_torn_line_rule(tmp_path):
    assert [F.summary_state({'stopped': s}) for s in ('max_steps', 'stop_at_step', 'time_budget', 'signal SIGTERM', 'peer')] \
        == ['finished'] * 3 + ['interrupted'] * 2
    p = tmp_path / 'evals.jsonl'; p.write_text('{"opt_steps": 6}\n{"opt_st')
    with pytest.warns(UserWarning, match='torn last line'): assert E.read_evals(tmp_path) == [{'opt_steps': 6}]
    assert p.read_text() == '{"opt_steps": 6}\n'                   # repaired
    p.write_text('{"opt_steps": 6}\nGARBAGE\n{"opt_steps": 12}\n')
    with pytest.raises(ConfigError, match='evals.jsonl:2: not a JSON record'): E.read_evals(tmp_path)
    (tmp_path / 'metrics.jsonl').write_bytes(b'{"step": 1}\n{"step": 2, "x": "\xff')   # non-UTF-8 torn tail
    assert F.RunDir(tmp_path).read_metrics() == [{'step': 1}]


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_with_its_checksum_entry_removed_is_refused(tmp_path):
    p = write_checkpoint(dict(format=CHECKPOINT_FORMAT, model={'w': torch.ones(2)}, step=1), tmp_path / 'checkpoint.pt')
    ck = torch.load(p, weights_only=True); del ck['sha256']; ck['model']['w'] += 1; torch.save(ck, p)
    with pytest.raises(CheckpointError, match='no checksum entry'): read_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------ start-up and plan lines
def test_start_up_checks(tmp_path):
    (tmp_path / 'data' / 'train').mkdir(parents=True)
    cfg = TrainConfig(data_dir=str(tmp_path / 'data'), eval_every=100, eval_batch_size=6, global_batch_size=8)
    probs = '\n'.join(start_problems(cfg, world_size=4))
    assert 'has no test/ split' in probs and 'eval_batch_size' not in probs      # the eval batch is per GPU
    assert 'global_batch_size=8: not divisible by the 3 processes' in '\n'.join(start_problems(cfg, world_size=3))


def test_time_budgeted_plan_states_its_budget():
    line = describe_plan(TrainConfig(name='p', time_budget_s=180, global_batch_size=32), 4000, 6)
    assert 'time budget of 180 s' in line and 'the budget ends it first' in line and 'GPU-hours' not in line
    line = describe_plan(TrainConfig(name='p', time_budget_s=180, max_steps=600, global_batch_size=32), 4000, 6)
    assert 'time budget of 180 s or 600 optimizer steps, whichever comes first' in line


def test_a_rope2d_board_width_is_checked_against_itself_not_the_presets_seq_len():
    tiny = dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1, pos_encodings='rope2d')
    assert as_train_config({**GOOD, 'model': {**tiny, 'grid_width': 7}}).model['grid_width'] == 7
    with pytest.raises(ConfigError, match='model.grid_width=-1'): as_train_config({**GOOD, 'model': {**tiny, 'grid_width': -1}})


# ------------------------------------------------------------------------------------ grids
def _grid(tmp_path, **kw):
    g = dict(name='g', out=str(tmp_path / 'grid'), seeds=[0], budget={'steps': 6, 'evals': 1},
             base=dict(preset='board_mlp_t_dis', global_batch_size=8, device='cpu', wandb_mode='disabled', progress=False),
             tasks={'sudoku4': {'puzzle': {'kind': 'sudoku', 'box': 2, 'train': 16, 'test': 8, 'remove': [4, 8], 'seed': 0}}},
             arms={'dis': {'method': 'dis'}})
    for k, v in kw.items():
        if v is None: g.pop(k)
        else: g[k] = v
    return g

GRID_ROWS = [
    (dict(budget={'steps': -5}), 'budget.steps=-5: must be a whole number >= 1'),
    (dict(budget={'compute': 0}), 'budget.compute=0: must be a number > 0'),
    (dict(budget={'steps': 6, 'evals': 0}), 'budget.evals=0'),
    (dict(budget={'steps': 'ten'}), "budget.steps='ten': expected an integer"),
    (dict(seeds=[-5]), 'seeds: [-5]'),
    (dict(seeds=[2**70]), 'seeds:'),
    (dict(arm={}), "arm: unknown grid key; did you mean 'arms'?"),
    (dict(name='../g'), "grid name '../g'"),
    (dict(arms={'/abs': {}}), "arm name '/abs'"),
    (dict(tasks={'../t': {'puzzle': {'kind': 'sudoku'}}}), "task name '../t'"),
    (dict(tasks={'t': {'puzzle': {'kind': 'sudoku', 'boxx': 2}}}), "task 't': puzzle.boxx: not a sudoku field"),
    (dict(tasks={'t': {'puzzle': {'kind': 'sudoku'}, 'train': 'many'}}), "task 't': train: expected a mapping"),
]

@pytest.mark.parametrize('fields,message', GRID_ROWS, ids=[m[:40] for _, m in GRID_ROWS])
def test_grid_rows(tmp_path, fields, message):
    with pytest.raises(ConfigError) as e: E.load_grid(_grid(tmp_path, **fields))
    assert message in str(e.value)


def test_grid_extends_cycles_and_out_file(tmp_path):
    (tmp_path / 'self.yaml').write_text(yaml.safe_dump({**_grid(tmp_path), 'extends': 'self.yaml'}))
    with pytest.raises(ConfigError, match='cycle'): E.load_grid(tmp_path / 'self.yaml')
    (tmp_path / 'a.yaml').write_text(yaml.safe_dump({**_grid(tmp_path), 'extends': 'b.yaml'}))
    (tmp_path / 'b.yaml').write_text(yaml.safe_dump({**_grid(tmp_path), 'extends': 'a.yaml'}))
    with pytest.raises(ConfigError, match='cycle'): E.load_grid(tmp_path / 'a.yaml')
    f = tmp_path / 'taken'; f.write_text('mine')
    with pytest.raises(ConfigError, match='is a file'): E.load_grid(_grid(tmp_path, out=str(f)))


# ------------------------------------------------------------------------------------ the commands (in-process)
def _cli(fn, argv, capsys):
    try: rc = fn(argv)
    except SystemExit as e: rc = e.code
    out = capsys.readouterr()
    assert 'Traceback' not in out.err + out.out
    return rc, out.err


@pytest.fixture
def train_yaml(tmp_path):
    def make(text: str | bytes):
        p = tmp_path / 'cfg.yaml'
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p
    return make


TRAIN_CLI_ROWS = [
    ('data_dir: d\nlr: 1e-3\nlr: 1e-2\n', [], 'duplicate key'),
    ('data_dir: d\nseed: -5\n', [], 'seed=-5'),
    ('data_dir: d\nseed: 1180591620717411303424\n', [], 'seed=1180591620717411303424'),
    ('data_dir: d\ndevice: TPU\n', [], "'TPU' is not a device"),
    ('data_dir: d\nmodel: {rms_eps: -1, step_embed: perhaps}\n', [], 'model.step_embed'),
    (b'name: caf\xe9\n', [], 'not UTF-8'),
    ('data_dir: d\n', ['lr=[1,'], 'not valid YAML'),
    ('data_dir: d\n', ['x=!!python/object/apply:os.system ["true"]'], 'python/object'),
    ('data_dir: d\nout_dir: ""\n', [], 'out_dir: empty'),
]

@pytest.mark.parametrize('text,sets,message', TRAIN_CLI_ROWS, ids=[r[2] for r in TRAIN_CLI_ROWS])
def test_dis_train_rows(train_yaml, capsys, monkeypatch, text, sets, message):
    monkeypatch.setattr(T, 'catch_signals_early', lambda: None)
    rc, err = _cli(T.train_cli, ['--config', str(train_yaml(text))] + (['--set', *sets] if sets else []), capsys)
    assert rc == 2 and message in err and err.startswith('dis-train: error:')


def test_dis_train_config_that_is_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(T, 'catch_signals_early', lambda: None)
    rc, err = _cli(T.train_cli, ['--config', str(tmp_path)], capsys)
    assert rc == 2 and 'is a folder' in err


def test_dis_train_batch_vs_world_size(train_yaml, capsys, monkeypatch, tmp_path):
    "The global batch must divide over the processes (refused at start-up); the eval batch is per GPU (any size)."
    monkeypatch.setattr(T, 'catch_signals_early', lambda: None)
    monkeypatch.setenv('WORLD_SIZE', '3')
    (tmp_path / 'data' / 'train').mkdir(parents=True); (tmp_path / 'data' / 'test').mkdir()
    p = train_yaml(f'data_dir: {tmp_path / "data"}\neval_every: 100\neval_batch_size: 5\nglobal_batch_size: 8\n')
    rc, err = _cli(T.train_cli, ['--config', str(p)], capsys)
    assert rc == 2 and 'global_batch_size=8: not divisible by the 3 processes' in err and 'eval_batch_size' not in err


RUN_CLI_ROWS = [
    ('name: x\n', ['--set', 'lr=[1,'], 'not valid YAML'),
    ('name: x\n', ['--set', 'x=!!python/object/apply:os.system ["true"]'], 'python/object'),
    ('name: x\nlr: 1\nlr: 2\n', [], 'duplicate key'),
    ('', [], 'is empty'),
]

@pytest.mark.parametrize('text,args,message', RUN_CLI_ROWS, ids=[r[2] for r in RUN_CLI_ROWS])
def test_dis_run_rows(train_yaml, capsys, tmp_path, text, args, message):
    rc, err = _cli(R.run_cli, [str(train_yaml(text)), '--out', str(tmp_path / 'runs'), '--quiet'] + args, capsys)
    assert rc == 1 and message in err and not (tmp_path / 'runs' / 'x').exists()


def test_dis_run_out_that_is_a_file(train_yaml, capsys, tmp_path):
    f = tmp_path / 'taken'; f.write_text('mine')
    rc, err = _cli(R.run_cli, [str(train_yaml('name: x\n')), '--out', str(f)], capsys)
    assert rc == 2 and 'is a file' in err and f.read_text() == 'mine'


def _grid_yaml(tmp_path, **kw):
    p = tmp_path / 'grid.yaml'; p.write_text(yaml.safe_dump(_grid(tmp_path, **kw))); return p

@pytest.mark.parametrize('fields,message', GRID_ROWS[:4] + GRID_ROWS[7:8], ids=[m[:40] for _, m in GRID_ROWS[:4] + GRID_ROWS[7:8]])
def test_dis_grid_rows(tmp_path, capsys, fields, message):
    rc, err = _cli(GR.grid_cli, [str(_grid_yaml(tmp_path, **fields)), '--list'], capsys)
    assert rc == 2 and message in err


def test_dis_grid_only_matching_nothing_is_an_error(tmp_path, capsys):
    rc, err = _cli(GR.grid_cli, [str(_grid_yaml(tmp_path)), '--workers', '0', '--only', 'nosuchtask'], capsys)
    assert rc == 2 and 'matches no cell' in err and 'sudoku4/dis/seed0' in err
    assert not (tmp_path / 'grid' / 'data').exists()                  # nothing was built for it


def test_an_unreadable_config_is_one_clear_error(tmp_path, monkeypatch):
    p = tmp_path / 'cfg.yaml'; p.write_text('lr: 1\n')
    def denied(self): raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(type(p), 'read_bytes', denied)
    with pytest.raises(ConfigError, match='cannot read the config file .Permission denied.'): load_yaml(p)
