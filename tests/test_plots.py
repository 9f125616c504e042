"""``neuromorph curves`` / ``neuromorph angles``: fake run directories, summaries, figures and errors."""

import json

import numpy as np
import pytest

from neuromorph.cli import main
from neuromorph.config import dump_toml, load_config
from neuromorph.plots import plot_angles, plot_curves, plot_learning_curves

PNG = b"\x89PNG\r\n\x1a\n"
UNI = ["model.unidirectional=true", "model.layers=[4, 8, 3]"]


def fake_run(path, name, accs, overrides=(), angles=None):
    """A run directory as Trainer writes it: config.toml and one metrics record per epoch."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(dump_toml(load_config(None, [f'name="{name}"', *overrides])))
    lines = []
    for i, (tr, te) in enumerate(accs):
        rec = {"epoch": i + 1, "train_acc": tr, "test_acc": te, "train_time_s": 1.0}
        if angles is not None:
            rec["angles"] = angles[i]
        lines.append(json.dumps(rec))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def is_png(path):
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_curves_groups_seeds_with_mean_and_std(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sym = [rng.uniform(0.3, 0.95, size=(4, 2)) for _ in range(2)]  # two seeds, 4 epochs, (train, test)
    one = rng.uniform(0.1, 0.5, size=(3, 2))
    dirs = [fake_run(tmp_path / f"sym/seed{i}", "sym", a.tolist()) for i, a in enumerate(sym)]
    dirs.append(fake_run(tmp_path / "one", "one-sided", one.tolist()))
    out = tmp_path / "fig" / "curves.png"
    assert main(["curves", *map(str, dirs), "--out", str(out), "--title", "CIFAR-10"]) == 0
    assert is_png(out) and out.with_suffix(".svg").stat().st_size > 0
    assert "sym" in capsys.readouterr().out

    _, summary = plot_curves(dirs, tmp_path / "again.png")
    assert list(summary) == ["sym", "one-sided"]
    for k, split in ((1, "test"), (0, "train")):
        err = 100 * (1 - np.stack([a[:, k] for a in sym]))
        s = summary["sym"][split]
        assert s["n"] == 2
        np.testing.assert_array_equal(s["epochs"], [1, 2, 3, 4])
        np.testing.assert_allclose(s["mean"], err.mean(0))
        np.testing.assert_allclose(s["std"], err.std(0))
        assert (s["std"] > 0).all()  # a band is drawn
        single = summary["one-sided"][split]
        assert single["n"] == 1 and (single["std"] == 0).all()
        np.testing.assert_allclose(single["mean"], 100 * (1 - one[:, k]))

    # --label-by dir: every directory on its own
    _, by_dir = plot_curves(dirs, tmp_path / "dirs.png", label_by="dir")
    assert len(by_dir) == 3 and all(s["test"]["n"] == 1 for s in by_dir.values())


def test_curves_keeps_epochs_common_to_a_group(tmp_path):
    a = fake_run(tmp_path / "a", "x", [(0.5, 0.4)] * 5)
    b = fake_run(tmp_path / "b", "x", [(0.6, 0.5)] * 3)  # still running
    _, summary = plot_curves([a, b], tmp_path / "f.png")
    np.testing.assert_array_equal(summary["x"]["test"]["epochs"], [1, 2, 3])
    np.testing.assert_allclose(summary["x"]["test"]["mean"], [55.0] * 3)


def test_plot_learning_curves_still_takes_one_history_per_label(tmp_path):
    hist = [{"epoch": 1, "train_acc": 0.5, "test_acc": 0.4}, {"epoch": 2, "train_acc": 0.7, "test_acc": 0.6}]
    assert is_png(plot_learning_curves({"EP": hist, "BPTT": hist}, tmp_path / "lc.png", title="t"))


def test_angles_per_layer_and_rule(tmp_path, capsys):
    ang_kp = [[80.0, 85.0], [40.0, 60.0], [10.0, 20.0]]
    ang_vf = [[89.0, 90.5], [88.0, 89.0], [87.0, 88.5]]
    kp = [fake_run(tmp_path / f"kp{i}", "kp", [(0.5, 0.5)] * 3, UNI + ['ep.rule="kp_vf"'],
                   [[a + i for a in row] for row in ang_kp]) for i in range(2)]
    vf = fake_run(tmp_path / "vf", "vf", [(0.5, 0.5)] * 3, UNI + ['ep.rule="vf"'], ang_vf)
    out = tmp_path / "angles.png"
    assert main(["angles", *map(str, kp), str(vf), "--out", str(out)]) == 0
    assert is_png(out) and out.with_suffix(".svg").is_file()
    assert "degrees" in capsys.readouterr().out
    _, summary = plot_angles([*kp, vf], tmp_path / "a2.png")
    assert len(summary["kp"]) == 2 and summary["kp"][0]["n"] == 2
    np.testing.assert_allclose(summary["kp"][1]["mean"], np.array(ang_kp)[:, 1] + 0.5)
    np.testing.assert_allclose(summary["kp"][1]["std"], [0.5] * 3)
    np.testing.assert_allclose(summary["vf"][0]["mean"], np.array(ang_vf)[:, 0])


def test_angles_of_a_bidirectional_run_is_an_error(tmp_path, capsys):
    run = fake_run(tmp_path / "bi", "bi", [(0.5, 0.5)] * 2)
    assert main(["angles", str(run), "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "no 'angles'" in err and "unidirectional" in err and str(run / "metrics.jsonl") in err
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("cmd", ["curves", "angles"])
@pytest.mark.parametrize("content", [None, "", "\n"])
def test_missing_or_empty_metrics_is_an_error(tmp_path, capsys, cmd, content):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    assert main([cmd, str(run), "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert str(run / "metrics.jsonl") in err
    assert ("does not exist" if content is None else "is empty") in err


def test_corrupt_metrics_line_is_an_error(tmp_path, capsys):
    run = fake_run(tmp_path / "run", "r", [(0.5, 0.5)])
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    assert main(["curves", str(run), "--out", str(tmp_path / "f.png")]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err
