"""The only socket code: an asyncio server of DICOM associations.

Each connection is a ``BufferedProtocol``: the loop reads straight into the
association's framer buffer, ``buffer_updated`` feeds the sans-I/O machine,
hands its events to the service handler, and writes what it has to send in
one ``transport.write`` (TCP_NODELAY is set, so a response is never held
back by Nagle/delayed-ACK interplay). Timers live here, not in protocol/:
ARTIM (PS3.8 9.1.5) while the machine says it runs, an idle timeout for
established associations, and the progress rule (a minimum transfer rate
while a message is half received). The accept loop is ours too: it caps the
connections that have not associated yet and backs off when file
descriptors run out. ``serve`` stops on SIGINT/SIGTERM: it closes the
listening socket, lets running associations finish within a grace period,
then aborts what is left.

On a TLS port the accept loop hands the socket to
``connect_accepted_socket(ssl=...)``, which returns once the handshake is
done (ARTIM bounds it) or raises: a refused handshake is counted and logged
(``tls.HandshakeRefusals``), not dropped without a word as
``create_server(ssl=...)`` does; an accepted one is an ``AssociationProtocol``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import resource
import signal
import socket
import ssl
import time
from collections.abc import Callable
from typing import cast

from .._ext.sockio import recv_spin, tcp_quickack
from ..protocol.association import Association, CommandReceived, DatasetFragment
from .seam import Link, Service, ServiceFactory
from .tls import HandshakeRefusals

log = logging.getLogger("fastscp.net")

# Delayed ACKs and a sender's Nagle algorithm stall each other: dcmtk's
# storescu (Nagle on unless TCP_NODELAY=1 is in its environment) sends the
# dataset PDU only once the command PDU is ACKed, and the receiver's kernel
# holds that ACK up to 40 ms because the receiver has nothing to send yet.
# TCP_QUICKACK makes the kernel ACK at once; Linux clears it on its own, so it
# is set again after every read: one setsockopt made from Cython on the file
# descriptor (through uvloop's stand-in socket object it cost a Python socket
# construction and a getsockname per read).
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
# polls that saw nothing, in a row, before polling rests (AssociationProtocol._queue_spin)
SPIN_MISSES_TO_REST = 2


class AssociationProtocol(asyncio.BufferedProtocol):
    def __init__(self, server: DicomServer) -> None:
        self.server = server
        self.assoc = Association(server.max_pdu)
        self.transport: asyncio.Transport | None = None
        self.handler: Service  # made in connection_made, with the connection's Link
        # progress = a whole PDU received, not any byte: a peer trickling
        # bytes must not hold its association (and a slot) forever
        self.last_activity = time.monotonic()
        self._consumed = 0
        self._artim: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        # the progress rule (server.min_rate over server.rate_window): bytes
        # received by the framer when the current window started, or -1
        self._rate: asyncio.TimerHandle | None = None
        self._window_start = 0.0
        self._window_bytes = -1
        self._spin_fd = -1  # plain TCP socket to poll after a read (server.busy_poll_us), -1: never
        self._spin_queued = False
        self._spin_misses = 0  # polls in a row that saw nothing
        self._quiet_from = 0  # monotonic ns when a poll was skipped (resting), 0: none

    # ---- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream connection's transport is a Transport (the protocol API types it as its base)
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        tls = transport.get_extra_info("ssl_object") is not None
        self._quickack: Callable[[], None] | None = None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            if _TCP_QUICKACK is not None:
                try:
                    fd = sock.fileno()
                    tcp_quickack(fd)
                    self._quickack = functools.partial(tcp_quickack, fd)
                except OSError:
                    pass
            if self.server.busy_poll_ns > 0 and not tls:
                self._spin_fd = sock.fileno()
        peer_text = _address_text(transport.get_extra_info("peername"))
        self.handler = self.server.handler_factory(self.assoc, Link(peer_text, tls, self._flush, self._call_soon,
                                                                        self._backlog))
        self.server.connections.add(self)
        self.server.unassociated[self] = None
        if self.server.paused:
            self.transport.pause_reading()
        self.assoc.connection_made()
        self._after()
        self._arm_idle()
        if self.server.min_rate:
            self._arm_rate()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.assoc.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._quiet_from:  # a loop read while resting: would a poll have met it?
            if time.monotonic_ns() - self._quiet_from <= self.server.busy_poll_ns:
                self._spin_misses = 0
                self.server.poll_resumes += 1
            self._quiet_from = 0
        assoc = self.assoc
        assoc.buffer_updated(nbytes)
        handler = self.handler
        next_event = assoc.next_event
        try:
            while (ev := next_event()) is not None:
                if isinstance(ev, DatasetFragment):  # the per-PDV path first
                    handler.on_fragment(ev)
                    continue
                if isinstance(ev, CommandReceived):
                    handler.on_command(ev)
                else:
                    handler.handle(ev)
        except Exception:
            log.exception("internal error on association %s; aborting it", handler.id)
            self.abort("internal error")
            return
        framer = assoc.framer
        # the read ended inside a data set with more to come (its fragments
        # may have gone to the file in the framer, without events)
        streaming = framer.dataset_in_progress is not None
        consumed = framer.bytes_received - framer.buffered
        if consumed != self._consumed:
            self._consumed = consumed
            self.last_activity = time.monotonic()
        self._after()
        # after the answer went out: the ACK for what comes next matters, the
        # one for this read was carried by the answer or is already due
        if self._quickack is not None:
            try:
                self._quickack()
            except OSError:  # the socket is going away; the read still counts
                self._quickack = None
        # No poll while the peer is inside a data set (the read ended in one,
        # or inside a PDU): its next bytes are already coming, and on a small
        # machine a poll would take the CPU the sender needs to send them.
        # The poll is for the turn of the conversation: after an answer (also
        # queued by ``_flush``) or a command, the peer's next message is due.
        if not streaming and not framer.buffered:
            self._queue_spin()

    def _flush(self) -> None:
        """The handler's way to send outside a read (a deferred answer): the
        peer's next message is due now, so the poll starts again."""
        self._after()
        self._queue_spin()

    def _backlog(self) -> int:
        """Bytes written to the transport and not yet taken by the kernel."""
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def _call_soon(self, callback: Callable[[], None]) -> None:
        """Run a service's callback on the loop, from any thread, then write
        out what it sent."""
        def run() -> None:
            try:
                callback()
            except Exception:
                log.exception("internal error on association %s; aborting it", self.handler.id)
                self.abort("internal error")
                return
            self._flush()
        self._loop.call_soon_threadsafe(run)

    def _queue_spin(self) -> None:
        """Queue a poll, unless polling rests: after ``SPIN_MISSES_TO_REST``
        polls in a row saw nothing within the window, the peer takes longer
        than the window between its PDUs (a slow or interactive sender), and
        a poll would only burn the window's CPU, on a small machine the
        sender's own (measured: one image at a time from pynetdicom, which
        sends a data set more than 1 ms after its command, p50 0.7-1.2 ms
        slower with the polls than without). A loop read that comes within
        the window of a skipped poll ends the rest."""
        if self._spin_fd < 0 or self._spin_queued or not self._may_spin():
            return
        if self._spin_misses >= SPIN_MISSES_TO_REST:
            self._quiet_from = time.monotonic_ns()
            return
        self._spin_queued = True
        self._loop.call_soon(self._spin)  # not get_running_loop(), which makes a getpid() call on 3.11

    def _may_spin(self) -> bool:
        """Poll only while this is the one connection (polling would hold
        the others up), reading goes on, no answer waits on another thread
        (its callback needs the loop: durable mode's group commit), and all
        we wrote has left (the rest goes out only when the loop runs)."""
        server = self.server
        transport = self.transport
        return (len(server.connections) == 1 and not server.paused and transport is not None
                and not transport.is_closing() and self.assoc.state not in ("Sta1", "Sta13")
                and not self.handler.deferred
                and not transport.get_write_buffer_size())  # the peer waits for what we still owe

    def _spin(self) -> None:
        """Called soon after a read (the loop has polled every other file
        descriptor and run what was due): poll this socket for up to
        server.busy_poll_us. What arrives is handled as the loop's read would be
        (and queues the next poll); nothing arriving, the loop's wait takes
        over. The sender's next PDU then meets a running thread, not one the
        kernel must wake (measured on the 2-core VM: a small-image flood over
        one association went from about 3.1 s to 2.1-2.5 s when the idle
        vCPUs were kept busy, for dcmtk's storescp as for fastscp)."""
        self._spin_queued = False
        if not self._may_spin():
            return
        n = recv_spin(self._spin_fd, self.assoc.get_buffer(-1), self.server.busy_poll_ns)
        if n:
            self._spin_misses = 0
        else:
            self._spin_misses += 1
            if self._spin_misses == SPIN_MISSES_TO_REST:
                self.server.poll_rests += 1
        if n > 0:
            self.server.polled_reads += 1
            self.buffer_updated(n)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        ev = self.assoc.connection_lost()
        if ev is not None:
            self.handler.handle(ev)
        for timer in (self._artim, self._idle, self._rate):
            if timer is not None:
                timer.cancel()
        self.server.connections.discard(self)
        self.server.unassociated.pop(self, None)
        self.server.connection_closed()

    # ---- helpers --------------------------------------------------------------------

    def _after(self) -> None:
        """Write what the machine has to send; follow its timer and close flags."""
        out = self.assoc.output()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if len(out) == 1:
            transport.write(out[0])
        elif out:
            transport.writelines(out)  # one vectored write, no join (uvloop)
        if self.assoc.artim_running:
            if self._artim is None:
                self._artim = self._loop.call_later(self.server.artim_timeout, self._artim_fired)
        elif self._artim is not None:
            self._artim.cancel()
            self._artim = None
        if self.assoc.closing or self.assoc.state == "Sta1":
            transport.close()

    def _artim_fired(self) -> None:
        self._artim = None
        self.assoc.artim_expired()
        self._drain_events()
        self._after()

    def _drain_events(self) -> None:
        while (ev := self.assoc.next_event()) is not None:
            self.handler.handle(ev)

    def _busy(self) -> bool:
        """A message (or a PDU) is half received."""
        return self.assoc.framer.dataset_in_progress is not None or self.assoc.framer.buffered > 0

    def _timeout(self) -> tuple[float, str]:
        """The silence allowed now: dimse_timeout while a message is half
        received, else idle_timeout (0 = unlimited)."""
        srv = self.server
        if self._busy() and srv.dimse_timeout:
            return srv.dimse_timeout, "DIMSE timeout"
        return srv.idle_timeout, "idle timeout"

    def _arm_idle(self) -> None:
        if self.server.idle_timeout or self.server.dimse_timeout:
            self._idle = self._loop.call_later(self.server.check_interval, self._idle_check)

    def _idle_check(self) -> None:
        self._idle = None
        if self.assoc.state in ("Sta1", "Sta13"):
            return
        if self.handler.deferred:  # we owe the peer an answer: its silence is ours
            self.last_activity = time.monotonic()
        idle = time.monotonic() - self.last_activity
        timeout, what = self._timeout()
        if timeout and idle >= timeout:
            log.warning("association %s: no whole PDU for %.0f s: aborting (%s)",
                        self.handler.id, idle, what)
            self.abort(what)
            return
        self._arm_idle()

    def _arm_rate(self) -> None:
        self._rate = self._loop.call_later(self.server.rate_window / 4, self._rate_check)

    def _rate_check(self) -> None:
        """The progress rule, a quarter window apart: while a message is half
        received, the bytes read over each window of server.rate_window
        seconds must average server.min_rate a second, or the association
        is aborted. The timers above see a PDU now and then as life; this
        sees how much came. Not counted: time with no message under way (the
        idle timeout's), and time our reading is paused (backpressure)."""
        self._rate = None
        if self.assoc.state in ("Sta1", "Sta13"):
            return
        srv = self.server
        if not self._busy() or srv.paused:
            self._window_bytes = -1
        else:
            now, received = time.monotonic(), self.assoc.framer.bytes_received
            if self._window_bytes < 0:
                self._window_start, self._window_bytes = now, received
            elif now - self._window_start >= srv.rate_window:
                got, seconds = received - self._window_bytes, now - self._window_start
                if got < srv.min_rate * seconds:
                    log.warning("association %s: %d bytes in %.1f s (%.0f bytes/s) of a message, below "
                                "server.min_transfer_rate (%d bytes/s over server.transfer_rate_window): aborting",
                                self.handler.id, got, seconds, got / seconds, srv.min_rate)
                    self.abort("transfer too slow")
                    return
                self._window_start, self._window_bytes = now, received
        self._arm_rate()

    def abort(self, reason: str) -> None:
        self.assoc.abort(reason)
        self._drain_events()
        self._after()
        if self.transport is not None:
            self.transport.close()


async def _sends_something(loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout: float) -> bool:
    """Wait (at most ``timeout``: TimeoutError) until ``conn`` is readable;
    False if the peer closed it without sending a byte. Nothing is read."""
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()
    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)
    try:
        return bool(conn.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return True
    except OSError:
        return False


def _address_text(address: object) -> str:
    """``ip:port`` of a socket address (an IPv6 tuple's flow info dropped)."""
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


def _peer_text(sock: socket.socket) -> str:
    try:
        return _address_text(sock.getpeername())
    except OSError:
        return "?"


# accept() errors that mean "no file descriptor or memory now": stop
# accepting for a while (the pending connections wait in the backlog), as
# asyncio's own loop does; uvloop instead closes the listening socket for good
_ACCEPT_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY = 1.0  # seconds without accepting after such an error
REPEAT_LOG_EVERY = 60.0  # seconds between two log lines about the same limit


class _RateLimitedLog:
    """One warning line now, then at most one per REPEAT_LOG_EVERY seconds,
    which says how many were not logged."""

    def __init__(self) -> None:
        self.last = -1e9
        self.suppressed = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last < REPEAT_LOG_EVERY:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last such line)" if self.suppressed else ""
        log.warning(msg + more, *args)
        self.last, self.suppressed = now, 0


def raise_open_files_limit(want: int = 65536) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most
    ``want``): connections, temp files, the index and hooks all take file
    descriptors, and distributions start services with a soft limit of
    1024. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


class DicomServer:
    def __init__(
        self,
        handler_factory: ServiceFactory,
        max_pdu: int = 131072,
        artim_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        dimse_timeout: float = 0.0,
        busy_poll_us: int = 0,
        min_rate: int = 0,
        rate_window: float = 60.0,
        max_unassociated: int = 64,
    ) -> None:
        self.handler_factory = handler_factory
        # connections that may not have sent their A-ASSOCIATE-RQ yet, oldest
        # first (pruned lazily in _make_room: nothing on the read path)
        self.unassociated: dict[AssociationProtocol, None] = {}
        self.max_unassociated = max_unassociated
        self._handshaking = 0  # TLS connections accepted, handshake not done
        self._log_emfile = _RateLimitedLog()
        self._log_evicted = _RateLimitedLog()
        self.min_rate = min_rate  # bytes/s a half-received message must average over rate_window; 0 = no rule
        self.rate_window = rate_window
        self.busy_poll_ns = int(busy_poll_us) * 1000
        self.polled_reads = 0  # reads that came from the poll after a read, not from the loop
        self.poll_rests = 0  # times polling went to rest (a slow sender)
        self.poll_resumes = 0  # and times they came back (a message came within the window)
        self.max_pdu = max_pdu
        self.artim_timeout = artim_timeout
        self.idle_timeout = idle_timeout
        self.dimse_timeout = dimse_timeout
        # the silence allowed: dimse_timeout bounds a message in progress too
        self.check_interval = min(t for t in (idle_timeout, dimse_timeout, 3600.0) if t)
        self.connections: set[AssociationProtocol] = set()
        self.paused = False
        self.tls_refusals = HandshakeRefusals()
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_event: asyncio.Event | None = None

    async def start(self, host: str | None, port: int,
                    ssl_context: ssl.SSLContext | None = None) -> list[tuple[str, int] | tuple[str, int, int, int]]:
        """Listen on every address ``host`` stands for (None: all of them),
        with our own accept loop: it backs off when file descriptors run
        out, and closes the oldest connection that has not associated when
        there are max_unassociated of them. Raises OSError."""
        loop = asyncio.get_running_loop()
        if ssl_context is not None and self.tls_refusals.schedule is None:
            self.tls_refusals.schedule = loop.call_later
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        bound: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                bound.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise OSError(exc.errno, f"error while attempting to bind on address {address!r}: "
                                             f"{(exc.strerror or '').lower()}") from None
                sock.listen(128)
                sock.setblocking(False)
        except BaseException:
            for sock in bound:
                sock.close()
            raise
        for sock in bound:
            loop.add_reader(sock.fileno(), self._accept, sock, ssl_context)
        self._listeners += bound
        return [sock.getsockname() for sock in bound]

    def _accept(self, listener: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(64):
            if len(self._tasks) >= self.max_unassociated:
                return  # those being set up first: the listener stays readable, so we are called again
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_OUT_OF_RESOURCES:
                    self._log_emfile("cannot accept DICOM connections: %s; trying again every %.0f s",
                                     exc.strerror, ACCEPT_RETRY)
                    loop.remove_reader(listener.fileno())
                    loop.call_later(ACCEPT_RETRY, self._resume_accept, listener, ssl_context)
                    # descriptors for whoever waits: silent connections go first, a quarter of them
                    self._make_room(len(self.unassociated) * 3 // 4)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that connection is gone; the next may not be
                log.warning("accept failed on %s: %s", listener.getsockname(), exc)
                return
            conn.setblocking(False)
            if ssl_context is None:
                # connections accepted but not yet made (self._tasks) count too
                self._make_room(self.max_unassociated - 1 - len(self._tasks))
            elif self._handshaking >= self.max_unassociated:
                self._log_evicted("%d TLS handshakes under way (server.max_unassociated): closing a new connection",
                                  self._handshaking)
                conn.close()
                continue
            task = loop.create_task(self._connect(conn, ssl_context))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume_accept(self, listener: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        if listener in self._listeners and listener.fileno() >= 0:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener, ssl_context)

    async def _connect(self, conn: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        peer = ""
        if ssl_context is not None:
            self._handshaking += 1
            peer = _peer_text(conn)
        try:
            if ssl_context is not None and not await _sends_something(loop, conn, self.artim_timeout):
                conn.close()  # connected and closed without a byte (a port check): no handshake was tried
                return
            # with TLS this returns once the handshake is done (ARTIM bounds it)
            await loop.connect_accepted_socket(lambda: AssociationProtocol(self), conn, ssl=ssl_context,
                                               ssl_handshake_timeout=self.artim_timeout if ssl_context else None)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, EOFError) as exc:  # the transport closed the socket
            if ssl_context is not None:  # a refused handshake: one rate-limited line, counted in /metrics
                self.tls_refusals.refused(peer, exc)
            else:
                log.debug("connection not set up: %s", exc)
        finally:
            if ssl_context is not None:
                self._handshaking -= 1
            if ssl_context is not None and self._handshaking < self.max_unassociated:
                self._make_room(self.max_unassociated)

    def _make_room(self, keep: int) -> None:
        """Close the oldest connections that have not sent an A-ASSOCIATE-RQ
        until at most ``keep`` remain (associated ones are only pruned from
        the list)."""
        pending = self.unassociated
        while len(pending) > keep:
            oldest = next(iter(pending))
            del pending[oldest]
            if oldest.assoc.state == "Sta2" and oldest.transport is not None:
                self._log_evicted("%d connections have not sent an A-ASSOCIATE-RQ (server.max_unassociated, "
                                  "or out of file descriptors): closing the oldest", keep + 1)
                oldest.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading from every association (backpressure), new ones included."""
        self.paused = True
        for conn in self.connections:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.pause_reading()

    def resume_reading(self) -> None:
        self.paused = False
        for conn in self.connections:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.resume_reading()

    def connection_closed(self) -> None:
        if self._idle_event is not None and not self.connections:
            self._idle_event.set()

    def _close_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
                sock.close()
        self._listeners = []

    async def shutdown(self, grace: float) -> None:
        self._close_listeners()
        if self.connections:
            log.info("waiting up to %.0f s for %d association(s) to finish", grace, len(self.connections))
            self._idle_event = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle_event.wait(), grace)
            except asyncio.TimeoutError:
                for conn in list(self.connections):
                    conn.abort("server shutting down")
        for task in list(self._tasks):  # connections still being set up
            task.cancel()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM. Install it before binding anything, so
    a signal that arrives during start-up also ends in a clean shutdown."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    return stop


async def serve_forever(server: DicomServer, grace: float, ready: Callable[[], None] | None = None,
                        stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (by default: SIGINT/SIGTERM), then shut down gracefully."""
    if stop is None:
        stop = stop_on_signals()
    if ready is not None:
        ready()
    await stop.wait()
    log.info("shutting down")
    await server.shutdown(grace)
