"""Progress of a child ``llamafactory-cli train`` whose output goes to a log file.

LLaMA-Factory appends one JSON line per logging step to ``output_dir/trainer_log.jsonl``
(``current_steps``, ``total_steps``, ``loss``, ``remaining_time``...). :func:`run_with_progress` runs a
child, follows that file while it runs and draws a tqdm bar (step/total, loss, LLaMA-Factory's ETA); when
the child fails it prints the log file's path and raises with the log's tail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Sequence

from tqdm import tqdm

TRAINER_LOG = "trainer_log.jsonl"  # llamafactory.extras.constants.TRAINER_LOG
POLL_S = 0.5


class TrainerLogFollower:
    """Reads the new complete lines of a ``trainer_log.jsonl`` on every :meth:`poll` and moves a tqdm bar.

    A file last written before ``since`` is an earlier run's (LLaMA-Factory deletes it once the child
    starts) and is ignored; a file that shrinks was restarted and is read again from its start.
    """

    def __init__(self, path: str | Path, desc: str, since: float | None = None, stream: IO[str] | None = None):
        self.path, self.since = Path(path), time.time() if since is None else since
        self.offset, self.last, self.postfix = 0, {}, {}
        self.bar = tqdm(desc=desc, total=None, unit="step", file=stream or sys.stderr, dynamic_ncols=True, leave=True)

    def poll(self) -> dict:
        """Take in new lines; returns the latest log row (empty before the first)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self.last
        if stat.st_mtime < self.since - 1.0:  # 1 s of slack for coarse file-system clocks
            return self.last
        if stat.st_size < self.offset:
            self.offset = 0
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "current_steps" in row:
                self._show(row)
        return self.last

    def _show(self, row: dict) -> None:
        self.last = row
        if row.get("total_steps") and self.bar.total != row["total_steps"]:
            self.bar.total = row["total_steps"]
        self.bar.n = min(int(row["current_steps"]), self.bar.total or int(row["current_steps"]))
        if row.get("loss") is not None:  # the last row (train end) has none: keep the last loss
            self.postfix["loss"] = f"{row['loss']:.4f}"
        if row.get("remaining_time"):
            self.postfix["eta"] = row["remaining_time"]
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.poll()
        self.bar.close()


def log_tail(log_file: Path, lines: int = 30) -> str:
    try:
        return "".join(Path(log_file).read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except FileNotFoundError:
        return "(no log)"


def run_with_progress(args: Sequence[str], log_file: str | Path, *, env: dict[str, str] | None = None,
                      output_dir: str | Path | None = None, desc: str = "", stream: IO[str] | None = None) -> None:  # fmt: skip
    """Run ``args`` with stdout and stderr in ``log_file``; with ``output_dir``, show the trainer log's progress.

    Raises RuntimeError (exit code, log path, log tail) when the child fails, after printing the path.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    stream = stream or sys.stderr
    follower = TrainerLogFollower(Path(output_dir) / TRAINER_LOG, desc or Path(str(output_dir)).name, stream=stream) \
        if output_dir is not None else None  # fmt: skip
    with open(log_file, "w") as log:
        proc = subprocess.Popen(list(map(str, args)), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    if follower is not None:
                        follower.poll()
        except BaseException:  # Ctrl-C or an error here: do not leave the child training alone
            proc.kill()
            proc.wait()
            raise
        finally:
            if follower is not None:
                follower.close()
    if proc.returncode != 0:
        what = " ".join([os.path.basename(str(args[0]))] + [str(a) for a in args[1:2]])
        print(f"{what} failed (exit {proc.returncode}); full log: {log_file}", file=stream, flush=True)
        raise RuntimeError(f"{' '.join(map(str, args))} failed (exit {proc.returncode}); log {log_file}:\n{log_tail(log_file)}")
