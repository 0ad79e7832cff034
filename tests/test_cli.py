"""Console scripts: `--help` and usage errors answer before torch is imported, and each stage module's `*_cli` parses
with the very builder of `dis_nbdev.parsers` that `cli` checks the arguments with (one definition of each parser)."""
import json
import subprocess
import sys
import time

import pytest

from dis_nbdev.cli import COMMANDS

# Each stage's *_cli, run in a fresh process where every builder of dis_nbdev.parsers marks the parser it builds and
# parse_args is intercepted (nothing runs): the parser a stage parses its arguments with is the one `cli` checks with.
WHICH = r"""
import argparse, functools, importlib, json, sys
import dis_nbdev.parsers as P
class Got(Exception): pass
def grab(self, args=None, namespace=None): raise Got(self)
argparse.ArgumentParser.parse_args = grab
def marked(name, build):
    @functools.wraps(build)
    def b(*a, **k):
        p = build(*a, **k); p.built_by = name; return p
    return b
for name in ('build_arc_parser', 'build_puzzles_parser', 'train_parser', 'eval_parser', 'run_parser', 'figures_parser',
             'grid_parser', 'study_parser'):
    setattr(P, name, marked(name, getattr(P, name)))     # before any stage module imports it
from dis_nbdev.cli import COMMANDS
out = {}
for cmd, (mod, fn, parser) in COMMANDS.items():
    try: getattr(importlib.import_module(f'dis_nbdev.{mod}'), fn)([])
    except Got as e: out[cmd] = [parser.__name__, getattr(e.args[0], 'built_by', None), e.args[0].format_help()]
print(json.dumps(out))
"""


def test_each_stage_cli_parses_with_the_parsers_module_builder():
    from dis_nbdev import parsers
    r = subprocess.run([sys.executable, '-c', WHICH], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(got) == set(COMMANDS)
    for cmd, (ours, theirs, help_text) in got.items():
        assert theirs == ours, f'{cmd}: the stage module does not parse with dis_nbdev.parsers.{ours} (got {theirs})'
        assert help_text == getattr(parsers, ours)().format_help(), cmd     # same options, defaults, help texts


def test_the_choices_are_defined_once_in_parsers():
    import dis_nbdev.evaluate, dis_nbdev.steps, dis_nbdev.vote, dis_nbdev.arc, dis_nbdev.core
    from dis_nbdev import parsers
    assert dis_nbdev.steps.INJECTIONS is parsers.INJECTIONS == ('prev_argmax', 'x')
    assert dis_nbdev.vote.CONFIDENCES is parsers.CONFIDENCES and dis_nbdev.vote.DEFAULT_KS is parsers.DEFAULT_KS
    assert dis_nbdev.evaluate.ABLATIONS is parsers.ABLATIONS and parsers.MAX_SIDE is dis_nbdev.arc.MAX_SIDE
    assert parsers.EXIT_INTERRUPTED is dis_nbdev.core.EXIT_INTERRUPTED
    assert 'INJECTIONS' in dis_nbdev.steps.__all__ and 'ABLATIONS' in dis_nbdev.evaluate.__all__


def test_the_parsers_module_imports_no_torch():
    r = subprocess.run([sys.executable, '-c', "import dis_nbdev.parsers, sys; assert 'torch' not in sys.modules"], timeout=60)
    assert r.returncode == 0


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
    assert list(cli.PUZZLE_KINDS) == dis_nbdev.boards.family_names()    # (dis_nbdev.parsers.PUZZLE_KINDS)


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
