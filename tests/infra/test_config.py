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
    ("caption.resources={gpu_node: 0}", "'caption.resources.gpu_node'"),
    ("precompute.prep_resources=cpu_node", "'precompute.prep_resources'"),
    ("storage.shared_filesystem=maybe", "'storage.shared_filesystem'"),
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


def test_cluster_preset_places_decode_on_cpu_nodes_and_models_on_gpu_nodes():
    cfg = load_config(ROOT / "configs" / "cluster.yaml")
    assert cfg.curate.resources == {"cpu_node": 0.01}
    assert cfg.caption.prep_resources == cfg.precompute.prep_resources == {"cpu_node": 0.01}
    assert cfg.caption.resources == cfg.precompute.resources == cfg.caption_train.resources == {"gpu_node": 0.01}
    assert cfg.storage.shared_filesystem is False  # a multi-node job refuses local paths


def test_placement_keys_do_not_change_what_a_job_writes():
    """resources say where stages run: changing them keeps finished partitions (curate, precompute)."""
    from pipelines.runner import RECOMPUTE_FREE

    a = load_config(None)
    b = load_config(None, ["curate.resources={cpu_node: 1}", "precompute.resources={gpu_node: 1}",
                           "precompute.prep_resources={cpu_node: 1}"])
    assert a.fingerprint("curate", exclude=RECOMPUTE_FREE) == b.fingerprint("curate", exclude=RECOMPUTE_FREE)
    placement = ("precompute.resources", "precompute.prep_resources")
    assert a.fingerprint("precompute", exclude=placement) == b.fingerprint("precompute", exclude=placement)


def test_model_specs_that_are_local_paths(tmp_path):
    from infra.runtime import model_path

    assert model_path(str(tmp_path)) == str(tmp_path) and model_path("./m") == "./m"
    assert model_path(f"diffusers:{tmp_path}") == str(tmp_path)
    for spec in ("tiny", "google/t5-v1_1-xxl", "s3://b/models/vae", "diffusers:Wan-AI/Wan2.1", None):
        assert model_path(spec) is None, spec
