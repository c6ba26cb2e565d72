"""Errors as a user meets them: one line naming the file / row / field / option, a non-zero
exit, no traceback, and no heavy import before the arguments are checked (issue 12)."""
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def ptum(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ptum.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_line(r, *needles, rc=2):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == rc, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture()
def events_csv(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("user_id,item_id,timestamp\n" + "".join(f"u{i % 5},i{i % 9},{i}\n" for i in range(60)))
    return str(p)


def test_tokenize_errors_are_one_line(tmp_path, events_csv):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    one_line(ptum("tokenize", "--input", events_csv, "--format", "csv", "--output", str(a_file)),
             str(a_file), "is a file")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet at all")
    one_line(ptum("tokenize", "--input", str(junk), "--format", "parquet", "--output", str(tmp_path / "o")),
             "junk.parquet", "Parquet")
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"user_id": pa.array([[1, 2]], pa.list_(pa.int64())), "item_id": ["a"],
                             "timestamp": [1]}), str(typed))
    one_line(ptum("tokenize", "--input", str(typed), "--format", "parquet", "--output", str(tmp_path / "o")),
             "typed.parquet", "'user_id'", "list")
    one_line(ptum("tokenize", "--input", events_csv, "--format", "csv", "--output", str(tmp_path / "o"),
                  "--time-cut", "soon", "--split", "time"), "--time-cut")
    one_line(ptum("tokenize", "--input", events_csv, "--format", "csv", "--output", str(tmp_path / "o"),
                  "--split-bytes", "-5"), "--split-bytes -5")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_arguments_checked_before_heavy_imports(tmp_path):
    code = ("import sys; from ptum import cli; rc = cli.main(sys.argv[1:]); "
            "print(rc, sorted(m for m in ('apache_beam', 'tensorflow', 'tfx', 'keras') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, "tokenize", "--input", str(tmp_path / "typo.csv"),
                        "--format", "csv", "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.stdout.strip() == "2 []", (r.stdout, r.stderr)
    assert "typo.csv" in r.stderr
    r = subprocess.run([sys.executable, "-c", code, "export-embeddings", "--model", str(tmp_path / "nomodel"),
                        "--data", str(tmp_path), "--output", str(tmp_path / "e")], capture_output=True, text=True)
    assert r.stdout.strip() == "2 []", (r.stdout, r.stderr)
    assert "nomodel" in r.stderr


def test_yaml_with_python_tags_is_refused(tmp_path, events_csv):
    bad = tmp_path / "evil.yaml"
    bad.write_text("model:\n  embedding_dim: !!python/object/apply:os.system ['echo pwned']\n")
    r = ptum("pretrain", "--data", str(tmp_path), "--output", str(tmp_path / "m"), "--config", str(bad))
    one_line(r, "evil.yaml", "line 2")
    assert "pwned" not in r.stdout
    from pipelines.tfx_pipeline import PipelineConfig
    from ptum.config import ConfigError
    with pytest.raises(ConfigError, match="evil.yaml"):
        PipelineConfig.load(str(bad))
    typo = tmp_path / "pipe.yaml"
    typo.write_text("pipeline_nme: x\n")
    with pytest.raises(ConfigError, match="pipeline_nme"):
        PipelineConfig.load(str(typo))


def test_keras_safe_mode_refusal_is_one_line(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    m = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2)])
    d = tmp_path / "model"
    d.mkdir()
    m.save(str(d / "encoder.keras"))
    (d / "metadata.json").write_text(json.dumps({"vocab_hash": "x"}))
    (d / "config.json").write_text("{}")
    one_line(ptum("evaluate", "--model", str(d), "--data", str(tmp_path)), "encoder.keras")


def test_sigint_ends_with_one_line(tmp_path):
    from ptum.data.generate import generate

    logs = str(tmp_path / "logs")
    generate(logs, users=4000, items=500, seed=1, mean_events=40)
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-m", "ptum.cli", "tokenize", "--input",
                             os.path.join(logs, "events.csv"), "--format", "csv", "--output", str(out),
                             "--num-shards", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A run started in the background by a non-interactive shell (nohup, `&`) inherits
                            # SIGINT ignored, and Python keeps an ignored SIGINT: give the child a terminal's default.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    def staging():   # the run writes a stage beside the output (see ptum.fs.staged_dir)
        return any((p / ".staging").exists() for p in tmp_path.iterdir() if p.name.startswith(".ds.ptum-new-"))
    while time.time() < deadline and not staging() and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130, err[-3000:]
    assert lines == ["ptum tokenize: interrupted; nothing was committed"], err[-3000:]
    assert not (out / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.ptum-new-")]   # the stage is gone


def test_interrupted_pipeline_marks_its_executions(tmp_path):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    from pipelines.tfx_pipeline import PipelineConfig, mark_interrupted

    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    conn.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = mlmd.MetadataStore(conn)
    t = store.put_execution_type(metadata_store_pb2.ExecutionType(name="Trainer"))
    done = metadata_store_pb2.Execution(type_id=t, last_known_state=metadata_store_pb2.Execution.COMPLETE)
    running = metadata_store_pb2.Execution(type_id=t, last_known_state=metadata_store_pb2.Execution.RUNNING)
    ids = store.put_executions([done, running])
    cfg = PipelineConfig(pipeline_root=str(tmp_path), input_pattern="x", serving_dir=str(tmp_path / "s"),
                         metadata_path=str(tmp_path / "metadata.sqlite"))
    assert mark_interrupted(cfg) == 1
    states = {e.id: e.last_known_state for e in store.get_executions_by_id(ids)}
    assert states == {ids[0]: metadata_store_pb2.Execution.COMPLETE, ids[1]: metadata_store_pb2.Execution.CANCELED}


def test_cli_logging_drops_known_harmless_lines_only():
    code = ("import logging, sys; from ptum.cli import console; console.quiet(int(sys.argv[1])); "
            "from absl import logging as absl_logging; "
            "absl_logging.warning('ArtifactQuery.property_predicate is not supported.'); "
            "logging.getLogger('tfx.x').warning('Examples artifact does not have payload_format custom property.'); "
            "logging.getLogger('tfx.y').info('Reading from pattern [x] for split train'); "
            "logging.getLogger('ptum.z').warning('disk almost full'); "
            "logging.getLogger('ptum.z').error('a real error')")
    default = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True)
    assert [ln for ln in default.stderr.splitlines() if ln.strip()] == ["disk almost full", "a real error"]
    quiet = subprocess.run([sys.executable, "-c", code, "-1"], capture_output=True, text=True)
    assert [ln for ln in quiet.stderr.splitlines() if ln.strip()] == ["a real error"]
    verbose = subprocess.run([sys.executable, "-c", code, "1"], capture_output=True, text=True)
    assert "property_predicate" in verbose.stderr and "Reading from pattern" in verbose.stderr


@pytest.mark.parametrize("override,needle", [
    ("model.use_time=no_thanks", "model.use_time"), ('model.use_time="no"', "model.use_time"),
    ("model.num_blocks=-1", "model.num_blocks"), ("objective.num_negatives=0", "objective.num_negatives"),
    ("train.learning_rate=-0.01", "train.learning_rate"), ("model.dropout=1.5", "model.dropout"),
    ("train.batch_size=0", "train.batch_size"), ("model.max_len=0", "model.max_len"),
    ("model.embedding_dim=0", "model.embedding_dim"), ("train.length_buckets=[8,0]", "train.length_buckets"),
    ("train.jit_compile=sometimes", "train.jit_compile"), ("model.num_heads=2.5", "model.num_heads"),
    # Upper bounds and finite numbers (a size of 1e9 grew memory until the kernel killed the run).
    ("model.num_blocks=1000000000", "model.num_blocks"), ("objective.num_negatives=1000000000",
                                                          "objective.num_negatives"),
    ("train.learning_rate=.inf", "train.learning_rate"), ("train.learning_rate=.nan", "train.learning_rate"),
    ("objective.temperature=.inf", "objective.temperature"), ("train.batch_size=100000000", "train.batch_size"),
    # A YAML tag through --set: one line, not a traceback.
    ("model.embedding_dim=!!python/object/apply:os.system ['echo pwned']", "invalid YAML value"),
    ("model=3", "section.key=value"),
])
def test_config_types_and_ranges_are_checked_up_front(override, needle):
    from ptum.config import ConfigError, PTUMConfig

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        PTUMConfig.load(None, [override])


@pytest.mark.parametrize("bad,needle", [({"max_drift": -1}, "max_drift"), ({"reuse_vocab": "no"}, "reuse_vocab"),
                                        ({"schema": "inferr"}, "schema"), ({"span_window": 0}, "span_window")])
def test_pipeline_config_types_and_ranges_are_checked_on_load(tmp_path, bad, needle):
    import yaml

    from pipelines.tfx_pipeline import PipelineConfig
    from ptum.config import ConfigError

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"pipeline_root": "p", "input_pattern": "x", "serving_dir": "s", **bad}))
    with pytest.raises(ConfigError, match=f"pipeline.yaml: {needle}:"):
        PipelineConfig.load(str(path))


def test_config_errors_at_the_cli_and_in_finetune(tmp_path):
    one_line(ptum("pretrain", "--data", str(tmp_path), "--output", str(tmp_path / "m"),
                  "--set", "model.dropout=1.5"), "model.dropout")
    from ptum.config import ConfigError, PTUMConfig
    from ptum.config import FinetuneConfig

    assert PTUMConfig.load(None, ["train.jit_compile=true", "train.learning_rate=1e-3"]).train.jit_compile == "true"
    with pytest.raises(ConfigError, match="mode"):
        FinetuneConfig(mode="frozn")
    with pytest.raises(ConfigError, match="batch_size"):
        FinetuneConfig(batch_size=0)


def test_memory_estimate_refuses_a_config_before_training(tmp_path):
    from ptum.config import PTUMConfig
    from ptum.training.runtime import TrainingError, check_memory

    cfg = PTUMConfig.load(None, ["model.embedding_dim=4096", "model.num_blocks=48", "model.max_len=4096",
                                 "train.batch_size=65536", "objective.num_negatives=1000000"])
    cfg.model.num_items = 5_000_000
    with pytest.raises(TrainingError, match=r"needs at least [0-9.]+ GiB .* is available"):
        check_memory(cfg)
    small = PTUMConfig.load(None, [])
    small.model.num_items = 10_000
    parts = check_memory(small, available=1 << 30)
    assert 0 < sum(parts.values()) < 1 << 30
    with pytest.raises(TrainingError, match="lower train.batch_size"):
        check_memory(small, available=1 << 20)


def test_config_and_path_errors_come_before_tensorflow_is_imported(tmp_path, clean_dataset):
    """A typo is reported without importing TensorFlow or Keras (seconds sooner)."""
    data, _ = clean_dataset
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('tensorflow', 'keras', 'jax'):\n"
            "            raise ImportError('imported ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from ptum import cli\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    cases = [(["pretrain", "--data", data, "--output", str(tmp_path / "m"), "--set", "model.bogus=1"],
              "model.bogus: unknown key"),
             (["pretrain", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "m")],
              "no such dataset directory"),
             (["finetune", "--pretrained", str(tmp_path / "m"), "--data", data, "--labels", "x.csv", "--task",
               "classify", "--output", str(tmp_path / "f"), "--config", str(bad)], "finetune.epochz: unknown key")]
    for args, message in cases:
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "imported" not in r.stderr, (args, r.stderr[-500:])
