"""Benchmark of the ARC dataset builder (dis_nbdev.dataset.build_arc_dataset).

Builds ARC-AGI-1 training + evaluation + ConceptARC from the Kaggle-combined files (test set = evaluation),
as TRM's reference builder does, and reports wall time, CPU time and the peak resident memory of the
whole process tree (builder + worker processes, sampled from /proc every 200 ms).

    python bench/build_arc.py --quick            # num_aug 20: ratio against the reference builder
    python bench/build_arc.py --num-aug 100 1000 # the issue's sizes (the 1000 build writes ~7 GB)

Reference figure: TRM's `dataset/build_arc_dataset.py` takes about 12 s at num_aug 20 on the project's
2-core machine (unloaded), holding the whole dataset in memory. Timings on a shared machine are noisy:
CPU seconds are printed next to wall seconds for that reason.
"""
from __future__ import annotations
import argparse, json, os, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

REFERENCE_S = {20: 12.0}   # reference builder, seconds, this machine


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f'/proc/{pid}/task'):
            with open(f'/proc/{pid}/task/{tid}/children') as f: out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _tree_rss(pid: int) -> int:
    "Resident bytes of `pid` and all its descendants (Linux /proc; shared pages counted once per process)."
    total, todo, page = 0, [pid], os.sysconf('SC_PAGE_SIZE')
    while todo:
        p = todo.pop()
        try:
            with open(f'/proc/{p}/statm') as f: total += int(f.read().split()[1]) * page
        except OSError:
            continue
        todo += _children(p)
    return total


def run_one(num_aug: int, source: str, out: Path, workers: int) -> dict:
    "Build in a child process; sample its tree's memory; return timings."
    code = ('import sys, json, time; c = time.process_time(); from dis_nbdev.dataset import build_arc_dataset; '
            'imp = time.process_time() - c; t = time.time(); '
            f'build_arc_dataset({str(out)!r}, {source!r}, num_aug={num_aug}, workers={workers}, progress=False, overwrite=True); '
            'print(json.dumps({"build_s": time.time() - t, "import_cpu_s": imp}))')
    t0 = time.time(); c0 = os.times()
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    peak, stop = [0], threading.Event()
    def sample():
        while not stop.is_set():
            if sys.platform.startswith('linux'): peak[0] = max(peak[0], _tree_rss(proc.pid))
            stop.wait(0.2)
    th = threading.Thread(target=sample, daemon=True); th.start()
    stdout, _ = proc.communicate(); stop.set(); th.join()
    wall = time.time() - t0; c1 = os.times()
    if proc.returncode: raise SystemExit(f'build failed (num_aug {num_aug})')
    res = json.loads(stdout.strip().splitlines()[-1])
    man = json.loads((out / 'manifest.json').read_text())
    size = sum(f['bytes'] for f in man['files'].values())
    return dict(num_aug=num_aug, wall_s=wall, build_s=res['build_s'], import_cpu_s=res['import_cpu_s'],
                cpu_s=(c1.children_user + c1.children_system) - (c0.children_user + c0.children_system),
                peak_gb=peak[0] / 1e9, disk_gb=size / 1e9, rows=man['counts']['train']['examples'] + man['counts']['test']['examples'],
                identifiers=man['num_puzzle_identifiers'])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='num_aug 20 only, with the ratio against the reference')
    ap.add_argument('--num-aug', type=int, nargs='+', default=[100, 1000])
    ap.add_argument('--data', default=None, help='Kaggle-combined folder (default: the shared data folder)')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--out', default=None, help='scratch folder (default: a temporary folder, deleted afterwards)')
    a = ap.parse_args(argv)
    from dis_nbdev.files import shared_data_dir
    data = Path(a.data) if a.data else (shared_data_dir() / 'arc-kaggle-combined' if shared_data_dir() else None)
    if data is None or not data.is_dir(): raise SystemExit('Kaggle-combined ARC files not found: pass --data')
    source = f'kaggle:{data}:arc1'
    sizes = [20] if a.quick else a.num_aug
    scratch = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix='bench_build_arc_'))
    print(f'ARC-AGI-1 training+evaluation+concept, {a.workers} workers, {os.cpu_count()} cpus, '
          f'load average {os.getloadavg()[0]:.1f} (timings on a shared machine are noisy)')
    print('wall s: whole process; build s: inside build_arc_dataset; cpu s: all processes (of which import: the package '
          'import, mostly torch)')
    print(f"{'num_aug':>8} {'wall s':>8} {'build s':>8} {'cpu s':>7} {'import':>7} {'peak GB':>8} {'disk GB':>8} "
          f"{'rows':>9} {'ids':>8}  vs reference")
    try:
        for n in sizes:
            out = scratch / f'arc1_aug{n}'
            r = run_one(n, source, out, a.workers)
            ref = REFERENCE_S.get(n)
            vs = (f'{ref / r["wall_s"]:.1f}x faster by wall time, {ref / r["cpu_s"]:.1f}x fewer CPU seconds '
                  f'({ref / (r["cpu_s"] - r["import_cpu_s"]):.1f}x without the import) '
                  f'(reference ~{ref:.0f} s on an idle machine, single process, in memory)') if ref else 'reference not measured'
            print(f"{n:>8} {r['wall_s']:>8.1f} {r['build_s']:>8.1f} {r['cpu_s']:>7.1f} {r['import_cpu_s']:>7.1f} {r['peak_gb']:>8.2f} "
                  f"{r['disk_gb']:>8.2f} {r['rows']:>9} {r['identifiers']:>8}  {vs}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not a.out: shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
    main()
