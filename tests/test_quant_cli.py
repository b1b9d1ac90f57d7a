"""`graphkit calibrate` and `graphkit table show`: outputs, parallel workers, user errors."""

from __future__ import annotations

import json

import onnx
import pytest
from quant_synthetic import write_data

from graphkit.cli import main
from graphkit.quant.calibrate import calibrate
from graphkit.quant.table import CalibrationTable
from graphkit.runtime.ort import make_session


@pytest.fixture()
def data(tmp_path):
    return write_data(tmp_path, n=6)


def test_calibrate_writes_table_and_runnable_qdq(tmp_path, data, capsys):
    model, spec = data
    out, qdq = tmp_path / "t.json", tmp_path / "q.onnx"
    code = main(
        [
            "calibrate",
            str(model),
            "--data",
            str(spec),
            "--method",
            "kl-ncnn",
            "-o",
            str(out),
            "--qdq",
            str(qdq),
        ]
    )
    assert code == 0
    table = CalibrationTable.load(out)
    assert table.method == "kl-ncnn" and table.num_samples == 6
    assert set(table.activations) == {"x", "r1", "r2", "f"}
    raw = json.loads(out.read_text())
    assert raw["activations"]["r1"]["scale"] == pytest.approx(
        raw["activations"]["r1"]["amax"] / 127
    )
    assert table.model_hash and "npz" in table.data_source
    make_session(onnx.load(qdq))
    assert main(["table", "show", str(out), "--weights"]) == 0
    shown = capsys.readouterr().out
    assert "kl-ncnn" in shown and "r1" in shown and "deconv" in shown


def test_percentile_setting_and_limit(tmp_path, data):
    model, spec = data
    out = tmp_path / "t.json"
    args = [
        "calibrate",
        str(model),
        "--data",
        str(spec),
        "--method",
        "percentile",
        "--percentile",
        "99",
        "--limit",
        "2",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    table = CalibrationTable.load(out)
    assert table.settings["percentile"] == 99 and table.num_samples == 2


def test_two_workers_give_the_same_table_as_one(data):
    model, spec = data
    one = calibrate(model, spec, method="entropy")
    two = calibrate(model, spec, method="entropy", workers=2)
    assert two.num_samples == one.num_samples == 6
    for name, entry in one.activations.items():
        assert two.activations[name].amax == entry.amax
        assert (two.activations[name].min, two.activations[name].max) == (entry.min, entry.max)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--keep-float", "nope"], "'nope' is not a node"),
        (["--percentile", "99"], "--percentile only applies"),
    ],
)
def test_user_errors_are_one_sentence_and_write_nothing(tmp_path, data, capsys, extra, message):
    model, spec = data
    out = tmp_path / "t.json"
    assert main(["calibrate", str(model), "--data", str(spec), "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()


@pytest.mark.parametrize("bins", ["1000", "4", "1099511627776"])
def test_histogram_bins_outside_powers_of_two_up_to_65536_are_a_usage_error(
    tmp_path, data, capsys, bins
):
    model, spec = data
    out = tmp_path / "t.json"
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", str(model), "--data", str(spec), "-o", str(out), "--bins", bins])
    assert exit_.value.code == 2
    assert "must be a power of two from 8 to 65536" in capsys.readouterr().err
    assert not out.exists()


def test_spec_not_matching_the_model_is_refused(tmp_path, data, capsys):
    model, spec = data
    spec.write_text(spec.read_text().replace("name: x", "name: image"))
    out = tmp_path / "t.json"
    assert main(["calibrate", str(model), "--data", str(spec), "-o", str(out)]) == 2
    assert "is not an input of the model" in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()


def test_missing_model_and_bad_table(tmp_path, data, capsys):
    _, spec = data
    assert (
        main(
            [
                "calibrate",
                str(tmp_path / "none.onnx"),
                "--data",
                str(spec),
                "-o",
                str(tmp_path / "t.json"),
            ]
        )
        == 2
    )
    (tmp_path / "bad.json").write_text("{}")
    assert main(["table", "show", str(tmp_path / "bad.json")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "does not exist" in err and "not a graphkit calibration table" in err


@pytest.mark.parametrize("argv", [["calibrate", "--help"], ["table", "show", "--help"]])
def test_help_texts_render(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "usage" in capsys.readouterr().out


def test_unknown_method_is_an_argparse_error(data):
    model, spec = data
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", str(model), "--data", str(spec), "--method", "kld", "-o", "t.json"])
    assert exc.value.code == 2


def test_ctrl_c_leaves_no_partial_table(tmp_path, data, monkeypatch):
    import graphkit.quant.collect as collect_module

    model, spec = data
    calls = {"n": 0}
    real = collect_module.Executor.__call__

    def interrupted(self, feeds):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, feeds)

    monkeypatch.setattr(collect_module.Executor, "__call__", interrupted)
    out, qdq = tmp_path / "t.json", tmp_path / "q.onnx"
    code = main(["calibrate", str(model), "--data", str(spec), "-o", str(out), "--qdq", str(qdq)])
    assert code == 130 and calls["n"] == 3
    assert not out.exists() and not qdq.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".graphkit")] == []


def test_table_show_lists_consumers_only_with_wide(tmp_path, data, capsys):
    model, spec = data
    out = tmp_path / "t.json"
    argv = ["calibrate", str(model), "--data", str(spec), "--recipe", "plain", "-o", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["table", "show", str(out)]) == 0
    assert "┃ consumer" not in capsys.readouterr().out
    assert main(["table", "show", str(out), "--wide"]) == 0
    assert "┃ consumer" in capsys.readouterr().out  # the header may fold on a narrow console


def test_long_names_are_cut_in_the_middle():
    from graphkit.commands._common import short_name

    name = "model/backbone/stage3/block7/" + "x" * 40 + "/conv/Relu6:0"
    cut = short_name(name, 36)
    assert len(cut) == 36 and cut.startswith("model/back") and cut.endswith("/conv/Relu6:0")


def test_exports_use_the_samples_the_plan_was_calibrated_on(tmp_path):
    from quant_planted import write_files

    model, spec = write_files(tmp_path, n=6)
    base = ["calibrate", str(model), "--data", str(spec), "--recipe", "plain", "--target", "vacc"]
    assert main([*base, "--limit", "3", "--out-dir", str(tmp_path / "a")]) == 0
    assert len(list((tmp_path / "a" / "vacc" / "calib").glob("*.npz"))) == 3
    assert main([*base, "--out-dir", str(tmp_path / "b")]) == 0
    assert len(list((tmp_path / "b" / "vacc" / "calib").glob("*.npz"))) == 6
    assert main([*base, "--export-limit", "2", "--out-dir", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c" / "vacc" / "calib").glob("*.npz"))) == 2


def test_the_summary_says_where_the_time_went(tmp_path, data, capsys):
    model, spec = data
    out = tmp_path / "t.json"
    assert main(["calibrate", str(model), "--data", str(spec), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    line = next(x for x in said.splitlines() if x.startswith("took "))
    seconds = CalibrationTable.load(out).recipe["seconds"]
    assert "statistics" in line and "weight rounding" in line and "bias correction" in line
    assert line.count(",") == len(seconds) - 1
