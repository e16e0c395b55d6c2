"""An embedded MQTT 3.1.1 broker (amqtt) for the demo on a machine without mosquitto.

Slower than mosquitto and 3.1.1 only, so clients connect with protocol "3.1.1"; tests and
production always use mosquitto. Run as ``python -m deploy.embedded_broker PORT``.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys


async def _serve(port: int) -> None:
    from amqtt.broker import Broker
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
