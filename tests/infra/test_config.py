import subprocess
import sys

import pytest

from infra.config import ConfigError, ReelForgeConfig, load_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_tiny_preset_loads_and_overrides_apply():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.lr=0.1", "curate.downscale=2"])
    assert cfg.train.lr == 0.1
    assert cfg.curate.downscale == 2
    assert cfg.ray.num_cpus == 2  # from the file
    assert cfg.sample.cfg_scale == ReelForgeConfig().sample.cfg_scale  # default from the class


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("train.lr=abc", "'train.lr'"),
    ("train.zero_stage=7", "'train.zero_stage'"),
    ("nosection.x=1", "unknown key 'nosection'"),
    ("curate.partition_size=0", "'curate.partition_size'"),
])
def test_bad_override_names_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_bad_file_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("curate:\n  partition_size: 4\n  min_clip: 2\ntrain:\n  steps: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert str(f) in msg and "curate.min_clip" in msg and "'train.steps'" in msg


def test_yaml_is_loaded_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("curate: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_fingerprint_tracks_only_named_sections():
    a = load_config(None, ["train.lr=0.5"])
    b = load_config(None, ["train.lr=0.7"])
    assert a.fingerprint("curate") == b.fingerprint("curate")
    assert a.fingerprint("train") != b.fingerprint("train")


def test_cli_config_show_and_errors():
    exe = [sys.executable, "-m", "infra.cli"]
    ok = subprocess.run(exe + ["config", "show", "--config", str(ROOT / "configs/tiny.yaml"), "--set", "train.lr=0.1"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "lr: 0.1" in ok.stdout and "curate:" in ok.stdout
    bad = subprocess.run(exe + ["config", "show", "--set", "train.lr=fast"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "train.lr" in bad.stderr
    unknown = subprocess.run(exe + ["config", "show", "--set", "sample.colour=red"], capture_output=True, text=True, cwd=ROOT)
    assert unknown.returncode != 0 and "sample.colour" in unknown.stderr


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_preset_loads(preset):
    load_config(ROOT / "configs" / preset)
