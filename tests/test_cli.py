"""Bad input through the command line: ``jobs/train.py`` exits with code 2 and one line on stderr, no traceback,
and writes nothing, neither into an existing run directory nor anywhere else (no Spark)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from safetensors.numpy import save_file

from ddrl import checkpoint, envs
from ddrl import config as config_module
from ddrl.run import Run

GOOD = {
    "name": "cli",
    "seed": 5,
    "algo": "ppo",
    "env": {"id": "CartPole-v1", "num_envs": 2},
    "spark": {"num_tasks": 2},
    "train": {"total_env_steps": 1000},
    "output": {"checkpoint_every": 1},
    "ppo": {"num_steps": 16, "update_epochs": 1, "num_minibatches": 1},
}


def _changed(**sections) -> dict:
    data = json.loads(json.dumps(GOOD))
    for section, values in sections.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    return data


@dataclasses.dataclass
class Case:
    args: list[str]
    """Command-line arguments; {case} is replaced by the case's directory."""
    expected: str
    """Part of the single stderr line."""
    files: dict[str, str | dict] = dataclasses.field(default_factory=dict)
    """Files to create in the case's directory first: YAML text, or a dict dumped as YAML."""


MARKER = "code-ran"
HOSTILE = f"!!python/object/apply:builtins.open [{MARKER}, w]"

CASES = {
    "unknown-key": Case(["--config", "{case}/c.yaml", "--run-dir", "{case}/new"], "ddrl: epochs: unknown key",
                        {"c.yaml": {**GOOD, "epochs": 3}}),
    "wrong-type": Case(["--config", "{case}/c.yaml", "--run-dir", "{case}/new"], "ddrl: env.num_envs: ",
                       {"c.yaml": _changed(env={"num_envs": "eight"})}),
    "yaml-does-not-parse": Case(["--config", "{case}/c.yaml", "--run-dir", "{case}/new"], "is not valid YAML at line",
                                {"c.yaml": "name: x\nalgo: ppo\nenv: {id: CartPole-v1\ntrain: [\n"}),
    "missing-config-file": Case(["--config", "{case}/nowhere.yaml", "--run-dir", "{case}/new"], "ddrl: config file not found: "),
    "config-is-a-directory": Case(["--config", "{case}/existing", "--run-dir", "{case}/new"], "ddrl: config file "),
    "unknown-env-id": Case(["--config", "{case}/c.yaml", "--run-dir", "{case}/new"], "ddrl: env.id: unknown environment 'NoSuchEnv-v0'",
                           {"c.yaml": _changed(env={"id": "NoSuchEnv-v0"})}),
    "env-kwargs-rejected": Case(["--config", "{case}/c.yaml", "--run-dir", "{case}/new"], "ddrl: env.kwargs: ",
                                {"c.yaml": _changed(env={"kwargs": {"bogus": 1}})}),
    "set-without-equals": Case(["--config", "{case}/c.yaml", "--set", "ppo.learning_rate", "--run-dir", "{case}/new"],
                               "ddrl: override 'ppo.learning_rate': expected key.path=value", {"c.yaml": GOOD}),
    "set-wrong-type": Case(["--config", "{case}/c.yaml", "--set", "ppo.learning_rate=fast", "--run-dir", "{case}/new"],
                           "ddrl: ppo.learning_rate: ", {"c.yaml": GOOD}),
    "set-unknown-key": Case(["--config", "{case}/c.yaml", "--set", "ppo.lr=0.1", "--run-dir", "{case}/new"],
                            "ddrl: ppo.lr: unknown key", {"c.yaml": GOOD}),
    "set-bad-yaml": Case(["--config", "{case}/c.yaml", "--set", "ppo.hidden_sizes=[64", "--run-dir", "{case}/new"],
                         "ddrl: override ppo.hidden_sizes: value '[64' is not valid YAML", {"c.yaml": GOOD}),
    "yaml-python-tag": Case(["--config", "{case}/c.yaml", "--run-dir", "{case}/new"], "is not valid YAML",
                            {"c.yaml": yaml.safe_dump(GOOD).replace("seed: 5", f"seed: {HOSTILE}")}),
    "set-python-tag": Case(["--config", "{case}/c.yaml", "--set", f"seed={HOSTILE}", "--run-dir", "{case}/new"],
                           "ddrl: override seed: value", {"c.yaml": GOOD}),
    "no-config": Case(["--run-dir", "{case}/new"], "ddrl: config: a config is required"),
    "run-dir-holds-files": Case(["--config", "{case}/c.yaml", "--run-dir", "{case}/existing"], "already holds files",
                                {"c.yaml": GOOD}),
    "resume-with-another-config": Case(["--config", "{case}/c.yaml", "--resume", "{case}/existing"],
                                       "belongs to a different config", {"c.yaml": {**GOOD, "seed": 6}}),
    "resume-with-a-set-that-changes-it": Case(["--resume", "{case}/existing", "--set", "ppo.learning_rate=0.01"],
                                              "belongs to a different config"),
    "resume-not-a-run-directory": Case(["--resume", "{case}"], "is not a ddrl run directory"),
    "resume-missing-directory": Case(["--resume", "{case}/nowhere"], "is not a ddrl run directory"),
    "resume-checkpoint-of-another-policy-shape": Case(["--resume", "{case}/incompatible"], "does not fit this config's policy shape"),
}


def _existing_run(directory: Path, data: dict) -> None:
    """A run directory as a run leaves it after one checkpointed iteration, made without Spark."""
    from ddrl.algorithms import ppo

    run = Run.open(data, run_dir=directory)
    run.create()
    state = ppo.build(run.config, run.env).initial_state()
    meta = {"iteration": 1, "env_steps": 64, "solved_streak": 0, "finished": False, "fingerprint": run.config.fingerprint()}
    checkpoint.save(run.checkpoints, 1, state, meta, keep=3)
    run.write_metrics(1, {"iteration": 1, "env_steps": 64})


def _make_incompatible(directory: Path) -> None:
    """Replace the checkpoint's arrays with those of another policy shape, as a valid checkpoint (checksum too)."""
    from ddrl.algorithms import ppo

    other = config_module.load(GOOD, ["ppo.hidden_sizes=[32]"])
    state = ppo.build(other, envs.describe(other.env)).initial_state()
    arrays = directory / "checkpoints" / "ckpt-000001.safetensors"
    checkpoint.atomic_write(arrays, lambda path: save_file(state, str(path)))
    sidecar_path = directory / "checkpoints" / "ckpt-000001.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["sha256"] = checkpoint._sha256(arrays)
    sidecar_path.write_text(json.dumps(sidecar))


def _snapshot(directory: Path) -> dict[str, tuple]:
    """Every file and folder under ``directory`` with its size, mtime and content hash."""
    tree = {}
    for path in sorted(directory.rglob("*")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        tree[str(path.relative_to(directory))] = (path.is_dir(), stat.st_size if path.is_file() else 0, stat.st_mtime_ns, digest)
    return tree


@dataclasses.dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    before: dict
    after: dict


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Run every case's command at once (a few in parallel: each is a Python start and a config check)."""
    base = tmp_path_factory.mktemp("cli")
    template = base / "template"
    _existing_run(template, GOOD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), PYSPARK_PYTHON=sys.executable,
               DDRL_MASTER="local[1]")

    prepared = {}
    for name, case in CASES.items():
        directory = base / name
        directory.mkdir()
        shutil.copytree(template, directory / "existing")
        shutil.copytree(template, directory / "incompatible")
        _make_incompatible(directory / "incompatible")
        for file_name, content in case.files.items():
            text = content if isinstance(content, str) else yaml.safe_dump(content)
            (directory / file_name).write_text(text)
        args = [arg.replace("{case}", str(directory)) for arg in case.args]
        prepared[name] = (directory, args, _snapshot(directory))

    def run(name: str) -> Outcome:
        directory, args, before = prepared[name]
        completed = subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), *args], cwd=directory, env=env,
                                   capture_output=True, text=True, timeout=300)
        return Outcome(completed.returncode, completed.stdout, completed.stderr, before, _snapshot(directory))

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(outcomes, name):
    outcome = outcomes[name]
    report = f"exit {outcome.returncode}\nstderr:\n{outcome.stderr}\nstdout:\n{outcome.stdout}"
    assert outcome.returncode == 2, report
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, report
    assert lines[0].startswith("ddrl: ") and CASES[name].expected in lines[0], report
    assert "Traceback" not in outcome.stderr + outcome.stdout, report
    assert outcome.after == outcome.before  # no file or folder written, changed or removed (no "new", no marker)


def test_the_battery_is_large_enough():
    from test_config import BAD_DICTS, BAD_ENVS, BAD_FILES, BAD_OVERRIDES

    assert len(CASES) >= 10
    assert len(CASES) + len(BAD_DICTS) + len(BAD_OVERRIDES) + len(BAD_ENVS) + len(BAD_FILES) >= 25


def test_the_incompatible_checkpoint_is_valid_but_of_another_shape(tmp_path):
    """The shape case is not a damaged checkpoint in disguise: it loads, with the same config, other shapes."""
    _existing_run(tmp_path / "run", GOOD)
    good_state, _ = checkpoint.load_latest(tmp_path / "run" / "checkpoints")
    _make_incompatible(tmp_path / "run")
    state, meta = checkpoint.load_latest(tmp_path / "run" / "checkpoints")
    assert meta["fingerprint"] == config_module.load(tmp_path / "run" / "config.yaml").fingerprint()
    assert state["params"].shape != good_state["params"].shape


@pytest.mark.parametrize("job", ["train", "evaluate", "export", "plot", "sweep"])
def test_each_job_helps_with_its_whole_description_and_its_defaults(job):
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = (ROOT / "jobs" / f"{job}.py").read_text().split('"""')[1]
    assert doc.strip().splitlines()[-1].strip() in done.stdout  # the docstring's last line: nothing cut at a colon
    options = done.stdout.split("options:")[1]
    entries = [entry for entry in options.split("\n  -") if entry.strip()]
    assert all(len(entry.split(None, 1)) > 1 for entry in entries), "an option without a help text"
    if job == "sweep":
        assert "(default: 3)" in " ".join(done.stdout.split())  # --eta


def test_spark_submit_sh_helps_and_refuses_an_option_without_its_value():
    shown = subprocess.run([str(ROOT / "spark-submit.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "./spark-submit.sh --test" in shown.stdout
    missing = subprocess.run([str(ROOT / "spark-submit.sh"), "--conf"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "ddrl: --conf needs a value (spark-submit options are --name value; ./spark-submit.sh --help)"]
