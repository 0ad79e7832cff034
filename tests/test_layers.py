"The package's modules form layers: no import circle, and `train` and `evaluate` do not import each other."
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / 'dis_nbdev'


def _imports(path: Path) -> set[str]:
    "Package modules a module imports at its top level (`from .x import`, `from dis_nbdev.x import`, `import dis_nbdev.x`)."
    out = set()
    for node in ast.parse(path.read_text(encoding='utf-8')).body:
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: out.add(mod.split('.')[0] if mod else '')
            elif mod.startswith('dis_nbdev.'): out.add(mod.split('.')[1])
            elif mod == 'dis_nbdev': out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split('.')[1] for a in node.names if a.name.startswith('dis_nbdev.'))
    return out


def import_graph() -> dict[str, set[str]]:
    mods = {p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_')}
    return {m: _imports(PKG / f'{m}.py') & mods for m in sorted(mods)}


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


def test_the_graph_is_read():
    g = import_graph()
    assert {'core', 'arc', 'model', 'steps', 'checkpoint', 'train', 'evaluate'} <= set(g)
    assert 'checkpoint' in g['train'] and 'checkpoint' in g['evaluate'] and 'core' in g['arc']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


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
