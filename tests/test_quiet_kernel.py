"""dis-run starts a notebook kernel per run: it must not print ipykernel's "running over TCP without encryption"
warning (alarming, and not the user's concern)."""
from conftest import ROOT
from dis_nbdev.runner import execute_run


def test_dis_run_kernel_prints_no_tcp_warning(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv('WANDB_MODE', 'disabled'); monkeypatch.setenv('MPLBACKEND', 'Agg')
    res = execute_run(ROOT / 'papermill_runs' / 'configs' / 'ci_tiny.yaml', out=tmp_path, gpus=1)
    out, err = capfd.readouterr()
    assert res['status'] == 'finished', res
    assert 'without encryption' not in out + err
    assert '[ci_tiny] finished in' in out + err                  # (before the fix the warning showed here)
