"""Wires the layers together for ``serve``: storage, the SCP service, the network.

Everything configurable arrives as a ``ServeOptions``; the command line (and,
later, the YAML file) produce one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from functools import lru_cache

from .net.server import DicomServer, serve_forever
from .protocol.negotiation import VERIFICATION, AcceptPolicy
from .scp import ServerState, StoreSCPHandler
from .storage.store import Storage

log = logging.getLogger("fastscp")


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    port: int = 11112
    ae_title: str = "FASTSCP"
    storage_dir: str = "./received"
    bind: str = "0.0.0.0"
    max_pdu: int = 131072
    max_associations: int = 10
    check_called_ae: bool = True
    artim_timeout: float = 30.0
    idle_timeout: float = 60.0
    shutdown_grace: float = 30.0


@lru_cache(maxsize=1)
def storage_sop_classes() -> frozenset[str]:
    """Every storage SOP class pynetdicom and pydicom know."""
    from pydicom._uid_dict import UID_dictionary
    from pynetdicom.sop_class import _STORAGE_CLASSES

    known = set(_STORAGE_CLASSES.values())
    known.update(uid for uid, entry in UID_dictionary.items() if entry[1] == "SOP Class" and entry[0].endswith("Storage"))
    return frozenset(known)


@lru_cache(maxsize=1)
def all_transfer_syntaxes() -> frozenset[str]:
    from pydicom.uid import AllTransferSyntaxes

    return frozenset(AllTransferSyntaxes)


def default_policy() -> AcceptPolicy:
    accepted = storage_sop_classes() | {VERIFICATION}
    return AcceptPolicy(abstract_syntax_ok=accepted.__contains__, transfer_syntaxes=all_transfer_syntaxes())


def build_state(opts: ServeOptions) -> ServerState:
    storage = Storage(opts.storage_dir)
    storage.sweep_incoming()
    return ServerState(
        ae_title=opts.ae_title,
        storage=storage,
        policy=default_policy(),
        max_pdu=opts.max_pdu,
        max_associations=opts.max_associations,
        check_called_ae=opts.check_called_ae,
    )


async def run(opts: ServeOptions) -> None:
    state = build_state(opts)
    server = DicomServer(lambda assoc, peer: StoreSCPHandler(state, assoc, peer), opts.max_pdu,
                         opts.artim_timeout, opts.idle_timeout)
    addresses = await server.start(opts.bind, opts.port)

    def ready() -> None:
        log.info("fastscp listening on %s as %s, storing into %s (max PDU %d, max associations %d)",
                 ", ".join(f"{a[0]}:{a[1]}" for a in addresses), opts.ae_title, state.storage.directory,
                 opts.max_pdu, opts.max_associations)

    await serve_forever(server, opts.shutdown_grace, ready)
    log.info("stopped: %d association(s), %d instance(s), %.1f MB received",
             state.associations_total, state.instances_total, state.bytes_total / 1e6)


def run_blocking(opts: ServeOptions) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(opts))
    else:
        uvloop.run(run(opts))
