"""Board families (dis_nbdev.boards): generators, the on-disk layout, solver-order targets, rule-based scoring, and a
short CPU training run on 4x4 Sudoku whose validity rate must rise."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from dis_nbdev import boards as P
from dis_nbdev.boards.sudoku import _SudokuState


# ---------------------------------------------------------------- generators

@pytest.mark.parametrize('n', [4, 5, 6, 8, 12])
def test_nqueens_solutions_are_valid_and_varied(n):
    rng = np.random.default_rng(n)
    sols = [P.nqueens_solution(n, rng) for _ in range(40)]
    assert all(P.nqueens_is_solution(s) for s in sols)
    assert len({s.tobytes() for s in sols}) > 1


def test_nqueens_paper_setting_givens():
    X, Y = P.make_examples('nqueens', 300, np.random.default_rng(0), n=8, givens=(1, 7))
    g = (X == P.QUEEN).sum(1)
    assert g.min() == 1 and g.max() == 7 and len(set(g)) == 7, 'givens drawn from 1..7'
    assert ((Y == P.QUEEN).sum(1) == 8).all()
    for x, y in zip(X, Y):
        assert P.nqueens_is_valid(P.tokens_to_queens(y), P.tokens_to_queens(x))
    X3, _ = P.make_examples('nqueens', 50, np.random.default_rng(1), n=6, givens=3)
    assert ((X3 == P.QUEEN).sum(1) == 3).all()


@pytest.mark.parametrize('box,remove', [(2, 8), (2, 11), (3, 40), (3, 52)])
def test_sudoku_puzzles_unique_with_stated_removals(box, remove):
    X, Y = P.make_examples('sudoku', 12, np.random.default_rng(box * 100 + remove), box=box, remove=remove)
    n = box * box
    assert X.shape == (12, n * n) and ((X == P.BLANK).sum(1) == remove).all()
    for x, y in zip(X, Y):
        g, s = P.tokens_to_sudoku(x), P.tokens_to_sudoku(y)
        assert P.sudoku_is_solution(s) and P.sudoku_is_valid(s, g)
        assert P.sudoku_count_solutions(g, limit=3) == 1
        assert (P.sudoku_solve(g) == s).all()


def test_generators_are_seeded():
    a = P.make_examples('sudoku', 10, np.random.default_rng(7), box=3, remove=(30, 45))
    b = P.make_examples('sudoku', 10, np.random.default_rng(7), box=3, remove=(30, 45))
    assert all((u == v).all() for u, v in zip(a, b))


def test_impossible_requests_raise_clear_errors():
    with pytest.raises(P.PuzzleError, match='N=3'):
        P.nqueens_solution(3, np.random.default_rng(0))
    with pytest.raises(P.PuzzleError, match='unique'):
        P.sudoku_make(2, 14, np.random.default_rng(0), tries=5)   # a 4x4 needs at least 4 givens


# ---------------------------------------------------------------- dataset layout

def test_dataset_layout_reads_with_project_loaders(tmp_path):
    from dis_nbdev.dataset import open_split, TrainLoader, TestLoader
    d = P.build_puzzle_dataset(tmp_path/'su', kind='sudoku', box=2, train=100, test=20, remove=(5, 9), num_aug=3, seed=1)
    tr, te = open_split(d, 'train'), open_split(d, 'test')
    assert tr.metadata.seq_len == 16 and tr.metadata.vocab_size == 6 and tr.num_groups == 100
    assert len(te) == 20 and te.num_groups == 20
    assert len(tr) == 400, '3 distinct augmentations per puzzle (4x4 grids have plenty)'
    assert (tr.puzzle_identifiers == 0).all() and tr.identifiers == ['<blank>']
    for g in range(tr.num_groups):   # every augmented copy is a valid, unique puzzle with the same number of blanks
        rows = range(tr.group_indices[g], tr.group_indices[g + 1])
        blanks = {int((tr.inputs[r] == P.BLANK).sum()) for r in rows}
        assert len(blanks) == 1
    for r in range(len(tr)):
        x, y = P.tokens_to_sudoku(tr.inputs[r]), P.tokens_to_sudoku(tr.labels[r])
        assert P.sudoku_is_valid(y, x) and P.sudoku_count_solutions(x) == 1
    b = next(TrainLoader(tr, 32, seed=0))
    assert b['inputs'].shape == (32, 16) and (b['labels'] >= 2).all(), 'no PAD in a puzzle, so nothing is ignored'
    assert sum(int(b['mask'].sum()) for b in TestLoader(te, 8)) == 20


def test_nqueens_dihedral_augmentation(tmp_path):
    d = P.build_puzzle_dataset(tmp_path/'nq', kind='nqueens', n=8, train=30, test=5, givens=(1, 7), num_aug=7, seed=0)
    info, X, Y = P.load_puzzle_split(d, 'train')
    gi = np.load(d/'train/all__group_indices.npy')
    assert info['kind'] == 'nqueens' and len(gi) == 31
    for g in range(30):
        xs = X[gi[g]:gi[g + 1]]
        assert len({x.tobytes() for x in xs}) == len(xs), 'augmented copies are deduplicated'
        assert len({int((x == P.QUEEN).sum()) for x in xs}) == 1
        for x, y in zip(xs, Y[gi[g]:gi[g + 1]]):
            assert P.nqueens_is_valid(P.tokens_to_queens(y), P.tokens_to_queens(x))


def test_cli_builds_and_refuses_overwrite(tmp_path):
    exe = shutil.which('dis-build-puzzles')
    cmd = [exe] if exe else [sys.executable, '-c', 'import sys; from dis_nbdev.boards import build_puzzles_cli as f; f(sys.argv[1:])']
    args = ['--kind', 'nqueens', '--n', '6', '--givens', '2', '--train', '20', '--test', '4', '--out', str(tmp_path/'q')]
    r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ((np.load(tmp_path/'q/test/all__inputs.npy') == P.QUEEN).sum(1) == 2).all()
    r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'already exists' in r.stderr


# ---------------------------------------------------------------- solver-order targets

def _check_frames(kind, x, y, F):
    d = [int((f != y).sum()) for f in F]
    assert (F[-1] == y).all(), 'last frame == solution'
    assert all(a >= b for a, b in zip(d, d[1:])), 'Hamming distance to the solution never grows'
    for f in F:
        assert ((f == x) | (f == y)).all()
        if kind == 'nqueens':
            assert P.nqueens_conflicts(P.tokens_to_queens(f)) == 0
            assert ((f == P.QUEEN) <= (y == P.QUEEN)).all()
        else:
            assert P.sudoku_is_consistent(P.tokens_to_sudoku(f))


@pytest.mark.parametrize('kind,kw', [('nqueens', dict(n=8, givens=(1, 7))), ('nqueens', dict(n=10, givens=(0, 4))),
                                     ('sudoku', dict(box=2, remove=(6, 11))), ('sudoku', dict(box=3, remove=(50, 56)))])
def test_solver_frames_properties(kind, kw):
    from dis_nbdev.targets import get_target_generator
    gen = get_target_generator(f'{kind}_solver')
    X, Y = P.make_examples(kind, 24, np.random.default_rng(3), **kw)
    for n_steps in (1, 6, 16):
        F = gen(torch.from_numpy(X).long(), torch.from_numpy(Y).long(), n_steps, torch.Generator().manual_seed(0))
        assert F.shape == (n_steps, *X.shape) and F.dtype == torch.long
        F = F.numpy()
        for b in range(len(X)): _check_frames(kind, X[b], Y[b], F[:, b])
    # the auto-detecting generator agrees
    Fa = get_target_generator('puzzle_solver')(torch.from_numpy(X).long(), torch.from_numpy(Y).long(), 6).numpy()
    Fk = gen(torch.from_numpy(X).long(), torch.from_numpy(Y).long(), 6).numpy()
    assert (Fa == Fk).all()


def test_sudoku_order_follows_propagation():
    rng = np.random.default_rng(11)
    rules = []
    for _ in range(10):
        puz, sol = P.sudoku_make(3, 56, rng)
        order, r = P.sudoku_solver_order(puz, sol, return_rules=True)
        assert sorted(order) == sorted(np.flatnonzero(puz.reshape(-1) == 0).tolist())
        # replaying the order: every naked-single move had exactly one candidate when it was made
        st = _SudokuState(puz)
        for i, rule in zip(order, r):
            if rule == 'naked': assert st.cand(i).bit_count() == 1
            st.place(i, int(sol.reshape(-1)[i]))
        rules += r
    assert 'naked' in rules and 'hidden' in rules, 'hard 9x9 puzzles need hidden singles'


def test_nqueens_order_is_most_constrained_first():
    sol = P.nqueens_solution(8, np.random.default_rng(5))
    given = np.zeros_like(sol); given[3] = sol[3]
    order = P.nqueens_solver_order(given, sol)
    assert len(order) == 7
    # the first committed queen's row had the fewest safe columns given the one placed queen
    c3 = int(np.flatnonzero(sol[3])[0])
    free = {r: sum(1 for c in range(8) if c != c3 and abs(r - 3) != abs(c - c3)) for r in range(8) if r != 3}
    assert free[order[0] // 8] == min(free.values())


def test_solver_targets_train_loader_batch(tmp_path):
    "The generator consumes a real loader batch (labels with the ignore convention) and keeps ignored cells."
    from dis_nbdev.dataset import open_split, TrainLoader
    d = P.build_puzzle_dataset(tmp_path/'su', kind='sudoku', box=2, train=40, test=4, remove=(6, 9), seed=2)
    b = next(TrainLoader(open_split(d, 'train'), 16, seed=0))
    lab = b['labels'].clone(); lab[:, :2] = P.IGNORE_LABEL
    F = P.SolverTargets('sudoku')(b['inputs'], lab, 6)
    assert (F[:, :, :2] == P.IGNORE_LABEL).all() and torch.equal(F[-1], lab)


# ---------------------------------------------------------------- evaluator

def test_evaluator_accepts_alternative_rejects_rule_break():
    rng = np.random.default_rng(0)
    sols = {P.nqueens_solution(8, rng).tobytes() for _ in range(400)}
    sols = [np.frombuffer(s, np.uint8).reshape(8, 8) for s in sols]
    sol = sols[0]; given = np.zeros_like(sol); given[0] = sol[0]
    alts = [s for s in sols[1:] if (s[0] == sol[0]).all()]
    assert alts
    x, y, alt = map(P.queens_to_tokens, (given, sol, alts[0]))
    assert P.is_valid_prediction('nqueens', alt, x) and not (alt == y).all()
    s = P.score_board_predictions('nqueens', np.stack([y, alt]), np.stack([x, x]), np.stack([y, y]))
    assert s['valid'] == 1.0 and s['exact'] == 0.5
    wrong_given = [t for t in sols if not (t[0] == sol[0]).all()][0]
    assert not P.is_valid_prediction('nqueens', P.queens_to_tokens(wrong_given), x), 'a given queen was dropped'
    attack = y.copy(); q = np.flatnonzero(y == P.QUEEN); attack[q[1]] = P.EMPTY; attack[q[0] + 1 if q[0] % 8 < 7 else q[0] - 1] = P.QUEEN
    assert not P.is_valid_prediction('nqueens', attack, x)
    # Sudoku: an empty 4x4 accepts any solution; a swapped pair or a PAD token is rejected
    empty = P.sudoku_to_tokens(np.zeros((4, 4), int))
    grid = P.sudoku_solution(2, rng); t = P.sudoku_to_tokens(grid)
    assert P.is_valid_prediction('sudoku', t, empty)
    sw = t.copy(); sw[[0, 4]] = sw[[4, 0]]
    assert not P.is_valid_prediction('sudoku', sw, empty)
    assert not P.is_valid_prediction('sudoku', np.where(np.arange(16) == 5, 0, t), empty)
    puz, sol9 = P.sudoku_make(3, 45, rng)
    other = P.sudoku_to_tokens(P.sudoku_solution(3, rng))
    assert not P.is_valid_prediction('sudoku', other, P.sudoku_to_tokens(puz)), 'a different full grid breaks the givens'


# ---------------------------------------------------------------- a short CPU training run

# Four learned prefix tokens (the blank identifier's puzzle embedding) give the RoPE-only network absolute
# anchors; without them it needs several times more steps to tell rows and columns apart.
TINY = dict(hidden_size=64, num_heads=4, num_layers=1, puzzle_emb_ndim=256, puzzle_emb_len=4)


def test_short_training_improves_sudoku_validity(tmp_path):
    from dis_nbdev.model import RecursiveModel
    from dis_nbdev.train import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny matrices: one thread is faster on a shared 2-core machine, and deterministic
    try: _train_and_score(tmp_path, RecursiveModel, train)
    finally: torch.set_num_threads(threads)


def _train_and_score(tmp_path, RecursiveModel, train):
    torch.manual_seed(0)
    d = P.build_puzzle_dataset(tmp_path/'su4', kind='sudoku', box=2, train=2000, test=200, remove=(1, 3), seed=0)
    before = P.evaluate_puzzles(RecursiveModel('dis_compact', vocab_size=6, seq_len=16, **TINY), d)
    cfg = dict(name='su4', data_dir=str(d), out_dir=str(tmp_path/'run'), method='dis', preset='dis_compact', model=TINY,
               global_batch_size=32, epochs=10**6, max_steps=702, lr=3e-3, lr_warmup_steps=20, lr_min_ratio=1.0,
               targets='sudoku_solver', ema=None, device='cpu', wandb_mode='disabled', progress=False, log_every=100,
               checkpoint_every=10**9, optimizer='adamw', seed=0)
    summary = train(cfg)
    assert summary['step'] == 702
    after = P.evaluate_puzzle_run(tmp_path/'run', d)
    assert len(after['per_step']) == 6 and after['kind'] == 'sudoku'
    print('validity before', before['valid'], 'after', after['valid'], after['per_step'])
    assert before['best_valid'] <= 0.02
    assert after['best_valid'] >= before['best_valid'] + 0.08, (before, after)   # measured: 0.0 -> 0.17 (step 6)


# ---------------------------------------------------------------- 6x6 Sudoku, mazes, code-based targets

def test_cli_builds_6x6_sudoku_and_mazes(tmp_path):
    P.build_puzzles_cli(['--kind', 'sudoku', '--box', '2', '3', '--remove', '8', '12', '--train', '12', '--test', '4',
                         '--out', str(tmp_path/'s6')])
    info, X, Y = P.load_puzzle_split(tmp_path/'s6', 'train')
    assert info['side'] == 6 and info['vocab_size'] == 8 and X.shape == (12, 36)
    assert all(P.is_valid_prediction('sudoku', y, x) and P.sudoku_count_solutions(P.tokens_to_sudoku(x)) == 1 for x, y in zip(X, Y))
    P.build_puzzles_cli(['--kind', 'maze', '--n', '12', '--path-len', '10', '30', '--train', '10', '--test', '4',
                         '--out', str(tmp_path/'m')])
    info, X, Y = P.load_puzzle_split(tmp_path/'m', 'test')
    assert info['vocab_size'] == 6 and X.shape == (4, 144) and set(np.unique(X)) <= {1, 2, 3, 4}
    assert all(P.maze_is_valid(y, x) and not P.maze_is_valid(x, x) for x, y in zip(X, Y))
    assert all(10 <= (y == P.PATH).sum() + 1 <= 30 for y in Y)
    with pytest.raises(P.PuzzleError, match='built with a different'):
        P.ensure_puzzle_dataset(tmp_path/'m', kind='maze', n=12, path_len=(5, 30), train=10, test=4)


def test_hard_sudoku_needs_search():
    rng = np.random.default_rng(3)
    for _ in range(3):
        puz, sol = P.sudoku_make_hard(3, 56, rng, min_backtracks=2)
        r = P.sudoku_rating(puz, sol)
        assert r['backtracks'] >= 2 and P.sudoku_count_solutions(puz) == 1
    with pytest.raises(P.PuzzleError, match='backtracks'):
        P.sudoku_make_hard(2, 6, rng, min_backtracks=1, tries=20)      # 4x4 puzzles never need a guess taken back


def test_code_targets_feed_a_short_mlp_t_run(tmp_path):
    "DIS with propagation-wave targets on TRM's board backbone (mlp_t): exact accuracy well above zero in ~100 steps."
    from dis_nbdev.train import train
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        d = P.build_puzzle_dataset(tmp_path/'su4', kind='sudoku', box=2, train=2000, test=100, remove=(4, 8), seed=0)
        cfg = dict(name='w', data_dir=str(d), out_dir=str(tmp_path/'run'), method='dis', preset='board_mlp_t_dis',
                   global_batch_size=32, epochs=10**6, max_steps=120, lr=1e-3, lr_warmup_steps=20, lr_schedule='constant',
                   targets='sudoku_waves', ema=None, device='cpu', wandb_mode='disabled', progress=False, log_every=60,
                   checkpoint_every=10**9, optimizer='adamw', seed=0)
        assert train(cfg)['step'] == 120
        res = P.evaluate_puzzle_run(tmp_path/'run', d)
    finally: torch.set_num_threads(threads)
    print('exact per step', [r['exact'] for r in res['per_step']])
    assert res['exact'] >= 0.3 and res['per_step'][-1]['exact'] >= res['per_step'][0]['exact']


# ---------------------------------------------------------------- issue 18: do the frames carry information?

def test_auto_solver_knows_mazes_and_refuses_unknown_rows():
    "puzzle_solver('auto') builds maze frames (the path from S) on maze tokens, not Sudoku frames; ARC rows are refused."
    from dis_nbdev.targets import get_target_generator
    X, Y = P.make_examples('maze', 12, np.random.default_rng(2), n=9, path_len=(12, 30))
    assert all(P.detect_kind(x, y) == 'maze' for x, y in zip(X, Y))
    args = (torch.from_numpy(X).long(), torch.from_numpy(Y).long(), 6)
    Fa, Fm = get_target_generator('puzzle_solver')(*args).numpy(), get_target_generator('maze_bfs')(*args).numpy()
    assert (Fa == Fm).all() and (Fa[-1] == Y).all()
    for f in Fa.reshape(-1, X.shape[1]): assert set(np.unique(f)) <= {P.WALL, P.OPEN, P.START, P.GOAL, P.PATH}
    Xs, Ys = P.make_examples('sudoku', 4, np.random.default_rng(0), box=2, remove=8)
    assert [P.detect_kind(x, y) for x, y in zip(Xs, Ys)] == ['sudoku'] * 4
    arc = np.zeros(900, np.int64); arc[:4] = [2, 3, 1, 5]
    with pytest.raises(P.PuzzleError, match='cannot tell the board family'): P.detect_kind(arc, arc)


def test_wave_targets_are_the_label_on_easy_6x6_and_informative_on_hard():
    """6x6 Sudoku with 4-8 blanks: almost every puzzle is one propagation wave, so every frame is the label (flagged);
    with 18-24 blanks most puzzles need 2+ waves and the early frames differ from the label."""
    X, Y = P.make_examples('sudoku', 200, np.random.default_rng(0), box=[2, 3], remove=(4, 8))
    easy = P.frame_label_stats('sudoku_waves', X, Y, 6)
    assert easy['flagged'] and easy['all_frames_label'] >= 0.95 and easy['groups']['hist'].get(1, 0) >= 190
    X, Y = P.make_examples('sudoku', 200, np.random.default_rng(0), box=[2, 3], remove=(18, 24))
    hard = P.frame_label_stats('sudoku_waves', X, Y, 6)
    two_plus = sum(c for w, c in hard['groups']['hist'].items() if w >= 2) / 200
    assert not hard['flagged'] and two_plus >= 0.9 and hard['equal_label'][0] <= 0.05 and hard['equal_label'][-1] == 1.0
    # the hand count: frame s equals the label exactly when ceil(s*R/6) == R waves are shown
    R = np.array([len(P.get_family('sudoku').waves(x, y)) for x, y in zip(X, Y)])
    assert hard['equal_label'] == [round(float((-(-s * R // 6) == R).mean()), 4) for s in range(1, 7)]


def test_dataset_and_run_target_reports(tmp_path):
    d = P.build_puzzle_dataset(tmp_path/'s6', kind='sudoku', box=[2, 3], remove=(18, 24), train=30, test=4, seed=0)
    rep = P.dataset_target_report(d)
    assert rep['kind'] == 'sudoku' and set(rep['targets']) == {'sudoku_solver', 'sudoku_waves'}
    assert not rep['targets']['sudoku_waves']['flagged'] and rep['targets']['sudoku_waves']['n'] == 30
    run = tmp_path/'run'; run.mkdir()
    (run/'config.json').write_text(json.dumps({'method': 'trm', 'targets': 'sudoku_waves', 'data_dir': str(d)}))
    r = P.run_target_report(run)
    assert r['targets'] == 'label' and r['flagged'] and r['all_frames_label'] == 1.0   # TRM trains on the label


def test_issue18_board_specs():
    "6x6 Sudoku with 18-24 blanks, and perfect mazes (one path) of 12-30 moves on 9x9 to 11x11 boards."
    s = P.board_spec(kind='sudoku', box=[2, 3], remove=(18, 24))
    X, Y = s.family.generate(10, np.random.default_rng(1), **s.params())
    assert all(18 <= (x == P.BLANK).sum() <= 24 and P.sudoku_count_solutions(P.tokens_to_sudoku(x)) == 1 for x in X)
    for n in (9, 10, 11):
        m = P.board_spec(kind='maze', n=n, path_len=(12, 30), loops=0.0)
        X, Y = m.family.generate(10, np.random.default_rng(n), **m.params())
        for x, y in zip(X, Y):
            s_, g_ = int(np.flatnonzero(x == P.START)[0]), int(np.flatnonzero(x == P.GOAL)[0])
            assert P.maze_count_shortest(x, s_, g_, limit=5) == 1 and 12 <= (y == P.PATH).sum() + 1 <= 30
