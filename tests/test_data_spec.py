"""Loading input specs: env vars, path resolution, validation in one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graphkit.data import load_input_spec, shard
from graphkit.errors import GraphkitError

BASE = {
    "input": {"name": "x", "size": [32, 48], "mean": [1, 2, 3], "std": 2},
    "source": {"type": "images", "images": "pics"},
}


def spec_dict(**changes) -> dict:
    d = {"input": dict(BASE["input"]), "source": dict(BASE["source"])}
    for key, value in changes.items():
        section, name = key.split("__")
        if value is None:
            d[section].pop(name, None)
        else:
            d[section][name] = value
    return d


def test_defaults_and_normalized_fields(tmp_path):
    spec = load_input_spec(spec_dict(), base_dir=tmp_path)
    assert spec.input.size == (32, 48)
    assert spec.input.layout == "NHWC" and spec.input.dtype == "float32"
    assert spec.input.std == (2.0, 2.0, 2.0)  # a single number applies to every channel
    assert spec.source.images == str((tmp_path / "pics").resolve())
    assert spec.decode is None


def test_relative_paths_resolve_against_the_spec_file(tmp_path, monkeypatch):
    sub = tmp_path / "specs"
    sub.mkdir()
    f = sub / "s.yaml"
    f.write_text(yaml.safe_dump({**spec_dict(), "decode": {"type": "x", "k": [1]}}))
    monkeypatch.chdir(tmp_path)
    spec = load_input_spec(f)
    assert Path(spec.source.images) == (sub / "pics").resolve()
    assert spec.decode == {"type": "x", "k": [1]}  # passed through untouched


def test_env_vars_and_defaults_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("GK_DATA", str(tmp_path / "d"))
    monkeypatch.delenv("GK_UNSET", raising=False)
    spec = load_input_spec(spec_dict(source__images="${GK_DATA}/${GK_UNSET:-imgs}"))
    assert spec.source.images == str(tmp_path / "d" / "imgs")


def test_assets_variable_defaults_to_shared_assets_from_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHKIT_ASSETS", raising=False)
    (tmp_path / "shared/assets").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    spec = load_input_spec(spec_dict(source__images="${GRAPHKIT_ASSETS}/x"), base_dir="/")
    assert spec.source.images == str((tmp_path / "shared/assets/x").resolve())


def test_unset_env_var_without_default_is_one_sentence(monkeypatch):
    monkeypatch.delenv("GK_NOPE", raising=False)
    with pytest.raises(GraphkitError, match=r"\$\{GK_NOPE\}.*not set"):
        load_input_spec(spec_dict(source__images="${GK_NOPE}/x"))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"input__layout": "NCWH"}, "input.layout: must be one of NHWC, NCHW"),
        ({"input__dtype": "float16"}, "input.dtype: must be one of"),
        ({"input__size": [32]}, "input.size.1. is missing"),
        ({"input__std": [1, 0, 1]}, "must not contain 0"),
        ({"input__dtype": "int32"}, "mean/std/scale cannot be used"),
        ({"input__scale": 0.5}, "give only one"),
        ({"input__name": None}, "input.name. is missing"),
        ({"input__colour": "RGB"}, "unknown key .input.colour"),
        ({"input__size": None}, "needs input.size"),
        ({"source__type": "video"}, "source.type: must be one of"),
        ({"source__images": None}, "needs source.images"),
        ({"source__limit": 0}, "source.limit: input should be greater than 0"),
        ({"source__score_thr": 2}, "source.score_thr: input should be less than or equal to 1"),
        ({"source__padding": 0}, "source.padding: input should be greater than 0"),
        ({"source__padding": float("inf")}, "source.padding: input should be a finite number"),
        ({"input__std": [float("nan"), 1, 1]}, "input.std.0: input should be a finite number"),
        ({"input__mean": float("inf")}, "input.mean.0: input should be a finite number"),
        ({"source__shuffle": "yes"}, "source.shuffle: input should be a valid boolean"),
        ({"source__seed": "1"}, "source.seed: input should be a valid integer"),
        ({"input__size": [32, 0]}, "input.size.1: input should be greater than 0"),
        ({"input__pad_value": True}, "input.pad_value: input should be a valid number"),
        ({"source__size_divisor": 0}, "source.size_divisor: input should be greater than 0"),
    ],
)
def test_bad_specs_fail_with_one_sentence(changes, message):
    with pytest.raises(GraphkitError, match=message) as err:
        load_input_spec(spec_dict(**changes))
    assert "\n" not in str(err.value)


def test_missing_or_broken_spec_file(tmp_path):
    with pytest.raises(GraphkitError, match="does not exist"):
        load_input_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(GraphkitError, match="not valid YAML"):
        load_input_spec(bad)
    bad.write_text("- a list\n")
    with pytest.raises(GraphkitError, match="must be a mapping"):
        load_input_spec(bad)


def test_with_source_overrides_and_rejects_unknown_keys(tmp_path, monkeypatch):
    spec = load_input_spec(spec_dict(), base_dir=tmp_path)
    monkeypatch.chdir(tmp_path)
    other = spec.with_source(images="elsewhere", limit=5, shuffle=True)
    assert other.source.images == str(tmp_path / "elsewhere")
    assert (other.source.limit, other.source.shuffle) == (5, True)
    assert spec.source.limit is None  # the original is untouched
    with pytest.raises(GraphkitError, match="unknown key .imgs"):
        spec.with_source(imgs="x")
    with pytest.raises(GraphkitError, match="the source: limit: input should be greater than 0"):
        spec.with_source(limit=-1)


def test_shard_rejects_bad_index():
    spec = load_input_spec(spec_dict())
    with pytest.raises(GraphkitError, match="shard index"):
        shard(spec, 3, 3)


def test_describe_names_source_and_shard(tmp_path):
    spec = load_input_spec(spec_dict(source__limit=7), base_dir=tmp_path)
    d = shard(spec, 1, 2).describe()
    assert d["type"] == "images" and d["limit"] == 7 and d["shard"] == "1/2"
    assert d["images"] == str((tmp_path / "pics").resolve())


def test_specs_and_shards_survive_pickling_for_worker_processes(tmp_path):
    import pickle

    spec = shard(load_input_spec({**spec_dict(), "decode": {"a": 1}}, base_dir=tmp_path), 1, 3)
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_assets_default_is_found_from_any_directory_in_a_checkout(tmp_path, monkeypatch, assets):
    """Without GRAPHKIT_ASSETS, a spec still finds ../shared/assets beside the checkout."""
    from graphkit.data import load_input_spec

    spec_path = Path(__file__).resolve().parents[1] / "examples/models/posenet.yaml"
    if not (spec_path.parents[2] / "../shared/assets").resolve().is_dir():
        pytest.skip("this checkout has no ../shared/assets beside it")
    monkeypatch.delenv("GRAPHKIT_ASSETS", raising=False)
    monkeypatch.chdir(tmp_path)
    spec = load_input_spec(spec_path)
    assert Path(spec.source.ann).is_file()
