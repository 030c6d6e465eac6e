"""Who owns a run directory, and what its files look like after a failure: the lock held by ``train``,
``train --resume`` and ``eval``; atomic creation of a run id; ``--restart``; atomic small files; a
teardown that never hides the error that ended the run; damaged run directories refused unchanged.

Everything runs for real: ``noether train`` subprocesses racing on one run id, killed with SIGKILL,
under a file size limit (``RLIMIT_FSIZE``), on a disk that fills up (``disk_full_plugin``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_runs import noether_script, run_noether, tiny_config, write_config

import noether_core
from noether_core import RunDirectoryBusyError, UsageError, atomic_write_text
from noether_core.cli import main
from noether_core.io.paths import RunPaths
from noether_core.io.run_directory import (
    LOCK_FILE,
    RunLock,
    check_run_files,
    create_run_directory,
    restart_run_directory,
)

TESTS = Path(__file__).parent


# ------------------------------------------------------------------------------------------ helpers


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` with the hash of its content (``dir`` for directories, the target
    for links): equal snapshots mean nothing changed on disk."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def long_config(**trainer: Any) -> dict[str, Any]:
    """A run that lasts until it is stopped: 2000 updates, each held up 20 ms by ``Sleepy``, the online
    loss logged at every one."""
    raw = tiny_config(max_updates=2000, **trainer)
    del raw["trainer"]["max_epochs"]
    raw["callbacks"] = [
        {"kind": "sample_plugins:Sleepy", "seconds": 0.02},
        {"kind": "OnlineLossCallback", "every_n_updates": 1},
    ]
    return raw


def quick_config() -> dict[str, Any]:
    """Eight updates, the online loss logged at every one, a resumable ``latest`` every four."""
    raw = tiny_config(max_updates=8)
    del raw["trainer"]["max_epochs"]
    raw["callbacks"] = [
        {"kind": "OnlineLossCallback", "every_n_updates": 1},
        {"kind": "CheckpointCallback", "every_n_updates": 4},
    ]
    return raw


def start_noether(args: Sequence[str | os.PathLike[str]], **popen: Any) -> subprocess.Popen[str]:
    """The real ``noether`` CLI, started in the background (``tests/`` on ``PYTHONPATH``)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [str(noether_script()), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        **popen,
    )


def cli(args: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """The real ``noether`` CLI in a subprocess, ``tests/`` on ``PYTHONPATH``."""
    return run_noether(args, pythonpath=str(TESTS), **kwargs)


Noether = Callable[[Sequence[str | os.PathLike[str]]], subprocess.CompletedProcess[str]]


@pytest.fixture
def noether(capsys: pytest.CaptureFixture[str]) -> Noether:
    """``noether`` in this process, as a finished command: status, stdout, stderr. The locks and files
    are as real as in a subprocess; only the start-up (importing torch) is saved."""

    def run(args: Sequence[str | os.PathLike[str]]) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        status = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), status, out, err)

    return run


def wait_for(
    condition: Callable[[], bool], what: str, proc: subprocess.Popen[str], timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (status {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def has_records(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.exists() and metrics.stat().st_size > 0


def updates_of(run: Path) -> list[int]:
    return [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def ignore_sigxfsz_and_limit(size: int) -> Callable[[], None]:
    """A ``preexec_fn``: files may not grow beyond ``size`` bytes. SIGXFSZ is ignored (the disposition
    survives exec), so a write past the limit fails with EFBIG instead of killing the process."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Logging error" not in stderr, stderr


# ----------------------------------------------------------------------------------- atomic writes


def test_atomic_write_text_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "a: 1\n")
    atomic_write_text(target, "a: 2\r\nb: ü\n")  # written as given: no newline translation
    assert target.read_bytes() == "a: 2\r\nb: ü\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "summary.yaml"
    target.mkdir()  # os.replace of a file onto a directory fails after the text was written
    (target / "inside").write_text("kept")
    with pytest.raises(OSError, match=r"Is a directory|not empty|exists") as failed:
        atomic_write_text(target, "status: completed\n")
    assert failed.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.yaml"]
    assert (target / "inside").read_text() == "kept"


def test_a_write_past_the_file_size_limit_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")
    script = textwrap.dedent(
        f"""
        import errno, sys
        from noether_core import atomic_write_text
        try:
            atomic_write_text({str(target)!r}, "x" * 5000)
        except OSError as error:
            sys.exit(0 if error.errno == errno.EFBIG else 1)
        sys.exit(2)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], preexec_fn=ignore_sigxfsz_and_limit(1024), check=False
    )
    assert proc.returncode == 0
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


# ------------------------------------------------------------------------------------------ the lock


def test_a_second_lock_on_a_run_directory_names_the_owner(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path) as lock:
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(RunDirectoryBusyError) as busy:
            RunLock.acquire(tmp_path)
        assert busy.value.pid == os.getpid()
        assert f"in use by process {os.getpid()}" in str(busy.value)
        assert busy.value.exit_status == 2
    assert not lock.held
    assert not (tmp_path / LOCK_FILE).exists()  # released: the file goes too
    RunLock.acquire(tmp_path).release()


HOLD = textwrap.dedent(
    """
    import os, sys, time
    from noether_core.io.run_directory import RunLock
    lock = RunLock.acquire(sys.argv[1])
    if sys.argv[2] == "fork":
        if os.fork() == 0:
            # printed by the child, after the fork handlers ran in it: a parent's print could come
            # first, and a test that kills the parent then would race the child closing its copy
            print(os.getpid(), flush=True)
            time.sleep(60)
            os._exit(0)
    else:
        print(os.getpid(), flush=True)
    time.sleep(60)
    """
)


def hold(run_dir: Path, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), how], stdout=subprocess.PIPE, text=True
    )


def test_a_lock_whose_owner_was_killed_is_free(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "plain"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        with pytest.raises(RunDirectoryBusyError, match=f"process {pid}"):
            RunLock.acquire(tmp_path)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == pid  # left behind, not locked
        with RunLock.acquire(tmp_path):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        owner.kill()
        owner.wait()


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path: Path) -> None:
    # a DataLoader worker is such a child: it must not hold the run after its parent was killed
    owner = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), "fork"], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    try:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        os.kill(child, 0)  # the child lives on
        RunLock.acquire(tmp_path).release()
    finally:
        os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------------------- creating run ids


def test_a_run_id_is_created_locked_and_only_once(tmp_path: Path) -> None:
    paths, lock = create_run_directory(tmp_path / "out", "a")
    try:
        assert paths.root == tmp_path / "out" / "a"
        assert sorted(p.name for p in paths.root.iterdir()) == [LOCK_FILE]
        with pytest.raises(RunDirectoryBusyError, match=f"process {os.getpid()}"):
            create_run_directory(tmp_path / "out", "a")
    finally:
        lock.release()
    (paths.root / "config.yaml").write_text("{}")
    with pytest.raises(UsageError, match="already holds a run; continue it with --resume"):
        create_run_directory(tmp_path / "out", "a")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]  # no temporary left


def test_two_processes_racing_on_one_run_id_one_wins(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", long_config())
    args = ["train", cfg, "--output-dir", tmp_path, "--run-id", "same"]
    procs = [start_noether(args), start_noether(args)]
    try:
        # the loser ends at once; then the winner is stopped (it saves latest and exits 130)
        deadline = time.monotonic() + 180
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        (loser,) = [p for p in procs if p.poll() is not None]
        (winner,) = [p for p in procs if p is not loser]
        _, err = loser.communicate()
        assert loser.returncode == 2, err
        assert f"'{tmp_path / 'same'}' is in use by process {winner.pid}" in err
        no_traceback(err)
        wait_for(lambda: has_records(tmp_path / "same"), "the first records", winner)
        winner.send_signal(signal.SIGTERM)
        winner.communicate(timeout=120)
        assert winner.returncode == 130
    finally:
        for p in procs:
            p.kill()
            p.wait()
    updates = updates_of(tmp_path / "same")
    assert updates == sorted(set(updates))  # one process wrote, each update once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "same"]


def test_resume_and_eval_of_a_run_in_use_name_its_process(tmp_path: Path, noether: Noether) -> None:
    raw = long_config()
    raw["callbacks"].append({"kind": "CheckpointCallback", "every_n_updates": 2})
    cfg = write_config(tmp_path / "c.yaml", raw)
    run = tmp_path / "r"
    owner = start_noether(["train", cfg, "--output-dir", tmp_path, "--run-id", "r"])
    try:
        wait_for(lambda: (run / "checkpoints" / "model_cp=latest_trainer.th").exists(), "latest", owner)
        for args in (["train", "--resume", run], ["eval", run, "--checkpoint", "latest"]):
            proc = noether(args)
            assert proc.returncode == 2, proc.stderr
            assert f"is in use by process {owner.pid}" in proc.stderr
            no_traceback(proc.stderr)
        assert not (run / "eval").exists()
        owner.send_signal(signal.SIGTERM)  # (SIGKILL frees the lock too: see the --restart test)
        assert owner.wait(timeout=120) == 130
    finally:
        owner.kill()
        owner.wait()
    end = updates_of(run)[-1] + 4  # past latest, which is never after the last record
    proc = noether(
        ["train", "--resume", run, "--set", f"trainer.max_updates={end}", "--set", "callbacks[0].seconds=0"]
    )
    assert proc.returncode == 0, proc.stderr
    updates = updates_of(run)
    assert updates[-1] == end
    assert updates == sorted(set(updates))
    assert not (run / LOCK_FILE).exists()


def test_torchrun_ranks_all_learn_that_rank_zero_was_refused(tmp_path: Path) -> None:
    # rank 0 alone claims the directory; the other rank must fail with it, not wait in a collective
    pytest.importorskip("torch.distributed")
    from test_distributed import CONFIG, torchrun

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "ddp").mkdir()
    (tmp_path / "ddp" / "config.yaml").write_text("{}\n")  # a run that exists
    before = snapshot(tmp_path)
    proc = torchrun(cfg, tmp_path, "ddp")
    assert proc.returncode != 0
    assert proc.stderr.count("already holds a run") == 2, proc.stderr  # rank 0's words on both ranks
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------ restart


def test_a_run_killed_before_its_first_checkpoint_restarts_under_its_id(
    tmp_path: Path, noether: Noether
) -> None:
    cfg = write_config(tmp_path / "c.yaml", long_config())
    run = tmp_path / "r"
    owner = start_noether(["train", cfg, "--output-dir", tmp_path, "--run-id", "r"])
    try:
        wait_for(lambda: has_records(run), "the first records", owner)
        busy = noether(["train", cfg, "--output-dir", tmp_path, "--run-id", "r", "--restart"])
        assert busy.returncode == 2
        assert f"in use by process {owner.pid}" in busy.stderr
    finally:
        owner.kill()
        owner.wait()

    again = noether(["train", cfg, "--output-dir", tmp_path, "--run-id", "r"])
    assert again.returncode == 2
    assert "already holds a run" in again.stderr
    assert "--restart" in again.stderr
    resume = noether(["train", "--resume", run])
    assert resume.returncode == 2
    assert "has no checkpoint to resume from" in resume.stderr
    assert "--run-id r --restart" in resume.stderr

    short = write_config(tmp_path / "short.yaml", quick_config())
    proc = noether(["train", short, "--output-dir", tmp_path, "--run-id", "r", "--restart"])
    assert proc.returncode == 0, proc.stderr
    removed = re.search(r"restart: removed (.*) from", proc.stdout)
    assert removed is not None, proc.stdout
    assert {"config.yaml", "log.txt", "metrics.jsonl"} <= set(removed.group(1).split(", "))
    assert updates_of(run) == list(range(1, 9))  # started over: no record of the killed attempt
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_updates"] == 8
    assert (yaml.safe_load((run / "summary.yaml").read_text()))["status"] == "completed"


def test_restart_refuses_a_run_with_checkpoints_and_changes_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", quick_config())
    assert main(["train", str(cfg), "--output-dir", str(tmp_path), "--run-id", "r"]) == 0
    before = snapshot(tmp_path)
    with pytest.raises(UsageError) as refused:
        restart_run_directory(tmp_path, "r")
    message = str(refused.value)
    assert "--restart refused" in message
    assert re.search(r"has checkpoints \(model_cp=\S+\.th, ", message)  # named, not only counted
    assert f"--resume {tmp_path / 'r'}" in message
    assert snapshot(tmp_path) == before


def test_restart_usage_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--restart"]) == 2
    assert "--restart needs --run-id" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--restart"]) == 2
    assert "cannot be combined with --resume" in capsys.readouterr().err
    # a run id never used: --restart simply starts it
    paths, lock, removed = restart_run_directory(tmp_path, "new")
    lock.release()
    assert (paths.root, removed) == (tmp_path / "new", [])


# ------------------------------------------------------------------------------------- config.yaml


def test_config_yaml_survives_a_failed_write_and_the_run_resumes(tmp_path: Path, noether: Noether) -> None:
    cfg = write_config(tmp_path / "c.yaml", quick_config())
    assert main(["train", str(cfg), "--output-dir", str(tmp_path), "--run-id", "r"]) == 0
    run = tmp_path / "r"
    config_before = (run / "config.yaml").read_bytes()
    assert len(config_before) > 1024

    # `ulimit -f 1`: the resumed run's config (one value changed) cannot be written
    limited = subprocess.run(
        [str(noether_script()), "train", "--resume", str(run), "--set", "trainer.max_updates=12"],
        capture_output=True,
        text=True,
        preexec_fn=ignore_sigxfsz_and_limit(1024),
        check=False,
    )
    assert limited.returncode == 1, limited.stderr
    assert "could not write" in limited.stderr
    assert "config.yaml" in limited.stderr
    assert "File too large" in limited.stderr
    no_traceback(limited.stderr)
    assert (run / "config.yaml").read_bytes() == config_before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]

    proc = noether(["train", "--resume", run, "--set", "trainer.max_updates=12"])
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_updates"] == 12
    assert updates_of(run) == sorted(set(updates_of(run)))


def test_a_resume_with_the_same_config_leaves_config_yaml_alone(tmp_path: Path) -> None:
    raw = quick_config()
    cfg = write_config(tmp_path / "c.yaml", raw)
    assert main(["train", str(cfg), "--output-dir", str(tmp_path), "--run-id", "r"]) == 0
    config = tmp_path / "r" / "config.yaml"
    before = config.stat()
    assert main(["train", "--resume", str(tmp_path / "r")]) == 0
    after = config.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# ------------------------------------------------------------------------------------------ teardown


def test_a_full_disk_reports_the_checkpoint_error_alone(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=10)
    del raw["trainer"]["max_epochs"]
    raw["callbacks"] = [
        {"kind": "disk_full_plugin:DiskFull", "at_update": 3},
        {"kind": "CheckpointCallback", "every_n_updates": 5},
    ]
    cfg = write_config(tmp_path / "c.yaml", raw)
    proc = cli(["train", cfg, "--output-dir", tmp_path, "--run-id", "r"])
    assert proc.returncode == 1
    no_traceback(proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("noether: error:")]
    assert len(errors) == 1, proc.stderr
    assert "could not write checkpoint" in errors[0]
    assert "No space left on device" in errors[0]
    # the log file gave up in one line; the summary's failure is a one-line warning after the error
    assert proc.stderr.count("the run goes on without its log file") == 1
    assert "also failed while closing the trackers: OSError: [Errno 28]" in proc.stdout
    assert not (tmp_path / "r" / LOCK_FILE).exists()


def test_a_file_size_limit_reports_the_checkpoint_error(tmp_path: Path) -> None:
    raw = tiny_config(max_updates=4)
    del raw["trainer"]["max_epochs"]
    raw["model"]["kwargs"]["hidden"] = 256  # checkpoints of about 300 kB, far over the limit
    raw["callbacks"] = [{"kind": "CheckpointCallback", "every_n_updates": 2}]
    cfg = write_config(tmp_path / "c.yaml", raw)
    proc = subprocess.run(
        [str(noether_script()), "train", str(cfg), "--output-dir", str(tmp_path), "--run-id", "r"],
        capture_output=True,
        text=True,
        preexec_fn=ignore_sigxfsz_and_limit(64 * 1024),
        check=False,
    )
    assert proc.returncode == 1
    no_traceback(proc.stderr)
    assert "could not write checkpoint" in proc.stderr  # torch words EFBIG its own way
    assert not [p for p in (tmp_path / "r" / "checkpoints").iterdir()]  # no partial file


def test_the_log_file_stops_quietly_when_it_cannot_be_written(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import logging

    from noether_core.io.log_file import RunLogFileHandler

    handler = RunLogFileHandler(tmp_path / "log.txt")
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, handler.stream.fileno())
    os.close(full)
    logger = logging.getLogger("test_run_directory.full")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(3):
            logger.warning("record %d", i)
        handler.flush()
        handler.close()
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert err.count("noether: cannot write") == 1
    assert "No space left on device" in err
    assert "Logging error" not in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------ damaged run directories


def test_a_log_txt_that_is_a_directory_is_refused_unchanged(tmp_path: Path, noether: Noether) -> None:
    cfg = write_config(tmp_path / "c.yaml", quick_config())
    assert main(["train", str(cfg), "--output-dir", str(tmp_path), "--run-id", "r"]) == 0
    run = tmp_path / "r"
    (run / "log.txt").unlink()
    (run / "log.txt").mkdir()
    before = snapshot(tmp_path)
    proc = noether(["train", "--resume", run])
    assert proc.returncode == 2
    assert "log.txt' is a directory" in proc.stderr
    no_traceback(proc.stderr)
    assert snapshot(tmp_path) == before
    with pytest.raises(UsageError, match="is a directory"):
        check_run_files(RunPaths(run, "r"))


def test_an_output_dir_that_is_a_file_is_refused_unchanged(tmp_path: Path, noether: Noether) -> None:
    cfg = write_config(tmp_path / "c.yaml", quick_config())
    (tmp_path / "out").write_text("not a directory")
    before = snapshot(tmp_path)
    for output in (tmp_path / "out", tmp_path / "out" / "below"):
        proc = noether(["train", cfg, "--output-dir", output, "--run-id", "r"])
        assert proc.returncode == 2
        assert "is not a directory" in proc.stderr
        no_traceback(proc.stderr)
    assert snapshot(tmp_path) == before


def test_a_read_only_output_dir_is_refused_unchanged(tmp_path: Path, noether: Noether) -> None:
    cfg = write_config(tmp_path / "c.yaml", quick_config())
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.geteuid() == 0:
            pytest.skip("the permission bits do not stop this user (root)")
        proc = noether(["train", cfg, "--output-dir", out, "--run-id", "r"])
        assert proc.returncode == 2
        assert "Permission denied" in proc.stderr
        no_traceback(proc.stderr)
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o700)


def test_the_python_api_holds_the_lock_for_the_call(tmp_path: Path) -> None:
    raw = quick_config()
    noether_core.train(raw, output_dir=tmp_path, run_id="r")
    run = tmp_path / "r"
    with RunLock.acquire(run):  # as another process would hold it
        with pytest.raises(RunDirectoryBusyError, match=f"process {os.getpid()}"):
            noether_core.train(resume=run)
        with pytest.raises(RunDirectoryBusyError):
            noether_core.evaluate(run)
    assert noether_core.evaluate(run).status == "completed"
