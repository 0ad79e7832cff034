"""Bad network weights and shapes, one row each: the input and the one clear error it must give (issue 21).

Official (reference-named) checkpoints are converted by `dis_nbdev.convert`: a broken one is refused with a
`CheckpointError` that names the file and the tensor, never loaded silently and never a traceback."""
import pytest
import torch

from dis_nbdev.convert import config_from_reference, load_reference_checkpoint, load_reference_model, to_reference_state_dict
from dis_nbdev.core import CheckpointError, ConfigError, DisError
from dis_nbdev.model import RecursiveModel, model_config

PREFIX = '_orig_mod.model.inner.'
CFG = dict(seq_len=16, hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1, num_puzzle_identifiers=3)


@pytest.fixture(scope='module')
def official():
    "A small network's weights under the official DIS key names, as a converted checkpoint holds them."
    torch.manual_seed(0)
    return to_reference_state_dict(RecursiveModel(model_config('dis_compact', **CFG)))


def _poked(sd, key, value):
    out = {k: v.clone() for k, v in sd.items()}
    out[PREFIX + key].view(-1)[3] = value
    return out


def _renamed(sd, old, new):
    return {(PREFIX + new if k == PREFIX + old else k): v for k, v in sd.items()}


def _saved(sd, tmp_path, name='official.pt'):
    torch.save(sd, tmp_path / name); return tmp_path / name


# (case, how to build the bad input from the official state dict and a temp folder, what is called, expected error, text)
ROWS = [
    ('NaN in the official weights',
     lambda sd, tmp: _poked(sd, 'L_level.layers.0.mlp.down_proj.weight', float('nan')), 'model', CheckpointError,
     "non-finite weights (NaN or infinity) in 1 tensor(s): ['_orig_mod.model.inner.L_level.layers.0.mlp.down_proj.weight']"),
    ('infinity in the official weights',
     lambda sd, tmp: _poked(sd, 'lm_head.weight', float('inf')), 'load', CheckpointError,
     "non-finite weights (NaN or infinity) in 1 tensor(s): ['_orig_mod.model.inner.lm_head.weight']"),
    ('NaN in a saved official file (the file is named)',
     lambda sd, tmp: _saved(_poked(sd, 'H_init', float('nan')), tmp), 'config', CheckpointError,
     "official.pt: non-finite weights (NaN or infinity) in 1 tensor(s): ['_orig_mod.model.inner.H_init']"),
    ('no such checkpoint file',
     lambda sd, tmp: tmp / 'missing.pt', 'model', CheckpointError, 'missing.pt: no such checkpoint file'),
    ('a file that is not a checkpoint',
     lambda sd, tmp: (tmp / 'notes.pt').write_text('hello') and tmp / 'notes.pt', 'model', CheckpointError,
     'notes.pt: cannot read checkpoint'),
    ('a dict that holds no tensors',
     lambda sd, tmp: {'lr': 0.1}, 'load', CheckpointError, '<state_dict>: not a state_dict of tensors'),
    ('a tensor missing, one unknown',
     lambda sd, tmp: _renamed(sd, 'H_init', 'H_init_old'), 'load', CheckpointError,
     "missing ['y_init (reference H_init)']; unexpected ['H_init_old']"),
    ('weights of another width',
     lambda sd, tmp: {**sd, PREFIX + 'lm_head.weight': torch.zeros(12, 64)}, 'load', CheckpointError,
     'mis-shaped [\'lm_head.weight: checkpoint (12, 64) vs model (12, 32)\']'),
    ('no token embedding to read the shape from',
     lambda sd, tmp: {k: v for k, v in sd.items() if 'embed_tokens' not in k}, 'config', CheckpointError,
     '<state_dict>: no token embedding found'),
    ('an unknown model preset',
     lambda sd, tmp: sd, 'preset', ConfigError, "unknown model preset 'dis_huge'"),
]


def _call(what, bad):
    if what == 'model': return load_reference_model(bad, seq_len=16, num_heads=2, puzzle_emb_len=1)
    if what == 'load': return load_reference_checkpoint(RecursiveModel(model_config('dis_compact', **CFG)), bad)
    if what == 'config': return config_from_reference(bad, seq_len=16, num_heads=2, puzzle_emb_len=1)
    if what == 'preset': return load_reference_model(bad, 'dis_huge')
    raise AssertionError(what)


@pytest.mark.parametrize('case,make,what,error,text', ROWS, ids=[r[0] for r in ROWS])
def test_bad_weights_give_one_clear_error(case, make, what, error, text, official, tmp_path):
    with pytest.raises(error) as e: _call(what, make(official, tmp_path))
    assert isinstance(e.value, DisError) and text in str(e.value), str(e.value)
    assert '\n' not in str(e.value)


def test_the_good_weights_load(official):
    "The rows above fail because of what each changes: the official weights themselves load and run."
    m = load_reference_model(official, seq_len=16, num_heads=2, puzzle_emb_len=1)
    back = to_reference_state_dict(m)
    assert back.keys() == official.keys() and all(torch.equal(back[k], official[k]) for k in official)
    with torch.no_grad():
        out = m(m.initial_carry(2), torch.randint(2, 12, (2, 16)), torch.tensor([0, 2]), step=1)
    assert torch.isfinite(out.logits).all()
