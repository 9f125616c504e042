"""Bad input to ``neuromorph export-spice`` / ``spice-check`` and to the netlist writer: a clear error (exit code 2,
``neuromorph <command>: error: ...`` naming the value), never a traceback nor a silently wrong run; user text in
a netlist never makes a card. The ngspice runs are skipped locally when ngspice is missing (a failure in CI)."""

import math
from pathlib import Path

import pytest
import torch

from neuromorph.cli import main
from neuromorph.network import LayeredNetwork
from neuromorph.spice import export_netlist
from neuromorph.spice.netlist import TITLE_MAX, title_text
from neuromorph.spice.run import run_batch, spice_available

OK, WHY = spice_available()
N_TEST = 12


@pytest.fixture
def cfg(tmp_path) -> Path:
    """A 64-6-10 squared-error network on 20 + 12 digits."""
    p = tmp_path / "tiny.toml"
    p.write_text(f"""name = "tiny"
[model]
layers = [64, 6, 10]
loss = "mse"
[ep]
estimator = "symmetric"
beta = 0.5
[train]
algorithm = "ep"
dtype = "float64"
[data]
name = "digits"
n_train = 20
n_test = {N_TEST}
[output]
dir = "{tmp_path / 'run'}"
[hardware]
device = "ideal"
""")
    return p


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def checkpoint(path: Path, model, config=None) -> Path:
    torch.save({"format": 1, "epoch": 0, "model": model, "config": config if config is not None else {}}, path)
    return path


def state(sizes=(64, 6, 10), **kw) -> dict:
    return {k: v.clone() for k, v in LayeredNetwork(list(sizes), dtype=torch.float64, **kw).state_dict().items()}


# ---------------------------------------------------------------------------------------------- 1. checkpoints
@pytest.mark.parametrize("command", ["export-spice", "spice-check"])
def test_checkpoint_of_another_architecture_names_both(capsys, cfg, tmp_path, command):
    ck = checkpoint(tmp_path / "other.pt", state((64, 5, 10)), {"model": {"layers": [64, 5, 10]}})
    extra = ["--out", tmp_path / "a.cir"] if command == "export-spice" else []
    rc, _, err = run(capsys, command, "--config", cfg, "--checkpoint", ck, *extra)
    assert rc == 2 and err.startswith(f"neuromorph {command}: error: checkpoint")
    assert "layer sizes 64-5-10" in err and "layer sizes 64-6-10" in err and "5x64 vs 6x64" in err, err
    assert not (tmp_path / "a.cir").exists()


@pytest.mark.parametrize("case, words", [
    ("no_bias", ["lacks params.2", "model.bias"]),
    ("nan", ["params.0", "non-finite"]),
    ("complex", ["complex128", "real numbers"]),
    ("activation", ["model.activation = 'sigmoid'"]),
    ("not_tensor", ["params.1"]),
    ("model_list", ["'model'", "list"]),
    ("no_model", ["'model'"]),
])
def test_hand_made_checkpoints_refused(capsys, cfg, tmp_path, case, words):
    sd = state()
    if case == "no_bias":
        sd = state(bias=False)
    elif case == "nan":
        sd["params.2"][1, 3] = math.nan
        sd["params.0"][0, 0] = math.inf
    elif case == "complex":
        sd = {k: v.to(torch.complex128) for k, v in sd.items()}
    elif case == "not_tensor":
        sd["params.1"] = [0.0] * 6
    p = tmp_path / "ck.pt"
    if case == "no_model":
        torch.save({"format": 1, "epoch": 0, "config": {}}, p)
    else:
        checkpoint(p, [1, 2] if case == "model_list" else sd,
                   {"model": {"activation": "sigmoid"}} if case == "activation" else None)
    rc, _, err = run(capsys, "export-spice", "--config", cfg, "--checkpoint", p, "--out", tmp_path / "a.cir")
    assert rc == 2 and "checkpoint" in err, err
    assert all(w in err for w in words), err


def test_model_state_check_on_bare_dicts():
    from neuromorph.train import CheckpointError, load_model_state

    net = LayeredNetwork([64, 6, 10], dtype=torch.float64)
    with pytest.raises(CheckpointError, match="has extra params.4"):
        load_model_state(net, {**state(), "params.4": torch.zeros(2)}, "x.pt")
    with pytest.raises(CheckpointError, match="lacks params.3"):
        load_model_state(net, {k: v for k, v in state().items() if k != "params.3"}, "x.pt")
    sd = state()
    sd["params.0"].fill_(0.5)
    load_model_state(net, sd, "x.pt")
    assert torch.equal(net.state_dict()["params.0"], sd["params.0"])


def test_checkpoint_of_the_same_architecture_is_exported(capsys, cfg, tmp_path):
    sd = state()
    sd["params.0"].fill_(0.25)
    ck = checkpoint(tmp_path / "same.pt", sd, {"model": {"layers": [64, 6, 10], "activation": "half_hard_sigmoid"}})
    rc, out, _ = run(capsys, "export-spice", "--config", cfg, "--checkpoint", ck, "--out", tmp_path / "a.cir")
    assert rc == 0 and "sizes 64-6-10" in out


# ---------------------------------------------------------------------------------------------- 2. options
@pytest.mark.parametrize("args, words", [
    (["--samples", "0"], ["--samples 0", ">= 1"]),
    (["--samples=-3"], ["--samples -3"]),
    (["--sample=-1"], ["--sample -1", ">= 0"]),
    (["--sample", str(N_TEST)], [f"--sample {N_TEST}", f"has {N_TEST} samples", f"0 to {N_TEST - 1}"]),
    (["--split", "train", "--sample", "20"], ["--sample 20", "train split has 20"]),
    (["--tol", "0"], ["--tol 0.0", "> 0"]),
    (["--tol", "nan"], ["--tol nan"]),
    (["--beta", "nan"], ["--beta nan", "finite"]),
    (["--beta=-inf"], ["--beta -inf"]),
    (["--beta", "0"], ["--beta 0.0", "!= 0"]),
])
def test_spice_check_options_refused(capsys, cfg, args, words):
    rc, out, err = run(capsys, "spice-check", "--config", cfg, *args)
    assert rc == 2 and err.startswith("neuromorph spice-check: error: --"), err
    assert all(w in err for w in words), err
    assert out == ""


@pytest.mark.parametrize("args, words", [
    (["--tran-tau", "0"], ["--tran-tau 0.0", "> 0"]),
    (["--tran-tau=-1", "--analysis", "tran"], ["--tran-tau -1.0"]),
    (["--tran-tau", "inf", "--analysis", "tran"], ["--tran-tau inf"]),
    (["--beta", "nan"], ["--beta nan", "finite"]),
    (["--sample=-2"], ["--sample -2"]),
    (["--sample", "99"], ["--sample 99", f"has {N_TEST} samples"]),
])
def test_export_options_refused(capsys, cfg, tmp_path, args, words):
    rc, _, err = run(capsys, "export-spice", "--config", cfg, "--out", tmp_path / "a.cir", *args)
    assert rc == 2 and err.startswith("neuromorph export-spice: error: --"), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "a.cir").exists()


def test_export_out_not_writable(capsys, cfg, tmp_path):
    rc, _, err = run(capsys, "export-spice", "--config", cfg, "--out", tmp_path)
    assert rc == 2 and "--out" in err


def test_samples_past_the_split_are_clamped_with_a_note(capsys, cfg, spice):
    rc, out, err = run(capsys, "spice-check", "--config", cfg, "--sample", N_TEST - 2, "--samples", 5,
                       "--no-transient")
    assert "--samples 5 from --sample 10" in err and "using the 2" in err, err
    assert "2 sample(s)" in out and rc == 0, out


def test_short_transient_export_runs(capsys, cfg, tmp_path, spice):
    """--tran-tau below 1: the time step follows the transient's length (50 steps), ngspice accepts the deck."""
    rc, _, _ = run(capsys, "export-spice", "--config", cfg, "--out", tmp_path / "t.cir", "--analysis", "tran",
                   "--tran-tau", "0.5")
    assert rc == 0
    assert run_batch(tmp_path / "t.cir")["time"][-1] > 0


# ---------------------------------------------------------------------------------------------- 3. user text
def golden():
    net = LayeredNetwork([4, 3], dtype=torch.float64, seed=0)
    return net, torch.tensor([0.5, 0.25, 1.0, 0.75], dtype=torch.float64)


def test_title_text():
    assert title_text("golden layer 4x3") == "golden_layer_4x3"  # the golden netlist's title is unchanged
    assert title_text("Réseau 日本") == "r\\u00e9seau_\\u65e5\\u672c"
    assert title_text("a\U0001F600") == "a\\U0001f600"
    assert title_text("") == "untitled" and title_text("---") == "___"
    long = title_text("a" * 10_000)
    assert len(long) == TITLE_MAX and long.endswith("...")
    cut = title_text("日" * 100)  # cut between escapes, never inside one
    assert len(cut) <= TITLE_MAX and cut.endswith("\\u65e5...")
    assert title_text("b" * TITLE_MAX) == "b" * TITLE_MAX
    with pytest.raises(ValueError, match="string"):
        title_text(None)


@pytest.mark.parametrize("title", [
    "x\n.include /etc/passwd",
    "x\r.include /etc/passwd",
    "x\u2028.include /etc/passwd\x85.control\x0b.endc\x0c{evil}",
    "n" * 10_000 + "\n.include /etc/passwd",
    "x" * 4_990 + " .include /etc/passwd",
])
def test_title_never_makes_a_card(title):
    net, x = golden()
    text = export_netlist(net, x, title=title)
    lines = text.split("\n")
    assert text.splitlines() == lines[:-1]  # no line break but "\n" (none of \r, \x0b, \x0c, \x85, \u2028)
    assert text.isascii() and all(c.isprintable() for ln in lines for c in ln)
    assert lines[0].startswith("* ") and len(lines[0]) <= TITLE_MAX + 100
    assert "passwd" not in "\n".join(lines[1:])
    for line in lines:
        assert not line.lower().startswith((".include", ".control", ".endc", ".lib")) and "{evil" not in line


def test_long_and_non_ascii_titles_run_in_ngspice(spice):
    net, x = golden()
    for title in ("a" * 10_000, "日本語のネットワーク " * 300):
        vec = run_batch(export_netlist(net, x, title=title))
        assert {"u1_0", "s1_2"} <= set(vec)


def test_non_ascii_config_name_exports(capsys, cfg, tmp_path):
    out = tmp_path / "n.cir"
    rc, _, err = run(capsys, "export-spice", "--config", cfg, "--out", out, "--set", 'name="réseau 日本"')
    assert rc == 0, err
    text = out.read_bytes().decode("ascii")
    assert text.startswith("* r\\u00e9seau_\\u65e5\\u672c: neuromorph settling circuit")


def test_config_name_with_a_newline_makes_no_card(capsys, cfg, tmp_path):
    out = tmp_path / "n.cir"
    rc, _, err = run(capsys, "export-spice", "--config", cfg, "--out", out, "--set",
                     'name="x\\n.include /etc/passwd"')
    if rc != 0:  # the config may refuse control characters in a name
        assert rc == 2 and "name" in err
        return
    assert not any(ln.startswith(".include") for ln in out.read_text().splitlines())
