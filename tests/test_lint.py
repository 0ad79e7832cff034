"""The notebook lint (`tools/execute_notebooks.py --lint`) on small synthetic notebooks: one that passes, and one per rule
that fails, with a message naming the notebook, the cell and what to do."""
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'tools'))
import execute_notebooks as en     # noqa: E402

FLAGS = {'slow', 'gpu'}


def _nb(path, cells):
    path.write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    return path


def _code(src, out=None) -> dict:
    outputs = [] if out is None else [{'output_type': 'stream', 'name': 'stdout', 'text': out}]
    return {'cell_type': 'code', 'execution_count': None, 'metadata': {}, 'outputs': outputs, 'source': src}


def _md(src) -> dict: return {'cell_type': 'markdown', 'metadata': {}, 'source': src}


def _long_function(n_lines: int) -> str:
    return '#| export\ndef long():\n' + ''.join(f'    x{i} = {i}\n' for i in range(n_lines - 2)) + '    return 0\n'


GOOD = [_md('# good'), _code('#| default_exp good'),
        _code('#| export\nimport math\nfrom pathlib import Path'),          # imports only: needs no example
        _code('#| export\ndef twice(x): return 2 * x'),
        _code('print(twice(21))', '42\n'),
        _code('#| hide\nassert twice(2) == 4'),
        _md('A helper and its example, with a set-up cell in between:'),
        _code('#| export\ndef half(x): return x / 2'),
        _code('y = 8'),
        _code('half(y)', '4.0\n'),
        _code(_long_function(60)),                                            # exactly at the limit
        _code('long()', '0\n')]


def test_a_notebook_that_follows_the_rules_passes(tmp_path):
    nb = _nb(tmp_path / '00_good.ipynb', GOOD)
    assert en.lint(nb, FLAGS) == []
    assert en.output_share(nb, FLAGS) == (3, 4)        # `y = 8` is an example cell that shows nothing
    assert en.main(['--lint', str(nb)]) == 0


def test_an_example_that_displays_needs_saved_output(tmp_path):
    cells = GOOD[:4] + [_code('print(twice(21))')] + GOOD[5:]
    errs = en.lint(_nb(tmp_path / '01_show.ipynb', cells), FLAGS)
    assert len(errs) == 2, errs
    assert errs[0].startswith("01_show.ipynb cell 4 ('print(twice(21))'): displays something but has no saved output")
    assert 'run tools/execute_notebooks.py 01_show.ipynb' in errs[0]
    # ... and the exported cell before it is then left without a shown example
    assert errs[1].startswith("01_show.ipynb cell 3 ('def twice(x): return 2 * x'): exported cell has no example after it")


def test_every_exported_cell_is_followed_by_an_example_with_output(tmp_path):
    # an exported cell directly followed by the next exported cell
    cells = GOOD[:4] + GOOD[6:]
    errs = en.lint(_nb(tmp_path / '02_walls.ipynb', cells), FLAGS)
    assert errs == ["02_walls.ipynb cell 3 ('def twice(x): return 2 * x'): exported cell has no example after it "
                    "(before the next exported cell); add a 1-5 line cell below it that shows a value (a shape, a grid, "
                    "a record) and save its output with tools/execute_notebooks.py 02_walls.ipynb"]
    # a hidden assert or an example without output does not count; neither does an `#| output: false` cell
    for between in (_code('#| hide\nprint(twice(2))', '4\n'), _code('z = twice(2)'),
                    _code('#| output: false\nprint(twice(2))')):
        errs = en.lint(_nb(tmp_path / '03_hidden.ipynb', GOOD[:4] + [between] + GOOD[6:]), FLAGS)
        assert len(errs) == 1 and 'cell 3 ' in errs[0] and 'exported cell has no example after it' in errs[0], errs
    # the last exported cell of a notebook needs its example too
    errs = en.lint(_nb(tmp_path / '04_last.ipynb', GOOD[:-1]), FLAGS)
    assert len(errs) == 1 and errs[0].startswith("04_last.ipynb cell 10 ('def long():'): exported cell has no example"), errs
    # a heavy (`#| slow`) example whose output was saved by hand shows the value
    cells = GOOD[:4] + [_code('#| slow\nprint(twice(21))', '42\n')] + GOOD[6:]
    assert en.lint(_nb(tmp_path / '05_slow.ipynb', cells), FLAGS) == []


def test_no_exported_cell_over_60_lines(tmp_path):
    cells = GOOD[:-2] + [_code(_long_function(61)), GOOD[-1]]
    errs = en.lint(_nb(tmp_path / '06_long.ipynb', cells), FLAGS)
    assert len(errs) == 1, errs
    assert errs[0].startswith("06_long.ipynb cell 10 ('def long():'): exported cell has 61 lines (at most 60)")
    assert "LONG_CELLS_ALLOWED in tools/execute_notebooks.py as '06_long.ipynb: long' with the reason" in errs[0]
    # blank lines and directives do not count
    padded = _long_function(60).replace('\n    x1 ', '\n\n\n    x1 ').replace('#| export', '#| export\n#| exporti')
    assert en.lint(_nb(tmp_path / '07_blank.ipynb', GOOD[:-2] + [_code(padded), GOOD[-1]]), FLAGS) == []
    # a wall of several definitions is told to split, not pointed at the allow-list
    wall = '#| export\n' + ''.join(f'def f{i}():\n    a = {i}\n    return a\n' for i in range(21))
    errs = en.lint(_nb(tmp_path / '08_wall.ipynb', GOOD[:-2] + [_code(wall), GOOD[-1]]), FLAGS)
    assert len(errs) == 1 and 'has 63 lines' in errs[0] and 'it holds 21 definitions: split it' in errs[0], errs
    assert 'LONG_CELLS_ALLOWED' not in errs[0]


def test_the_allow_list_is_small_and_gives_reasons(tmp_path, monkeypatch):
    assert len(en.LONG_CELLS_ALLOWED) <= 8 and all(len(why) > 20 for why in en.LONG_CELLS_ALLOWED.values())
    monkeypatch.setitem(en.LONG_CELLS_ALLOWED, '09_allowed.ipynb: long', 'one function for the test')
    cells = GOOD[:-2] + [_code(_long_function(80)), GOOD[-1]]
    assert en.lint(_nb(tmp_path / '09_allowed.ipynb', cells), FLAGS) == []
    assert en.lint(_nb(tmp_path / '10_other.ipynb', cells), FLAGS) != []     # the key names the notebook too


def test_the_output_share_is_printed_and_its_bar_enforced(tmp_path, capsys):
    good = _nb(tmp_path / '00_good.ipynb', GOOD)
    quiet = _nb(tmp_path / '11_quiet.ipynb', [_code('#| export\ndef one(): return 1'), _code('print(one())', '1\n'),
                                              _code('a = one()'), _code('b = a + 1'), _code('c = b + 1')])
    assert en.main(['--lint', str(good), str(quiet)]) == 0          # named notebooks: the share is printed, no bar
    out = capsys.readouterr().out
    assert '00_good.ipynb: 3/4 example cells with saved output (75%), 0 error(s)' in out
    assert '11_quiet.ipynb: 1/4 example cells with saved output (25%), 0 error(s)' in out
    assert '2 notebooks linted: 4/8 example cells with saved output (50%' in out
    assert en.main(['--lint', '--min-share', '0.8', str(good), str(quiet)]) == 1
    assert 'only 50% of all example cells have saved output (at least 80%)' in capsys.readouterr().err
    assert en.main(['--lint', '--min-share', '0.6', str(good)]) == 0


def test_the_repository_notebooks_are_linted_by_the_same_rules():
    "The real notebooks of this branch that follow the rules stay clean (the others are their owners' work)."
    for name in ('01_arc.ipynb', '03_model.ipynb', '03a_convert.ipynb', 'index.ipynb'):
        assert en.lint(ROOT / 'nbs' / name, en.skip_flags()) == [], name
