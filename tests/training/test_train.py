"""The training loop (seeded, resumable), the StackMFF-V2 loss and the CLI `train` command."""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_edof import cli  # noqa: E402
from napari_edof.training import losses  # noqa: E402
from napari_edof.training.train import export_weights, lr_at, train_stackmff_v2  # noqa: E402

TINY = dict(batch_size=1, crop=32, n_min=3, n_max=4, ckpt_every=2, threads=1, progress=False)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_training_is_not_imported_by_the_package():
    code = ("import sys, napari_edof, napari_edof.cli; "
            "assert 'napari_edof.training' not in sys.modules; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resume_gives_the_same_weights(tmp_path):
    a = train_stackmff_v2(steps=3, out=tmp_path / "a", seed=3, **TINY)
    assert a["done"] and a["step"] == 3
    # interrupted after 2 steps (checkpoint at step 2), then resumed
    b1 = train_stackmff_v2(steps=3, out=tmp_path / "b", seed=3, stop_after=2, **TINY)
    assert not b1["done"] and b1["step"] == 2 and (tmp_path / "b" / "last.pt").exists()
    assert not (tmp_path / "b" / "weights.pt").exists()
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert ck["step"] == 2 and "optimizer" in ck and "rng" in ck
    b2 = train_stackmff_v2(steps=3, out=tmp_path / "b", seed=3, resume=True, **TINY)
    assert b2["done"] and b2["step"] == 3
    wa, wb = _weights(tmp_path / "a" / "weights.pt"), _weights(tmp_path / "b" / "weights.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == torch.float32 or not wa[k].is_floating_point()
        assert torch.equal(wa[k], wb[k]), k
    info = export_weights(tmp_path / "b" / "last.pt", tmp_path / "exported.pt")
    assert info["step"] == 3
    we = _weights(tmp_path / "exported.pt")
    assert all(torch.equal(wa[k], we[k]) for k in wa)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    # a different seed trains differently
    c = train_stackmff_v2(steps=1, out=tmp_path / "c", seed=4, **TINY)
    wc = _weights(c["weights"])
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_lr_schedule():
    assert lr_at(0, 100, 1e-3, warmup=10) == pytest.approx(1e-4)
    assert lr_at(10, 100, 1e-3, warmup=10) == pytest.approx(1e-3)
    assert lr_at(100, 100, 1e-3, min_ratio=0.1) == pytest.approx(1e-4)


def test_stackmff_v2_loss():
    index = torch.tensor([[[0, 1], [2, 3]]])
    depth = (index.float() + 0.5) / 4
    good = torch.nn.functional.one_hot(index, 4).permute(0, 3, 1, 2).float() * 20
    loss, m = losses.stackmff_v2_loss(good, depth, index, ce_weight=0.1)
    assert m["acc"] == 1.0 and m["ce"] < 1e-6 and m["mse"] < 1e-6
    bad = good.flip(1)
    loss_bad, m_bad = losses.stackmff_v2_loss(bad, depth, index)
    assert loss_bad > loss and m_bad["acc"] == 0
    _, m0 = losses.stackmff_v2_loss(good, depth, index, ce_weight=0)
    assert "ce" not in m0
    e = losses.expected_index(good)
    torch.testing.assert_close(e, index.float())
    g = losses.sobel_magnitude(torch.zeros(1, 2, 8, 8))
    assert g.shape == (1, 2, 8, 8) and float(g.max()) < 1e-5


def test_cli_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "stackmff-v2", "--steps", "2", "--out", str(out), "--seed", "1", "--crop", "32",
            "--n-min", "3", "--n-max", "3", "--batch-size", "1", "--threads", "1", "--ckpt-every", "1"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "step 2/2" in text and "weights.pt" in text
    from napari_edof.nn.stackmff_v2 import StackMFFV2

    StackMFFV2().load_state_dict(_weights(out / "weights.pt"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == "stackmff-v2" and cfg["seed"] == 1 and cfg["n_range"] == [3, 3]
    # continue to 3 steps
    assert cli.main(args[:3] + ["3"] + args[4:] + ["--resume", "-q"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    assert cli.main(["train", "nope", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert cli.main(args + ["--init", str(tmp_path / "missing.pt")]) == 2
    # fine-tuning from a weights file (with a DataParallel prefix)
    sd = {"module." + k: v for k, v in _weights(out / "weights.pt").items()}
    torch.save(sd, tmp_path / "init.pth")
    assert cli.main(["train", "stackmff-v2", "--steps", "1", "--out", str(tmp_path / "ft"), "--crop", "32",
                     "--n-min", "3", "--n-max", "3", "--batch-size", "1", "--init", str(tmp_path / "init.pth"),
                     "-q"]) == 0


def test_cli_train_leaves_unset_options_to_the_recipe(tmp_path, monkeypatch, capsys):
    """Options not given on the command line are not passed: each recipe keeps its own defaults;
    an option the recipe does not declare is refused by name, with the model's options."""
    from napari_edof.training import train as tr

    seen = {}

    def fake(**kw):
        seen.clear()
        seen.update(kw)
        return {"step": kw["steps"], "steps": kw["steps"], "seconds": 0.0, "weights": str(kw["out"])}

    monkeypatch.setattr(tr, "get_recipe", lambda name: fake)
    common = {"steps": 2, "out": str(tmp_path), "seed": 0, "resume": False, "progress": False}
    assert cli.main(["train", "stackmff-v2", "--steps", "2", "--out", str(tmp_path), "-q"]) == 0
    assert seen == common
    assert cli.main(["train", "stackmff-v2", "--steps", "2", "--out", str(tmp_path), "--lr", "0.1", "-q"]) == 0
    assert seen == dict(common, lr=0.1)
    assert cli.main(["train", "stackmff-v2", "--steps", "2", "--out", str(tmp_path), "--l1-weight", "2"]) == 2
    err = capsys.readouterr().err
    assert "stackmff-v2 does not take --l1-weight" in err and "--ce-weight" in err
    assert cli.main(["train", "msas", "--steps", "2", "--out", str(tmp_path), "--l1-weight", "2", "-q"]) == 0
    assert seen == dict(common, l1_weight=2.0)
    # options before the model, and a bool option
    assert cli.main(["train", "--crop", "32", "fmb-fn", "--steps", "1", "--out", str(tmp_path), "--no-skip",
                     "-q"]) == 0
    assert seen == dict(common, steps=1, crop=32, skip=False)
    assert cli.main(["train", "fmb-fn", "--steps", "1", "--out", str(tmp_path), "--crop", "0"]) == 2
    assert "--crop must be 1 or more, not 0" in capsys.readouterr().err


def test_cli_train_help_comes_from_the_recipe(capsys):
    """``train MODEL --help`` lists the options MODEL's recipe declares, with its defaults."""
    from napari_edof.training.train import RECIPES, recipe_options_of

    for model in RECIPES:
        with pytest.raises(SystemExit) as e:
            cli.main(["train", model, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        opts = recipe_options_of(model)
        assert opts and f"{model} options" in text
        for o in opts:
            assert o.flag in text
    with pytest.raises(SystemExit):
        cli.main(["train", "msas", "--help"])
    text = capsys.readouterr().out
    assert "--l1-weight" in text and "--n-min" not in text and "(default: 0.0005)" in text


def test_recipe_declarations_are_checked():
    """A declared option must be the function's keyword, with the function's default."""
    from napari_edof.training.train import COMMON, OPTIONS, Option, recipe

    def fn(*, steps, out, seed=0, resume=False, progress=True, stop_after=None, crop=64):
        return {}

    try:
        with pytest.raises(TypeError, match="'nope' is not an option"):
            recipe("t-bad-name", options=(Option("nope", int, "x"),))(fn)
        with pytest.raises(TypeError, match="default 32"):
            recipe("t-bad-default", options=(Option("crop", int, "x", default=32),))(fn)
        with pytest.raises(TypeError, match="does not take"):
            recipe("t-no-common", options=())(lambda *, crop=1: {})
        recipe("t-good", options=(Option("crop", int, "x"),))(fn)
        assert OPTIONS["t-good"][0].default == 64 and "steps" in COMMON
    finally:
        from napari_edof.training.train import RECIPES

        for n in ("t-good",):
            dict.pop(RECIPES, n, None)
            OPTIONS.pop(n, None)

