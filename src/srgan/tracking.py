"""MLflow tracking for training and evaluation runs (main process only)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first use of one SQLite file is not guarded
    fcntl = None

# mlflow is imported where a run is tracked, not on import: ``srgan.train``'s building blocks
# (networks, steps; ``bench/speed.py``) then load without it, and a CLI without a run starts faster.
if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
PENDING_FILE = "mlflow_pending.jsonl"
# MLflow allows at most 1000 metrics per log_batch call.
MAX_METRICS_PER_BATCH = 1000

# MLflow rejects parameter values longer than this (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_LENGTH = 6000


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay whole (one parameter each)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@contextlib.contextmanager
def store_lock(uri: str):
    """For a SQLite store, hold an exclusive lock on ``<db>.lock`` while it is set up.

    MLflow creates and migrates a new SQLite store's tables on first use; two processes doing it
    at once (two ``srgan-train`` on a fresh ``mlruns.db``) collide (``duplicate column name``).
    A server store serialises this itself, so only SQLite is locked.
    """
    if not uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_client(uri: str) -> MlflowClient:
    """An ``MlflowClient`` whose store is set up (tables created and migrated) before it is returned,
    under :func:`store_lock`, so that concurrent first uses of one SQLite file do not race."""
    from mlflow.tracking import MlflowClient

    uri = _local_uri(uri)
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the first store access runs MLflow's migrations
    return client


def get_or_create_experiment(client: MlflowClient, uri: str, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if absent (artifacts under ``artifact_location``: a URI, or a local
    folder made absolute); two processes creating it at once both get the same."""
    from mlflow.exceptions import MlflowException

    if artifact_location and "://" not in artifact_location:
        artifact_location = Path(artifact_location).resolve().as_uri()

    with store_lock(_local_uri(uri)):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if artifact_location and experiment.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
                # MLflow fixes an experiment's artifact location when it is created (e.g. by a tool
                # that did not pass one: ./mlruns); runs cannot choose another.
                log.warning(
                    "MLflow experiment %r keeps its artifacts in %s, not in tracking.artifact_location=%s: it "
                    "was created with that location; use another tracking.experiment_name for %s",
                    name,
                    experiment.artifact_location,
                    artifact_location,
                    artifact_location,
                )
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            # Created by another process between the lookup and the create (a server store).
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def _local_uri(uri: str) -> str:
    """Make a relative ``sqlite:///`` or plain-path URI absolute, so runs started anywhere agree."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


class MlflowTracker:
    """One MLflow run. On non-main processes every method does nothing, by design.

    Creating (or re-attaching to) the run is synchronous: a wrong URI fails at once, loudly.
    Everything logged afterwards goes through a queue that a background thread delivers in order,
    so the training loop never waits on the network. If the tracking server goes away, the thread
    keeps the items and retries with back-off; nothing is dropped. ``finish()`` waits up to
    ``flush_timeout`` seconds for delivery, then writes whatever is still undelivered to
    ``<spool_dir>/mlflow_pending.jsonl`` (replay it with ``python -m srgan.tracking replay <run_dir>``).
    """

    def __init__(
        self,
        uri: str,
        experiment_name: str,
        run_name: str | None = None,
        artifact_location: str | None = None,
        tags: Mapping[str, str] | None = None,
        active: bool = True,
        log_images: bool = True,
        flush_timeout: float = 120.0,
        spool_dir: str | os.PathLike | None = None,
    ) -> None:
        self.active = active
        self.log_images = log_images
        self.run_id: str | None = None
        self.uri = _local_uri(uri)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.artifact_location = artifact_location
        self.tags = dict(tags or {})
        self.client: MlflowClient | None = None
        self.flush_timeout = flush_timeout
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._queue: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.outages = 0
        # Last step already in the run per metric (set when a resumed run re-attaches).
        self.logged_until: dict[str, int] = {}

    # -- run lifecycle (synchronous) ------------------------------------------------------------
    def _client(self) -> MlflowClient:
        # Our own thread retries forever; MLflow's per-request retries only need to absorb a blip.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        return open_client(self.uri)

    def start(self, params: Mapping[str, Any]) -> str | None:
        if not self.active:
            return None
        self.client = self._client()
        experiment_id = get_or_create_experiment(self.client, self.uri, self.experiment_name, self.artifact_location)
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit on parameters per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self._start_thread()
        return self.run_id

    def attach(self, run_id: str, reopen: bool = False) -> bool:
        """Continue logging to an existing run (evaluation of a trained model, a resumed run); False if absent.

        ``reopen`` marks the run RUNNING again (a resumed training run)."""
        if not self.active:
            return False
        from mlflow.exceptions import MlflowException

        self.client = self._client()
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        self.run_id = run_id
        if reopen:
            # A resumed run recomputes the steps between its checkpoint and the kill, which the
            # killed process may already have delivered: those points are not sent twice.
            self.logged_until = {
                key: max((m.step for m in self.client.get_metric_history(run_id, key)), default=-1)
                for key in run.data.metrics
            }
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        self._start_thread()
        return True

    def _start_thread(self) -> None:
        if self.active and self._thread is None:
            self._thread = threading.Thread(target=self._deliver, name="mlflow-delivery", daemon=True)
            self._thread.start()

    # -- logging (queued) -----------------------------------------------------------------------
    def _put(self, kind: str, *args: Any) -> None:
        if not self.active or self.run_id is None:
            return
        with self._cond:
            self._queue.append((kind, args))
            self._cond.notify()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        fresh = [(k, float(v), now, step) for k, v in metrics.items() if step > self.logged_until.get(k, -1)]
        if fresh:
            self._put("metrics", fresh)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._put("tags", {k: str(v) for k, v in tags.items()})

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """An RGB uint8 image as the artifact ``artifact_file`` (e.g. ``val_grids/val_grid_step000100.png``)."""
        if self.log_images:
            self._put("image", np.array(image, copy=True), artifact_file)

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._put("artifacts", str(local_dir), artifact_path)

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._put("artifact", str(local_path), artifact_path)

    def register_model(self, artifact_path: str, name: str) -> None:
        """Register the logged ``artifact_path`` (a model folder with ``MLmodel``) under ``name``, in
        the model registry of the tracking store, after everything queued before it is delivered."""
        self._put("register", artifact_path, name)

    def finish(self, status: str | None = "FINISHED") -> None:
        """Deliver everything (waiting up to ``flush_timeout`` s), then mark the run ``status``
        (None: leave the run's status alone, e.g. after an evaluation logged into a finished run)."""
        if not self.active or self.run_id is None:
            return
        if status is not None:
            self._put("terminate", status)
        if self.flush(self.flush_timeout):
            with self._cond:
                self._closed = True
                self._cond.notify_all()
        else:
            self._spool()

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is delivered; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    # -- delivery thread ------------------------------------------------------------------------
    def _send(self, kind: str, args: tuple[Any, ...]) -> None:
        from mlflow.entities import Metric, RunTag

        client, run_id = self.client, self.run_id
        if kind == "metrics":
            metrics = [Metric(*m) for m in args[0]]
            for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
        elif kind == "tags":
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in args[0].items()])
        elif kind == "image":
            if len(args) == 3:  # spooled by srgan before images went to named files: (image, key, step)
                client.log_image(run_id, args[0], key=args[1], step=args[2])
            else:
                client.log_image(run_id, args[0], artifact_file=args[1])
        elif kind == "artifacts":
            client.log_artifacts(run_id, args[0], args[1])
        elif kind == "artifact":
            client.log_artifact(run_id, args[0], args[1])
        elif kind == "register":
            self._register(args[0], args[1])
        elif kind == "terminate":
            client.set_terminated(run_id, args[0])

    def _register(self, artifact_path: str, name: str) -> None:
        """Register the run's ``artifact_path`` as a new version of model ``name`` (created if new).
        Idempotent: a retry after a lost response finds this run's version instead of adding one."""
        from mlflow.exceptions import MlflowException

        client, run_id = self.client, self.run_id
        try:
            client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        mine = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if mine:
            version = mine[0].version
        else:
            source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
            version = client.create_model_version(name, source, run_id=run_id).version
        client.set_tag(run_id, "registered_model", f"models:/{name}/{version}")
        log.info("registered %s/%s of run %s as models:/%s/%s", self.uri, artifact_path, run_id, name, version)

    def _deliver(self) -> None:
        backoff = 1.0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                kind, args = self._queue[0]
                self._busy = True
            try:
                self._send(kind, args)
            except Exception as err:  # noqa: BLE001 - any failure to deliver means: keep it, retry later
                with self._cond:
                    self._busy = False
                if backoff == 1.0:
                    self.outages += 1
                    log.warning(
                        "MLflow at %s unreachable (%s); keeping metrics and retrying", self.uri, type(err).__name__
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, 15.0)
                continue
            if backoff > 1.0:
                log.warning("MLflow at %s reachable again; delivering what was kept", self.uri)
            backoff = 1.0
            with self._cond:
                self._queue.popleft()
                self._busy = False
                self._cond.notify_all()

    def _spool(self) -> None:
        """Write what the server has not received into the run folder, for a later replay."""
        with self._cond:
            pending = list(self._queue)
            self._queue.clear()
            self._closed = True
            self._cond.notify_all()
        if self.spool_dir is None:
            log.error("MLflow at %s unreachable: %d undelivered items lost (no run folder)", self.uri, len(pending))
            return
        path = self.spool_dir / PENDING_FILE
        images = self.spool_dir / "mlflow_pending_images"
        with open(path, "a") as f:
            for n, (kind, args) in enumerate(pending):
                if kind == "image":
                    images.mkdir(exist_ok=True)
                    file = images / f"{n}_{Path(args[1]).stem}.npy"
                    np.save(file, args[0])
                    args = (str(file), *args[1:])
                f.write(json.dumps({"uri": self.uri, "run_id": self.run_id, "kind": kind, "args": list(args)}) + "\n")
        log.error(
            "MLflow at %s still unreachable after %.0f s: %d undelivered items written to %s; deliver them later with "
            "`python -m srgan.tracking replay %s`",
            self.uri,
            self.flush_timeout,
            len(pending),
            path,
            self.spool_dir,
        )


def replay(run_dir: str | os.PathLike, uri: str | None = None) -> int:
    """Deliver ``mlflow_pending.jsonl`` of a run folder to its tracking server; returns the items sent.

    Items are sent in order; on success the file is renamed ``.delivered``, so a replay never
    sends twice. ``uri`` overrides the recorded tracking URI (the server moved).
    """
    path = Path(run_dir) / PENDING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to replay")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    trackers: dict[str, MlflowTracker] = {}
    for record in records:
        target = uri or record["uri"]
        if target not in trackers:
            trackers[target] = MlflowTracker(target, "replay")
            trackers[target].client = trackers[target]._client()
        tracker = trackers[target]
        tracker.run_id = record["run_id"]
        args = tuple(record["args"])
        if record["kind"] == "image":
            args = (np.load(args[0], allow_pickle=False), *args[1:])
        tracker._send(record["kind"], args)
    path.rename(path.with_name(PENDING_FILE + ".delivered"))
    return len(records)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m srgan.tracking")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="deliver a run folder's mlflow_pending.jsonl")
    rp.add_argument("run_dir")
    rp.add_argument("--uri", default=None, help="tracking URI to send to (default: the one recorded)")
    args = parser.parse_args(argv)
    sent = replay(args.run_dir, args.uri)
    print(f"delivered {sent} items from {Path(args.run_dir) / PENDING_FILE}")


if __name__ == "__main__":
    main()
