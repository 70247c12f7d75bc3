"""A finished stage is reused only under the config that produced it."""

import yaml

from conftest import tiny_config
from mtkd.cli import main


def test_rerun_with_changed_training_config_is_refused(glue_root, tiny_encoder, tmp_path, capsys):
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2",), stages=["mtl"])
    cfg["mtl"]["max_steps"] = 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    # same config (plus a new seed list entry that does not touch this stage's inputs): reused
    assert main(["run", str(path), "--output-dir", str(out), "--set", "predict.batch_size=7"]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--output-dir", str(out), "--set", "mtl.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "seed-0/mtl was produced with a different config" in err and "--output-dir" in err
