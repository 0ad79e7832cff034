"""Console scripts: `--help` and usage errors answer before torch is imported, and each torch-free parser in `cli`
agrees option for option with the parser the stage module itself builds."""
import json
import subprocess
import sys
import time

import pytest

from dis_nbdev.cli import COMMANDS

# The parser a stage's *_cli builds, described in a fresh process (parse_args is intercepted, nothing runs).
DESCRIBE = r'''
import argparse, importlib, json, sys
class Got(Exception): pass
def grab(self, args=None, namespace=None): raise Got(self)
argparse.ArgumentParser.parse_args = grab
from dis_nbdev.cli import COMMANDS
def describe(p):
    acts = [dict(opts=a.option_strings, dest=a.dest, default=repr(a.default), nargs=repr(a.nargs), const=repr(a.const),
                 choices=repr(a.choices), required=a.required, help=a.help, metavar=repr(a.metavar),
                 type=getattr(a.type, '__name__', repr(a.type)), kind=type(a).__name__) for a in p._actions]
    return dict(prog=p.prog, description=p.description, epilog=p.epilog, actions=acts)
out = {}
for cmd, (mod, fn, parser) in COMMANDS.items():
    try: getattr(importlib.import_module(f'dis_nbdev.{mod}'), fn)([])
    except Got as e: out[cmd] = [describe(parser()), describe(e.args[0])]
print(json.dumps(out))
'''


def test_each_cli_parser_matches_its_module():
    r = subprocess.run([sys.executable, '-c', DESCRIBE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(got) == set(COMMANDS)
    for cmd, (ours, theirs) in got.items():
        assert ours == theirs, f'{cmd}: dis_nbdev.cli\'s parser differs from the module\'s'


def test_every_console_script_is_a_command_and_the_puzzle_kinds_are_the_board_families():
    import configparser
    from pathlib import Path
    import dis_nbdev.boards
    import dis_nbdev.cli as cli
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(Path(__file__).resolve().parents[1] / 'settings.ini')
    scripts = dict(s.split('=') for s in cfg['DEFAULT']['console_scripts'].split())
    assert set(scripts) == set(COMMANDS) and 'dis-study' in scripts
    for cmd, target in scripts.items():          # each script's function is the entry point of that very command
        mod, fn = target.split(':')
        assert mod == 'dis_nbdev.cli' and f'`{cmd}`' in getattr(cli, fn).__doc__, (cmd, target)
    assert COMMANDS['dis-build-puzzles'][0] == 'boards' and COMMANDS['dis-study'][:2] == ('studies', 'study_cli')
    assert list(cli.PUZZLE_KINDS) == dis_nbdev.boards.family_names()


HELP = r'''
import sys, time, io, contextlib
t = time.time()
import dis_nbdev.cli as cli
fn = getattr(cli, sys.argv[1])
sys.argv = [sys.argv[2], '--help']
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try: fn()
    except SystemExit as e: code = e.code
print(repr(code), 'torch' in sys.modules, round(time.time() - t, 3), buf.getvalue().count('usage:'))
'''


@pytest.mark.parametrize('cmd', sorted(COMMANDS))
def test_help_does_not_import_torch(cmd):
    attr = {'dis-build-arc': 'build_arc', 'dis-build-puzzles': 'build_puzzles', 'dis-train': 'train', 'dis-eval': 'evaluate',
            'dis-run': 'run', 'dis-figures': 'figures', 'dis-grid': 'grid', 'dis-study': 'study'}[cmd]
    t = time.time()
    r = subprocess.run([sys.executable, '-c', HELP, attr, cmd], capture_output=True, text=True, timeout=60)
    wall = time.time() - t
    assert r.returncode == 0, r.stderr
    code, torch_loaded, _, usage = r.stdout.split()
    assert code == '0' and torch_loaded == 'False' and usage == '1', r.stdout
    print(f'{cmd} --help: {wall:.2f} s wall (interpreter included)')


def test_a_usage_error_exits_2_without_torch():
    r = subprocess.run([sys.executable, '-c', 'import sys; import dis_nbdev.cli as c; sys.argv = ["dis-eval", "--batch-size", "x"]\n'
                        'try: c.evaluate()\nexcept SystemExit as e: print(e.code, "torch" in sys.modules)'],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ['2', 'False'] and "invalid int value: 'x'" in r.stderr
