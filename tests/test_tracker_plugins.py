"""The built-in trackers (``noether_plugins/trackers``): real short runs, each backend's output read back
with its own library (TensorBoard's event reader, ``mlflow.MlflowClient``, the records of W&B's offline
``.wandb`` file, ``csv``), several at once, a resume from an earlier checkpoint with no step twice, a
missing library, a tracker that fails, and ``noether plugins list --group trackers``.

Nothing reaches a network or the home directory: W&B runs offline with its folders under the test's
temporary directory, MLflow writes to SQLite in the run directory, telemetry is off.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_runs import UPE, tiny_config, train, write_config

from noether_core.cli import main
from noether_core.io.trackers import read_metrics

# found, not imported: MLflow starts its telemetry when imported, before the fixture below turns it off
_MISSING = [name for name in ("tensorboard", "mlflow", "wandb") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} missing: pip install -c constraints.txt -e '.[trackers]'"
)

ALL = [
    {"kind": "tensorboard"},
    {"kind": "mlflow"},
    {"kind": "wandb", "kwargs": {"mode": "offline"}},
    {"kind": "csv"},
]
#: The checkpoint at update 16 a resume goes back to, though the interrupted run reached update 21.
EARLIER = "E1_U16_S256"


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, nothing in the home directory: W&B offline with its folders here, no telemetry."""
    for name in ("DIR", "CONFIG_DIR", "CACHE_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # W&B leaves the test's stdout alone
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tracked_config(trackers: list[dict[str, Any]], **trainer: Any) -> dict[str, Any]:
    """Two epochs: online loss every 2 updates, validation loss every epoch, parameter counts (a
    summary), a key MLflow must rename (``ema=0.9/...``), checkpoints every 8 updates."""
    raw = tiny_config(**trainer)
    raw["callbacks"] = [
        {"kind": "OnlineLossCallback", "every_n_updates": 2},
        {"kind": "OfflineLossCallback", "every_n_epochs": 1, "dataset_key": "val"},
        {"kind": "ParamCountCallback"},
        {"kind": "sample_plugins:Recorder", "every_n_updates": 4, "label": "ema=0.9/rec"},
        {"kind": "CheckpointCallback", "every_n_updates": 8, "save_optim": True},
    ]
    raw["tracker"] = trackers
    return raw


def expected_metrics(run: Path) -> dict[str, dict[int, float]]:
    """``{key: {update: value}}`` of the run's ``metrics.jsonl``, the on-disk truth."""
    out: dict[str, dict[int, float]] = {}
    for record in read_metrics(run / "metrics.jsonl"):
        for key, value in record.items():
            if key not in ("epoch", "update", "sample"):
                assert record["update"] not in out.get(key, {}), f"{key} twice at {record['update']}"
                out.setdefault(key, {})[record["update"]] = float(value)
    return out


# ------------------------------------------------------------------------------ each backend's reader


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_texts(run: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return {
        tag.removesuffix("/text_summary"): events.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
        for tag in events.Tags()["tensors"]
    }


def tensorboard_hparams(run: Path) -> dict[str, Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}


def mlflow_client(run: Path) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")


def mlflow_history(run: Path) -> dict[str, list[tuple[int, float]]]:
    client = mlflow_client(run)
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    keys = client.get_run(run_id).data.metrics
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of checksummed chunks


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file, parsed with W&B's own ``Record`` message."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    position, pending = 7, b""
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_runs(run: Path) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """Every offline W&B run under ``run/wandb`` in order: its id, history rows, summary updates."""
    out = []
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        run_id, rows, summary = "", [], {}
        for record in wandb_records(path):
            which = record.WhichOneof("record_type")
            if which == "run":
                run_id = record.run.run_id
            elif which == "history":
                rows.append({_item_key(item): json.loads(item.value_json) for item in record.history.item})
            elif which == "summary":
                summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
        out.append((run_id, rows, summary))
    return out


def _item_key(item: Any) -> str:
    # W&B writes a key either whole or as its parts
    return str(item.key) if item.key else "/".join(item.nested_key)


def wandb_history(run: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for _, rows, _ in wandb_runs(run):
        for row in rows:
            for key, value in row.items():
                if not key.startswith("_") and key not in ("epoch", "update", "sample"):
                    out.setdefault(key, []).append((row["update"], value))
    return out


def csv_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def assert_same(backend: str, got: dict[str, list[tuple[int, float]]], run: Path, rel: float = 0.0) -> None:
    """Every metric of ``metrics.jsonl`` in ``got`` at the same updates, once each, with its value
    (``rel``: TensorBoard keeps 32-bit floats)."""
    expected = expected_metrics(run)
    assert sorted(got) == sorted(expected), backend
    for key, points in got.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{backend}: {key} has a step twice: {steps}"
        assert dict(points) == pytest.approx(expected[key], rel=rel), f"{backend}: {key}"


# ------------------------------------------------------------------------------ runs


def test_four_trackers_at_once_each_read_back_by_its_library(tmp_path: Path) -> None:
    assert train(tmp_path, tracked_config(ALL), "a") == 0
    run = tmp_path / "a"
    expected = expected_metrics(run)
    assert set(expected) == {"loss/online/total/U2", "loss/val/total", "ema=0.9/rec/U4"}
    assert sorted(expected["loss/online/total/U2"]) == list(range(2, 2 * UPE + 1, 2))

    # TensorBoard: a scalar tag per key at step = update, the config as hyperparameters, text summaries
    assert_same("tensorboard", tensorboard_scalars(run), run, rel=1e-6)
    hparams = tensorboard_hparams(run)
    assert hparams["trainer.max_epochs"] == 2
    assert hparams["callbacks.0.kind"] == "OnlineLossCallback"
    texts = tensorboard_texts(run)
    assert texts["summary/param_count/model"] == "388"
    assert texts["status"] == "completed"

    # MLflow: one run in the SQLite store of the run directory, params from the config, metrics at
    # step = update (the key MLflow refuses renamed), summaries as tags, the status mapped
    client = mlflow_client(run)
    (mlflow_run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments() if e.name == "noether"]
    )
    assert mlflow_run.info.run_id == json.loads((run / "mlflow.json").read_text())["run_id"]
    assert (mlflow_run.info.run_name, mlflow_run.info.status) == ("a", "FINISHED")
    assert mlflow_run.data.params["trainer.batch_size"] == "16"
    assert mlflow_run.data.params["callbacks.3.label"] == "ema=0.9/rec"
    assert mlflow_run.data.tags["param_count/model"] == "388"
    assert mlflow_run.data.tags["noether.status"] == "completed"
    history = mlflow_history(run)
    history["ema=0.9/rec/U4"] = history.pop("ema_0.9/rec/U4")
    assert_same("mlflow", history, run)

    # W&B: one offline run whose rows carry update, epoch and sample; the config and summaries
    ((wandb_id, rows, summary),) = wandb_runs(run)
    assert json.loads((run / "wandb.json").read_text()) == {"run_id": wandb_id, "last_update": 2 * UPE}
    assert_same("wandb", wandb_history(run), run)
    assert all({"update", "epoch", "sample"} <= set(row) for row in rows)
    assert summary["param_count/model"] == 388

    # CSV: one row per record of metrics.jsonl, columns epoch, update, sample, then the keys
    rows_csv = csv_rows(run)
    records = read_metrics(run / "metrics.jsonl")
    assert [int(r["update"]) for r in rows_csv] == [r["update"] for r in records]
    header = next(csv.reader((run / "metrics.csv").open(newline="")))
    assert header[:3] == ["epoch", "update", "sample"]
    assert sorted(header[3:]) == sorted(expected)
    got = {key: [(int(r["update"]), float(r[key])) for r in rows_csv if r[key] != ""] for key in header[3:]}
    assert_same("csv", got, run)


def test_a_resume_from_an_earlier_checkpoint_continues_each_backend_without_a_step_twice(
    tmp_path: Path,
) -> None:
    """SIGTERM at update 21, then a resume from the checkpoint at 16: updates 18 and 20 are logged
    again, and every backend still holds each step once, in the run it started."""
    raw = tracked_config(ALL)
    raw["callbacks"].append({"kind": "sample_plugins:SignalAt", "update": UPE + 5})
    assert train(tmp_path, raw, "b") == 130
    run = tmp_path / "b"
    mlflow_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    assert mlflow_client(run).get_run(mlflow_id).info.status == "KILLED"
    # each backend holds updates 18 and 20, which the resume logs again
    for backend, history in (
        ("tensorboard", tensorboard_scalars(run)),
        ("mlflow", mlflow_history(run)),
        ("wandb", wandb_history(run)),
    ):
        assert max(step for step, _ in history["loss/online/total/U2"]) == UPE + 4, backend

    resumed = ["train", "--resume", str(run), "--checkpoint", EARLIER, "--set", "callbacks[5].update=0"]
    assert main(resumed) == 0
    assert sorted(expected_metrics(run)["loss/online/total/U2"]) == list(range(2, 2 * UPE + 1, 2))

    # TensorBoard: the second writer purges the steps after 16 the first one wrote
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert_same("tensorboard", tensorboard_scalars(run), run, rel=1e-6)

    # MLflow: the same run, finished now, each step once
    client = mlflow_client(run)
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == mlflow_id
    assert len(client.search_runs([client.get_run(mlflow_id).info.experiment_id])) == 1
    assert client.get_run(mlflow_id).info.status == "FINISHED"
    history = mlflow_history(run)
    history["ema=0.9/rec/U4"] = history.pop("ema_0.9/rec/U4")
    assert_same("mlflow", history, run)

    # W&B: two offline runs (one per process) with the same id, each update once across both
    (first_id, _, _), (second_id, _, _) = wandb_runs(run)
    assert first_id == second_id == json.loads((run / "wandb.json").read_text())["run_id"]
    assert_same("wandb", wandb_history(run), run)

    # CSV: the rows after 16 were removed at the resume, and written again once
    assert [int(r["update"]) for r in csv_rows(run)] == [
        r["update"] for r in read_metrics(run / "metrics.jsonl")
    ]


def test_an_evaluation_joins_each_backend_under_eval_and_leaves_the_training_files_alone(
    tmp_path: Path,
) -> None:
    assert train(tmp_path, tracked_config(ALL), "e") == 0
    run = tmp_path / "e"
    own = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "summary.yaml", "log.txt")}
    mlflow_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    validated = expected_metrics(run)["loss/val/total"][2 * UPE]

    assert main(["eval", str(run), "--checkpoint", "last"]) == 0
    assert {name: (run / name).read_bytes() for name in own} == own
    (record,) = read_metrics(run / "eval" / "last" / "metrics.jsonl")
    assert record["loss/val/total"] == pytest.approx(validated)

    # each backend: the evaluation's value under eval/, at the checkpoint's update, in the same run
    assert tensorboard_scalars(run)["eval/loss/val/total"] == [(2 * UPE, pytest.approx(validated, rel=1e-6))]
    client = mlflow_client(run)
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == mlflow_id
    assert [(m.step, m.value) for m in client.get_metric_history(mlflow_id, "eval/loss/val/total")] == [
        (2 * UPE, pytest.approx(validated))
    ]
    assert client.get_run(mlflow_id).info.status == "FINISHED"  # the training's status, kept
    assert (2 * UPE, pytest.approx(validated)) in wandb_history(run)["eval/loss/val/total"]
    (row,) = [r for r in csv_rows(run) if r.get("eval/loss/val/total")]
    assert (int(row["update"]), float(row["eval/loss/val/total"])) == (2 * UPE, pytest.approx(validated))


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kind", "module", "extra"),
    [
        ("tensorboard", "tensorboard", "tensorboard"),
        ("mlflow", "mlflow", "mlflow"),
        ("wandb", "wandb", "wandb"),
    ],
)
def test_a_missing_library_fails_validation_with_the_pip_command(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    module: str,
    extra: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    raw = tracked_config([{"kind": "csv"}, {"kind": kind}])
    config = write_config(tmp_path / "c.yaml", raw)
    assert main(["config", "validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert (
        f"tracker[1].kind: the {kind!r} tracker needs the {module} package, which cannot be imported "
        f"(import of {module} halted; None in sys.modules): pip install {module} "
        f"(in a checkout of noether: pip install -c constraints.txt -e '.[{extra}]')"
    ) in err
    # noether train stops there too, before the run directory exists
    assert train(tmp_path, raw, "r") == 2
    assert not (tmp_path / "r").exists()


def test_a_tracker_argument_error_names_the_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tracked_config([{"kind": "csv"}, {"kind": "wandb", "kwargs": {"mode": "onilne"}}])
    assert main(["config", "validate", str(write_config(tmp_path / "c.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert "tracker[1].kwargs.mode: must be one of online, offline, disabled or null, got 'onilne'" in err


FAILING = textwrap.dedent(
    """
    class Failing:
        def __init__(self, method="log"):
            self.method = method

        def start(self, paths, config):
            if self.method == "start":
                raise ConnectionError("backend unreachable")

        def log(self, record):
            if self.method == "log" and record["update"] >= 4:
                raise ConnectionError("backend unreachable")

        def set_summary(self, key, value):
            pass

        def close(self, status):
            raise RuntimeError("closing a broken tracker fails too")
    """
)


@pytest.mark.parametrize("method", ["start", "log"])
def test_a_tracker_that_raises_is_reported_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    (tmp_path / "failing_trackers.py").write_text(FAILING)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "failing_trackers", raising=False)
    raw = tracked_config(
        [{"kind": "csv"}, {"kind": "failing_trackers:Failing", "kwargs": {"method": method}}]
    )
    assert train(tmp_path, raw, "r") == 1
    err = capsys.readouterr().err
    assert (
        f"noether: error: tracker 'failing_trackers:Failing' failed in {method}: "
        "ConnectionError: backend unreachable"
    ) in err
    assert "closing a broken tracker" not in err.splitlines()[-1]  # the first failure is the one reported
    if method == "log":
        assert "status: failed" in (tmp_path / "r" / "summary.yaml").read_text()
        assert [int(r["update"]) for r in csv_rows(tmp_path / "r")][-1] == 4  # the others got the record


# ------------------------------------------------------------------------------ plugins list


def test_plugins_list_shows_the_trackers_with_their_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "list", "--group", "trackers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["trackers", kind, "noether", "0.1.0"] for kind in ("csv", "mlflow", "tensorboard", "wandb")
    ]
    assert main(["plugins", "list", "--json", "--check", "--group", "trackers"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["group"], r["kind"], r["status"]) for r in rows} == {
        ("trackers", kind, "ok") for kind in ("csv", "mlflow", "tensorboard", "wandb")
    }
    assert main(["plugins", "list", "--json"]) == 0
    groups = {r["kind"]: r["group"] for r in json.loads(capsys.readouterr().out)}
    assert (groups["mlflow"], groups["CheckpointCallback"]) == ("trackers", "callbacks")
    assert main(["plugins", "list", "--group", "callbacks"]) == 0
    assert "mlflow" not in capsys.readouterr().out


def test_plugins_list_check_shows_a_missing_library(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert main(["plugins", "list", "--json", "--check", "--group", "trackers"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["kind"] == "mlflow"]
    assert row["status"] == "error"
    assert "pip install -c constraints.txt -e '.[mlflow]'" in row["error"]
