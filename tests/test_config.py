"""Config loading and validation: every problem is one ConfigError line that names the field (no Spark)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from ddrl import config as config_module
from ddrl import envs
from ddrl.config import Config, ConfigError, EnvConfig

ROOT = Path(__file__).resolve().parent.parent
CONF_FILES = sorted((ROOT / "conf").glob("*.yaml"))

BASE = {
    "name": "unit",
    "seed": 3,
    "algo": "ppo",
    "env": {"id": "CartPole-v1", "num_envs": 4},
    "spark": {"num_tasks": 2, "tree_depth": 2},
    "train": {"total_env_steps": 10_000},
    "output": {"root": "runs", "checkpoint_every": 5},
    "ppo": {"num_steps": 32, "learning_rate": 0.001},
}


def _with(**changes) -> dict:
    """BASE with ``section__key=value`` (or top-level ``key=value``) changes; the value DELETE removes the key."""
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return data


DELETE = object()


def test_conf_directory_has_configs():
    assert CONF_FILES, "no conf/*.yaml found"


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda path: path.name)
def test_every_shipped_config_loads_and_its_env_is_usable(path):
    config = config_module.load(path)
    assert config.algo in config_module.ALGORITHMS
    assert config.hyperparameters is not None
    assert config_module.load(str(path)) == config  # str and Path sources agree
    info = envs.describe(config.env)
    assert info.observation_dim + len(info.observation.images) >= 1 and info.action_dim >= 1


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda path: path.name)
def test_shipped_config_values_are_the_files_values(path):
    """Everything the YAML file sets is in the resolved config, unchanged; defaults fill in the rest."""
    raw = yaml.safe_load(path.read_text())
    resolved = config_module.load(path).to_dict()
    for section, value in raw.items():
        if isinstance(value, dict):
            for key, item in value.items():
                assert _sets(resolved[section][key], item), f"{section}.{key}"
        else:
            assert resolved[section] == value, section
    assert resolved["output"]["keep_checkpoints"] >= 1


def _sets(resolved, written) -> bool:
    """Whether ``resolved`` holds what the file ``written`` sets: equal, with defaults filled into its mappings (the
    wrappers of a list among them)."""
    if isinstance(written, dict):
        return isinstance(resolved, dict) and all(key in resolved and _sets(resolved[key], item) for key, item in written.items())
    if isinstance(written, list) and written and isinstance(written[0], dict):
        return isinstance(resolved, list) and len(resolved) == len(written) and all(map(_sets, resolved, written))
    return resolved == written


# ---- the battery of bad inputs ---------------------------------------------------------------------------
# Each case: (id, kind, input, field).  The message must start with "<field>:" for "dict" cases and contain
# the field for the others (overrides, files and envs phrase their messages around it).

BAD_DICTS = [
    ("lr-zero", _with(ppo__learning_rate=0), "ppo.learning_rate"),
    ("lr-above-one", _with(ppo__learning_rate=1.5), "ppo.learning_rate"),
    ("lr-negative", _with(ppo__learning_rate=-1e-3), "ppo.learning_rate"),
    ("lr-string", _with(ppo__learning_rate="fast"), "ppo.learning_rate"),
    ("lr-null", _with(ppo__learning_rate=None), "ppo.learning_rate"),
    ("num-envs-zero", _with(env__num_envs=0), "env.num_envs"),
    ("num-envs-negative", _with(env__num_envs=-4), "env.num_envs"),
    ("num-envs-string", _with(env__num_envs="8"), "env.num_envs"),
    ("num-envs-float", _with(env__num_envs=8.5), "env.num_envs"),
    ("num-envs-bool", _with(env__num_envs=True), "env.num_envs"),
    ("num-envs-too-many", _with(env__num_envs=5000), "env.num_envs"),
    ("env-id-empty", _with(env__id=""), "env.id"),
    ("env-id-int", _with(env__id=3), "env.id"),
    ("env-id-missing", _with(env__id=DELETE), "env.id"),
    ("env-kwargs-list", _with(env__kwargs=[1, 2]), "env.kwargs"),
    ("env-kwargs-string", _with(env__kwargs="size=3"), "env.kwargs"),
    ("env-kwargs-int-key", _with(env__kwargs={1: 2}), "env.kwargs"),
    ("env-unknown-key", _with(env__seed=1), "env.seed"),
    ("max-episode-steps-zero", _with(env__max_episode_steps=0), "env.max_episode_steps"),
    ("env-null", _with(env=None), "env"),
    ("env-string", _with(env="CartPole-v1"), "env"),
    ("num-tasks-zero", _with(spark__num_tasks=0), "spark.num_tasks"),
    ("num-tasks-string", _with(spark__num_tasks="2"), "spark.num_tasks"),
    ("tree-depth-zero", _with(spark__tree_depth=0), "spark.tree_depth"),
    ("total-steps-missing", _with(train__total_env_steps=DELETE), "train.total_env_steps"),
    ("total-steps-zero", _with(train__total_env_steps=0), "train.total_env_steps"),
    ("total-steps-float", _with(train__total_env_steps=1.5e6), "train.total_env_steps"),
    ("train-missing", _with(train=DELETE), "train"),
    ("unknown-top-level-key", _with(epochs=3), "epochs"),
    ("hyperparameters-key", _with(hyperparameters={}), "hyperparameters"),
    ("unknown-ppo-key", _with(ppo__lr=0.1), "ppo.lr"),
    ("ppo-not-a-mapping", _with(ppo=[1, 2]), "ppo"),
    ("gamma-zero", _with(ppo__gamma=0), "ppo.gamma"),
    ("gae-lambda-above-one", _with(ppo__gae_lambda=1.01), "ppo.gae_lambda"),
    ("num-steps-zero", _with(ppo__num_steps=0), "ppo.num_steps"),
    ("num-minibatches-negative", _with(ppo__num_minibatches=-1), "ppo.num_minibatches"),
    ("hidden-sizes-zero-width", _with(ppo__hidden_sizes=[64, 0]), "ppo.hidden_sizes.1"),
    ("hidden-sizes-string-item", _with(ppo__hidden_sizes=[64, "wide"]), "ppo.hidden_sizes.1"),
    ("activation-unknown", _with(ppo__activation="gelu"), "ppo.activation"),
    ("anneal-lr-string", _with(ppo__anneal_lr="yes"), "ppo.anneal_lr"),
    ("target-kl-negative", _with(ppo__target_kl=-0.1), "ppo.target_kl"),
    ("algo-unknown", _with(algo="dqn"), "algo"),
    ("algo-missing", _with(algo=DELETE), "algo"),
    ("es-section-with-ppo", _with(es={"population": 8}), "es"),
    ("name-with-space", _with(name="my run"), "name"),
    ("name-empty", _with(name=""), "name"),
    ("seed-negative", _with(seed=-1), "seed"),
    ("keep-checkpoints-zero", _with(output__keep_checkpoints=0), "output.keep_checkpoints"),
    ("output-unknown-key", _with(output__directory="x"), "output.directory"),
]

BAD_OVERRIDES = [
    ("override-without-equals", ["ppo.learning_rate"], "ppo.learning_rate"),
    ("override-without-key", ["=0.1"], "override"),
    ("override-bad-yaml", ["ppo.learning_rate=[0.1"], "ppo.learning_rate"),
    ("override-into-a-scalar", ["env.id.name=x"], "env.id"),
    ("override-wrong-type", ["ppo.learning_rate=abc"], "ppo.learning_rate"),
    ("override-out-of-range", ["ppo.learning_rate=2.0"], "ppo.learning_rate"),
    ("override-unknown-key", ["ppo.lr=0.1"], "ppo.lr"),
    ("override-zero-tasks", ["spark.num_tasks=0"], "spark.num_tasks"),
]

BAD_ENVS = [
    ("unknown-env-id", {"id": "NoSuchEnv-v0"}, "env.id"),
    ("unknown-env-version", {"id": "CartPole-v99"}, "env.id"),
    ("module-does-not-import", {"id": "no_such_module_for_ddrl_tests:Env"}, "env.id"),
    ("class-missing-from-module", {"id": "envs_for_tests:Missing"}, "env.id"),
    ("class-is-not-an-env", {"id": "envs_for_tests:NotAnEnv"}, "env.id"),
    ("function-is-not-an-env", {"id": "envs_for_tests:not_a_class"}, "env.id"),
    ("kwargs-unknown-to-registered-env", {"id": "CartPole-v1", "kwargs": {"bogus": 1}}, "env.kwargs"),
    ("kwargs-unknown-to-user-env", {"id": "envs_for_tests:TinyDiscreteEnv", "kwargs": {"width": 3}}, "env.kwargs"),
    ("kwargs-value-rejected", {"id": "envs_for_tests:TinyDiscreteEnv", "kwargs": {"size": 0}}, "env.kwargs"),
    ("text-observation-space", {"id": "envs_for_tests:TextObservationEnv"}, "env.id"),
    ("graph-observation-space", {"id": "envs_for_tests:GraphObservationEnv"}, "env.id"),
    ("text-action-space", {"id": "envs_for_tests:TextActionEnv"}, "env.id"),
    ("discrete-actions-not-from-zero", {"id": "envs_for_tests:ShiftedDiscreteActionEnv"}, "env.id"),
    ("unbounded-box-actions", {"id": "envs_for_tests:UnboundedBoxActionEnv"}, "env.id"),
    ("wrapper-module-does-not-import", {"id": "CartPole-v1", "wrappers": [{"class": "no_such_module_for_ddrl:Wrapper"}]}, "env.wrappers.0.class"),
    ("wrapper-missing-from-module", {"id": "CartPole-v1", "wrappers": [{"class": "gymnasium.wrappers:NoSuchWrapper"}]}, "env.wrappers.0.class"),
    ("wrapper-kwargs-rejected", {"id": "CartPole-v1", "wrappers": [{"class": "gymnasium.wrappers:TimeLimit", "kwargs": {"bogus": 1}}]}, "env.wrappers.0"),
    ("mask-key-not-in-observation", {"id": "envs_for_tests:DictObservationEnv", "action_mask": "observation"}, "env.action_mask"),
    ("mask-not-in-info", {"id": "CartPole-v1", "action_mask": "info"}, "env.action_mask"),
    ("mask-on-box-actions", {"id": "envs_for_tests:MaskedBoxActionEnv"}, "env.action_mask"),
]

BAD_FILES = [
    ("yaml-does-not-parse", "name: x\nenv: {id: CartPole-v1\n  num_envs: [\n", "not valid YAML"),
    ("yaml-is-a-list", "- name\n- env\n", "mapping"),
    ("yaml-is-empty", "", "mapping"),
    ("yaml-tab-indent", "name: x\nenv:\n\tid: CartPole-v1\n", "not valid YAML"),
]


def _assert_names(message: str, field: str) -> None:
    """The message starts with the field (or a path inside it, like 'env.kwargs.1.[key]'), then ': '."""
    assert re.match(rf"{re.escape(field)}(\.(\d+|\[\w+\]))*: \S", message), message


def _message(raises) -> str:
    message = str(raises.value)
    assert "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
    assert message.strip() == message and message
    return message


@pytest.mark.parametrize("data, field", [case[1:] for case in BAD_DICTS], ids=[case[0] for case in BAD_DICTS])
def test_bad_config_dict_names_the_field(data, field):
    with pytest.raises(ConfigError) as raises:
        config_module.load(data)
    _assert_names(_message(raises), field)


@pytest.mark.parametrize("overrides, field", [case[1:] for case in BAD_OVERRIDES], ids=[case[0] for case in BAD_OVERRIDES])
def test_bad_override_names_the_field(overrides, field):
    original = copy.deepcopy(BASE)
    with pytest.raises(ConfigError) as raises:
        config_module.load(BASE, overrides)
    assert field in _message(raises)
    assert BASE == original  # the caller's dict is never modified


@pytest.mark.parametrize("env, field", [case[1:] for case in BAD_ENVS], ids=[case[0] for case in BAD_ENVS])
def test_bad_env_is_reported_by_describe(env, field):
    config = config_module.load(_with(env={"num_envs": 2, **env}))  # the schema accepts it ...
    with pytest.raises(ConfigError) as raises:
        envs.describe(config.env)  # ... the env check does not
    message = _message(raises)
    _assert_names(message, field)
    assert any(part in message for part in env["id"].split(":")), message


@pytest.mark.parametrize("text, words", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_yaml_file_names_the_file(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raises:
        config_module.load(path)
    message = _message(raises)
    assert str(path) in message and words in message, message


def test_yaml_parse_error_gives_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nalgo: ppo\nenv: [CartPole-v1\ntrain: {}\n")
    with pytest.raises(ConfigError) as raises:
        config_module.load(path)
    assert "at line " in _message(raises)


def test_missing_config_file(tmp_path):
    path = tmp_path / "nowhere" / "missing.yaml"
    with pytest.raises(ConfigError) as raises:
        config_module.load(path)
    message = _message(raises)
    assert "not found" in message and str(path) in message


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError) as raises:
        config_module.load(tmp_path)
    assert str(tmp_path) in _message(raises)


def test_battery_is_large_enough():
    assert len(BAD_DICTS) + len(BAD_OVERRIDES) + len(BAD_ENVS) + len(BAD_FILES) >= 25


@pytest.mark.parametrize("env", [{"id": "envs_for_tests:MultiLineErrorEnv"}], ids=["multi-line-constructor-error"])
def test_env_constructor_error_is_reported_on_one_line(env):
    with pytest.raises(ConfigError) as raises:
        envs.describe(EnvConfig(**env))
    _message(raises)


def test_mujoco_xml_error_is_reported_on_one_line(tmp_path):
    pytest.importorskip("mujoco")
    xml = tmp_path / "bad.xml"
    xml.write_text("<mujoco><worldbody><bogus/></worldbody></mujoco>")
    with pytest.raises(ConfigError) as raises:
        envs.describe(EnvConfig(id="Ant-v5", kwargs={"xml_file": str(xml)}))
    assert _message(raises).startswith("env.kwargs: ")


def test_learning_rate_in_exponent_notation(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(config_module.dump(config_module.load(BASE)).replace("learning_rate: 0.001", "learning_rate: 3e-4"))
    assert config_module.load(path).hyperparameters.learning_rate == pytest.approx(3e-4)


# ---- what does work ---------------------------------------------------------------------------------------


def test_good_envs_are_described():
    discrete = envs.describe(EnvConfig(id="envs_for_tests:TinyDiscreteEnv", kwargs={"size": 5}))
    assert (discrete.observation_dim, discrete.discrete, discrete.action_dim) == (5, True, 2)
    box = envs.describe(EnvConfig(id="envs_for_tests:TinyBoxEnv"))
    assert (box.observation_dim, box.discrete, box.action_dim) == (3, False, 2)
    assert box.action.low == (-2.0, -2.0) and box.action.high == (2.0, 2.0)
    pendulum = envs.describe(EnvConfig(id="Pendulum-v1"))
    assert (pendulum.observation_dim, pendulum.discrete, pendulum.action_dim) == (3, False, 1)


def test_every_supported_space_is_described():
    dict_env = envs.describe(EnvConfig(id="envs_for_tests:DictObservationEnv"))
    assert dict_env.observation.structured and dict_env.observation_dim == 2 + 2  # a Box(2) and a one-hot Discrete(2)
    assert [part.name for part in dict_env.observation.parts] == ["flag", "position"]  # gymnasium sorts Dict keys
    image = envs.describe(EnvConfig(id="envs_for_tests:ImageObservationEnv"))
    assert [(part.kind, part.image_shape, part.channels_last) for part in image.observation.parts] == [("image", (3, 8, 8), True)]
    assert envs.describe(EnvConfig(id="FrozenLake-v1")).observation_dim == 16
    multi = envs.describe(EnvConfig(id="envs_for_tests:MultiDiscreteActionEnv")).action
    assert (multi.kind, multi.nvec, multi.output_dim) == ("multi_discrete", (3, 2), 5)
    matrix = envs.describe(EnvConfig(id="envs_for_tests:MatrixBoxActionEnv")).action
    assert (matrix.kind, matrix.shape, matrix.output_dim) == ("box", (2, 2), 4)
    wrapped = envs.describe(EnvConfig(id="CartPole-v1", wrappers=[{"class": "gymnasium.wrappers:TimeAwareObservation"}]))
    assert wrapped.observation_dim == 5


def test_overrides_apply_with_yaml_types():
    config = config_module.load(
        BASE,
        ["ppo.learning_rate=0.001", "env.num_envs=16", "ppo.anneal_lr=false", "train.target_return=null", "ppo.hidden_sizes=[32, 16]"],
    )
    assert config.hyperparameters.learning_rate == 0.001
    assert type(config.hyperparameters.learning_rate) is float
    assert config.env.num_envs == 16 and type(config.env.num_envs) is int
    assert config.hyperparameters.anneal_lr is False
    assert config.train.target_return is None
    assert config.hyperparameters.hidden_sizes == [32, 16]


def test_override_changes_the_value_and_the_last_one_wins():
    config = config_module.load(BASE, ["ppo.learning_rate=0.01", "ppo.learning_rate=0.002"])
    assert config.hyperparameters.learning_rate == 0.002
    assert config_module.load(BASE).hyperparameters.learning_rate == 0.001


def test_override_creates_missing_sections():
    data = _with(spark=DELETE, ppo=DELETE)
    config = config_module.load(data, ["spark.num_tasks=5", "ppo.gamma=0.9"])
    assert config.spark.num_tasks == 5 and config.spark.tree_depth == "auto"
    assert config.hyperparameters.gamma == 0.9


def test_overrides_apply_to_a_loaded_config():
    config = config_module.load(BASE)
    assert config_module.load(config) is config
    changed = config_module.load(config, ["ppo.learning_rate=0.0005"])
    assert changed.hyperparameters.learning_rate == 0.0005
    assert config.hyperparameters.learning_rate == 0.001


def test_overrides_apply_to_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(config_module.dump(config_module.load(BASE)))
    config = config_module.load(path, ["ppo.learning_rate=0.001", "seed=11"])
    assert config.hyperparameters.learning_rate == 0.001 and config.seed == 11


def test_dump_round_trips():
    config = config_module.load(_with(ppo__hidden_sizes=[16], env__kwargs={"sutton_barto_reward": True}))
    assert config_module.load(yaml.safe_load(config_module.dump(config))) == config


def test_fingerprint_ignores_the_output_section():
    config = config_module.load(BASE)
    moved = config_module.load(
        BASE, ["output.root=/elsewhere", "output.run_dir=/elsewhere/run", "output.checkpoint_every=1", "output.keep_checkpoints=9"]
    )
    assert moved.output != config.output
    assert moved.fingerprint() == config.fingerprint()


@pytest.mark.parametrize(
    "override",
    ["ppo.learning_rate=0.002", "seed=4", "env.num_envs=5", "spark.num_tasks=3", "train.total_env_steps=20000", "name=other", "ppo.hidden_sizes=[8]"],
)
def test_fingerprint_tracks_everything_else(override):
    assert config_module.load(BASE, [override]).fingerprint() != config_module.load(BASE).fingerprint()


def test_fingerprint_is_stable_and_short():
    first, second = config_module.load(BASE), config_module.load(copy.deepcopy(BASE))
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 16 and int(first.fingerprint(), 16) >= 0


def test_config_is_frozen():
    config = config_module.load(BASE)
    assert isinstance(config, Config)
    with pytest.raises(Exception):
        config.seed = 5  # type: ignore[misc]


def test_an_evaluation_wrapper_that_fails_is_named_before_spark_starts():
    wrappers = [{"class": "gymnasium.wrappers:ClipReward", "kwargs": {"min_reward": 0.0, "max_reward": 0.5}, "use": "training"},
                {"class": "gymnasium.wrappers:TimeLimit", "kwargs": {"max_episode_steps": -1}, "use": "evaluation"}]
    with pytest.raises(ConfigError, match=r"^env\.wrappers\.1: gymnasium\.wrappers:TimeLimit could not wrap CartPole-v1"):
        envs.describe(EnvConfig(id="CartPole-v1", wrappers=wrappers))
    flattened = [{"class": "gymnasium.wrappers:FlattenObservation", "use": "evaluation"}]
    envs.describe(EnvConfig(id="CartPole-v1", wrappers=flattened))  # the same spaces either way
    resized = [{"class": "gymnasium.wrappers:TimeAwareObservation", "use": "evaluation"}]
    with pytest.raises(ConfigError, match=r"^env\.wrappers: CartPole-v1's evaluation envs have spaces"):
        envs.describe(EnvConfig(id="CartPole-v1", wrappers=resized))
