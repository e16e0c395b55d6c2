"""mosquitto as Debian ships it plus our deploy/mosquitto/hub.conf and loaxa.acl, in a
scratch folder: the stock /etc/mosquitto/mosquitto.conf and our files are copied with only
their paths (and the listener's port) pointed into the folder, so what loads here is what
loads on a hub installed as docs/deploy.md says."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import ROOT
from deploy.broker import _spawn, _stop, _wait_listening, find_mosquitto, free_port
from deploy.mosquitto_conf import HUB_CN
from deploy.pki import Issued, issue, make_ca, write_crl

STOCK = Path("/etc/mosquitto/mosquitto.conf")


class ProductionBroker:
    production = True  # tests/fleet.py: a Fleet on it runs over TLS with hub-made certificates
    protocol = "5"

    def __init__(self, root: Path, *, port: int | None = None, extra: str = "") -> None:
        """``extra``: more configuration (a bridge section), in its own conf.d file."""
        self.root = root  # client certificates, mosquitto's console output
        self.extra = extra
        root.mkdir(parents=True, exist_ok=True)
        # mosquitto reads its ACL and writes its files after dropping to its own user: a
        # folder that user can reach (pytest's tmp folders are closed to other users)
        self.base = Path(tempfile.mkdtemp(prefix="loaxa-mosquitto-"))
        self.base.chmod(0o755)
        self.etc = self.base / "etc" / "mosquitto"
        (self.etc / "conf.d").mkdir(parents=True)
        self.var = self.base / "var"
        self.var.mkdir()
        self.port = port or free_port()
        self.ca = make_ca(self.base / "etc" / "loaxa")
        self.server = issue(self.ca, self.base / "etc" / "loaxa", "broker", server=True,
                            hosts=("localhost", "127.0.0.1"))
        self.crl = self.base / "etc" / "loaxa" / "crl.pem"
        write_crl(self.ca, self.crl, [])
        self.proc: subprocess.Popen | None = None
        self.log = root / "mosquitto.out"

    def client(self, cn: str, *, ca: Issued | None = None) -> Issued:
        """A client certificate whose CN becomes the MQTT username (from ``ca``, ours by
        default)."""
        return issue(ca or self.ca, self.root / "clients", cn)

    def use_hub_pki(self, folder: Path) -> None:
        """Serve with the certificates `loaxa hub pki init` made in ``folder`` (instead of
        this broker's own CA), installed as docs/deploy.md says: copied to the broker's
        folder, the key its own. Before ``start``."""
        etc = self.base / "etc" / "loaxa"
        for name in ("ca.crt", "broker.crt", "broker.key", "crl.pem"):
            shutil.copy(folder / name, etc / name)
        self.ca = Issued(etc / "ca.crt", folder / "ca.key")
        self.server = Issued(etc / "broker.crt", etc / "broker.key")

    def hub_cert(self) -> Issued:
        return self.client(HUB_CN)

    def write(self) -> Path:
        stock = STOCK.read_text()
        repl = {"pid_file": f"pid_file {self.var}/mosquitto.pid",
                "persistence_location": f"persistence_location {self.var}/",
                "log_dest": f"log_dest file {self.var}/mosquitto.log",
                "include_dir": f"include_dir {self.etc / 'conf.d'}"}
        lines = [repl.get(ln.split(" ")[0], ln) if ln.strip() and not ln.startswith("#") else ln
                 for ln in stock.splitlines()]
        (self.etc / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        ours = (ROOT / "deploy" / "mosquitto" / "hub.conf").read_text()
        ours = re.sub(r"^listener 8883$", f"listener {self.port} 127.0.0.1", ours, flags=re.M)
        ours = ours.replace("/etc/loaxa/ca.crt", str(self.ca.cert))
        ours = ours.replace("/etc/loaxa/broker.crt", str(self.server.cert))
        ours = ours.replace("/etc/loaxa/broker.key", str(self.server.key))
        ours = ours.replace("/etc/mosquitto/loaxa.acl", str(self.etc / "loaxa.acl"))
        ours = ours.replace("/etc/loaxa/crl.pem", str(self.crl))
        (self.etc / "conf.d" / "loaxa.conf").write_text(ours)
        if self.extra:
            (self.etc / "conf.d" / "zz-extra.conf").write_text(self.extra)
        if not (self.etc / "loaxa.acl").exists():  # install_acl may have put one
            shutil.copy(ROOT / "deploy" / "mosquitto" / "loaxa.acl", self.etc / "loaxa.acl")
        if os.geteuid() == 0:  # mosquitto drops to its own user, as it does from systemd
            pw = pwd.getpwnam("mosquitto")
            for path in (self.var, self.server.key):  # docs/deploy.md: the key is mosquitto's
                os.chown(path, pw.pw_uid, pw.pw_gid)
        return self.etc / "mosquitto.conf"

    def start(self) -> "ProductionBroker":
        conf = self.write()
        exe = find_mosquitto()
        assert exe, "mosquitto is not installed"
        self.proc = _spawn([exe, "-c", str(conf)], self.log)
        _wait_listening(self.proc, self.port, 10, self.log, "mosquitto (production config)")
        return self

    def install_crl(self, crl: Path) -> None:
        """As docs/security.md says after `hub station revoke`: the new list in place, then
        the broker reloads (SIGHUP, what `systemctl reload mosquitto` sends)."""
        import signal
        shutil.copy(crl, self.crl)
        self.crl.chmod(0o644)
        self.proc.send_signal(signal.SIGHUP)

    @property
    def dir(self) -> Path:
        """Where its log is (mosquitto.log), as for deploy.broker.Mosquitto."""
        return self.var

    def install_acl(self, text: str) -> None:
        """As docs/deploy.md says after `loaxa hub acl` changes (a bridge added): the new
        ACL in place, then the broker reloads it (SIGHUP) if it runs."""
        import signal
        (self.etc / "loaxa.acl").write_text(text)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def own(self, path: Path) -> Path:
        """A file mosquitto must read after dropping to its own user (a key): copied into
        its folder, owned by that user."""
        dst = self.base / "etc" / "loaxa" / path.name
        shutil.copy(path, dst)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("mosquitto")
            os.chown(dst, pw.pw_uid, pw.pw_gid)
        dst.chmod(0o600 if path.suffix == ".key" else 0o644)
        return dst

    def stop(self, *, kill: bool = False) -> None:
        """Stopped (SIGKILL with ``kill``); its files stay for ``again`` until ``close``."""
        _stop(self.proc, kill)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def again(self, root: Path) -> "ProductionBroker":
        """A new broker on the same port with the same certificates (not started)."""
        other = ProductionBroker(root, port=self.port)
        etc = other.base / "etc" / "loaxa"
        for src, name in ((self.ca.cert, "ca.crt"), (self.server.cert, "broker.crt"),
                          (self.server.key, "broker.key"), (self.crl, "crl.pem")):
            shutil.copy(src, etc / name)
        other.ca = Issued(etc / "ca.crt", self.ca.key)
        other.server = Issued(etc / "broker.crt", etc / "broker.key")
        return other


def assert_gets_in(broker, client_id: str, subscriptions: list[str], topic: str) -> None:
    """A link with ``broker`` (a BrokerConfig) connects, subscribes, and has a QoS 1 publish
    on ``topic`` acknowledged, with no failure named."""
    from protocol.mqtt import MqttLink
    link = MqttLink(client_id=client_id, broker=broker, subscriptions=subscriptions)
    link.start()
    try:
        assert link.wait_connected(10), link.failure
        assert link.publish_wait(topic, b"x")
        assert link.failure is None
    finally:
        link.stop()
