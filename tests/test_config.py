from pathlib import Path

import pytest

from thrifty import config
from thrifty.errors import ConfigError
from thrifty.train.config import TrainConfig

EXAMPLES = sorted(Path(__file__).parents[1].glob("examples/*.toml"))


def test_defaults_are_valid():
    cfg = config.load(TrainConfig)
    assert cfg.strategy.name == "ddp"
    assert cfg.max_steps == -(-cfg.train.tokens // (cfg.train.batch_size * cfg.model.block_size))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_parses(path):
    cfg = config.load(TrainConfig, path)
    # and survives a dump/load round trip, which is how workers receive it
    assert config.from_dict(TrainConfig, config.to_dict(cfg)) == cfg


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"demo.toml", "diloco.toml", "powersgd.toml"}


def test_overrides_are_typed():
    ov = config.parse_overrides(["--train.lr=3e-4", "--model.n_layer", "6", "--model.bias=true"])
    cfg = config.load(TrainConfig, None, ov)
    assert cfg.train.lr == 3e-4 and cfg.model.n_layer == 6 and cfg.model.bias is True


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 0.01\ntokens = 5000\n")
    cfg = config.load(TrainConfig, path, {"train.lr": "0.02"})
    assert cfg.train.lr == 0.02 and cfg.train.tokens == 5000


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"train.lrr": "1"}, "unknown config key train.lrr"),
        ({"nosuch.key": "1"}, "unknown config key nosuch"),
        ({"model.n_layer": "four"}, "model.n_layer: expected int"),
        ({"model.n_layer": "0"}, "model.n_layer: must be positive"),
        ({"strategy.name": "zero3"}, "strategy.name: must be one of"),
        ({"model.n_embd": "100", "model.n_head": "3"}, "model.n_embd"),
        ({"model.bias": "maybe"}, "model.bias: expected bool"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        config.load(TrainConfig, None, overrides)


def test_bad_types_in_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nlr = "fast"\n')
    with pytest.raises(ConfigError, match=r"train\.lr: expected float"):
        config.load(TrainConfig, path)
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(TrainConfig, path)
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(TrainConfig, tmp_path / "missing.toml")


def test_batch_layout():
    cfg = config.load(TrainConfig, None, {"train.batch_size": "32", "train.micro_batch": "4"})
    assert cfg.layout(2) == (4, 4)
    assert cfg.layout(1) == (4, 8)
    with pytest.raises(ConfigError, match="does not split over 3 workers"):
        cfg.layout(3)


def test_help_lists_every_option_with_default():
    text = "\n".join(config.help_lines(TrainConfig))
    assert "--train.tokens=1000000" in text
    assert "--strategy.ddp_hook='none'" in text and "powersgd" in text
    assert text.count("--") == sum(
        len(vars(getattr(TrainConfig(), s))) for s in ("model", "data", "train", "strategy", "run")
    )
