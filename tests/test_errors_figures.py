"""dis-figures on bad input: every case is one row (how the runs folder is damaged, the arguments, the message expected);
each must end with exit status 2 and one line `dis-figures: error: ...` naming the file, never a traceback."""
import json
import subprocess
import sys

import pytest

CONFIG = {'name': 'run', 'method': 'dis', 'preset': 'dis_compact', 'lr': 0.001, 'global_batch_size': 8, 'max_steps': 4}
METRICS = ''.join(json.dumps({'step': s, 'loss': 2.0 / s, 'time_s': 0.5 * s}) + '\n' for s in (1, 2, 3, 4))


def _run(d, config: bytes | None = None, metrics: bytes | None = None):
    d.mkdir(parents=True)
    (d / 'config.json').write_bytes(json.dumps(CONFIG).encode() if config is None else config)
    (d / 'metrics.jsonl').write_bytes(METRICS.encode() if metrics is None else metrics)


def missing(tmp): return ['--runs', str(tmp / 'runs')]
def a_file(tmp): (tmp / 'runs').write_text('not a folder'); return ['--runs', str(tmp / 'runs')]
def empty(tmp): (tmp / 'runs').mkdir(); return ['--runs', str(tmp / 'runs'), '--no-train']
def torn_config(tmp):
    _run(tmp / 'runs' / 'seed0', config=json.dumps(CONFIG).encode()[:25]); return ['--runs', str(tmp / 'runs')]
def config_not_utf8(tmp):
    _run(tmp / 'runs' / 'seed0', config=b'{"name": "r\xff\xfeun", "method": "dis"}'); return ['--runs', str(tmp / 'runs')]
def config_a_list(tmp):
    _run(tmp / 'runs' / 'seed0', config=b'[1, 2]'); return ['--runs', str(tmp / 'runs')]
def metrics_not_utf8(tmp):
    # a damaged line with records after it (a torn LAST line is what a killed writer leaves: dropped, not an error)
    bad = METRICS.encode() + b'{"step": 5, "loss": \xff\xfe}\n' + b'{"step": 6, "loss": 0.5}\n'
    _run(tmp / 'runs' / 'seed0', metrics=bad); return ['--runs', str(tmp / 'runs')]
def out_a_file(tmp):
    (tmp / 'runs').mkdir(); (tmp / 'figs').write_text('x'); return ['--runs', str(tmp / 'runs'), '--out', str(tmp / 'figs')]


CASES = [  # (case, expected in the message, the file the message names, relative to tmp)
    (missing, 'no such folder', 'runs'),
    (a_file, 'not a folder', 'runs'),
    (empty, 'no run folders', 'runs'),
    (torn_config, 'not valid JSON', 'runs/seed0/config.json'),
    (config_not_utf8, 'not UTF-8 text', 'runs/seed0/config.json'),
    (config_a_list, 'not a JSON object', 'runs/seed0/config.json'),
    (metrics_not_utf8, 'the file of metrics is damaged', 'runs/seed0/metrics.jsonl'),
    (out_a_file, 'not a folder (--out)', 'figs'),
]

ENTRY = 'import sys; import dis_nbdev.cli as c; sys.argv = ["dis-figures", *sys.argv[1:]]; sys.exit(c.figures())'


@pytest.mark.parametrize('case,message,names', CASES, ids=[c[0].__name__ for c in CASES])
def test_one_clear_error(tmp_path, case, message, names):
    args = case(tmp_path)
    if '--out' not in args: args += ['--out', str(tmp_path / 'figures')]
    r = subprocess.run([sys.executable, '-c', ENTRY, *args, '--no-analysis'], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith('dis-figures: error: ') and message in lines[0], lines[0]
    assert str(tmp_path / names) in lines[0], lines[0]
    assert not (tmp_path / 'figures').exists(), 'nothing is drawn after an error'
