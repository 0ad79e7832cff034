"""Check a built site in a real headless browser (`make docs-check`).

The site is served over HTTP on 127.0.0.1 and crawled from `index.html` with Chromium (the distribution's package,
driven through Playwright's Python package with `executable_path`: no browser download). Every page reachable by an
internal link is loaded; a page fails when
  - it, or anything it loads (stylesheet, script, image), answers an HTTP error or cannot be fetched,
  - it asks for anything outside the site (the site must work offline),
  - an <img> has not loaded (naturalWidth 0),
  - an internal link points to a file that does not exist (404),
  - opened from disk (file://, as the README says to open it), its search finds nothing (`--search WORD`).
Screenshots of chosen pages are written for review (`--shots-dir`, default `_site_shots/`).
Exit status 1 lists every problem; 0 prints how many pages, images and links were checked.
"""
from __future__ import annotations

import argparse
import http.server
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from urllib.parse import urldefrag, urlparse

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync']
DEFAULT_SHOTS = {'index': 'index.html', 'model': 'notebooks/03_model.html', 'figure': 'notebooks/13_viewer.html'}


def find_chromium() -> str | None:
    "The system Chromium (Debian: `apt-get install chromium`)."
    for name in ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable'):
        if p := shutil.which(name): return p
    return None


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


class SiteServer:
    "A static HTTP server for `root` on a free local port (a context manager)."
    def __init__(self, root: Path):
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), partial(_Quiet, directory=str(root)))
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/'
    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start(); return self
    def __exit__(self, *a):
        self.httpd.shutdown(); self.httpd.server_close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=10) as r: return r.status
    except urllib.error.HTTPError as e: return e.code
    except OSError: return 0


def _is_page(url: str) -> bool:
    path = urlparse(url).path
    return path.endswith('/') or path.endswith('.html')


def check_search_from_disk(site_dir, query: str, chromium: str | None = None, timeout_ms: int = 15000) -> tuple[int, list[str]]:
    """Open `site_dir/index.html` from disk (file://, as a reader does after `make docs`), type `query` into the search
    box and wait for results. Returns (number of results, errors): no search box, no result (search never started,
    e.g. a Worker the browser refuses on file://), a script error, or a request outside the site's folder."""
    from playwright.sync_api import TimeoutError as PwTimeout, sync_playwright
    site_dir = Path(site_dir).resolve()
    root = site_dir.as_uri()
    chromium = chromium or find_chromium()
    if not chromium: raise FileNotFoundError('no chromium on PATH (Debian: apt-get install -y chromium)')
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix='site-search-') as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                                                    viewport={'width': 1280, 'height': 900})
        local = lambda url: url.startswith((root, 'data:', 'blob:', 'about:'))
        ctx.route(lambda url: not local(url), lambda route: route.abort())
        page = ctx.new_page()
        page.on('request', lambda req: None if local(req.url) else errors.append(f'file:// search: requests something '
                                                                                   f'outside the site: {req.url}'))
        page.on('pageerror', lambda e: errors.append(f'file:// search: script error: {e}'))
        page.goto(site_dir.joinpath('index.html').as_uri(), wait_until='load')
        box = page.locator('input.md-search__input, input[data-md-component="search-query"]').first
        n = 0
        if not box.count(): errors.append('file:// search: index.html has no search box')
        else:
            if not box.is_visible(): page.keyboard.press('s')           # the header's search toggle (narrow screens)
            box.type(query, timeout=timeout_ms)
            try:
                page.wait_for_selector('.md-search-result__item', timeout=timeout_ms)
                n = page.locator('.md-search-result__item').count()
            except PwTimeout:
                meta = page.locator('.md-search-result__meta')
                state = ' '.join(meta.inner_text().split()) if meta.count() else 'no result list'
                errors.append(f'file:// search: no result for {query!r} within {timeout_ms / 1000:g} s ({state})')
        ctx.close()
    return n, errors


def check_site(site_dir, shots: dict[str, str] | None = None, shots_dir=None, chromium: str | None = None,
               max_pages: int = 2000, log=print, search: str | None = None) -> dict:
    """Crawl `site_dir` in headless Chromium. Returns {'pages', 'images', 'links', 'errors': [str], 'shots': [Path],
    'search_results'}. `shots` maps a screenshot name to a page path (relative to the site); missing pages there are
    errors too. `search`: also open the site from disk (file://) and search it for this word (`check_search_from_disk`)."""
    from playwright.sync_api import sync_playwright
    site_dir = Path(site_dir)
    if not (site_dir / 'index.html').is_file(): raise FileNotFoundError(f'{site_dir}: no index.html (build the site first: make docs)')
    chromium = chromium or find_chromium()
    if not chromium: raise FileNotFoundError('no chromium on PATH (Debian: apt-get install -y chromium)')
    shots = DEFAULT_SHOTS if shots is None else shots
    shots_dir = Path(shots_dir) if shots_dir else None
    errors, shot_files, n_img, checked_links = [], [], 0, {}
    with SiteServer(site_dir) as srv, tempfile.TemporaryDirectory(prefix='site-check-') as profile, sync_playwright() as pw:
        origin = srv.url.rstrip('/')
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                                                    viewport={'width': 1280, 'height': 900}, service_workers='block')
        page = ctx.new_page()
        problems: list[str] = []

        def on_request(req):
            if not req.url.startswith(origin) and not req.url.startswith(('data:', 'blob:', 'about:')):
                problems.append(f'requests something outside the site: {req.url}')
        def on_response(resp):
            if resp.status >= 400: problems.append(f'HTTP {resp.status} for {resp.url[len(origin):]}')
        page.on('request', on_request); page.on('response', on_response)
        page.on('requestfailed', lambda req: problems.append(f'failed to load {req.url} ({req.failure})')
                if req.url.startswith(origin) else None)
        ctx.route(lambda url: not url.startswith(origin), lambda route: route.abort())  # never wait on the network

        todo, seen = [srv.url + 'index.html'], set()
        for rel in shots.values(): todo.append(srv.url + rel)
        while todo and len(seen) < max_pages:
            url = urldefrag(todo.pop(0))[0]
            if url.endswith('/'): url += 'index.html'
            if url in seen: continue
            seen.add(url)
            problems.clear()
            rel = url[len(srv.url):]
            resp = page.goto(url, wait_until='load')
            if resp is None or resp.status >= 400:
                errors.append(f'{rel}: page answers HTTP {resp.status if resp else "nothing"}'); continue
            page.wait_for_load_state('networkidle')
            info = page.evaluate('''() => ({
                imgs: Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth]),
                links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href)})''')
            for src, complete, width in info['imgs']:
                n_img += 1
                if not width: errors.append(f'{rel}: image did not load: {src[len(origin):] if src.startswith(origin) else src}')
            for href in info['links']:
                target = urldefrag(href)[0]
                if not target.startswith(origin): continue
                if _is_page(target): todo.append(target); continue
                if target not in checked_links: checked_links[target] = _status(target)
                if checked_links[target] >= 400 or checked_links[target] == 0:
                    errors.append(f'{rel}: broken link to {target[len(origin):]} (HTTP {checked_links[target]})')
            errors += [f'{rel}: {p}' for p in dict.fromkeys(problems)]
        if shots_dir:
            shots_dir.mkdir(parents=True, exist_ok=True)
            for name, rel in shots.items():
                resp = page.goto(srv.url + rel, wait_until='load')
                if resp is None or resp.status >= 400: continue     # already reported by the crawl
                page.wait_for_load_state('networkidle')
                if name == 'figure':                                 # scroll the first figure into view
                    img = page.locator('article img').first
                    if img.count(): img.scroll_into_view_if_needed(); page.mouse.wheel(0, -120); page.wait_for_timeout(200)
                out = shots_dir / f'{name}.png'
                page.screenshot(path=str(out)); shot_files.append(out)
        ctx.close()
    n_links = len(checked_links) + len(seen)
    n_found = None
    if search:
        n_found, search_errors = check_search_from_disk(site_dir, search, chromium)
        errors += search_errors
    return {'pages': len(seen), 'images': n_img, 'links': n_links, 'errors': errors, 'shots': shot_files,
            'search_results': n_found}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('site_dir', nargs='?', default=str(ROOT / '_site'))
    ap.add_argument('--shots-dir', default=str(ROOT / '_site_shots'))
    ap.add_argument('--shot', action='append', default=[], metavar='NAME=PAGE',
                    help='screenshot PAGE (site-relative) as NAME.png (default: index, model and figure pages)')
    ap.add_argument('--search', default='recursive', metavar='WORD',
                    help="open the site from disk (file://) and search for WORD (default: recursive; '' skips it)")
    a = ap.parse_args(argv)
    shots = dict(s.split('=', 1) for s in a.shot) if a.shot else DEFAULT_SHOTS
    r = check_site(a.site_dir, shots, a.shots_dir, search=a.search or None)
    for e in r['errors']: print('ERROR', e, file=sys.stderr)
    found = '' if r['search_results'] is None else f"search from file:// for {a.search!r}: {r['search_results']} result(s); "
    print(f"browser check: {r['pages']} pages, {r['images']} images, {r['links']} distinct internal links; {found}"
          f"{len(r['errors'])} problem(s); screenshots: {', '.join(str(p) for p in r['shots'])}")
    return 1 if r['errors'] else 0


if __name__ == '__main__':
    sys.exit(main())
