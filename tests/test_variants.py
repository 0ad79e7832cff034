"""TRM's board backbones (`mlp_t`, learned / no positions) and our 2-D rotary positions, against an
independent float64 re-statement written here from REFERENCE.md section 10 (not from the model's code):
the MLP across positions works on the transposed state `[B, D, P+L]` (residual and RMSNorm over positions),
learned positions are added to prefix + tokens and the sum scaled by 1/sqrt(2) before sqrt(D), and 2-D RoPE
turns rotary pair j (of d/2) by the row for j < d/4 and by the column otherwise, the prefix sitting at (0, 0).
Inputs are real generated Sudoku boards.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dis_nbdev.convert import load_reference_checkpoint, load_reference_model, to_reference_state_dict
from dis_nbdev.core import ConfigError
from dis_nbdev.model import RecursiveModel, model_config
from dis_nbdev.boards import make_examples

PREFIX = '_orig_mod.model.inner.'
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def positions(cfg):
    "Per position (row, col) for rope2d, written out: prefix at (0, 0), cell k at (k // W + 1, k % W + 1)."
    rows, cols = [0] * cfg.prefix_len, [0] * cfg.prefix_len
    W = cfg.grid_width or int(round(math.sqrt(cfg.seq_len)))
    for k in range(cfg.seq_len):
        rows.append(k // W + 1); cols.append(k % W + 1)
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(cols, dtype=torch.float64)


def rotary_angles(cfg):
    "[S, d/2] angle of each rotary pair (j, j + d/2)."
    hd, S = cfg.hidden_size // cfg.num_heads, cfg.total_len
    if cfg.pos_encodings == 'rope':
        i = torch.arange(hd // 2, dtype=torch.float64)
        return torch.arange(S, dtype=torch.float64)[:, None] * cfg.rope_theta ** (-2 * i / hd)[None]
    r, c = positions(cfg)
    q = hd // 4
    i = torch.arange(q, dtype=torch.float64)
    f = cfg.rope_theta ** (-2 * i / (hd // 2))
    return torch.cat([r[:, None] * f[None], c[:, None] * f[None]], dim=1)


def reference_step(W, cfg, zH, zL, inputs, pids, timestep=None):
    "One supervision step of TRM (+ DIS step embedding) with the board options, float64, reference key names."
    D, H, P, B = cfg.hidden_size, cfg.num_heads, cfg.prefix_len, inputs.shape[0]
    hd = D // H
    emb = W['embed_tokens.embedding_weight'][inputs]
    if cfg.puzzle_emb_ndim:
        pe = F.pad(W['puzzle_emb.weights'][pids], (0, P * D - cfg.puzzle_emb_ndim))
        emb = torch.cat([pe.view(B, P, D), emb], dim=1)
    if cfg.pos_encodings == 'learned':
        emb = (emb + W['embed_pos.embedding_weight']) / math.sqrt(2)
    if timestep is not None:
        emb = emb + W['timestep_embed.embedding_weight'][timestep][:, None, :]
    x = math.sqrt(D) * emb
    S = emb.shape[1]
    ang = rotary_angles(cfg) if cfg.pos_encodings in ('rope', 'rope2d') else None

    def rot(t):  # [B, S, H, hd]: rotate each pair (t_j, t_{j+hd/2}) by its angle
        if ang is None: return t
        a, b = t[..., :hd // 2], t[..., hd // 2:]
        c, s = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)

    def norm(h): return h / torch.sqrt((h * h).mean(-1, keepdim=True) + cfg.rms_eps)

    def swiglu(h, name):
        gu = h @ W[name + '.gate_up_proj.weight'].T
        Fw = gu.shape[-1] // 2
        return (F.silu(gu[..., :Fw]) * gu[..., Fw:]) @ W[name + '.down_proj.weight'].T

    def block(h, i):
        L = f'L_level.layers.{i}.'
        if cfg.mlp_t:
            ht = h.transpose(1, 2)                              # [B, D, S]
            h = norm(ht + swiglu(ht, L + 'mlp_t')).transpose(1, 2)
        else:
            qkv = (h @ W[L + 'self_attn.qkv_proj.weight'].T).view(B, S, 3 * H, hd)
            q, k, v = rot(qkv[:, :, :H]), rot(qkv[:, :, H:2 * H]), qkv[:, :, 2 * H:]
            att = torch.einsum('bshd,bthd->bhst', q, k) / math.sqrt(hd)
            o = torch.einsum('bhst,bthd->bshd', att.softmax(-1), v).reshape(B, S, D)
            h = norm(h + o @ W[L + 'self_attn.o_proj.weight'].T)
        return norm(h + swiglu(h, L + 'mlp'))

    def level(h, inj):
        h = h + inj
        for i in range(cfg.num_layers): h = block(h, i)
        return h

    with torch.no_grad():
        for _ in range(cfg.T - 1):
            for _ in range(cfg.n): zL = level(zL, zH + x)
            zH = level(zH, zL)
    for _ in range(cfg.n): zL = level(zL, zH + x)
    zH = level(zH, zL)
    q = zH[:, 0] @ W['q_head.weight'].T + W['q_head.bias']
    return zH, zL, (zH @ W['lm_head.weight'].T)[:, P:], q


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g) / (math.sqrt(t.shape[-1]) if t.ndim == 2 else 1.0))
    return model


def sudoku_inputs(box, count=2, seed=0):
    X, _ = make_examples('sudoku', count, np.random.default_rng(seed), box=box, remove=(4, 8) if box == 2 else (20, 30))
    return torch.from_numpy(np.asarray(X).astype(np.int64))


VARIANTS = [   # (name, preset, overrides, box)
    ('mlp_t+none (TRM Sudoku)', 'board_mlp_t', dict(T=2, n=2), 2),
    ('mlp_t+learned', 'board_mlp_t', dict(pos_encodings='learned', T=2, n=2), 2),
    ('mlp_t DIS budget', 'board_mlp_t_dis', dict(puzzle_emb_len=3), 2),
    ('attention+learned', 'board_rope2d', dict(pos_encodings='learned', T=2, n=2), 2),
    ('attention+none', 'board_rope2d', dict(pos_encodings='none', T=2, n=2), 2),
    ('attention+rope2d 4x4', 'board_rope2d', dict(T=2, n=2), 2),
    ('attention+rope2d 9x9 DIS', 'board_rope2d_dis', dict(hidden_size=64, puzzle_emb_ndim=64, puzzle_emb_len=2), 3),
    ('attention+rope (default path)', 'board_rope2d', dict(pos_encodings='rope', T=2, n=2), 2),
]


@pytest.mark.parametrize('name,preset,over,box', VARIANTS, ids=[v[0] for v in VARIANTS])
def test_variant_matches_restatement(name, preset, over, box):
    inputs = sudoku_inputs(box)
    B, L = inputs.shape
    cfg = model_config(preset, seq_len=L, vocab_size=int(inputs.max()) + 2, num_puzzle_identifiers=3, **over)
    sd = to_reference_state_dict(_randomise(RecursiveModel(cfg), seed=len(name)))
    model = load_reference_checkpoint(RecursiveModel(cfg), sd).eval()
    W = {k[len(PREFIX):]: v.double() for k, v in sd.items()}
    pids = torch.tensor([1, 2])
    carry = model.initial_carry(B)
    for s in (1, 2, 3):   # each step from the same carry (fp32 rounding grows through a chaotic random recursion)
        with torch.no_grad():
            out = model(carry, inputs, pids, step=s if cfg.step_embed else None)
        ts = torch.full((B,), min(s, cfg.num_step_embeddings - 2)) if cfg.step_embed else None
        zH, zL, ref, q = reference_step(W, cfg, carry.y.double(), carry.z.double(), inputs, pids, ts)
        diff = (out.logits.double() - ref).abs().max().item()
        assert diff < 1e-4, f'{name} step {s}: max |logit diff| {diff:.2e}'
        assert (out.q_halt.double() - q[:, 0]).abs().max() < 1e-4
        assert (out.carry.y.double() - zH).abs().max() < 1e-4 and (out.carry.z.double() - zL).abs().max() < 1e-4
        carry = out.carry


def test_variants_differ_from_each_other():
    "Each option changes the function (a re-statement that ignored an option would still agree otherwise)."
    inputs = sudoku_inputs(2)
    logits = {}
    for pe in ('rope', 'rope2d', 'learned', 'none'):
        cfg = model_config('board_rope2d', seq_len=16, vocab_size=6, pos_encodings=pe, T=1, n=1)
        torch.manual_seed(0)
        m = _randomise(RecursiveModel(cfg), seed=5)
        with torch.no_grad(): logits[pe] = m(m.initial_carry(2), inputs, torch.zeros(2, dtype=torch.long)).logits
    keys = list(logits)
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert not torch.allclose(logits[keys[i]], logits[keys[j]], atol=1e-3), (keys[i], keys[j])


def test_mlp_t_gradient_matches_restatement():
    "Gradients of every weight (mlp_t, learned positions, step embedding) after two supervision steps, T=2."
    inputs = sudoku_inputs(2, seed=1)
    cfg = model_config('board_mlp_t_dis', seq_len=16, vocab_size=6, hidden_size=32, num_heads=2, puzzle_emb_ndim=32,
                       pos_encodings='learned', T=2, n=2, num_puzzle_identifiers=3)
    model = _randomise(RecursiveModel(cfg), seed=7)
    sd = to_reference_state_dict(model)
    W = {k[len(PREFIX):]: v.double().requires_grad_() for k, v in sd.items()}
    B, pids = 2, torch.tensor([0, 2])
    g = torch.Generator().manual_seed(0)
    probe = [torch.randn(B, 16, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    carry = model.initial_carry(B)
    zH, zL = W['H_init'].detach().expand(B, cfg.total_len, -1), W['L_init'].detach().expand(B, cfg.total_len, -1)
    for s in (1, 2):
        out = model(carry, inputs, pids, step=s)
        (out.logits.double() * probe[s - 1]).sum().backward()
        carry = out.carry
        zH, zL, ref, _ = reference_step(W, cfg, zH, zL, inputs, pids, torch.full((B,), s))
        (ref * probe[s - 1]).sum().backward()
        zH, zL = zH.detach(), zL.detach()
    from dis_nbdev.convert import _ref_to_ours
    params = dict(model.named_parameters())
    checked = 0
    for ref_name, w in W.items():
        if w.grad is None or ref_name.startswith('q_head'): continue
        p = params[_ref_to_ours(ref_name)]
        gr = p.grad.to_dense() if p.grad.is_sparse else p.grad
        err = (gr.double() - w.grad).abs().max().item() / (w.grad.abs().max().item() + 1e-12)
        assert err < 1e-4, f'{ref_name}: relative gradient error {err:.2e}'
        checked += 1
    assert checked >= 10 and W['embed_pos.embedding_weight'].grad is not None


def test_variant_checkpoint_round_trip(tmp_path):
    "mlp_t and learned-position checkpoints under TRM's key names: file round trip, shapes read off the file."
    cfg = model_config('board_mlp_t', seq_len=81, vocab_size=11, pos_encodings='learned', num_puzzle_identifiers=2)
    src = _randomise(RecursiveModel(cfg), seed=11)
    sd = to_reference_state_dict(src)
    assert sd[PREFIX + 'L_level.layers.0.mlp_t.gate_up_proj.weight'].shape == (2 * cfg.mlp_t_size, 82)
    assert sd[PREFIX + 'L_level.layers.0.mlp_t.down_proj.weight'].shape == (82, cfg.mlp_t_size)
    assert sd[PREFIX + 'embed_pos.embedding_weight'].shape == (82, 128)
    torch.save(sd, tmp_path / 'trm_sudoku.pt')
    # another preset: shapes come from the file; the prefix length is not in the weights (TRM: puzzle_emb_len)
    loaded = load_reference_model(tmp_path / 'trm_sudoku.pt', 'trm', puzzle_emb_len=1, n=6)
    assert (loaded.config.mlp_t, loaded.config.pos_encodings, loaded.config.seq_len) == (True, 'learned', 81)
    inputs = sudoku_inputs(3)
    with torch.no_grad():
        a = src(src.initial_carry(2), inputs, torch.tensor([0, 1])).logits
        b = loaded(loaded.initial_carry(2), inputs, torch.tensor([0, 1])).logits
    assert torch.equal(a, b)


def test_bad_variant_configs_are_refused():
    with pytest.raises(ConfigError, match='pos_encodings'):
        model_config('board_mlp_t', pos_encodings='alibi')
    with pytest.raises(ConfigError, match='grid_width'):
        model_config('board_rope2d', seq_len=20)
    with pytest.raises(ConfigError, match='mlp_t'):
        model_config('board_mlp_t', mlp_t='yes')
