"""The EMA shares the live puzzle table instead of copying it; what it averages and what is evaluated do not change."""
import copy

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dis_nbdev.model import RecursiveModel, model_config
from dis_nbdev.optim import averaged_model, make_ema, puzzle_params


def _model():
    torch.manual_seed(0)
    return RecursiveModel(model_config('dis_compact', hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1,
                                       seq_len=16, num_puzzle_identifiers=50, vocab_size=12))


def _old_ema(model, decay):
    "The EMA as it was made before: a full deep copy, the table skipped by the average and copied in to evaluate."
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    skip = {p.data_ptr() for p in puzzle_params(ema.module)}
    base = get_ema_multi_avg_fn(decay)
    def avg(e, c, n):
        keep = [i for i, p in enumerate(e) if p.data_ptr() not in skip and p.is_floating_point()]
        if keep: base([e[i] for i in keep], [c[i] for i in keep], n)
    ema.multi_avg_fn = avg
    for p in ema.parameters(): p.requires_grad_(False)
    return ema


def test_the_ema_shares_the_table_and_averages_as_before():
    m = _model(); m2 = copy.deepcopy(m)
    new, old = make_ema(m, 0.9), _old_ema(m2, 0.9)
    table = m.puzzle_emb.weight
    assert new.module.puzzle_emb.weight is table and table.requires_grad          # shared, still trained
    assert list(dict(m.named_parameters())) == [k for k, _ in new.module.named_parameters()]   # same order as the model
    own = {p.data_ptr() for p in new.module.parameters()} - {table.data_ptr()}
    assert table.data_ptr() not in own and all(not p.requires_grad for p in new.module.parameters() if p is not table)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):                                    # the live models move alike; both EMAs follow
        for a, b in zip(m.parameters(), m2.parameters()):
            d = torch.randn(a.shape, generator=g)
            with torch.no_grad(): a.add_(d); b.add_(d)
        new.update_parameters(m); old.update_parameters(m2)
    sn, so = new.state_dict(), old.state_dict()
    dense = [k for k in sn if 'puzzle_emb' not in k]
    assert dense and all(torch.equal(sn[k], so[k]) for k in dense)
    assert not torch.equal(sn['module.lm_head.weight'], m.lm_head.weight)          # it does average
    an, ao = averaged_model(m, new), averaged_model(m2, old)
    assert torch.equal(an.puzzle_emb.weight, ao.puzzle_emb.weight) and an.puzzle_emb.weight is table
    x = torch.randint(2, 12, (3, 16)); pid = torch.tensor([1, 7, 30])
    with torch.no_grad():
        on, oo = an(an.initial_carry(3), x, pid), ao(ao.initial_carry(3), x, pid)
    assert torch.equal(on.logits, oo.logits) and on.logits.abs().sum() > 0
