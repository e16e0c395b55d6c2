"""Issue 12 (part): `loaxa hub pki init` makes the broker's TLS certificates from the hub's own
CA, and `loaxa hub station add` puts each station's client certificate in its enrolment
folder; a station configured from that folder gets into the production broker (Debian's
mosquitto with our hub.conf and ACL) and is confined to its own topics."""
from __future__ import annotations

import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy.cli import main
from deploy.mosquitto_conf import HUB_CN
from production_broker import ProductionBroker, assert_gets_in
from station_agent import config as station_config


def run(*args) -> int:
    return main([str(a) for a in args])


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                               ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:
        return False
    return cert.issuer == ca.subject


def _cn(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_pki_init_and_station_certificates_get_a_station_into_the_production_broker(
        tmp_path, capsys):
    home = tmp_path / "hub"
    assert run("hub", "--home", home, "init", "--broker-port", "1883") == 0
    assert run("hub", "--home", home, "pki", "init", "--host", "127.0.0.1",
               "--host", "hub.local") == 0
    pki = home / "pki"
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    for key in ("ca.key", "broker.key", "hub.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600, key
    ca = _cert(pki / "ca.crt")
    broker, hub = _cert(pki / "broker.crt"), _cert(pki / "hub.crt")
    assert _signed_by(broker, ca) and _signed_by(hub, ca)
    assert _cn(hub) == HUB_CN
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hub.local" in sans.get_values_for_type(x509.DNSName)
    out = capsys.readouterr().out
    assert "PRIVATE KEY" not in out  # paths are printed, never keys

    # a second init refuses: it would orphan every station's certificate
    before = (pki / "ca.crt").read_bytes()
    assert run("hub", "--home", home, "pki", "init", "--host", "127.0.0.1") != 0
    assert "không ghi đè" in capsys.readouterr().err
    assert (pki / "ca.crt").read_bytes() == before

    # the hub's broker on TLS: stations added now are configured for it
    production = ProductionBroker(tmp_path / "prod")
    production.use_hub_pki(pki)
    toml = home / "hub.toml"
    toml.write_text(toml.read_text().replace(
        "port = 1883", f'port = {production.port}\ntls_ca = "pki/ca.crt"\n'
        'tls_cert = "pki/hub.crt"\ntls_key = "pki/hub.key"'))
    assert run("hub", "--home", home, "station", "add", "xa-1", "--name", "Đài xã Một") == 0
    folder = home / "stations" / "xa-1"
    client = _cert(folder / "client.crt")
    assert _cn(client) == "xa-1" and _signed_by(client, ca)
    assert stat.S_IMODE((folder / "client.key").stat().st_mode) == 0o600
    cfg = station_config.load(folder / "station.toml")
    assert cfg.broker.tls_cert and cfg.broker.tls_ca

    production.start()
    try:
        assert_gets_in(cfg.broker, "xa-1", ["loaxa/station/xa-1/cmd", "loaxa/all/cmd"],
                       "loaxa/station/xa-1/events")
    finally:
        production.close()


def test_a_programme_plays_and_is_reported_over_tls_on_the_production_broker(tmp_path):
    """Issue 12: bundle, pushed audio, play and report, end to end, with the hub and three
    agent processes on mosquitto's production configuration (TLS, client certificates from
    `hub pki init`, the ACL confining each station)."""
    from datetime import datetime, timedelta

    from conftest import wait_for
    from fleet import Fleet
    from schedules import TZ

    when = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
    stations = ["xa-a", "xa-b", "xa-c"]
    production = ProductionBroker(tmp_path / "prod")
    (tmp_path / "f").mkdir()
    fleet = Fleet(tmp_path / "f", production, stations, start=when - timedelta(hours=1),
                  tls=True)
    try:
        for sid in stations:
            assert "tls_cert" in (fleet.station_dir(sid) / "station.toml").read_text()
        fleet.start()
        fleet.wait_online()
        content = fleet.content("Thông báo: ngày mai cắt điện từ 7 giờ đến 11 giờ.")
        fleet.schedule(content, when)  # an item for all: its audio is pushed on loaxa/all
        fleet.wait_active(2)
        assert fleet.hub.counters.get("audio.chunks_sent", 0) == 0  # the push reached all
        fleet.pass_time(when)
        wait_for(lambda: len(fleet.playbacks()) == 3, 30, "three playback records at the hub")
        assert {p["station_id"] for p in fleet.playbacks()} == set(stations)
        assert all(p["outcome"] == "played" for p in fleet.playbacks())
        assert not fleet.store.q("SELECT * FROM refusals")
    finally:
        fleet.stop()
        production.close()


def test_a_revoked_station_is_refused_by_the_broker_and_the_hub(tmp_path, capsys):
    """`loaxa hub station revoke`: the station's certificate goes on the CA's CRL, which the
    production broker takes on reload (SIGHUP), and the hub forgets its signing key. Another
    station is not affected."""
    from datetime import datetime, timedelta, timezone

    from conftest import wait_for
    from hub import config as hubconfig
    from hub.store import HubStore
    from protocol.mqtt import MqttLink

    home = tmp_path / "hub"
    production = ProductionBroker(tmp_path / "prod")
    assert run("hub", "--home", home, "init", "--broker-port", str(production.port)) == 0
    assert run("hub", "--home", home, "pki", "init", "--host", "127.0.0.1") == 0
    toml = home / "hub.toml"
    toml.write_text(toml.read_text().replace(
        f"port = {production.port}", f'port = {production.port}\ntls_ca = "pki/ca.crt"\n'
        'tls_cert = "pki/hub.crt"\ntls_key = "pki/hub.key"'))
    for sid in ("xa-1", "xa-2"):
        assert run("hub", "--home", home, "station", "add", sid, "--name", sid) == 0
    production.use_hub_pki(home / "pki")
    production.start()
    try:
        cfgs = {sid: station_config.load(home / "stations" / sid / "station.toml")
                for sid in ("xa-1", "xa-2")}
        kept = MqttLink(client_id="xa-2", broker=cfgs["xa-2"].broker,
                        subscriptions=["loaxa/station/xa-2/cmd"])
        kept.start()
        assert kept.wait_connected(10)
        assert_gets_in(cfgs["xa-1"].broker, "xa-1", [], "loaxa/station/xa-1/events")
        capsys.readouterr()
        assert run("hub", "--home", home, "station", "revoke", "xa-1") == 0
        out = capsys.readouterr().out
        assert "systemctl reload mosquitto" in out and "PRIVATE" not in out
        production.install_crl(home / "pki" / "crl.pem")

        def refused() -> object:
            link = MqttLink(client_id="xa-1", broker=cfgs["xa-1"].broker, subscriptions=[])
            link.start()
            try:
                link.wait_connected(3)
                return link.failure if not link.connected.is_set() else None
            finally:
                link.stop()
        failure = wait_for(refused, 15, "the broker to refuse the revoked certificate")
        assert failure.cause == "certificate_refused", failure
        print(f"\nrevoked station: {failure.cause} ({failure.detail})")
        # the other station's certificate still gets in, and its open connection stays
        assert_gets_in(cfgs["xa-2"].broker, "xa-2b", [], "loaxa/station/xa-2/events")
        assert kept.connected.is_set()
        kept.stop()
        store = HubStore(hubconfig.load(home).db_path)
        try:
            assert store.station("xa-1")["public_key"] is None  # its messages: refused
            rows = store.q("SELECT cn, revoked_at FROM certificates WHERE kind = 'station'")
            assert {r["cn"]: bool(r["revoked_at"]) for r in rows} == {"xa-1": True,
                                                                      "xa-2": False}
        finally:
            store.close()
    finally:
        production.close()
    assert run("hub", "--home", home, "station", "revoke", "khong-co") == 2


def test_certificates_expiring_within_30_days_raise_an_alarm_until_renewed(tmp_path):
    from datetime import datetime, timedelta, timezone

    from hub import config as hubconfig
    from hub.store import HubStore
    home = tmp_path / "hub"
    assert run("hub", "--home", home, "init") == 0
    assert run("hub", "--home", home, "pki", "init", "--host", "127.0.0.1") == 0
    assert run("hub", "--home", home, "station", "add", "xa-1", "--name", "Một") == 0
    store = HubStore(hubconfig.load(home).db_path)
    try:
        now = datetime.now(timezone.utc)
        store.sync_certificate_alarms(now)
        assert not store.open_alarms()  # 825 days left: nothing to say
        # 800 days on: the station's and the broker's/hub's certificates have 25 days left
        later = now + timedelta(days=800)
        store.sync_certificate_alarms(later)
        alarms = {a["station_id"]: a["detail"] for a in store.open_alarms()}
        assert set(alarms) == {"xa-1", "hub"}
        assert "chứng chỉ station xa-1 hết hạn" in alarms["xa-1"]
        assert "broker" in alarms["hub"] and "hub" in alarms["hub"]
        store.sync_certificate_alarms(later)  # raised once, not again
        assert len(store.open_alarms()) == 2
        # the station's certificate renewed (a new one for the same name): its alarm clears
        store.add_certificate(123456789, "xa-1", "station", later + timedelta(days=825), later)
        store.sync_certificate_alarms(later)
        assert {a["station_id"] for a in store.open_alarms()} == {"hub"}
    finally:
        store.close()
