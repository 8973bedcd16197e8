"""Wires the layers together for ``serve``: configuration, storage, the SCP
service, the network (plain and TLS listeners), and SIGHUP reloads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import duckdb

from .access import AccessPolicy, AssociationLimiter, resolve_host
from .catalog import CatalogWriter, IndexRootMismatch, filtersave
from .catalog.known import IndexConfirm, count_instances
from .catalog.root import bind_root
from .catalog.startup import IndexStartup
from .config import Config, ConfigError, load_config
from .events import AssociationEnded, DuplicateReceived, InstanceStored, Observer
from .instance import InstanceInfo
from .memtrim import release_clean_pages
from .monitor.logsetup import configure_logging
from .monitor.service import MonitorService
from .net.server import DicomServer, raise_open_files_limit, serve_forever, stop_on_signals
from .net.tls import client_ssl_context
from .pipeline.service import Pipeline, PipelineSettings
from .protocol.commands import CFindRequest, CGetRequest, CMoveRequest, NActionRequest
from .protocol.negotiation import VERIFICATION, AcceptPolicy
from .services import registry
from .services.commitment import CommitmentService
from .services.dispatcher import Dispatcher
from .services.session import RemoteAE, ServerState, ServiceModule
from .storage.duplicates import IndexedInstances
from .storage.durability import WRITEBACK_FILESYSTEMS, GroupCommitter
from .storage.naming import make_naming
from .storage.store import INCOMING, LOCK_FILE, Storage, StorageInUse, lock_directory
from .storage.uidfilter import UidFilter

log = logging.getLogger("fastscp")


def accept_policy(cfg: Config, services: Mapping[type, ServiceModule] | None = None) -> AcceptPolicy:
    """Negotiation policy: the configured storage SOP classes and Verification,
    the configured transfer syntaxes; optionally SOP classes nobody knows;
    the SOP classes of the registered ``services``, with the FIND classes'
    extended negotiation (relational queries) answered. With C-GET served, a
    requestor may take the SCP role for the storage SOP classes (PS3.7
    D.3.3.4: C-GET's sub-operations are C-STOREs to it)."""
    storage = cfg.sop_class_uids()
    extra = frozenset().union(*(m.sop_classes for m in (services or {}).values()))
    accepted = storage | {VERIFICATION} | extra
    extended = dict.fromkeys(registry.FIND_SOP_CLASSES & extra, registry.answer_relational)
    storage_ok: Callable[[str], bool] = storage.__contains__
    ok: Callable[[str], bool] = accepted.__contains__
    if cfg.accept_unknown_sop_classes:
        from pydicom._uid_dict import UID_dictionary

        def ok(uid: str) -> bool:
            return uid in accepted or uid not in UID_dictionary

        def storage_ok(uid: str) -> bool:
            return uid in storage or uid not in UID_dictionary

    policy = AcceptPolicy(abstract_syntax_ok=ok, transfer_syntaxes=cfg.transfer_syntax_uids(), extended=extended)
    if services and CGetRequest in services:
        policy = dataclasses.replace(policy, scp_role_ok=storage_ok)
    return policy


def build_storage(cfg: Config) -> Storage:
    s = cfg.storage
    options: dict[str, Any] = {}
    if s.naming == "template":
        options["pattern"] = s.template
    elif s.naming == "physician":
        options["accounts_root"] = s.accounts_root or s.directory
        if s.accounts:
            options["accounts"] = list(s.accounts)
    naming = make_naming(s.naming, **options)
    return Storage(s.directory, naming=naming, min_free_space=s.min_free_space, duplicates=s.duplicates,
                   durable=s.durability == "fsync", max_incoming=s.max_incoming)


def access_policy(cfg: Config, resolve: Callable[[str], Iterable[str]] = resolve_host) -> AccessPolicy:
    """The called-AE check and calling-AE whitelist as configured."""
    return AccessPolicy(
        cfg.server.ae_title,
        check_called_ae=cfg.server.check_called_ae,
        called_ae_comparison=cfg.server.called_ae_comparison,
        allowed=[(e.ae_title, e.hosts) for e in cfg.access.allowed_calling_aes],
        calling_ae_comparison=cfg.access.calling_ae_comparison,
        resolve=resolve,
    )


def association_limits(cfg: Config) -> tuple[int, int | None, int]:
    """(max_total, max_per_ae, reserved_for_new) as configured; a per-AE
    share left null is half the total (at least 1)."""
    s = cfg.server
    per_ae = s.max_associations_per_ae
    if per_ae is None:
        per_ae = max(1, s.max_associations // 2)
    return s.max_associations, per_ae, s.reserved_for_new_ae


def load_access_policy(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None,
                       resolve: Callable[[str], Iterable[str]] = resolve_host) -> AccessPolicy:
    """Reload helper (SIGHUP): read the configuration again and build a new
    policy. Raises ConfigError; on error keep the policy you have."""
    return access_policy(load_config(path, overrides), resolve)


def service_modules(cfg: Config) -> dict[type, ServiceModule]:
    """The service modules beyond Verification and Storage, by request type:
    Storage Commitment (it checks the tree itself), and C-FIND, C-MOVE and
    C-GET (services/registry.py: served only with an index, each module
    loaded at its first request). Associations we open to a ``remote_aes``
    entry with ``tls`` use server.tls's CA bundle (the system store without
    one) to verify the peer, and its certificate and key as ours."""
    tls = cfg.server.tls
    tls_context = functools.partial(client_ssl_context, tls.ca_bundle, tls.certificate, tls.key)
    modules = registry.modules(bool(cfg.database.path), tls_context, cfg.server.dimse_timeout,
                               cfg.query_retrieve.max_find_matches, cfg.query_retrieve.max_retrieve_instances,
                               cfg.query_retrieve.pending_interval)
    modules[NActionRequest] = CommitmentService(tls_context, answer_wait=cfg.server.idle_timeout or 0.0)
    return modules


def build_state(cfg: Config) -> ServerState:
    storage = build_storage(cfg)
    storage.sweep_incoming()
    services = service_modules(cfg)
    return ServerState(
        ae_title=cfg.server.ae_title,
        storage=storage,
        policy=accept_policy(cfg, services),
        services=services,
        access=access_policy(cfg),
        limiter=AssociationLimiter(*association_limits(cfg)),
        max_pdu=cfg.server.max_pdu,
        max_instance_size=cfg.storage.max_instance_size,
        remote_aes={r.ae_title: RemoteAE(r.ae_title, r.host, r.port, r.tls) for r in cfg.remote_aes},
    )


class CatalogFeed(Observer):
    """Queues every stored instance and every ended association for the
    DuckDB writer thread. Never waits for the database: when the writer's
    queue passes its high-water mark, every connection stops reading until
    the writer catches up (backpressure reaches the senders through TCP)."""

    def __init__(self, writer: CatalogWriter, server: DicomServer) -> None:
        self.writer = writer
        self.server = server
        self.paused = False

    def instance_stored(self, event: InstanceStored) -> None:
        self._queued(self.writer.enqueue(event.info))

    def duplicate_received(self, event: DuplicateReceived) -> None:
        self._queued(self.writer.record_duplicate(event.info))

    def _queued(self, below_high_water: bool) -> None:
        if not below_high_water and not self.paused:
            self.paused = True
            log.warning("index writer behind (%d rows queued): pausing reception", self.writer.queue_depth)
            self.server.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            log.info("index writer caught up: resuming reception")
            self.server.resume_reading()

    def association_ended(self, event: AssociationEnded) -> None:
        a, c = event.assoc, event.counts
        self.writer.record_association(a.association_id, a.peer, a.calling_ae, a.called_ae, a.started_at,
                                       event.ended_at, c.stored, c.bytes, event.outcome.value)


def open_catalog(cfg: Config, state: ServerState) -> CatalogWriter | None:
    """Open the index (schema migration), check that it describes the storage
    tree, size the duplicate check's filter from its row count, and start
    the writer thread. None when no index is configured. The filter is
    filled and the tree reconciled after the port opened (``IndexStartup``):
    nothing here grows with the archive."""
    db = cfg.database
    if not db.path:
        return None
    storage = state.storage
    writer: CatalogWriter | None = None
    try:
        kept = filtersave.take(db.path)  # before the open: it must find the file as the last stop left it
        writer = CatalogWriter(db.path, batch_size=db.batch_size, flush_interval=db.flush_interval,
                               flush_quiet=db.flush_quiet, quiet_checkpoint=db.quiet_checkpoint,
                               memory_limit=db.memory_limit)
        conn = writer.cursor()
        try:
            bind_root(conn, storage.directory, db_name=str(db.path))
            rows = count_instances(conn)
        finally:
            conn.close()
        if kept is not None and not filtersave.fits(kept, rows):
            log.info("duplicate check filter kept by the last stop (%d UIDs, room for %d) does not fit an index of "
                     "%d instances: filling a new one", kept.added, kept.capacity, rows)
            kept = None
        confirm = IndexConfirm(writer.cursor, storage.directory)
        known = IndexedInstances(storage.directory, kept or UidFilter.for_rows(rows), confirm, confirm.close)
        if kept is not None:
            known.mark_ready()
    except IndexRootMismatch:
        if writer is not None:
            writer.close()
        raise
    except (duckdb.Error, OSError, RuntimeError) as exc:
        if writer is not None:
            writer.close()
        # Storage must not depend on the index: receive without it. Files on
        # disk are indexed by the next start's reconcile (or fastscp reindex).
        state.index_error = f"{type(exc).__name__}: {exc}"
        log.error("index %s unavailable (%s): receiving WITHOUT indexing; the next start or "
                  "`fastscp reindex` will index what arrives meanwhile", db.path, state.index_error)
        return None

    def written(infos: list[InstanceInfo]) -> None:
        known.written([(info.sop_instance_uid, info.path) for info in infos])

    writer.on_written = written
    storage.guard.index = known
    log.info("index %s: %d instances; duplicate check filter of %.1f MB, %s", db.path, rows,
             known.filter.nbytes / 1e6, "kept by the last clean stop" if kept is not None
             else "filled after the port opens")
    return writer


def _topmost_missing(path: str) -> str | None:
    """The highest folder of ``path`` (itself included) that does not exist:
    what ``os.makedirs(path)`` would create first. None when it exists."""
    path = os.path.abspath(path)
    top = None
    while not os.path.lexists(path):
        top = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return top


@dataclasses.dataclass(frozen=True)
class StartFootprint:
    """What a start may create, taken before it touches anything: folders
    that do not exist yet (each removed whole if the start fails: all they
    hold was made by this start, no port being open) and, in folders that do
    exist, the files and folders the start makes there (the index and its
    journal, the lock file, ``.incoming/``). A start that fails removes only
    these, so a folder or an index that was there before is never removed."""

    trees: tuple[str, ...]
    entries: tuple[str, ...]

    @classmethod
    def before_start(cls, cfg: Config) -> StartFootprint:
        storage = os.path.abspath(cfg.storage.directory)
        folders = [storage]
        entries = [os.path.join(storage, LOCK_FILE), os.path.join(storage, INCOMING)]
        if cfg.database.path:
            db = os.path.abspath(cfg.database.path)
            folders.append(os.path.dirname(db))
            entries += [db, db + ".wal"]
        trees: list[str] = []
        for folder in folders:
            top = _topmost_missing(folder)
            if top is not None and not any(top == t or top.startswith(t + os.sep) for t in trees):
                trees = [t for t in trees if not t.startswith(top + os.sep)] + [top]
        inside = tuple(t + os.sep for t in trees)
        return cls(tuple(trees), tuple(e for e in entries if not os.path.lexists(e) and not e.startswith(inside)))

    def remove(self) -> list[str]:
        """Remove what the start made; returns what was removed. A folder in
        ``entries`` goes only when empty."""
        removed: list[str] = []
        for entry in self.entries:
            try:
                if os.path.isdir(entry) and not os.path.islink(entry):
                    os.rmdir(entry)
                else:
                    os.unlink(entry)
            except OSError:
                continue
            removed.append(entry)
        for tree in self.trees:
            if os.path.lexists(tree):
                shutil.rmtree(tree, ignore_errors=True)
                if not os.path.lexists(tree):
                    removed.append(tree)
        return removed


def _remove_created(footprint: StartFootprint) -> None:
    removed = footprint.remove()
    if removed:
        log.info("start-up failed: removed what it had created: %s", ", ".join(removed))


class App:
    def __init__(self, cfg: Config, config_path: str | None, overrides: Mapping[str, Any],
                 footprint: StartFootprint | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = dict(overrides)
        self.footprint = footprint
        # before anything touches the tree (the sweep of .incoming/, the
        # index's reconcile): another receiver may be using it
        self._lock = lock_directory(cfg.storage.directory)
        self.state = build_state(cfg)
        # pipeline (hooks, end of study, scan sheets): observes, never blocks the loop
        self.pipeline = Pipeline(PipelineSettings.from_config(cfg.hooks, self.state.storage.directory))
        if self.pipeline.active:
            self.state.observers.append(self.pipeline)
        s = cfg.server
        self.server = DicomServer(lambda assoc, link: Dispatcher(self.state, assoc, link), s.max_pdu,
                                  s.artim_timeout, s.idle_timeout or 0.0, s.dimse_timeout or 0.0, s.busy_poll_us,
                                  s.min_transfer_rate, s.transfer_rate_window, s.max_unassociated)
        self.catalog = open_catalog(cfg, self.state)
        self.state.catalog = self.catalog  # the query services read through it
        self.index_startup: IndexStartup | None = None  # fills the duplicate filter, reconciles: after listening
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.catalog is None and self.state.services:  # no index to retrieve from: not negotiated
            self.state.services = {t: m for t, m in self.state.services.items()
                                   if t not in (CFindRequest, CMoveRequest, CGetRequest)}
            self.state.policy = accept_policy(cfg, self.state.services)

    async def _close_writers(self, loop: asyncio.AbstractEventLoop) -> tuple[GroupCommitter | None, bool]:
        """Close the group commit and the index writer, off the loop: the
        callbacks of what is still in flight run on it meanwhile, and see no
        committer (so answer no success). Returns the closed committer (None
        without durability) and whether the index writer wrote every row."""
        storage = self.state.storage
        if self.index_startup is not None and not self.index_startup.done.is_set():
            log.info("stopping the index start-up (filter fill, reconcile) before it finished")
            await loop.run_in_executor(None, self.index_startup.stop, 30.0)
        committer, storage.committer = storage.committer, None
        if committer is not None:
            await loop.run_in_executor(None, committer.close)
        all_indexed = True
        if isinstance(storage.guard.index, IndexedInstances):
            storage.guard.index.close()
        if self.catalog is not None:
            all_indexed = await loop.run_in_executor(None, self.catalog.close)
        return committer, all_indexed

    def unlock(self) -> None:
        """Give the storage directory up (``lock_directory``)."""
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def abandon(self) -> None:
        """A start that failed: remove what it created (``StartFootprint``),
        while the storage lock is still held, then give the lock up."""
        if self.footprint is not None:
            _remove_created(self.footprint)
        self.unlock()

    async def start(self) -> list[str]:
        """Listen on the DICOM port(s); raises ListenError (a port in use,
        an address not on this host, a port below 1024 without the right)."""
        s = self.cfg.server
        ctx = None
        if s.tls.enabled:  # before any port is bound: a bad key or certificate binds nothing
            import ssl

            from .net.tls import server_ssl_context

            try:
                ctx = server_ssl_context(s.tls)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ListenError(f"cannot set up TLS from server.tls: {exc}") from exc
        listening = [f"{a[0]}:{a[1]}" for a in await self._listen(s.bind_address, s.port)]
        if ctx is not None:
            listening += [f"{a[0]}:{a[1]} (TLS)" for a in await self._listen(s.bind_address, s.tls.port, ctx)]
        return listening

    async def _listen(self, host: str | None, port: int, ctx: Any = None) -> list[Any]:
        try:
            return await self.server.start(host, port, ctx)
        except OSError as exc:
            where = f"{host or 'every address'} port {port}{' (TLS)' if ctx is not None else ''}"
            if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
                why = exc.strerror or str(exc)  # a name that does not resolve: the resolver's words
            else:
                why = os.strerror(exc.errno)  # asyncio's own text repeats the address
            raise ListenError(f"cannot listen for DICOM on {where}: {why}") from exc

    async def reload(self) -> None:
        """SIGHUP: re-read the access lists and limits; running associations stay."""
        loop = asyncio.get_running_loop()
        try:
            cfg = await loop.run_in_executor(None, load_config, self.config_path, self.overrides)
            access = await loop.run_in_executor(None, access_policy, cfg)
        except ConfigError as exc:
            log.error("reload failed, keeping the running access lists: %s", exc)
            return
        self.state.access = access
        self.state.limiter.set_limits(*association_limits(cfg))
        log.info("reloaded access lists (%d whitelist entries) and limits", len(cfg.access.allowed_calling_aes))

    def request_stop(self) -> None:
        """Stop as SIGTERM does; callable from any thread once ``run`` started."""
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop is closed: run() has ended
                pass

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = stop_on_signals()
        self._loop, self._stop = loop, stop
        storage = self.state.storage
        if storage.durable:
            storage.committer = GroupCommitter(storage.directory, loop,
                                               writeback=storage.filesystem in WRITEBACK_FILESYSTEMS)
        if self.catalog is not None:
            feed = CatalogFeed(self.catalog, self.server)

            def resume_from_writer_thread() -> None:
                loop.call_soon_threadsafe(feed.resume)

            self.catalog.on_resume = resume_from_writer_thread
            self.state.observers.append(feed)
        storage = self.state.storage
        monitor = MonitorService(self.cfg, self.state, storage.directory, storage.min_free_space,
                                 self.state.observers, self.catalog,
                                 self.server.tls_refusals.counts if self.cfg.server.tls.enabled else None)
        # no instance of this run was received before this: rows and files
        # at or after it are the receiver's, not reconcile's to judge
        since = time.time()
        try:
            listening = await self.start()
        except ListenError as exc:
            log.error("%s; not started", exc)
            await self.server.shutdown(0)  # a port opened before the one that failed
            await self._close_writers(loop)
            self.abandon()
            raise
        known = storage.guard.index
        if self.catalog is not None and isinstance(known, IndexedInstances):
            def started_up() -> None:  # on the start-up thread
                try:
                    loop.call_soon_threadsafe(release_start_up_pages, "index start-up done")
                except RuntimeError:  # the loop has closed: the receiver is stopping
                    pass

            self.index_startup = IndexStartup(
                self.catalog, known, storage.directory, since, str(self.cfg.database.path),
                on_done=started_up if self.cfg.server.release_start_up_pages else None)
            self.index_startup.start()
        await monitor.start(listening)
        if self.pipeline.active:
            self.pipeline.start()  # also resumes work kept by the last clean stop
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        except (NotImplementedError, RuntimeError, AttributeError):
            pass
        cfg = self.cfg

        # Start-up left hundreds of thousands of long-lived objects (pydicom and
        # pynetdicom dictionaries): move them out of the
        # cyclic collector's reach, and collect young objects less often. The
        # receive path makes little cyclic garbage (reference counting frees
        # it), yet full collections over those objects took more than half of
        # the receiver's CPU in a flood of 0.5 MB images.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        # The index writer and pipeline threads want the GIL in bursts; with
        # the default 5 ms switch interval the event loop, woken by a sender,
        # waited up to 5 ms for it. 0.5 ms: the bursts run while the sender
        # prepares its next instance (measured: small-image flood 10% faster).
        sys.setswitchinterval(0.0005)

        def ready() -> None:
            log.info("storage filesystem %s%s", storage.filesystem or "unknown",
                     "" if storage.committer is None else ", durability fsync: " + (
                         "data written out, then one sync" if storage.committer.writeback
                         else "fdatasync, then one sync"))
            log.info("fastscp listening on %s as %s, storing into %s (naming %s, max PDU %d, max associations %d)",
                     ", ".join(listening), cfg.server.ae_title, self.state.storage.directory, cfg.storage.naming,
                     cfg.server.max_pdu, cfg.server.max_associations)
            if cfg.server.release_start_up_pages:
                release_start_up_pages("listening")

        await serve_forever(self.server, cfg.server.shutdown_grace, ready, stop)
        await monitor.stop()
        if self.pipeline.active:  # pending hooks run now, or are kept for the next start
            await loop.run_in_executor(None, self.pipeline.close, cfg.server.shutdown_grace)
        c, all_indexed = await self._close_writers(loop)
        if c is not None:
            log.info("group commit: %d instances in %d syncs, %d files written out "
                     "(%d on the event loop: one association open)", c.instances, c.syncs, c.written, c.inline)
        if not all_indexed:
            log.error("index writer could not write every row; `fastscp reindex` will add them")
        if self.catalog is not None and isinstance(known, IndexedInstances) and known.ready:
            # the filter holds every UID of the closed index: the next start reads it instead of filling it
            filtersave.save(self.catalog.db_path, known.filter)
        gc.unfreeze()  # let interpreter shutdown finalize what start-up made
        self.unlock()
        st = self.state
        log.info("stopped: %d association(s), %d instance(s), %.1f MB received",
                 st.associations_total, st.instances_total, st.bytes_total / 1e6)


def release_start_up_pages(when: str) -> None:
    """Start-up's clean library pages out of the resident set (memtrim.py):
    once listening, and again when the index's start-up thread (filter fill,
    reconcile) has ended."""
    regions, kib = release_clean_pages()
    log.debug("%s: released %.1f MB of clean file pages in %d mappings", when, kib / 1024, regions)


class StartError(Exception):
    """The receiver could not start; the message says why."""


class ListenError(StartError):
    """The receiver could not listen on its port(s): nothing was started."""


def run_blocking(config_path: str | None, overrides: Mapping[str, Any]) -> None:
    """Load the configuration (errors before anything binds) and serve."""
    cfg = load_config(config_path, overrides)
    lg = cfg.logging
    logging_handle = configure_logging(lg.level, lg.format, lg.file, lg.max_bytes, lg.backup_count)
    log.info("configuration: %s", os.path.abspath(config_path) if config_path else "built-in defaults")
    before, after = raise_open_files_limit()
    if after != before:
        log.info("open files limit raised from %d to %d", before, after)
    try:
        footprint = StartFootprint.before_start(cfg)
        try:
            app = App(cfg, config_path, overrides, footprint)
        except IndexRootMismatch as exc:
            # the storage folder (or the lock file in it) this start made is removed
            log.error("%s; not started", exc)
            _remove_created(footprint)
            raise StartError(str(exc)) from None
        except StorageInUse as exc:
            log.error("%s; not started", exc)
            raise StartError(str(exc)) from None
        except OSError as exc:  # the storage directory cannot be made or opened, say
            why = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
            log.error("cannot start: %s; not started", why)
            _remove_created(footprint)  # what makedirs made before it failed, say
            raise StartError(why) from None
        except BaseException:
            # a lock App took is held till the process ends: nobody else can
            # start on what is removed meanwhile
            _remove_created(footprint)
            raise
        try:
            import uvloop
        except ImportError:
            asyncio.run(app.run())
        else:
            uvloop.run(app.run())
    finally:
        logging_handle.stop()


__all__ = [
    "App", "ListenError", "StartError", "StartFootprint", "accept_policy", "access_policy", "association_limits",
    "build_state", "load_access_policy",
    "run_blocking",
]
