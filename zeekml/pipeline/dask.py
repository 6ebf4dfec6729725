"""Batch scoring on Dask: the archive is cut into tasks by file and byte range, workers parse and
score, results come back into the same outputs as a single-process run.

The plan keeps a single-process run's semantics exactly:
1. every task parses its piece into a conn table, kept on its worker;
2. the driver gathers only the ``ts`` column, picks the baseline rows with the same stable order
   a single process uses, and gathers just those rows;
3. detectors are fitted and calibrated once on the driver and sent to the workers (each loads
   them once);
4. each task scores its table; verdicts are written in task order, so the output files are the
   same bytes as those of ``zeekml score`` without ``--dask``.
Per-conn detectors make a verdict depend only on its own row; a detector whose score depends on
the conns around it in time (the GNN's graph windows, a host's earlier conns) says how far back
and forward (``scoring.context.horizon``), and each task is scored with the rows of the other
tasks within those distances as context.
"""
from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import logging
import os
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
from distributed import WorkerPlugin

from zeekml._core.errors import UnreadableInput, ZeekmlError
from zeekml.flows.select import feedback_rows, ts_sort_key
from zeekml.flows.table import conn_table, is_conn_batch
from zeekml.parse import Quarantine
from zeekml.parse.reader import GZIP_MAGIC, detect_format, make_parser, open_binary
from zeekml.parse.reject import RejectedRecord
from zeekml.pipeline.fitted import FittedDetectors, fit_calibrate
from zeekml.pipeline.options import ScoreOptions, ScoreSummary
from zeekml.pipeline.chunked import TriagePart, score_in_context, triage_part
from zeekml.scoring.allowlist import Allowlist, suppress
from zeekml.scoring.context import context_window, horizons, take_ts_range
from zeekml.scoring.evidence import ALERT_PATH, SuricataAlerts, attach_suricata_alerts
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.triage import mark_suppressed
from zeekml.sinks.verdicts import render_verdicts

log = logging.getLogger(__name__)

DEFAULT_SPLIT_BYTES = 64 << 20

EmitFn = Callable[[bytes, int, Counter, list[Verdict]], None]
"""Receives each task's ``verdicts.jsonl`` lines, their count, its alerts counted by note and
the alerting verdicts (where asked for: ``score_tasks_dask``'s ``with_alerts``)."""

TASK_RETRIES = 2
"""Every task is run at most ``1 + TASK_RETRIES`` times, whether it raises (Dask ``retries``) or
its worker process dies under it (``distributed.scheduler.allowed-failures``, see
``dask_client``); after that the run reports it as failed and goes on with the other tasks."""


@dataclass(frozen=True)
class ReadTask:
    """A piece of one file: bytes ``[start, end)`` (``end`` None = to the end), parsed after
    feeding ``header`` (the meta lines in force at ``start``)."""

    path: str
    fmt: str
    start: int = 0
    end: int | None = None
    header: bytes = b""
    first_line: int = 0


@dataclass
class ReadResult:
    table: pa.Table
    records_read: int
    other_records: int
    rejected: list[RejectedRecord]
    error: str | None = None
    alerts: list[pa.RecordBatch] | None = None    # Suricata alerts read (scoring.evidence)


def plan_tasks(files: list[str], split_bytes: int = DEFAULT_SPLIT_BYTES) -> list[ReadTask]:
    """One task per file; plain TSV and JSON files larger than ``split_bytes`` are cut at line
    boundaries, each piece carrying the header lines in force where it starts."""
    tasks: list[ReadTask] = []
    for path in files:
        try:
            fmt = detect_format(path)
            with open(path, "rb") as f:
                gz = f.read(2) == GZIP_MAGIC
        except ZeekmlError:
            tasks.append(ReadTask(path, "unknown"))
            continue
        size = os.path.getsize(path)
        if gz or size <= split_bytes or fmt not in ("zeek-tsv", "zeek-json"):
            tasks.append(ReadTask(path, fmt))
            continue
        tasks.extend(_split_file(path, fmt, split_bytes))
    return tasks


def _split_file(path: str, fmt: str, split_bytes: int) -> Iterator[ReadTask]:
    header_lines: list[bytes] = []   # the meta lines in force at the current position
    start, pos, line_no = 0, 0, 0
    cut_header, cut_line = b"", 0
    with open(path, "rb") as f:
        for line in f:
            if fmt == "zeek-tsv" and line.startswith(b"#"):
                if line.startswith(b"#separator"):
                    header_lines = []
                if not line.startswith(b"#close"):
                    header_lines.append(line)
            pos += len(line)
            line_no += 1
            if pos - start >= split_bytes and line.endswith(b"\n"):
                yield ReadTask(path, fmt, start, pos, cut_header, cut_line)
                start, cut_header, cut_line = pos, b"".join(header_lines), line_no
    if pos > start or start == 0:
        yield ReadTask(path, fmt, start, None, cut_header, cut_line)


def read_task(task: ReadTask, max_rejected: int = 100_000) -> ReadResult:
    """Parse one task into a conn table (runs on a worker)."""
    rejected: list[RejectedRecord] = []

    def sink(r: RejectedRecord) -> None:
        if len(rejected) < max_rejected:
            rejected.append(r)

    q = Quarantine(sink=sink)
    if task.fmt == "unknown":
        try:
            detect_format(task.path)
        except ZeekmlError as e:
            return ReadResult(conn_table([]), 0, 0, rejected, e.message)
    parser = make_parser(task.fmt, task.path, q)
    batches, alerts = [], []
    other = n = 0

    def take(got: Iterable) -> None:
        # conn batches kept, the rest counted; Suricata alerts kept for the evidence join
        nonlocal n, other
        for b in got:
            n += b.num_rows
            if is_conn_batch(b):
                batches.append(b)
            else:
                other += b.num_rows
                if b.log_path == ALERT_PATH:
                    alerts.append(b.batch)

    try:
        if task.header:
            parser.feed(task.header)
            parser.offset, parser.line_no = task.start, task.first_line
        with open_binary(task.path) as f:
            if task.start:
                f.seek(task.start)
            remaining = None if task.end is None else task.end - task.start
            while remaining is None or remaining > 0:
                data = f.read(4 << 20 if remaining is None else min(4 << 20, remaining))
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                take(parser.feed(data))
            take(parser.finish())
    except (OSError, EOFError, ValueError) as e:
        err = UnreadableInput(f"archive ends early or is damaged ({e})", task.path)
        return ReadResult(conn_table(batches), n, other, rejected, err.message, alerts)
    return ReadResult(conn_table(batches), n, other, rejected, alerts=alerts)


@dataclass(frozen=True)
class DaskAccess:
    """How ``--dask`` may reach a scheduler other than ``local`` (see ``dask_access``).

    Args:
        security_file: Dask configuration YAML with the ``distributed.comm.tls`` keys (CA,
            client certificate and key) for a ``tls://`` scheduler (default None).
        insecure: allow plain ``tcp://`` to a scheduler that is not on this host (default
            False).
    """

    security_file: str | None = None
    insecure: bool = False


_ACCESS: contextvars.ContextVar[DaskAccess] = contextvars.ContextVar(
    "zeekml_dask_access", default=DaskAccess())  # noqa: B039 (frozen: immutable)


@contextlib.contextmanager
def dask_access(spec: str, security_file: str | None = None,
                insecure: bool = False) -> Iterator[None]:
    """Checks ``spec`` with these access settings now (a wrong combination is a one-line
    ``ZeekmlError`` before any work) and makes them the settings of every ``dask_client``
    opened inside. Without it, ``dask_client`` uses the defaults: ``tls://`` with Dask's own
    configuration, plain ``tcp://`` only to this host."""
    access = DaskAccess(security_file, insecure)
    _security_for(spec, access)
    token = _ACCESS.set(access)
    try:
        yield
    finally:
        _ACCESS.reset(token)


def _is_local_spec(spec: str) -> bool:
    return spec == "local" or spec.startswith("local:")


def _split_address(spec: str) -> tuple[str, str]:
    """``(scheme, host)`` of a scheduler address (no scheme: Dask's default, tcp)."""
    scheme, sep, rest = spec.partition("://")
    if not sep:
        scheme, rest = "tcp", spec
    if rest.startswith("["):                       # [v6 address]:port
        host = rest[1:].split("]", 1)[0]
    elif rest.count(":") == 1:                     # host:port
        host = rest.split(":", 1)[0]
    else:                                          # a host alone, or a bare v6 address
        host = rest
    return scheme.lower(), host


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _security_for(spec: str, access: DaskAccess):
    """The ``distributed.security.Security`` to reach scheduler ``spec`` with, None for plain
    ``tcp://``; a ``ZeekmlError`` for what we refuse (module docstring of ``dask_access``)."""
    import dask
    from distributed.security import Security

    if _is_local_spec(spec):
        if access.security_file or access.insecure:
            raise ZeekmlError("--dask-security and --insecure-dask are for a remote scheduler; "
                              "--dask local always uses TLS with credentials made for the run")
        return None
    scheme, host = _split_address(spec)
    if scheme == "tls":
        if access.insecure:
            raise ZeekmlError(f"--dask {spec}: --insecure-dask is for a tcp:// address")
        overrides = _read_security_file(access.security_file) if access.security_file else {}
        with dask.config.set(overrides):
            security = Security()
        if not security.tls_ca_file or not security.tls_client_cert:
            raise ZeekmlError(f"--dask {spec}: a tls:// scheduler needs --dask-security FILE "
                              "(Dask's distributed.comm.tls settings: ca-file, client cert "
                              "and key)", access.security_file)
        try:
            security.get_connection_args("client")   # reads the CA, certificate and key now
        except (OSError, ssl.SSLError, ValueError) as e:
            raise ZeekmlError(f"--dask-security: cannot load the TLS files ({e})",
                              access.security_file) from e
        return security
    if scheme != "tcp":
        raise ZeekmlError(f"--dask {spec}: only local, local:N, tls://HOST:PORT and "
                          "tcp://HOST:PORT are supported")
    if access.security_file:
        raise ZeekmlError(f"--dask {spec}: --dask-security needs a tls:// address")
    if not _is_loopback(host) and not access.insecure:
        raise ZeekmlError(f"--dask {spec}: plain tcp:// to another host is unauthenticated and "
                          "lets anyone on the network run code as zeekml's user; use tls:// "
                          "with --dask-security FILE, or --insecure-dask on a network you trust")
    return None


def _read_security_file(path: str) -> dict:
    """A Dask configuration YAML: a mapping, with at least ``distributed.comm.tls``."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise ZeekmlError(f"cannot read: {e.strerror}", path) from e
    except yaml.YAMLError as e:
        raise ZeekmlError(f"not valid YAML ({str(e).splitlines()[0]})", path) from e
    tls = doc.get("distributed", {}).get("comm", {}).get("tls") \
        if isinstance(doc, dict) and isinstance(doc.get("distributed"), dict) \
        and isinstance(doc["distributed"].get("comm"), dict) else None
    if not isinstance(tls, dict):
        raise ZeekmlError("not a Dask security configuration: no distributed.comm.tls "
                          "section (ca-file, client: {cert, key})", path)
    return dict(_leaves(doc))


def _leaves(doc: dict, prefix: str = ""):
    """``("a.b.c", value)`` for each leaf of a nested mapping: ``dask.config.set`` with a nested
    mapping would replace whole sections (and Dask's defaults in them), leaves only set keys."""
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, name + ".")
        else:
            yield name, value


@contextlib.contextmanager
def dask_client(spec: str) -> Iterator["object"]:
    """``local`` / ``local:N`` starts a LocalCluster of N single-threaded worker processes,
    reachable only with TLS credentials made for this run and listening on 127.0.0.1 only
    (dashboard off); anything else is a scheduler address, ``tls://host:8786`` (with the
    ``dask_access`` security file) or ``tcp://`` (to another host only with ``insecure``)."""
    import dask
    from dask.distributed import Client, LocalCluster
    from distributed.security import Security

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                 "distributed.worker", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if _is_local_spec(spec):
        try:
            n = int(spec.split(":", 1)[1]) if ":" in spec else (os.cpu_count() or 1)
        except ValueError:
            raise ZeekmlError(f"--dask {spec}: N in local:N must be a number") from None
        if n < 1:
            raise ZeekmlError(f"--dask {spec}: need at least one worker")
        _security_for(spec, _ACCESS.get())
        # A worker process that dies mid-task (OOM killer, a crash in native code) is restarted by
        # its nanny, and the scheduler hands its tasks to live workers, counting the death
        # against every task assigned to that worker; past ``allowed-failures`` deaths a task
        # fails with KilledWorker. Two settings, read by the scheduler when it starts (a remote
        # scheduler keeps its own):
        # - allowed-failures = TASK_RETRIES (Dask: 3): a death costs a task what an exception
        #   does, so a task that crashes its worker every time takes down three workers, not four;
        # - worker-saturation = 1.0 (Dask: 1.1): a worker is given only the read task it runs,
        #   none queued behind it, so tasks that merely waited there are not blamed for a death
        #   (with 1.1 and two workers, a task queued beside a crashing one failed with it).
        # Access: any local user can connect to a port on 127.0.0.1, and a Dask client can run
        # code on the scheduler and workers. So every endpoint speaks TLS with a key and
        # certificate made for this run (held in memory, handed to the worker processes by
        # their nannies): a client without them is refused in the handshake. Everything
        # listens on 127.0.0.1; the dashboard is off and the HTTP servers Dask still starts
        # (scheduler, workers) serve only /health.
        security = Security.temporary()
        with dask.config.set({"distributed.scheduler.allowed-failures": TASK_RETRIES,
                              "distributed.scheduler.worker-saturation": 1.0,
                              "distributed.scheduler.http.routes": ["distributed.http.health"],
                              "distributed.worker.http.routes": ["distributed.http.health"]}), \
                LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                             protocol="tls://", host="127.0.0.1", security=security,
                             dashboard_address=None, worker_dashboard_address=None,
                             scheduler_kwargs={"dashboard": False,
                                               "dashboard_address": "127.0.0.1:0"},
                             silence_logs=logging.ERROR) as cluster, \
                Client(cluster, security=security) as client, _one_line_logs():
            client.register_plugin(_OneLineWorkerLogs(), name="zeekml-one-line-logs")
            yield client
            # A worker that its nanny is still restarting (after a crash) when the cluster closes
            # can die inside Dask's own shutdown ("ConnectionPool is closed") and print a
            # traceback on our stderr: let restarts finish first. Only the order of shutdown
            # depends on it, so a timeout here just closes as before.
            with contextlib.suppress(TimeoutError, OSError):
                client.wait_for_workers(n, timeout=10)
    else:
        security = _security_for(spec, _ACCESS.get())
        try:
            client = Client(spec, timeout=30, security=security)
        except (OSError, ssl.SSLError) as e:
            raise ZeekmlError(f"cannot reach the Dask scheduler at {spec}: {e}") from e
        with client, _one_line_logs():
            yield client


class _NoTraceback(logging.Filter):
    """Keeps a log record's message and drops its traceback. Dask logs the failures it recovers
    from (a worker died while another fetched data from it) at ERROR with a traceback; the run's
    summary says what was retried and what failed, so each such event stays one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


@contextlib.contextmanager
def _one_line_logs() -> Iterator[None]:
    """``_NoTraceback`` on the handlers of Dask's ``distributed`` logger in this process."""
    handlers = logging.getLogger("distributed").handlers
    f = _NoTraceback()
    for h in handlers:
        h.addFilter(f)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(f)


class _OneLineWorkerLogs(WorkerPlugin):
    """``_NoTraceback`` in the worker processes of ``--dask local:N`` (restarted ones too)."""

    def setup(self, worker) -> None:
        for h in logging.getLogger("distributed").handlers:
            if not any(isinstance(f, _NoTraceback) for f in h.filters):
                h.addFilter(_NoTraceback())


def _ts_of(result: ReadResult) -> np.ndarray:
    return ts_sort_key(result.table)


def _given(value):
    return value


def _alerts_of(result: ReadResult) -> list[pa.RecordBatch]:
    return result.alerts or []


def _take(result: ReadResult, rows: np.ndarray) -> pa.Table:
    return result.table.take(pa.array(rows, pa.int64()))


def _feedback_rows_of(result: ReadResult, uids: set[str]) -> np.ndarray:
    return feedback_rows(result.table, uids)


def _gather_rows(client, results: list, bounds: np.ndarray, rows: np.ndarray) -> list[pa.Table]:
    """The rows ``rows`` (sorted, numbered across ``results`` in order: ``bounds`` are where each
    result's rows start) as tables, one per result holding some, in order."""
    pieces = []
    for i, r in enumerate(results):
        local = rows[(rows >= bounds[i]) & (rows < bounds[i + 1])] - bounds[i]
        if len(local):
            pieces.append(client.submit(_take, r, local))
    return client.gather(pieces) if pieces else []


def score_task(result: ReadResult, fitted: FittedDetectors, before: list | None = None,
               after: list | None = None, alerts: SuricataAlerts | None = None,
               with_alerts: bool = True, allowlist: Allowlist | None = None
               ) -> tuple[bytes, int, Counter, list[Verdict], TriagePart]:
    """Verdicts for the rows of ``result`` (runs on a worker), rendered as ``verdicts.jsonl``
    lines, with the alerting verdicts as objects and what the incidents need of the task
    (``chunked.TriagePart``: its alerting rows, each conn's hosts and ts, compactly): only text
    and small arrays travel back to the driver. ``before``/``after`` are context rows (in global
    order) that detectors with a time context see but that get no verdict here. ``alerts``:
    every task's Suricata alerts, joined onto this task's conns (``scoring.evidence``).
    ``with_alerts=False``: the alerts counted by note only, no verdict objects. ``allowlist``
    (``--allowlist``): matching conns never alert and their lines name the rule, as in one
    process (``scoring.allowlist.suppress``)."""
    batch = score_in_context(result.table, fitted, before, after)
    attach_suricata_alerts(batch, alerts)
    suppressed = suppress(batch, allowlist) if allowlist is not None else {}
    rendered = render_verdicts(batch, alerts=with_alerts)
    mark_suppressed(rendered.lines, suppressed)
    return (rendered.data(), len(rendered), rendered.notes, [v for _, v in rendered.alerts],
            triage_part(batch))


def neighbour_tasks(ts_parts: list[np.ndarray], i: int, back: float,
                    fwd: float) -> tuple[float, float, list[int], list[int]] | None:
    """The context of task ``i`` (``ts_parts``: each task's ``ts``, NaN where unset): the time
    range ``(lo, hi)`` from ``back`` seconds before its earliest conn to ``fwd`` after its latest,
    and the other tasks with a conn in it, those before ``i`` and those after. None when nothing
    around a conn counts (``back`` and ``fwd`` 0) or the task has no set ``ts``."""
    window = context_window(ts_parts[i], back, fwd)
    if window is None:
        return None
    lo, hi = window
    near = [j for j, t in enumerate(ts_parts) if j != i and np.any((t >= lo) & (t <= hi))]
    return lo, hi, [j for j in near if j < i], [j for j in near if j > i]


def _take_range(result: ReadResult, lo: float, hi: float) -> pa.Table:
    return take_ts_range(result.table, lo, hi)


def _meta(result: ReadResult) -> tuple[int, int, int, list[RejectedRecord], str | None]:
    return result.records_read, result.other_records, result.table.num_rows, result.rejected, result.error


def task_name(task: ReadTask) -> str:
    """``whole file``, ``bytes 0-65536`` or ``bytes 65536-EOF``: the part of ``task.path`` a task reads."""
    if task.start == 0 and task.end is None:
        return "whole file"
    return f"bytes {task.start}-{'EOF' if task.end is None else task.end}"


def _attempts(client, futures: list) -> list[int]:
    """How many times the scheduler ran each future's task: once, plus once per worker that died
    while the task was assigned to it, plus once per retry after it raised."""
    def query(dask_scheduler, keys):  # nested, so it pickles by value: no zeekml needed there
        out = []
        for k in keys:
            ts = dask_scheduler.tasks.get(k)
            out.append(None if ts is None else (ts.suspicious, ts.retries))
        return out

    try:
        got = client.run_on_scheduler(query, keys=[f.key for f in futures])
    except Exception as e:  # noqa: BLE001 - a scheduler may refuse pickled functions; only a report
        log.warning("cannot ask the Dask scheduler how often tasks ran: %s", e)
        return [1] * len(futures)
    return [1 if g is None else 1 + g[0] + max(0, TASK_RETRIES - g[1]) for g in got]


def _outcome(fut, task: ReadTask) -> tuple[object, BaseException | None]:
    """``(result, None)``, or ``(None, exception)`` when the task failed for good."""
    from distributed.client import CancelledError

    try:
        return fut.result(), None
    except CancelledError as e:
        raise ZeekmlError(f"the Dask scheduler cancelled the task for {task.path} "
                          f"({task_name(task)}): {e}") from e
    except Exception as e:  # noqa: BLE001 - whatever a task raised on its worker is reported
        return None, e


def _failure(e: BaseException, attempts: int) -> str:
    from distributed import KilledWorker

    if isinstance(e, KilledWorker):
        return f"its worker died each time it ran ({e.allowed_failures + 1} attempts)"
    return f"{type(e).__name__}: {e} ({attempts} attempts)"


class _TaskReport:
    """Collects what happened to the tasks into the summary: retried tasks
    (``summary.tasks_retried``), and tasks that failed for good (``summary.files_failed``,
    their file and byte range in the message)."""

    def __init__(self, client, summary) -> None:
        self.client, self.summary = client, summary
        self.failed_files: set[str] = set()

    def check(self, step: str, tasks: list[ReadTask], futures: list) -> None:
        for task, n in zip(tasks, _attempts(self.client, futures)):
            if n > 1:
                log.warning("%s (%s): %s step ran %d times", task.path, task_name(task), step, n)
                self.summary.tasks_retried.append({"path": task.path, "start": task.start,
                                                   "end": task.end, "step": step, "attempts": n})

    def failed(self, step: str, task: ReadTask, fut, e: BaseException) -> None:
        n = _attempts(self.client, [fut])[0]
        self.summary.files_failed.append(
            (task.path, f"{task_name(task)}: {step} task failed: {_failure(e, n)}"))
        self.failed_files.add(task.path)


FitExtraFn = Callable[[np.ndarray, Callable[[np.ndarray], pa.Table], "pa.Table | None", "np.ndarray | None"],
                      pa.Table]
"""``fit_extra(rows, take, baseline, chosen)`` of ``score_tasks_dask``."""


def score_tasks_dask(tasks: list[ReadTask], spec: str, options: ScoreOptions,
                     summary: ScoreSummary, quarantine: Quarantine,
                     baseline_table: pa.Table | None, emit: EmitFn,
                     on_triage: Callable[[TriagePart], None] | None = None,
                     with_alerts: bool = True, benign: set[str] | None = None,
                     fit_extra: FitExtraFn | None = None, allowlist: Allowlist | None = None) -> pa.Table:
    """Run the four steps of the module docstring; ``emit(lines, n, notes, alerts)`` and
    ``on_triage(part)`` (what the incidents need of each task) are called in task order.
    ``with_alerts=False``: the workers send no alerting verdicts as objects (``alerts`` is
    empty; an archive that is mostly malware alerts on most of its conns).
    ``benign``: the uids of ``zeekml feedback``'s benign conns (``--feedback``): the workers
    find them in their tables, and ``fit_extra(rows, take, baseline, chosen)`` (the
    single-process run's choice, ``pipeline.batch``) gives those that join the fitting side,
    from their row numbers across the tasks, a reader of those rows, the ``--baseline``
    table (None: drawn from the input) and the drawn baseline rows (None: given).
    ``allowlist``: applied by each task to its verdicts (``score_task``).
    Returns the baseline table fitted on. A task that fails for good (``TASK_RETRIES``) is
    reported in ``summary.files_failed`` with its byte range and the rest goes on; retried
    tasks are listed in ``summary.tasks_retried``."""
    with dask_client(spec) as client:
        report = _TaskReport(client, summary)
        results = [client.submit(read_task, t, retries=TASK_RETRIES, pure=False) for t in tasks]
        meta_futs = [client.submit(_meta, r, retries=TASK_RETRIES) for r in results]
        ok, ok_tasks, read = [], [], []
        seen_files: set[str] = set()
        failed_files = report.failed_files
        for task, fut, meta_fut in zip(tasks, results, meta_futs):
            meta, exc = _outcome(meta_fut, task)
            if exc is not None:
                report.failed("read", task, fut, exc)
                continue
            read.append((task, fut))
            n, other, conns, rejected, error = meta
            for r in rejected:
                quarantine.reject(r.path, r.line, r.offset, r.reason, r.sample)
            summary.records_read += n
            summary.other_records += other
            summary.conn_records += conns
            if error:
                if task.path not in failed_files:
                    summary.files_failed.append((task.path, error))
                    failed_files.add(task.path)
            if conns or not error:
                ok.append(fut)
                ok_tasks.append(task)
            if not error:
                seen_files.add(task.path)
        report.check("read", [t for t, _ in read], [f for _, f in read])
        summary.files = len(seen_files - failed_files)
        if summary.files == 0 and not ok:
            raise ZeekmlError("no input file could be read: " +
                              "; ".join(f"{p}: {m}" for p, m in summary.files_failed))
        ts_parts = client.gather([client.submit(_ts_of, r) for r in ok])
        bounds = np.cumsum([0] + [len(t) for t in ts_parts])
        given = baseline_table
        chosen = None
        if baseline_table is None:
            all_ts = np.concatenate(ts_parts) if ts_parts else np.zeros(0)
            chosen = options.baseline_rows(all_ts)
            pieces = _gather_rows(client, ok, bounds, chosen)
            baseline_table = pa.concat_tables(pieces) if pieces else conn_table([])
        extra = None
        if benign is not None and fit_extra is not None:
            local = client.gather([client.submit(_feedback_rows_of, r, benign) for r in ok])
            fb = np.concatenate([rows + bounds[i] for i, rows in enumerate(local)]
                                or [np.zeros(0, dtype=np.int64)]).astype(np.int64)

            def take(rows: np.ndarray) -> pa.Table:
                parts = _gather_rows(client, ok, bounds, np.asarray(rows, dtype=np.int64))
                return pa.concat_tables(parts) if parts else conn_table([])

            extra = fit_extra(fb, take, given, chosen)
        summary.baseline_records = baseline_table.num_rows + (extra.num_rows if extra is not None else 0)
        fitted = fit_calibrate(baseline_table, options, summary, fit_extra=extra)
        # A task's result, not client.scatter(): scattered data has no recipe, so once every
        # worker holding it has died it is gone and every task that needs it is cancelled; a
        # task's result is computed again. Each worker fetches it once and keeps it.
        fitted_f = client.submit(_given, fitted, pure=False)
        # every task's Suricata alerts, for every task: a flow and its alerts may be read by
        # different tasks (made rows here, so workers only read them)
        alerts = SuricataAlerts()
        for part in client.gather([client.submit(_alerts_of, r) for r in ok]):
            alerts.extend(part)
        alerts.rows()
        alerts_f = client.submit(_given, alerts if len(alerts) else None, pure=False)
        allow_f = client.submit(_given, allowlist, pure=False) if allowlist is not None else None
        # back and forward apart, as the chunks take them (``chunked.context_rows``): the causal
        # MoE reaches 5 h back and nothing forward, so a task need not gather 5 h of later conns
        # (measured on the bench logs: no speed change, bench/README.md)
        back, fwd = horizons(fitted)
        scored = []
        for i, r in enumerate(ok):
            before, after = [], []
            near = neighbour_tasks(ts_parts, i, back, fwd)
            if near is not None:
                lo, hi, earlier, later = near
                before = [client.submit(_take_range, ok[j], lo, hi) for j in earlier]
                after = [client.submit(_take_range, ok[j], lo, hi) for j in later]
            scored.append(client.submit(score_task, r, fitted_f, before, after, alerts_f,
                                        with_alerts, allow_f, retries=TASK_RETRIES))
        for task, fut in zip(ok_tasks, scored):  # in task order: the outputs equal a single-process run's
            out, exc = _outcome(fut, task)
            if exc is not None:
                report.failed("score", task, fut, exc)
            else:
                report.check("score", [task], [fut])
                emit(*out[:4])
                if on_triage is not None:
                    on_triage(out[4])
            fut.release()
        summary.files = len(seen_files - failed_files)
    return baseline_table
