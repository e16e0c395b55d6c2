"""A TCP proxy between a station and the broker that can cut, stall, delay and drop the link:
the test's stand-in for a 4G link (this machine's kernel has no netem). Loopback only;
every loop is bounded and stops with the proxy."""
from __future__ import annotations

import random
import socket
import threading
import time


class LinkProxy:
    def __init__(self, target_port: int, *, seed: int = 7) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.delay_s = 0.0          # added to every forwarded segment, each direction
        self.drop_per_s = 0.0       # chance per second that a connection is torn down
        self.up = True              # False: connections are cut and new ones refused
        self.stalled = False        # True: sockets stay open, nothing is forwarded
        self.bytes = {"up": 0, "down": 0}
        self.drops = 0
        self._rand = random.Random(seed)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.up = False
        self._close_all()

    def restore(self) -> None:
        self.up = True
        self.stalled = False

    def close(self) -> None:
        self._stop.set()
        self.up = False
        self.sock.close()
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            _close(c)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            pair = (client, server)
            threading.Thread(target=self._pump, args=(client, server, "up", pair),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down", pair),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, way: str, pair) -> None:
        src.settimeout(0.2)
        last = time.monotonic()
        while not self._stop.is_set() and self.up:
            if self.stalled:
                time.sleep(0.05)
                continue
            try:
                data = src.recv(16384)
            except socket.timeout:
                data = None
            except OSError:
                break
            if data == b"":
                break
            now = time.monotonic()
            if self.drop_per_s and self._rand.random() < self.drop_per_s * (now - last):
                self.drops += 1
                break
            last = now
            if data:
                if self.delay_s:
                    time.sleep(self.delay_s * self._rand.uniform(0.5, 1.5))
                try:
                    dst.sendall(data)
                except OSError:
                    break
                self.bytes[way] += len(data)
        for s in pair:
            _close(s)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
