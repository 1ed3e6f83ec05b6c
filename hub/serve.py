"""The lead hospital's side of the hub, assembled from the config.

    hub = Hub(config, broker)
    hub.start()              # declares the topology and migrates the store, then listens
    hub.ports                # {"mllp": 2575, "dicom": 11112, "fhir": 8080}
    hub.stop()

The pieces: the ledger (events -> exam states, SLA clocks, alerts) and the
recognition registry (report copies -> recognised results) on the store; the
MLLP and FHIR gateways and the DICOM SCP on the broker's own loop, so their
publishes cost no thread hop, the SCP with its study assembly; and report
egress. Each is its own module; this one only starts and stops them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Literal

from hub.broker import Broker, wait
from hub.config import Config
from hub.gateways.dicom import start_dicom
from hub.gateways.egress import DEFAULT_RETRY_DELAYS, Egress
from hub.gateways.http import start_fhir
from hub.gateways.mllp import start_mllp
from hub.gateways.studies import StudyAssembler
from hub.intake import Intake
from hub.ledger_service import LedgerService
from hub.registry_service import RegistryService
from hub.store.blobs import BlobStore
from hub.store.db import Database, open_database
from hub.store.recognition import Registry
from hub.topology import RETRY_DELAYS, Topology

__all__ = ["GATEWAYS", "Gateway", "Hub", "topology_for"]

log = logging.getLogger("hub.serve")

Gateway = Literal["ledger", "registry", "mllp", "dicom", "fhir", "egress"]
GATEWAYS: tuple[Gateway, ...] = ("ledger", "registry", "mllp", "dicom", "fhir", "egress")


def topology_for(config: Config, retry_delays: Iterable[int] = RETRY_DELAYS) -> Topology:
    """The topology a consortium needs: a report queue for every institution."""
    return Topology(institutions=[i.code for i in config.institutions], retry_delays=tuple(retry_delays))


class Hub:
    def __init__(
        self,
        config: Config,
        broker: Broker,
        *,
        gateways: Iterable[Gateway] = GATEWAYS,
        egress_retry_delays: tuple[float, ...] | None = None,
        topology: Topology | None = None,
    ) -> None:
        self.config = config
        self.broker = broker
        self.gateways = tuple(gateways)
        self.topology = topology or topology_for(config)
        self.blobs = BlobStore(config.data_dir / "blobs", fsync=config.hub.fsync)
        self.intake = Intake(broker, self.blobs, events=config.hub.events)
        self.ports: dict[str, int] = {}
        self.database: Database | None = None
        self.registry: Registry | None = None
        self._egress_retry_delays = egress_retry_delays
        self._running: list[tuple[str, Any]] = []

    def start(self) -> None:
        self.broker.declare(self.topology)
        settings = self.config.gateways
        try:
            self._start_store()
            if "mllp" in self.gateways and settings.mllp is not None:
                listener = self._on_loop(start_mllp(self.intake, self.config, settings.mllp))
                self._started("mllp", listener, listener.port)
            if "fhir" in self.gateways and settings.fhir is not None:
                search = start_fhir(self.intake, self.config, settings.fhir, registry=self.registry)
                listener = self._on_loop(search)
                self._started("fhir", listener, listener.port)
            if "dicom" in self.gateways and settings.dicom is not None:
                listener = start_dicom(self.intake, self.config, settings.dicom)
                self._started("dicom", listener, listener.port)
                # Instances wait durably on hub.studies, so assembly may start after the SCP.
                assembler = StudyAssembler(self.broker, self.intake, stable_seconds=settings.dicom.study_stable_seconds)
                assembler.start()
                self._started("studies", assembler, None)
            if "egress" in self.gateways:
                delays = self._egress_retry_delays or DEFAULT_RETRY_DELAYS
                egress = Egress(self.broker, self.config, events=self.config.hub.events, retry_delays=delays)
                egress.start()
                self._started("egress", egress, None)
        except BaseException:
            self.stop()
            raise

    def _start_store(self) -> None:
        if not {"ledger", "registry"} & set(self.gateways):
            return
        self.database = open_database(self.config.database_url)
        self.database.migrate()
        log.info("store at %s", self.database.url)
        if "ledger" in self.gateways:
            ledger = LedgerService(self.broker, self.database, self.config)
            ledger.start()
            self._started("ledger", ledger, None)
        if "registry" in self.gateways:
            registry = RegistryService(self.broker, self.database, self.config)
            registry.start()
            self.registry = registry.registry
            self._started("registry", registry, None)

    def _on_loop(self, coroutine: Any) -> Any:
        return wait(asyncio.run_coroutine_threadsafe(coroutine, self.broker.loop))

    def _started(self, name: str, piece: Any, port: int | None) -> None:
        self._running.append((name, piece))
        if port is not None:
            self.ports[name] = port
            log.info("%s gateway listening on port %d", name, port)

    def stop(self) -> None:
        """Stop each piece in the order it started; what a piece holds unsettled goes back to its queue."""
        for name, piece in self._running:
            try:
                closing = piece.close() if hasattr(piece, "close") else piece.stop()
                if asyncio.iscoroutine(closing):
                    wait(asyncio.run_coroutine_threadsafe(closing, self.broker.loop))
            except Exception as exc:  # one piece failing to stop must not strand the others
                log.warning("stopping %s failed: %s", name, exc)
        self._running.clear()
        self.ports.clear()
        if self.database is not None:
            self.database.close()
            self.database = None
