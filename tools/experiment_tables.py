"""The README's experiment tables (issue 18), made from the grids' own reports so no number is copied by hand.

    python tools/experiment_tables.py            # prints the markdown blocks; copies each report (a guide page of the site) and its figures to docs/
    python tools/experiment_tables.py --fill tools/readme_results.md.tmpl OUT    # the README section, blocks in place

Reads the finished runs of grid_targets_A.yaml, grid_scarce_B.yaml, grid_maze_Bprime.yaml and grid_maze_Bprime_long.yaml (run them first with
`dis-grid GRID --workers 2`), calls `dis_nbdev.grid_report.grid_report` on each (which writes its report.md and
figures), and makes: each grid's data checks, endpoint table and contrasts (each control arm against its neighbour),
A's strata and B's train-test gap.
"""
import shutil, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path.cwd()               # the project folder the grids ran in (their `out` folders are relative to it)

from dis_nbdev.experiments import load_grid                                      # noqa: E402
from dis_nbdev import grid_report as R                                          # noqa: E402

GRIDS = ROOT/'papermill_runs'/'grids'
CONTRASTS = [   # (arm, baseline, what the one factor is)
    ('dis_waves_x', 'dis_label_x', 'targets: waves vs label (DIS, x injection), each at its tuned lr'),
    ('dis_waves_x_lr2e3', 'dis_label_x', 'targets: waves vs label, both at lr 2e-3 (the targets only)'),
    ('dis_waves_prev', 'dis_waves_x_lr2e3', "injection: the DIS code's previous argmax vs x (both lr 2e-3)"),
    ('trm_T1n2_nohalt', 'trm_T1n2', 'ACT halting off (TRM loss, every sample all 6 steps)'),
    ('dis_label_x', 'trm_T1n2_nohalt', 'DIS batching (6 optimizer steps per batch, step embedding) vs TRM without halting'),
    ('dis_waves_x', 'trm_T1n2', 'DIS with wave targets (tuned lr) vs TRM T1 n2 as published'),
    ('dis_waves_x_lr2e3', 'trm_T1n2', 'DIS with wave targets at 2e-3 (the best DIS arm) vs TRM T1 n2'),
    ('dis_corrupt', 'dis_label_x', "the DIS code as published (corruption path, previous argmax) vs DIS label x"),
]
EXPERIMENTS = {'A': 'grid_targets_A', 'B': 'grid_scarce_B', 'Bp': 'grid_maze_Bprime', 'Bpl': 'grid_maze_Bprime_long'}
OTHER_CONTRASTS = [   # B and B': each arm against DIS on the label
    ('dis_waves_x', 'dis_label_x', 'targets: waves vs label, each at its tuned lr'),
    ('dis_waves_x_lr2e3', 'dis_label_x', 'targets: waves vs label, both at lr 2e-3'),
    ('dis_bfs_x', 'dis_label_x', 'targets: BFS path vs label'),
    ('dis_both_x', 'dis_label_x', 'targets: path from both ends vs label'),
    ('trm_T1n2', 'dis_label_x', 'TRM T1 n2 vs DIS label'),
]


def report(name: str, docs: Path | None) -> dict:
    g = load_grid(GRIDS/f'{name}.yaml'); g['out'] = str(ROOT/g['out'])
    rep = R.grid_report(g, log=lambda *a: None)
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(rep['report'], docs/f'{g["name"]}_report.md')
        for f in rep['figures']: shutil.copy(f, docs/f'{g["name"]}_{Path(f).name}')
    return rep


def _row(c: dict) -> str:
    return (f"{R._sd(c['boot']) if c['boot'] else 'n/a'} | {R._sd(c['t'])} | "
            f"{', '.join(f'{d:+.3f}' for d in c['per_seed'])}")


def contrasts(rep: dict, pairs=CONTRASTS, task: str | None = None) -> list[str]:
    cm = {(c['task'], c['arm'], c['baseline'], c['endpoint']): c for c in rep['comparisons']}
    tasks = [task] if task else list(dict.fromkeys(c['task'] for c in rep['comparisons']))
    out = R._md_table(['task', 'factor (arm minus baseline)', 'primary endpoint: difference, bootstrap seeds x puzzles',
                       'paired t over seeds', 'per seed', 'AUC: difference, bootstrap'], [])
    for t in tasks:
        for arm, bl, what in pairs:
            f, a = cm.get((t, arm, bl, 'final')), cm.get((t, arm, bl, 'auc'))
            if f is None: continue
            boot, tt, per = _row(f).split(' | ')
            out.append(f"| {t} | {what}: `{arm}` - `{bl}` | {boot} | {tt} | {per} | "
                       f"{R._sd(a['boot']) if a and a['boot'] else 'n/a'} |")
    return out


def blocks(docs: Path | None = None) -> dict:
    "{name: markdown} for the README: A_checks, A_endpoints, A_contrasts, A_strata, B_endpoints, B_gap, B_contrasts, Bp_..."
    out = {}
    tune = load_grid(GRIDS/'grid_targets_A_tune.yaml')
    if (ROOT/tune['out']/'runs').exists(): report('grid_targets_A_tune', docs)   # its report (tuned.yaml) beside the others
    for key, name in EXPERIMENTS.items():
        g = load_grid(GRIDS/f'{name}.yaml'); g['out'] = str(ROOT/g['out'])
        if not (Path(g['out'])/'runs').exists(): continue
        runs = R.collect_runs(g); summ = R.summarize(runs)
        rep = report(name, docs)
        tasks = list(dict.fromkeys(r['task'] for r in summ))
        out[f'{key}_checks'] = '\n'.join(l for t in tasks for l in R.format_checks(t, rep['checks'].get(t, {'targets': {}})))
        head = (lambda t: [f'**{t}**', '']) if len(tasks) > 1 else (lambda t: [])
        out[f'{key}_endpoints'] = '\n'.join(l for t in tasks for l in
                                            head(t) + R.format_endpoints([r for r in summ if r['task'] == t], 2) + [''])
        gaps = {t: R.format_gap([r for r in summ if r['task'] == t]) for t in tasks}
        gap = [l for t in tasks if gaps[t] for l in [f'**{t}**', ''] + gaps[t] + ['']]
        if gap: out[f'{key}_gap'] = '\n'.join(gap)
        pairs = CONTRASTS if key == 'A' else OTHER_CONTRASTS
        out[f'{key}_contrasts'] = '\n'.join(contrasts(rep, pairs))
        if key == 'A': out['A_strata'] = '\n'.join(l for v in rep['strata'].values() for l in R.format_strata(v))
    return out


def fill(template: Path, docs: Path | None = None) -> str:
    "A markdown template with `{{A_endpoints}}`-style placeholders filled from `blocks`."
    text, b = template.read_text(), blocks(docs)
    for k, v in b.items(): text = text.replace('{{' + k + '}}', v.rstrip())
    return text


def main(argv=None) -> int:
    docs = ROOT/'docs'
    if argv is None: argv = sys.argv[1:]
    if argv and argv[0] == '--fill':          # --fill TEMPLATE OUT: the README section from its template
        Path(argv[2]).write_text(fill(Path(argv[1]), docs)); print(f'wrote {argv[2]}'); return 0
    for k, v in blocks(docs).items(): print(f'<!-- {k} -->\n{v}\n')    # each block, named as the template's placeholder
    return 0


if __name__ == '__main__':
    sys.exit(main())
