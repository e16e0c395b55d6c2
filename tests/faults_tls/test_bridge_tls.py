"""test_bridge over TLS: the hub's broker and the commune's edge broker both on mosquitto's
production configuration with the hub's CA; the bridge connects with its own certificate
(`loaxa hub bridge NAME --group G`: CN loaxa-bridge-NAME) and the hub's broker lets it carry
its group's stations' topics only (`loaxa hub acl`, reloaded). The same cut and restore as
tests/faults/test_bridge.py, through the same proxy, now carrying TLS."""
from __future__ import annotations

from datetime import timedelta

import pytest

from deploy.mosquitto_conf import render_acl, render_bridge
from faults.test_bridge import IDS, T0
from faults.test_bridge import test_bridge_cut_and_restored_loses_and_duplicates_nothing  # noqa: F401
from fleet import Fleet
from hub.admin import bridge_certificate, bridges
from netproxy import LinkProxy
from production_broker import ProductionBroker


@pytest.fixture
def bridged(tmp_path, mosquitto):
    proxy = LinkProxy(mosquitto.port)
    fleet = Fleet(tmp_path, mosquitto, IDS, start=T0 - timedelta(minutes=5))  # TLS hub broker
    files = bridge_certificate(fleet.cfg, "xa", "g1")
    mosquitto.install_acl(render_acl(fleet.cfg.prefix, bridges=bridges(fleet.store)))
    edge = ProductionBroker(tmp_path / "edge-broker")
    edge.use_hub_pki(fleet.home / "pki")  # the stations connect to it with their certificates
    tls = tuple(str(edge.own(files[k])) for k in ("ca", "cert", "key"))
    edge.extra = render_bridge("xa", "127.0.0.1", proxy.port, fleet.cfg.prefix,
                               restart_s=(1, 2), tls=tls)
    edge.start()
    for sid in IDS:
        fleet.route(sid, edge.port)
    yield fleet, proxy, edge
    fleet.stop()
    edge.close()
    proxy.close()
