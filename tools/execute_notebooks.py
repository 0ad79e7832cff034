"""Executed notebooks: run them so their example cells keep their outputs, and check that those outputs are there and current.

    python tools/execute_notebooks.py [NB ...]           # execute in place (default: every nbs/*.ipynb), then nbdev_clean
    python tools/execute_notebooks.py --check [NB ...]   # execute in memory; fail when saved outputs are missing or stale
    python tools/execute_notebooks.py --lint [NB ...]    # no execution: the three notebook rules below, and the output share

Execution is nbdev_test's: the same in-process IPython shell (execnb's CaptureShell, inline matplotlib), run from the
notebook's folder. Cells flagged with settings.ini's `tst_flags` (`#| slow`, `#| gpu`) or `#| eval: false` are not run
and KEEP their previous outputs (run them by hand, e.g. on a GPU, and their outputs stay); every other code cell's
outputs are replaced by what it prints and displays now. In-place runs finish with `nbdev_clean` (settings.ini has
`clear_all = False`, so outputs survive it). One process per notebook (`--workers` at a time).

The rule for `--lint` (a code cell's *saved* outputs, no execution). A code cell is an **example cell** unless it is
skipped as above, exports code (`#| export`, `#| exports`, `#| exporti`), is hidden (`#| hide`), holds only directives,
or opts out with `#| output: false` (a cell whose output is deliberately not kept). An example cell **displays** when
  - it calls `print(...)` or `display(...)`, or
  - it draws a figure: assigns a name starting with `fig`, or calls `plt.<anything>` or a function whose name starts
    with `plot` or `render_`, or
  - its last statement is a bare expression not ending in `;` (IPython shows its value), except a constant (a
    docstring) and a call of a function named in `SIDE_EFFECTS` (`shutil.rmtree(...)`, `torch.manual_seed(...)`...:
    called for what they do, they return None). End the cell with `;` or assign the value when it is not worth showing.
Every example cell that displays must have at least one saved output.

Two more `--lint` rules make a notebook teach like fastai's miniai notebooks (issue 20 item 5):
  - **every exported cell is followed by an example**: between an exported cell and the next exported cell there is a
    code cell that is not exported and not hidden and has saved output (an example cell, or a `#| slow` / `#| gpu`
    cell whose outputs were saved by hand). It shows what the definitions just made do: a shape, a grid, a record.
    Exported cells that hold only imports are exempt (and do not end the previous cell's span).
  - **no exported cell over 60 lines** (`MAX_EXPORTED_LINES`; non-blank lines, directives not counted): one idea per
    cell. A cell that truly cannot be split (one class, whose methods cannot live in separate cells without changing the
    exported code) goes on `LONG_CELLS_ALLOWED`, keyed by notebook and the first name the cell defines, with the reason.
Finally `--lint` prints, per notebook and in total, the share of example cells that have saved output. Linting every
notebook (no notebook named), a total under `MIN_OUTPUT_SHARE` (80%) is an error too (`--min-share` sets the bar,
also for named notebooks).

`--check` is the precise version of the same rule: it executes the notebook and compares, cell by cell, the saved
outputs with fresh ones. A cell that outputs something now but has nothing saved, a cell with saved outputs that
outputs nothing now, and a cell whose output text differs are errors. Text is compared after normalising what
changes from run to run: ANSI codes, progress bars (`\\r` rewrites, tqdm lines), memory addresses, durations and
rates (`12.3 s`, `4.5 it/s`), temporary paths and dates. Images are compared by kind and count, not pixels.
"""
from __future__ import annotations

import argparse
import ast
import configparser
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_docs import directives  # noqa: E402  (same directive parser as the site)


def skip_flags(root: Path = ROOT) -> set[str]:
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(root / 'settings.ini')
    return set(cfg['DEFAULT'].get('tst_flags', '').split())


def _src(cell) -> str:
    s = cell.get('source', '')
    return ''.join(s) if isinstance(s, list) else s


def is_skipped(d: dict, flags: set[str]) -> bool:
    "Cells nbdev_test does not run (and this tool neither): flagged, or `#| eval: false`."
    return bool(flags & d.keys()) or d.get('eval', '').lower() == 'false'


def is_example(d: dict, body: str, flags: set[str]) -> bool:
    "A code cell whose output is expected to be saved when it displays anything (see the module docstring)."
    if is_skipped(d, flags) or not body.strip(): return False
    if {'export', 'exports', 'exporti', 'hide'} & d.keys(): return False
    return d.get('output', '').lower() != 'false'


_FIG_CALL = re.compile(r'^(plot|render_)')
SIDE_EFFECTS = {'rmtree', 'unlink', 'remove', 'rmdir', 'mkdir', 'makedirs', 'chdir', 'touch', 'close', 'sleep', 'clear',
                'append', 'extend', 'update', 'write_text', 'write_bytes', 'savefig', 'set_num_threads', 'manual_seed',
                'seed', 'seed_everything', 'nbdev_export', 'setenv', 'shutdown'}


def displays(body: str) -> bool:
    "Whether a cell's code prints or displays something, by the static rule of the module docstring."
    try: tree = ast.parse(body)
    except SyntaxError: return True                     # IPython magics etc.: be safe, expect output
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''
            if name in ('print', 'display') or _FIG_CALL.match(name): return True
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == 'plt': return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id.startswith('fig'): return True
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr) and not isinstance(last.value, ast.Constant):
        f = last.value.func if isinstance(last.value, ast.Call) else None
        if f is not None and (f.id if isinstance(f, ast.Name) else getattr(f, 'attr', '')) in SIDE_EFFECTS: return False
        return not body.rstrip().endswith(';')
    return False


MAX_EXPORTED_LINES = 60      # non-blank lines of an exported cell, directives not counted
MIN_OUTPUT_SHARE = 0.8       # of all notebooks' example cells, the share that must show saved output
# Exported cells allowed over MAX_EXPORTED_LINES: `notebook: first name the cell defines` -> why it cannot be split.
# Keep this small: a cell of several definitions can always be split; one class cannot (without changing the code).
LONG_CELLS_ALLOWED = {
    '03_model.ipynb: ModelConfig': 'one dataclass: its fields, validation and derived sizes are a single class body',
    '03_model.ipynb: RecursiveModel': 'one nn.Module: its init, carry, input embedding and forward are one class body',
}
EXPORT_FLAGS = {'export', 'exports', 'exporti'}


def _nb_cells(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text(encoding='utf-8')).get('cells', [])


def _first_line(body: str) -> str:
    lines = body.strip().splitlines()
    return lines[0][:70] if lines else ''


def _defined(body: str) -> list[str]:
    "Names a cell defines at its top level (functions, classes, assigned names), in order."
    try: tree = ast.parse(body)
    except SyntaxError: return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): out.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                out += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
    return out


def _imports_only(body: str) -> bool:
    "An exported cell that only imports (the module header, a re-export): nothing of its own to show."
    try: tree = ast.parse(body)
    except SyntaxError: return False
    return bool(tree.body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body)


def code_lines(body: str) -> int:
    "The length rule's measure: non-blank lines (directives are already stripped from `body`)."
    return sum(1 for line in body.splitlines() if line.strip())


def lint(path: Path, flags: set[str]) -> list[str]:
    "Errors of the three `--lint` rules (see the module docstring), each naming the notebook, the cell and what to do."
    path = Path(path)
    errs, pending = [], None            # pending: (index, first line) of an exported cell still waiting for its example
    def unshown(i, first):
        errs.append(f'{path.name} cell {i} ({first!r}): exported cell has no example after it (before the next '
                    f'exported cell); add a 1-5 line cell below it that shows a value (a shape, a grid, a record) and '
                    f'save its output with tools/execute_notebooks.py {path.name}')
    for i, cell in enumerate(_nb_cells(path)):
        if cell.get('cell_type') != 'code': continue
        d, body = directives(_src(cell))
        if not body.strip(): continue
        if EXPORT_FLAGS & d.keys():
            if _imports_only(body): continue
            if pending: unshown(*pending)
            pending = (i, _first_line(body))
            n = code_lines(body)
            names = _defined(body)
            key = f'{path.name}: {names[0] if names else _first_line(body)}'
            if n > MAX_EXPORTED_LINES and key not in LONG_CELLS_ALLOWED:
                what = (f'it holds {len(names)} definitions: split it into one idea per cell, each followed by its '
                        'example' if len(names) > 1 else
                        'split it (a long function into helpers in their own cells); a single class that cannot be '
                        f'split goes on LONG_CELLS_ALLOWED in tools/execute_notebooks.py as {key!r} with the reason')
                errs.append(f'{path.name} cell {i} ({_first_line(body)!r}): exported cell has {n} lines (at most '
                            f'{MAX_EXPORTED_LINES}); {what}')
            continue
        if 'hide' in d or d.get('output', '').lower() == 'false': continue
        if is_example(d, body, flags) and displays(body) and not cell.get('outputs'):
            errs.append(f'{path.name} cell {i} ({_first_line(body)!r}): displays something but has no saved output '
                        f'(run tools/execute_notebooks.py {path.name}, or mark it `#| output: false`)')
        if cell.get('outputs'): pending = None
    if pending: unshown(*pending)
    return errs


def output_share(path: Path, flags: set[str]) -> tuple[int, int]:
    "`(example cells with saved output, example cells)` of a notebook."
    shown = total = 0
    for cell in _nb_cells(path):
        if cell.get('cell_type') != 'code': continue
        d, body = directives(_src(cell))
        if is_example(d, body, flags):
            total += 1; shown += bool(cell.get('outputs'))
    return shown, total


# ----- normalised output text -----------------------------------------------------------------------------------
_VOLATILE = [
    (re.compile(r'\x1b\[[0-9;?]*[A-Za-z]'), ''),
    (re.compile(r'0x[0-9a-fA-F]{6,}'), '0x?'),
    (re.compile(r'\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?'), '<date>'),
    (re.compile(r'(/private)?/(tmp|var/folders)/[^\s\'",)\]]*'), '<tmp>'),
    (re.compile(r'\btmp[\w-]{6,}'), '<tmp>'),
    (re.compile(r'\d+(\.\d+)?(e[-+]?\d+)?\s*(it|samples|examples|steps|tokens|predictions|calls)/s\b'), '<rate>'),
    (re.compile(r'\d+(\.\d+)?(e[-+]?\d+)?\s*(s|ms|µs|us|ns|sec|secs|seconds|min|minutes)\b'), '<time>'),
    (re.compile(r'\b\d+:\d\d(:\d\d)?\b'), '<time>'),
    # measured durations as values of keys/names like `train_s`, `eval_s_per_sample`, `wall_seconds`, `time=`
    (re.compile(r'''(\b\w*(?:_s|_sec|_secs|_seconds|_time|time|_s_per_\w+)['"]?\s*[:=]\s*)-?\d+(\.\d+)?(e[-+]?\d+)?'''), r'\1<time>'),
]


def normalise(text: str) -> str:
    lines = []
    for line in text.split('\n'):
        line = line.split('\r')[-1]
        if re.search(r'\d+%\|', line) or re.search(r'\bit/s\]', line): continue      # tqdm bars
        for pat, rep in _VOLATILE: line = pat.sub(rep, line)
        lines.append(line.rstrip())
    return '\n'.join(lines).strip()


def output_text(outputs) -> list[str]:
    "One normalised string per output (streams merged per stream name)."
    out, streams = [], {}
    for o in outputs or []:
        t = o.get('output_type')
        if t == 'stream':
            streams[o.get('name', 'stdout')] = streams.get(o.get('name', 'stdout'), '') + _src({'source': o.get('text', '')})
            continue
        if t == 'error': out.append(f"error {o.get('ename')}: {normalise(str(o.get('evalue')))}"); continue
        data = o.get('data', {})
        imgs = [m for m in data if m.startswith('image/')]
        if imgs: out.append(f'<{imgs[0]}>'); continue
        for m in ('text/markdown', 'text/html', 'text/plain'):
            if m in data: out.append(f'{m}: ' + normalise(_src({'source': data[m]}))); break
    return [f'{k}: {normalise(v)}' for k, v in sorted(streams.items()) if normalise(v)] + out


# ----- execution -----------------------------------------------------------------------------------------------
def execute(path: Path, flags: set[str]):
    "Run a notebook as nbdev_test does; returns (nb with fresh outputs, saved outputs per cell, error or None)."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    path = Path(path).resolve()
    nb = read_nb(path)
    saved = [json.loads(json.dumps(c.get('outputs', []), default=dict)) for c in nb.cells]
    os.environ['IN_TEST'] = '1'
    cwd = os.getcwd(); os.chdir(path.parent)
    shell = CaptureShell(path)
    err = None
    try:
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code': continue
            d, _ = directives(_src(cell))
            if is_skipped(d, flags) or 'nbdev_export(' in _src(cell): continue
            cell.outputs = []
            shell.cell(cell)
            if shell.exc:
                err = f'{path.name} cell {i}: {type(shell.exc).__name__}: {shell.exc}'; break
    finally: os.chdir(cwd)
    return nb, saved, err


def _plain(o):
    "execnb's AttrDict outputs as plain JSON-able dicts."
    return json.loads(json.dumps(o, default=dict))


def run_one(args) -> tuple:
    "`(notebook name, errors, seconds)`, and with `--lint` the notebook's `output_share`."
    import time
    path, mode, flags = args
    t0 = time.time()
    path = Path(path)
    if mode == 'lint': return path.name, lint(path, flags), time.time() - t0, output_share(path, flags)
    nb, saved, err = execute(path, flags)
    if err: return path.name, [err], time.time() - t0
    if mode == 'check':
        errs = []
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code': continue
            d, body = directives(_src(cell))
            if is_skipped(d, flags) or d.get('output', '').lower() == 'false': continue
            now, was = output_text(_plain(cell.get('outputs', []))), output_text(saved[i])
            if now == was: continue
            first = body.strip().splitlines()[0][:60] if body.strip() else ''
            if not was: errs.append(f'{path.name} cell {i} ({first!r}): has output now but none saved')
            elif not now: errs.append(f'{path.name} cell {i} ({first!r}): saved output is stale (outputs nothing now)')
            else:
                errs.append(f'{path.name} cell {i} ({first!r}): saved output differs from a fresh run:\n'
                            f'    saved: {was!r:.400}\n    fresh: {now!r:.400}')
        return path.name, errs, time.time() - t0
    from execnb.nbio import write_nb
    write_nb(nb, path)
    subprocess.run([str(Path(sys.executable).with_name('nbdev_clean')), '--fname', str(path)], check=True, cwd=ROOT)
    return path.name, [], time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n', 2)[2])
    ap.add_argument('notebooks', nargs='*', help='notebooks (default: every nbs/*.ipynb)')
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--check', action='store_true', help='execute in memory; fail on missing or stale outputs')
    g.add_argument('--lint', action='store_true', help='no execution: the notebook rules (see below) and the output share')
    ap.add_argument('--workers', type=int, default=1)
    ap.add_argument('--min-share', type=float, default=None,
                    help=f'with --lint: the least share of example cells with saved output, over all notebooks linted '
                         f'(default: {MIN_OUTPUT_SHARE} when linting every notebook, no bar for named ones)')
    a = ap.parse_args(argv)
    nbs = [Path(p) for p in a.notebooks] or sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
    mode = 'check' if a.check else 'lint' if a.lint else 'execute'
    flags = skip_flags()
    jobs = [(str(p), mode, flags) for p in nbs]
    if mode == 'lint' or a.workers <= 1 and len(jobs) == 1: results = [run_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max(1, a.workers), max_tasks_per_child=1) as ex: results = list(ex.map(run_one, jobs))
    errors = [e for r in results for e in r[1]]
    if mode == 'lint':
        shown = sum(r[3][0] for r in results); total = sum(r[3][1] for r in results)
        for name, errs, _, (s, n) in results:
            print(f'{name}: {s}/{n} example cells with saved output ({s / max(n, 1):.0%}), {len(errs)} error(s)')
        share = shown / max(total, 1)
        print(f'{len(nbs)} notebooks linted: {shown}/{total} example cells with saved output ({share:.0%}; '
              f'the bar is {MIN_OUTPUT_SHARE:.0%} over all notebooks), {len(errors)} error(s)')
        bar = a.min_share if a.min_share is not None else None if a.notebooks else MIN_OUTPUT_SHARE
        if bar is not None and share < bar:
            errors.append(f'only {share:.0%} of all example cells have saved output (at least {bar:.0%}): '
                          'show a value in the examples that print nothing, or hide set-up cells (`#| hide`), '
                          'then save the outputs with tools/execute_notebooks.py NB')
    else:
        for name, errs, dt in results: print(f'{name}: {mode} {"ok" if not errs else "FAILED"} ({dt:.0f} s)')
    for e in errors: print('ERROR', e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
