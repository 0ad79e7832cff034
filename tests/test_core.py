"""config and files: typed configs (every YAML scalar form of every numeric and boolean field), folder locks, stale temp files."""
import dataclasses
import os
import subprocess
import sys
import typing
import types

import pytest
import yaml

from dis_nbdev.config import coerce_value, from_dict
from dis_nbdev.core import ConfigError, LockError
from dis_nbdev.files import FolderLock
from dis_nbdev.runner import DATA_TYPES, EVAL_TYPES, load_run_spec
from dis_nbdev.train import TrainConfig


def _members(hint):
    "The non-None members of a (possibly optional / union) hint."
    if typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _optional(hint) -> bool:
    return (typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)) and type(None) in typing.get_args(hint)


HINTS = typing.get_type_hints(TrainConfig)
DEFAULTS = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory()) for f in dataclasses.fields(TrainConfig)}
NUMERIC = [k for k, h in HINTS.items() if any(m in (int, float) for m in _members(h))]
BOOLEAN = [k for k, h in HINTS.items() if bool in _members(h)]
# a valid value for each numeric field: its default, else (default None) a small positive one of the field's type
VALUE = {k: DEFAULTS[k] if isinstance(DEFAULTS[k], (int, float)) and not isinstance(DEFAULTS[k], bool)
         else (7 if int in _members(HINTS[k]) else 7.5) for k in NUMERIC}


def _yaml_forms(v):
    "Every way a YAML file may spell the number `v` (PyYAML, i.e. YAML 1.1, reads several of them as strings)."
    forms = [f'{v}', f'"{v}"', f"' {v} '"]
    if isinstance(v, int):
        forms += [f'{v}.0', f'"{v}.0"', f'{v:_}' if v >= 1000 else f'"{v}"', f'"{v:_}"']
        if v and v % 10 == 0: forms += [f'{v / 10 ** (len(str(v)) - 1):g}e{len(str(v)) - 1}']  # 1000 -> 1e3 (a string in YAML 1.1)
    else:
        forms += [f'{v:e}', f'"{v:e}"', f'{v:E}']                          # 1.000000e-04, also unquoted
        short = f'{v:.0e}'.replace('e-0', 'e-')                             # 1e-4: YAML 1.1 reads this as a string
        if float(short) == v: forms.append(short)
    return forms


def test_fields_are_classified():
    "The classes cover TrainConfig's numeric and boolean fields (this list grows with the config, never hand-kept)."
    assert {'lr', 'global_batch_size', 'epochs', 'max_steps', 'time_budget_s', 'ema', 'seed'} <= set(NUMERIC)
    assert {'progress'} <= set(BOOLEAN) and len(NUMERIC) >= 20


@pytest.mark.parametrize('field', NUMERIC)
def test_every_yaml_form_of_every_numeric_field(field):
    v = VALUE[field]
    want_type = int if int in _members(HINTS[field]) and isinstance(v, int) else float
    for form in _yaml_forms(v):
        raw = yaml.safe_load(f'{field}: {form}')[field]
        cfg = from_dict(TrainConfig, {field: raw}, 'run.yaml')
        got = getattr(cfg, field)
        assert got == v and type(got) is want_type, (form, raw, got)
    for bad in ('fast', 'true', 'yes', '[1, 2]', '{a: 1}', '""') + (('2.5',) if want_type is int else ()):
        raw = yaml.safe_load(f'{field}: {bad}')[field]
        with pytest.raises(ConfigError) as e:
            from_dict(TrainConfig, {field: raw}, 'run.yaml')
        assert f'{field}={raw!r}' in str(e.value) or f'TrainConfig.{field}: {str(raw)!r}' in str(e.value) and 'run.yaml' in str(e.value)
    if _optional(HINTS[field]):
        for form in ('null', '~', 'none', 'None', '"null"'):
            assert getattr(from_dict(TrainConfig, yaml.safe_load(f'{field}: {form}')), field) is None, form
    else:
        with pytest.raises(ConfigError, match=field):
            from_dict(TrainConfig, {field: None})


@pytest.mark.parametrize('field', BOOLEAN)
def test_every_yaml_form_of_every_boolean_field(field):
    for forms, want in ((['true', 'True', 'TRUE', 'yes', 'Yes', 'on', 'ON', '1', '"true"', '"yes"', '"on"', '"1"', '" Yes "'], True),
                        (['false', 'False', 'no', 'No', 'off', 'OFF', '0', '"false"', '"no"', '"off"', '"0"'], False)):
        for form in forms:
            got = getattr(from_dict(TrainConfig, yaml.safe_load(f'{field}: {form}')), field)
            assert got is want, (field, form, got)
    for bad in ('2', '"nope"', '0.5', '[]', '"y e s"'):
        raw = yaml.safe_load(f'{field}: {bad}')[field]
        if str in _members(HINTS[field]) and isinstance(raw, str): continue    # bool | str: free words are the str part
        with pytest.raises(ConfigError) as e:
            from_dict(TrainConfig, {field: raw}, 'run.yaml')
        assert f'{field}={raw!r}' in str(e.value) or f'TrainConfig.{field}: {str(raw)!r}' in str(e.value)


def test_bf16_no_is_false_and_auto_survives_a_bool_str_union():
    assert from_dict(TrainConfig, yaml.safe_load('bf16: "no"')).bf16 is False       # the case: it turned bf16 on
    @dataclasses.dataclass
    class Future:                                    # helper E's `bool | str` fields ('auto' resolved per device)
        bf16: bool | str = 'auto'
    assert from_dict(Future, {'bf16': 'auto'}).bf16 == 'auto' and from_dict(Future, {'bf16': 'no'}).bf16 is False
    assert from_dict(Future, {'bf16': 'On'}).bf16 is True and from_dict(Future, {'bf16': True}).bf16 is True


def test_all_bad_fields_in_one_error():
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, yaml.safe_load('lr: fast\nmax_steps: 2.5\nprogress: maybe\nmodel: [1]\nema: 0.999'), 'x.yaml')
    msg = str(e.value)
    assert msg.startswith('x.yaml: 4 bad field(s) for TrainConfig')
    for part in ("lr='fast'", 'max_steps=2.5', "progress='maybe'", 'model=[1]'): assert part in msg
    assert len(e.value.errors) == 4


def test_lr_1e3_yaml_trains_config():
    "The issue's case: `lr: 1e-3` in a YAML crashed with a TypeError; now it is the number 0.001."
    assert from_dict(TrainConfig, yaml.safe_load('lr: 1e-3\nepochs: 1e3')) == TrainConfig(lr=1e-3, epochs=1000)


RUN_NUMERIC = {k: t for k, t in {**DATA_TYPES, **EVAL_TYPES}.items() if any(m in (int, float) for m in _members(t))}
RUN_BOOLEAN = [k for k, t in {**DATA_TYPES, **EVAL_TYPES}.items() if bool in _members(t)]


@pytest.mark.parametrize('field', sorted(RUN_NUMERIC))
def test_runner_config_numeric_forms(field):
    v = {'side': 6, 'max_grid': 5}.get(field, 3)
    typ = int if int in _members(RUN_NUMERIC[field]) else float
    for form in _yaml_forms(v) + ([f'{float(v)}'] if typ is int else []):
        spec = load_run_spec({'name': 'x', **yaml.safe_load(f'{field}: {form}')})
        got = {**spec.data, **spec.eval}[field]
        assert got == v and type(got) is typ, (field, form, got)
    with pytest.raises(ConfigError, match=f'{field}=.fast.'):
        load_run_spec({'name': 'x', field: 'fast'})


@pytest.mark.parametrize('field', RUN_BOOLEAN)
def test_runner_config_boolean_forms(field):
    for form, want in (('yes', True), ('"no"', False), ('off', False), ('"On"', True), ('0', False)):
        assert {**load_run_spec({'name': 'x', **yaml.safe_load(f'{field}: {form}')}).data,
                **load_run_spec({'name': 'x', **yaml.safe_load(f'{field}: {form}')}).eval}[field] is want
    with pytest.raises(ConfigError, match=field):
        load_run_spec({'name': 'x', field: 'perhaps'})


def test_runner_config_errors_together_and_octal_task_ids():
    with pytest.raises(ConfigError) as e:
        load_run_spec({'name': 'x', 'side': 'big', 'evaluate': 'maybe', 'eval_ks': [1, 'two']})
    assert all(s in str(e.value) for s in ("side='big'", "evaluate='maybe'", "eval_ks=[1, 'two']"))
    ids = yaml.safe_load('task_ids: [00576224, 0d3d703e]')['task_ids']     # YAML 1.1: 00576224 is an octal number
    with pytest.raises(ConfigError, match='quote every task id'):
        load_run_spec({'name': 'x', 'task_ids': ids})


def test_coerce_value_names_the_field():
    assert coerce_value(' 1_000 ', int, 'n') == 1000 and coerce_value('none', float | None, 'ema') is None
    with pytest.raises(ConfigError, match=r"^n='x': expected an integer"):
        coerce_value('x', int, 'n')


def test_folder_lock_second_process_fails_at_once_naming_the_holder(tmp_path):
    lock = tmp_path / 'run' / '.run.lock'
    code = f'from dis_nbdev.files import FolderLock; FolderLock({str(lock)!r}, "second").acquire()'
    with FolderLock(lock, 'first holder'):
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and f'process {os.getpid()} is already writing here' in r.stderr and 'first holder' in r.stderr
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr                   # released on exit
    # a holder killed with SIGKILL releases its lock too (the OS drops it with the process)
    holder = subprocess.Popen([sys.executable, '-c', f'from dis_nbdev.files import FolderLock; import time; '
                               f'l = FolderLock({str(lock)!r}, "killed").acquire(); print("held", flush=True); time.sleep(60)'],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(LockError, match=f'process {holder.pid}'):
        FolderLock(lock).acquire()
    holder.kill(); holder.wait()
    with FolderLock(lock, 'after the kill'): pass


def test_devices_threads_and_bf16_by_capability(monkeypatch):
    "Issue 19: a worker's GPU is local_rank % GPUs; threads follow the CPU affinity set; bf16 'auto' needs capability 8.0."
    import torch
    from dis_nbdev.core import cpu_threads, local_device_index, resolve_bf16
    assert [local_device_index(r, 4) for r in range(6)] == [0, 1, 2, 3, 0, 1] and local_device_index(3, 0) == 0
    assert 1 <= cpu_threads() <= (os.cpu_count() or 1)
    if hasattr(os, 'sched_getaffinity'):
        monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2})
        assert cpu_threads() == 3
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)   # emulation counts there
    for cap, want in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda dev=None, c=cap: c)
        assert resolve_bf16('auto', 'cuda') is want, cap
