"""The package's modules form layers: no import circle (static imports and `importlib` ones alike), `train` and
`evaluate` do not import each other, no module imports the package from inside a function, no module is too long, and
the training method is asked, never compared as a string, outside the methods module."""
import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / 'dis_nbdev'
NAME = PKG.name
MAX_MODULE_LINES = 500
_IMPORTLIB_CALLS = {'import_module', '__import__'}


def module_names(pkg: Path = PKG) -> dict[str, Path]:
    "Every module of the package by dotted name below it (`arc`, `boards.sudoku`; a package's `__init__` is `boards`)."
    out = {}
    for p in sorted(pkg.rglob('*.py')):
        parts = p.relative_to(pkg).with_suffix('').parts
        if parts[-1] == '__init__': parts = parts[:-1]
        if not parts or any(s.startswith('_') for s in parts): continue       # the package itself, _modidx, private
        out['.'.join(parts)] = p
    return out


def _resolve(target: str, mods) -> str | None:
    "The package module a dotted name below the package refers to: the longest known prefix."
    parts = target.split('.')
    for k in range(len(parts), 0, -1):
        if '.'.join(parts[:k]) in mods: return '.'.join(parts[:k])
    return None


def _absolute(mod: str | None, level: int, here: str, is_pkg: bool) -> str | None:
    "`from <level dots><mod> import` in module `here`, as a dotted name below the package (None: outside it)."
    if level == 0:
        if mod == NAME: return ''
        return mod[len(NAME) + 1:] if mod and mod.startswith(NAME + '.') else None
    base = here.split('.') if here else []
    if not is_pkg: base = base[:-1]                      # a module's `.` is its package
    if level - 1 > len(base): return None
    base = base[:len(base) - (level - 1)]
    return '.'.join(base + ([mod] if mod else []))


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''


def _importlib_targets(call: ast.Call, tree: ast.AST, here: str, is_pkg: bool, mods) -> set[str]:
    """Package modules an `importlib.import_module(...)` / `__import__(...)` call may import: a constant name
    (`'dis_nbdev.x'`, or `'.x'` with a package); a name built at run time (`f'dis_nbdev.{m}'`, a variable) may be any
    package module spelled as a string constant in the same module (`_PLUGIN_MODULES = ('dis_nbdev.boards',)`,
    `_entry('dataset', ...)`)."""
    arg = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == 'name'), None)
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        name = arg.value
        level = len(name) - len(name.lstrip('.'))
        m = _absolute(name.lstrip('.') or None, level, here, is_pkg) if level else _absolute(name, 0, here, is_pkg)
        r = _resolve(m, mods) if m else None
        return {r} if r else set()
    # `f'dis_nbdev.{m}'`: the module's bare module names count too; a variable: only names spelled `dis_nbdev.x`
    prefixed = isinstance(arg, ast.JoinedStr) and bool(arg.values) and isinstance(arg.values[0], ast.Constant) \
        and str(arg.values[0].value).startswith(NAME + '.')
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            s = n.value[len(NAME) + 1:] if n.value.startswith(NAME + '.') else n.value if prefixed else None
            if (r := _resolve(s, mods) if s else None): out.add(r)
    return out


def _type_checking_only(node) -> bool:
    "An `if TYPE_CHECKING:` block: its imports serve annotations only and never run."
    t = getattr(node, 'test', None) if isinstance(node, ast.If) else None
    return isinstance(t, ast.Name) and t.id == 'TYPE_CHECKING' or isinstance(t, ast.Attribute) and t.attr == 'TYPE_CHECKING'


def imports(path: Path, here: str, mods) -> tuple[set[str], list[str]]:
    """(package modules `path` imports, anywhere in it: `from .x import`, `from dis_nbdev.x import`,
    `import dis_nbdev.x`, `importlib.import_module(...)`; the function-level ones as `'line N: what'`)."""
    tree = ast.parse(path.read_text(encoding='utf-8'))
    is_pkg = path.name == '__init__.py'
    edges, inner = set(), []
    def visit(node, in_function: bool):
        found, what = set(), ''
        if isinstance(node, ast.ImportFrom):
            m = _absolute(node.module, node.level, here, is_pkg)
            if m is not None:
                for a in node.names:
                    r = _resolve(f'{m}.{a.name}' if m else a.name, mods) or _resolve(m, mods)
                    if r: found.add(r)
                what = f'from {"." * node.level}{node.module or ""} import ...'
        elif isinstance(node, ast.Import):
            for a in node.names:
                m = _absolute(a.name, 0, here, is_pkg)
                if m is not None and (r := _resolve(m, mods)): found.add(r)
            what = 'import ' + ', '.join(a.name for a in node.names)
        elif isinstance(node, ast.Call) and _call_name(node) in _IMPORTLIB_CALLS:
            found = _importlib_targets(node, tree, here, is_pkg, mods)
            what = f'{_call_name(node)}(...) of {sorted(found)}'
        found.discard(here)
        edges.update(found)
        if found and in_function: inner.append(f'line {node.lineno}: {what}')
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(node) and child in node.body: continue     # never runs: not an import edge
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    visit(tree, False)
    return edges, inner


def import_graph() -> dict[str, set[str]]:
    mods = module_names()
    return {m: imports(p, m, mods)[0] for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "One import circle as a list of modules (first == last), or None."
    state: dict[str, int] = {}
    stack: list[str] = []
    def visit(m):
        state[m] = 1; stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1: return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = 2; stack.pop()
        return None
    for m in graph:
        if m not in state and (c := visit(m)): return c
    return None


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / NAME
    for rel, src in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True); (pkg / rel).write_text(src)
    return pkg


def test_the_graph_is_read():
    g = import_graph()
    assert {'core', 'arc', 'model', 'steps', 'checkpoint', 'train', 'evaluate'} <= set(g)
    assert 'checkpoint' in g['train'] and 'checkpoint' in g['evaluate'] and 'core' in g['arc']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_importlib_and_function_level_imports_are_seen(tmp_path):
    pkg = _write(tmp_path, {
        '__init__.py': '', 'core.py': 'X = 1\n', 'arc.py': 'from .core import X\n',
        'reg.py': "import importlib\n_PLUGINS = ('dis_nbdev.boards',)\nSPLIT = 'arc'\n"
                  "def load():\n    for m in _PLUGINS: importlib.import_module(m)\n",
        'lazy.py': "from importlib import import_module\ndef f():\n    return import_module('.arc', package='dis_nbdev')\n",
        'cli.py': "import importlib\ndef _entry(m):\n    return importlib.import_module(f'dis_nbdev.{m}')\nrun = _entry('arc')\n",
        'inner.py': 'import importlib\ndef f():\n    from dis_nbdev.core import X\n    from . import arc\n    return X\n'
                    "top = importlib.import_module('dis_nbdev.boards.sudoku')\n",
        'boards/__init__.py': 'from . import sudoku\n', 'boards/sudoku.py': 'from ..reg import load\nfrom .. import arc\n'})
    mods = module_names(pkg)
    assert set(mods) == {'core', 'arc', 'reg', 'lazy', 'cli', 'inner', 'boards', 'boards.sudoku'}
    got = {m: imports(p, m, mods) for m, p in mods.items()}
    assert got['arc'] == ({'core'}, [])
    assert got['reg'][0] == {'boards'} and got['reg'][1] == ["line 5: import_module(...) of ['boards']"]
    assert got['lazy'][0] == {'arc'} and len(got['lazy'][1]) == 1
    assert got['cli'][0] == {'arc'} and got['cli'][1] == ["line 3: import_module(...) of ['arc']"]
    assert got['inner'][0] == {'core', 'arc', 'boards.sudoku'}       # the module-level import_module is an edge ...
    assert [s.split(':')[0] for s in got['inner'][1]] == ['line 3', 'line 4']   # ... but not a function-level import
    assert got['boards'][0] == {'boards.sudoku'} and got['boards.sudoku'][0] == {'reg', 'arc'}
    cycle = find_cycle({m: e for m, (e, _) in got.items()})
    assert cycle is not None and {'reg', 'boards', 'boards.sudoku'} <= set(cycle)   # only importlib closes it


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, 'import circle: ' + ' -> '.join(cycle)


def test_train_and_evaluate_do_not_import_each_other():
    g = import_graph()
    assert 'evaluate' not in g['train'] and 'train' not in g['evaluate']
    # nor through another module: whatever `evaluate` reaches never reaches `train`
    seen, todo = set(), ['evaluate']
    while todo:
        m = todo.pop()
        if m in seen: continue
        seen.add(m); todo.extend(g[m])
    assert 'train' not in seen, f'evaluate reaches train through {sorted(seen)}'


# The one documented exception: (module, how it imports) -> why. Nothing else in the module is exempt.
FUNCTION_LEVEL_IMPORTS_ALLOWED = {
    ('cli', 'import_module(...)'): 'the console-script dispatcher parses the arguments with its torch-free parser first, '
                                   'then imports the stage module: `--help` and usage errors answer before torch is '
                                   'imported (issue 23)',
}


def test_no_function_level_import_of_the_package():
    mods = module_names()
    found, allowed = [], set()
    for m, p in mods.items():
        for w in imports(p, m, mods)[1]:
            key = next((k for k in FUNCTION_LEVEL_IMPORTS_ALLOWED if k[0] == m and w.split(': ', 1)[1].startswith(k[1])), None)
            if key: allowed.add(key)
            else: found.append(f'{p.relative_to(PKG.parent)} {w}')
    assert not found, ('imports of the package inside a function (import at the top of the module, or register '
                       'explicitly instead of importing on demand):\n' + '\n'.join(found))
    assert allowed == set(FUNCTION_LEVEL_IMPORTS_ALLOWED), \
        f'allow-list entries that no longer match anything (remove them): {set(FUNCTION_LEVEL_IMPORTS_ALLOWED) - allowed}'


def test_no_module_is_too_long():
    sizes = {p.relative_to(PKG.parent).as_posix(): len(p.read_text(encoding='utf-8').splitlines())
             for p in PKG.rglob('*.py') if p.name != '_modidx.py'}
    assert len(sizes) > 10
    big = {k: n for k, n in sorted(sizes.items(), key=lambda kv: -kv[1]) if n >= MAX_MODULE_LINES}
    assert not big, f'modules of {MAX_MODULE_LINES} lines or more (split them): {big}'


_METHOD_SWITCH = re.compile(r'\bmethod\s*[!=]=|[!=]=\s*[\w.]*\bmethod\b')


def test_the_method_is_not_switched_on_outside_the_methods_module():
    assert _METHOD_SWITCH.search("if cfg.method == 'trm':") and _METHOD_SWITCH.search("'dis' != self.cfg.method")
    assert not _METHOD_SWITCH.search('m = method_of(cfg)') and not _METHOD_SWITCH.search("train_method == 'x'")
    hits = [f'{p.relative_to(PKG.parent)}:{i}: {line.strip()}'
            for p in sorted(PKG.rglob('*.py')) if p.name not in ('methods.py', '_modidx.py')
            for i, line in enumerate(p.read_text(encoding='utf-8').splitlines(), 1)
            if _METHOD_SWITCH.search(line.split('#')[0])]
    assert not hits, 'the training method compared as a string (ask the method object instead):\n' + '\n'.join(hits)
