"""Build the documentation site (`make docs`): notebooks with their saved outputs, an API reference, the README as index.

Every run starts from nothing: `_site_src/docs/` is rewritten from
  - `README.md`                 -> `index.md` (links to `nbs/X.ipynb` and `docs/` files made site-relative),
  - `nbs/*.ipynb`               -> `notebooks/<name>.md` (prose, code, saved outputs; figures as image files),
  - `dis_nbdev/*.py` (public)   -> `api/<module>.md` (an mkdocstrings `:::` block: signatures and docstrings),
  - `docs/*.md`                 -> `guides/<name>.md` (hand-written guides; links to them from anywhere follow),
and MkDocs builds `mkdocs.yml` with a nav made from those files into `_site/`. Nothing is listed by hand: a notebook or
module added later gets its pages on the next build.

Notebook rendering follows nbdev's directives: `#| hide`, `#| exporti` and a cell holding only `#| default_exp` are
left out; `#| echo: false` hides a cell's code, `#| output: false` its output; other `#|` lines are stripped.
Outputs are not re-computed here: run `tools/execute_notebooks.py` first to refresh them.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')
IMAGE_TYPES = {'image/png': 'png', 'image/gif': 'gif', 'image/jpeg': 'jpg', 'image/svg+xml': 'svg'}


def directives(src: str) -> tuple[dict, str]:
    "(nbdev `#|` directives of a cell, the source without them). `#| key: value` -> {key: value}, `#| key` -> {key: ''}."
    d, rest = {}, []
    for line in src.splitlines():
        m = re.match(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$', line)
        if m and not rest: d[m.group(1).lower()] = m.group(2)
        elif m: d[m.group(1).lower()] = m.group(2)     # nbdev reads directives anywhere at the top; be lenient
        else: rest.append(line)
    return d, '\n'.join(rest).strip('\n')


def is_hidden(d: dict, body: str) -> bool:
    "Cells the site leaves out entirely."
    if 'hide' in d or 'exporti' in d or 'include' in d and d['include'].lower() == 'false': return True
    return not body.strip()


def clean_text(s: str) -> str:
    "Stream text as a terminal shows it: no ANSI codes; a line rewritten with `\\r` (progress bars) keeps its last state."
    s = ANSI.sub('', s)
    return '\n'.join(line.split('\r')[-1] for line in s.split('\n'))


def fence(text: str, lang: str = 'text') -> str:
    ticks = '`' * max(3, max((len(m) for m in re.findall(r'`+', text)), default=0) + 1)
    return f'{ticks}{lang}\n{text.rstrip()}\n{ticks}\n'


def _join(v) -> str: return ''.join(v) if isinstance(v, list) else str(v)


class Page:
    "One notebook rendered to Markdown; its images go to `<stem>_files/` beside the page."
    def __init__(self, nb_path: Path, out_dir: Path, link_map):
        self.nb_path, self.out_dir, self.link_map = nb_path, out_dir, link_map
        self.stem = nb_path.stem
        self.files = out_dir / f'{self.stem}_files'
        self.n_images = 0

    def image(self, data: str, ext: str) -> str:
        self.files.mkdir(parents=True, exist_ok=True)
        self.n_images += 1
        name = f'out_{self.n_images:03d}.{ext}'
        raw = data.encode() if ext == 'svg' else base64.b64decode(_join(data))
        (self.files / name).write_bytes(raw)
        return f'{self.files.name}/{name}'

    def output(self, o: dict) -> str:
        t = o.get('output_type')
        if t == 'stream': return fence(clean_text(_join(o.get('text', ''))))
        if t == 'error':
            tb = clean_text('\n'.join(o.get('traceback') or [f"{o.get('ename')}: {o.get('evalue')}"]))
            return '<div class="nb-error" markdown="1">\n\n' + fence(tb) + '\n</div>\n'
        data = o.get('data', {})
        for mime, ext in IMAGE_TYPES.items():
            if mime in data:
                return f'![output]({self.image(_join(data[mime]), ext)}){{.nb-image}}\n'
        if 'text/html' in data and '<script' not in _join(data['text/html']).lower():
            return '<div class="nb-html">\n' + _join(data['text/html']).strip() + '\n</div>\n'
        if 'text/markdown' in data: return _join(data['text/markdown']) + '\n'
        if 'text/plain' in data: return fence(clean_text(_join(data['text/plain'])))
        return ''

    def render(self) -> str:
        nb = json.loads(self.nb_path.read_text(encoding='utf-8'))
        parts = []
        for cell in nb.get('cells', []):
            src = _join(cell.get('source', ''))
            if cell['cell_type'] == 'markdown':
                parts.append(localise(src, self.nb_path.parent, self.out_dir, self.link_map) + '\n')
                continue
            if cell['cell_type'] != 'code': continue
            d, body = directives(src)
            if is_hidden(d, body): continue
            if d.get('echo', '').lower() != 'false': parts.append(fence(body, 'python'))
            if d.get('output', '').lower() == 'false': continue
            outs = [self.output(o) for o in cell.get('outputs', [])]
            outs = [o for o in outs if o]
            if outs: parts.append('<div class="nb-output" markdown="1">\n\n' + '\n'.join(outs) + '\n</div>\n')
        return '\n'.join(parts)


def localise(text: str, base: Path, page_dir: Path, link_map) -> str:
    """Make a Markdown text's links site-relative: `X.ipynb` links become the rendered notebook page, local images
    are copied into the site next to the page (`assets/`)."""
    def sub(m):
        bang, label, target = m.group(1), m.group(2), m.group(3)
        if re.match(r'^[a-z]+:|^#|^/', target): return m.group(0)
        path, _, frag = target.partition('#')
        p = (base / path).resolve()
        if p.suffix == '.ipynb' and p.stem in link_map:
            return f'{bang}[{label}]({link_map[p.stem](page_dir)}{"#" + frag if frag else ""})'
        if p in GUIDES:                       # a page of docs/: its rendered guide page
            rel = f'guides/{p.name}' if page_dir == SRC else f'../guides/{p.name}'
            return f'{bang}[{label}]({rel}{"#" + frag if frag else ""})'
        if p.is_file():
            assets = SRC / 'assets'
            assets.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, assets / p.name)
            rel = Path('assets') / p.name if page_dir == SRC else Path('..') / 'assets' / p.name
            return f'{bang}[{label}]({rel.as_posix()})'
        return m.group(0)
    return re.sub(r'(!?)\[([^\]]*)\]\(([^)\s]+)\)', sub, text)


def notebooks(nbs: Path) -> list[Path]:
    "The notebooks the site shows: `index` first, then by name (files starting with `_` or `.` are scratch)."
    return sorted((p for p in nbs.glob('*.ipynb') if not p.name.startswith(('_', '.'))), key=lambda p: (p.stem != 'index', p.name))


def modules(lib: Path) -> list[str]:
    return sorted(p.stem for p in lib.glob('*.py') if not p.stem.startswith('_'))


def module_notebooks(nbs: Path) -> dict[str, str]:
    "module name -> notebook stem, from each notebook's `#| default_exp`."
    out = {}
    for p in notebooks(nbs):
        for cell in json.loads(p.read_text(encoding='utf-8')).get('cells', []):
            d, _ = directives(_join(cell.get('source', ''))) if cell['cell_type'] == 'code' else ({}, '')
            if d.get('default_exp'): out[d['default_exp'].strip()] = p.stem; break
    return out


def readme_index(readme: Path, nb_stems: list[str], link_map) -> str:
    "The README as the site's index: notebook names in the tour table become links to their pages."
    text = readme.read_text(encoding='utf-8') if readme.exists() else '# dis_nbdev\n'
    text = localise(text, readme.parent, SRC, link_map)
    for stem in nb_stems:
        text = re.sub(rf'^\|\s*`{re.escape(stem)}`\s*\|', f'| [`{stem}`](notebooks/{stem}.md) |', text, flags=re.M)
    text = re.sub(r'`nbs/([\w.-]+)\.ipynb`', lambda m: f'[`nbs/{m.group(1)}.ipynb`](notebooks/{m.group(1)}.md)'
                  if m.group(1) in nb_stems else m.group(0), text)
    return text


SRC = ROOT / '_site_src' / 'docs'
GUIDES: set = set()                           # the docs/*.md pages, resolved: links to them become guide pages


def generate(root: Path = ROOT) -> list:
    "Write the Markdown sources; returns the MkDocs nav."
    global SRC, GUIDES
    SRC = root / '_site_src' / 'docs'
    GUIDES = {p.resolve() for p in (root / 'docs').glob('*.md')}
    if SRC.parent.exists(): shutil.rmtree(SRC.parent)
    (SRC / 'notebooks').mkdir(parents=True); (SRC / 'api').mkdir(); (SRC / 'assets').mkdir()
    for f in (Path(__file__).parent / 'docs_assets').iterdir():      # notebook.css, iframe-worker.js (search from disk)
        if f.is_file(): shutil.copy2(f, SRC / 'assets' / f.name)
    nbs = notebooks(root / 'nbs')
    stems = [p.stem for p in nbs]
    link_map = {s: (lambda stem: (lambda page_dir: f'notebooks/{stem}.md' if page_dir == SRC else f'{stem}.md'))(s)
                for s in stems}
    nav_nbs = []
    for p in nbs:
        page = Page(p, SRC / 'notebooks', link_map)
        (SRC / 'notebooks' / f'{p.stem}.md').write_text(page.render(), encoding='utf-8')
        nav_nbs.append({('overview (index)' if p.stem == 'index' else p.stem): f'notebooks/{p.stem}.md'})
    mod_nb = module_notebooks(root / 'nbs')
    nav_api = []
    for m in modules(root / 'dis_nbdev'):
        src_nb = mod_nb.get(m)
        head = f'# dis_nbdev.{m}\n\n'
        if src_nb: head += f'Source notebook: [{src_nb}](../notebooks/{src_nb}.md)\n\n'
        (SRC / 'api' / f'{m}.md').write_text(head + f'::: dis_nbdev.{m}\n', encoding='utf-8')
        nav_api.append({m: f'api/{m}.md'})
    nav_guides = []
    if GUIDES: (SRC / 'guides').mkdir()
    guide_links = {s: (lambda stem: (lambda page_dir: f'../notebooks/{stem}.md'))(s) for s in stems}
    for p in sorted(GUIDES):                  # docs/*.md: hand-written guides, their links made site-relative
        text = p.read_text(encoding='utf-8')
        (SRC / 'guides' / p.name).write_text(localise(text, p.parent, SRC / 'guides', guide_links), encoding='utf-8')
        title = next((line.lstrip('# ').strip() for line in text.splitlines() if line.startswith('# ')), p.stem)
        nav_guides.append({title: f'guides/{p.name}'})
    (SRC / 'index.md').write_text(readme_index(root / 'README.md', stems, link_map), encoding='utf-8')
    return [{'Home': 'index.md'}, *([{'Guides': nav_guides}] if nav_guides else []), {'Notebooks': nav_nbs},
            {'API reference': nav_api}]


def _usage_brackets(record) -> bool:
    "Docstrings of command-line entry points show usage like `[--out DIR]`: that is not a cross-reference."
    return "Could not find cross-reference target '-" not in record.getMessage()


def build(root: Path = ROOT, site_dir: Path | None = None) -> Path:
    from mkdocs.commands.build import build as mk_build
    from mkdocs.config import load_config
    nav = generate(root)
    site_dir = Path(site_dir or root / '_site')
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))
    log = logging.getLogger('mkdocs'); log.addHandler(handler); log.setLevel(logging.WARNING)
    cfg = load_config(str(root / 'mkdocs.yml'), docs_dir=str(SRC), site_dir=str(site_dir), nav=nav)
    for name in list(logging.Logger.manager.loggerDict):   # after load_config: the plugins' loggers exist now
        if name.startswith('mkdocs.plugins.mkdocs_autorefs'): logging.getLogger(name).addFilter(_usage_brackets)
    mk_build(cfg)
    return site_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--site-dir', default=None, help='output folder (default: _site)')
    a = ap.parse_args(argv)
    out = build(ROOT, a.site_dir)
    n = sum(1 for _ in out.rglob('*.html'))
    print(f'site built: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({n} HTML pages)')


if __name__ == '__main__':
    main()
