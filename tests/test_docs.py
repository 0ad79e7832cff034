"""The documentation tooling: the site builder picks up notebooks and modules by itself, the browser check fails on a
broken link or image, and the notebook-output checks catch missing and stale outputs."""
import base64
import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'tools'))
import build_docs            # noqa: E402
import check_site            # noqa: E402
import execute_notebooks     # noqa: E402

PNG = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')


def _nb(cells) -> dict:
    return {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}


def _code(src, outputs=()) -> dict:
    return {'cell_type': 'code', 'execution_count': None, 'metadata': {}, 'outputs': list(outputs), 'source': src}


def _md(src) -> dict: return {'cell_type': 'markdown', 'metadata': {}, 'source': src}


def _stream(text) -> dict: return {'output_type': 'stream', 'name': 'stdout', 'text': text}


def _project(tmp_path, readme: str, doc: str):
    "A tiny project folder: the real mkdocs.yml, `readme`, and a package with one function `twice` documented by `doc`."
    root = tmp_path / 'proj'
    (root / 'nbs').mkdir(parents=True); (root / 'dis_nbdev').mkdir()
    shutil.copy(ROOT / 'mkdocs.yml', root / 'mkdocs.yml')
    (root / 'README.md').write_text(readme)
    (root / 'dis_nbdev' / '__init__.py').write_text('')
    (root / 'dis_nbdev' / 'a.py').write_text(f'__all__ = ["twice"]\n\ndef twice(x: int) -> int:\n    "{doc}"\n    return 2 * x\n')
    return root


@pytest.fixture
def browser():
    c = check_site.find_chromium()
    if not c: pytest.skip('no chromium on PATH (CI installs it: apt-get install chromium)')
    return c


def test_browser_check_fails_on_a_broken_link_and_image(tmp_path, browser):
    site = tmp_path / 'site'; site.mkdir()
    (site / 'ok.png').write_bytes(PNG)
    (site / 'index.html').write_text('<html><body><a href="a.html">a</a> <a href="missing.html">gone</a>'
                                     '<a href="data.json">d</a><img src="ok.png"></body></html>')
    (site / 'a.html').write_text('<html><body><img src="nope.png"><a href="index.html#top">home</a>'
                                 '<a href="https://example.org/">outside: not followed</a></body></html>')
    (site / 'data.json').write_text('{}')
    r = check_site.check_site(site, shots={'index': 'index.html'}, shots_dir=tmp_path / 'shots', chromium=browser)
    assert r['pages'] == 3 and r['images'] == 2
    text = '\n'.join(r['errors'])
    assert 'missing.html: page answers HTTP 404' in text
    assert 'a.html: image did not load' in text and 'nope.png' in text
    assert len(r['errors']) == 3            # the 404 page, the image, and the image's HTTP 404
    assert (tmp_path / 'shots' / 'index.png').stat().st_size > 0
    (site / 'missing.html').write_text('<html><body>here now</body></html>'); (site / 'nope.png').write_bytes(PNG)
    assert check_site.check_site(site, shots={}, chromium=browser)['errors'] == []


def test_browser_check_flags_requests_outside_the_site(tmp_path, browser):
    site = tmp_path / 'site'; site.mkdir()
    (site / 'index.html').write_text('<html><head><link rel="stylesheet" href="https://cdn.example.org/x.css"></head>'
                                     '<body>hi</body></html>')
    errs = check_site.check_site(site, shots={}, chromium=browser)['errors']
    assert any('outside the site: https://cdn.example.org/x.css' in e for e in errs)


def test_site_builds_from_whatever_notebooks_and_modules_exist(tmp_path):
    root = _project(tmp_path, '# proj\n\n| notebook | module |\n|---|---|\n| `00_a` | `a` |\n\nSee `nbs/01_b.ipynb`.\n', 'Two times `x`.')
    img = {'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': base64.b64encode(PNG).decode(), 'text/plain': 'fig'}}
    (root / 'nbs' / '00_a.ipynb').write_text(json.dumps(_nb([
        _md('# a\n\n> first; see [b](01_b.ipynb)'), _code('#| default_exp a'), _code('#| hide\nsecret = 1'),
        _code('#| export\ndef twice(x): return 2 * x'), _code('print(twice(2))', [_stream('4\n')]), _code('fig', [img])])))
    (root / 'nbs' / '01_b.ipynb').write_text(json.dumps(_nb([_md('# b'), _code('#| echo: false\nprint(1)', [_stream('1\n')])])))
    site = build_docs.build(root, tmp_path / 'site')
    a = (site / 'notebooks' / '00_a.html').read_text()
    assert 'secret' not in a and 'default_exp' not in a and 'twice' in a and '4' in a
    assert 'href="01_b.html"' in a and (site / 'notebooks' / '00_a_files' / 'out_001.png').read_bytes() == PNG
    b = (site / 'notebooks' / '01_b.html').read_text()
    assert 'echo' not in b and 'print(1)' not in b
    assert 'Two times' in (site / 'api' / 'a.html').read_text()
    index = (site / 'index.html').read_text()
    assert 'href="notebooks/00_a.html"' in index and 'href="notebooks/01_b.html"' in index


def _run_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'execute_notebooks.py'), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_lint_rule():
    d = execute_notebooks.displays
    assert d('print(1)') and d('fig = plot_task(t)') and d('x = 1\nx') and d('plt.imshow(a)') and d('render_step(t, 1)')
    assert not d('x = 1') and not d('assert x == 1') and not d('torch.set_num_threads(1);') and not d('"doc"')
    assert not d('x = _r.render(a)\nshutil.rmtree(tmp)') and d('model_config("trm")')
    assert d('%timeit f()')                   # not Python: expected to show something


def test_output_checks_catch_missing_and_stale_outputs(tmp_path):
    nb = tmp_path / 'nb.ipynb'
    cells = [_code('x = 21'), _code('print(x * 2)'), _code('#| output: false\nprint("not kept")'),
             _code('#| slow\nprint("slow: keeps what it had")', [_stream('from a GPU run\n')]),
             _code('import time; print(f"took {time.time() % 7 + 1:.2f} s at 0x7f3a2b1c9d40")', [_stream('took 3.10 s at 0x7fffabcdef12\n')])]
    nb.write_text(json.dumps(_nb(cells)))
    r = _run_tool('--lint', str(nb))
    assert r.returncode == 1 and "cell 1 ('print(x * 2)'): displays something but has no saved output" in r.stderr
    assert 'cell 2' not in r.stderr and 'cell 4' not in r.stderr
    r = _run_tool('--check', str(nb))
    assert r.returncode == 1 and "cell 1 ('print(x * 2)'): has output now but none saved" in r.stderr, r.stderr
    r = _run_tool(str(nb))                     # execute in place
    assert r.returncode == 0, r.stderr
    saved = json.loads(nb.read_text())['cells']
    assert saved[1]['outputs'][0]['text'] in ('42\n', ['42\n']) and saved[3]['outputs'][0]['text'] in ('from a GPU run\n', ['from a GPU run\n'])
    assert _run_tool('--lint', str(nb)).returncode == 0 and _run_tool('--check', str(nb)).returncode == 0
    cells = json.loads(nb.read_text())
    cells['cells'][0]['source'] = 'x = 22'
    nb.write_text(json.dumps(cells))
    r = _run_tool('--check', str(nb))
    assert r.returncode == 1 and 'saved output differs from a fresh run' in r.stderr and "'stdout: 42'" in r.stderr


def test_search_works_from_disk(tmp_path, browser):
    "The built site opened from file:// (as the README says to): search finds a documented function, offline."
    root = _project(tmp_path, '# proj\n\nA tiny project.\n', 'Doubles `x` by recursion.')
    (root / 'nbs' / '00_a.ipynb').write_text(json.dumps(_nb([_md('# a\n\n> the recursion notebook'), _code('#| default_exp a')])))
    site = build_docs.build(root, tmp_path / 'site')
    n, errors = check_site.check_search_from_disk(site, 'recursion', chromium=browser)
    assert errors == [] and n >= 2, errors            # the notebook page and the API page
    (site / 'assets' / 'iframe-worker.js').unlink()    # without the shim the browser refuses the search worker on file://
    n, errors = check_site.check_search_from_disk(site, 'recursion', chromium=browser, timeout_ms=4000)
    assert n == 0 and any('no result' in e for e in errors), errors


def test_docs_pages_become_guides_and_links_to_them_follow(tmp_path):
    root = _project(tmp_path, '# proj\n\nSee the [guide](docs/howto.md#one).\n', 'Two times `x`.')
    (root / 'nbs' / '00_a.ipynb').write_text(json.dumps(_nb([_md('# a\n\n[guide](../docs/howto.md)'), _code('#| default_exp a')])))
    (root / 'docs').mkdir(); (root / 'docs' / 'job.sh').write_text('echo hi\n')
    (root / 'docs' / 'howto.md').write_text('# How to\n\n## one\n\nSee [a](../nbs/00_a.ipynb) and [the script](job.sh).\n')
    site = build_docs.build(root, tmp_path / 'site')
    guide = (site / 'guides' / 'howto.html').read_text()
    assert 'href="../notebooks/00_a.html"' in guide and 'href="../assets/job.sh"' in guide
    assert 'href="guides/howto.html#one"' in (site / 'index.html').read_text()
    assert 'href="../guides/howto.html"' in (site / 'notebooks' / '00_a.html').read_text()
