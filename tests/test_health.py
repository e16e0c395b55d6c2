from hardware import Fault, Wiring, open_board
from station_agent.health import HealthModel, Probe, amplifier, power, relays

FULL = Wiring(amp_feedback="GPIO6", zone_relays=("GPIO23",), zone_feedback=("GPIO13",),
              amp_fault="GPIO5", mains_ok="GPIO12", ups_battery_low="GPIO16")


def test_debounce_needs_two_readings_and_reports_each_transition():
    changes = []
    m = HealthModel(debounce=2, on_change=lambda *a: changes.append(a))
    ok, bad = Probe("mains", "ok", True), Probe("mains", "degraded", False, "mains lost")
    m.update([ok])
    m.update([bad])
    assert m.status == "ok" and changes == []        # one reading is a flicker
    m.update([ok])
    m.update([bad])
    m.update([bad])
    assert m.status == "degraded" and changes == [("mains", "degraded", "mains lost")]
    m.update([ok])
    m.update([ok])
    assert m.status == "ok" and changes[-1] == ("mains", "ok", "")


def test_probes_read_the_board_as_the_faults_make_it():
    from datetime import datetime, timezone

    from protocol.clock import ManualClock
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=timezone.utc))
    b = open_board("simulated", FULL, sim={"amp_warmup_ms": 10}, clock=clock)
    try:
        assert relays(b).status == "ok" and amplifier(b).status == "ok"
        assert [p.status for p in power(b)] == ["ok", "ok"]
        b.equipment.inject(Fault.RELAY_STUCK_CLOSED)
        clock.advance(0.05)  # the amplifier, powered by the stuck relay, warms up
        assert relays(b).status == "fault" and "closed while told off" in relays(b).detail
        assert amplifier(b).status == "fault"  # powered while its relay is off
        b.equipment.clear(Fault.RELAY_STUCK_CLOSED)
        b.equipment.inject(Fault.MAINS_LOST)
        b.equipment.inject(Fault.UPS_BATTERY_LOW)
        assert [p.status for p in power(b)] == ["degraded", "fault"]
    finally:
        b.close()


def test_system_probes_read_their_sources(tmp_path):
    from station_agent.health import cpu_temperature, disk, memory
    t = tmp_path / "temp"
    for milli, status in ((48000, "ok"), (77500, "degraded"), (86000, "fault")):
        t.write_text(f"{milli}\n")
        assert cpu_temperature(t).status == status
    assert cpu_temperature(tmp_path / "none").status == "unknown"
    m = tmp_path / "meminfo"
    m.write_text("MemTotal: 1000000 kB\nMemFree: 1000 kB\nMemAvailable: 80000 kB\n")
    assert memory(m).status == "degraded" and memory(m).value == 8
    m.write_text("MemTotal: 1000000 kB\nMemAvailable: 500000 kB\n")
    assert memory(m).status == "ok"
    assert disk(tmp_path).status in ("ok", "degraded", "fault") and 0 <= disk(tmp_path).value <= 100


def test_a_held_alarm_is_cleared_by_a_healthy_first_reading_after_a_restart():
    """Issue 8: a model that reports only changes never cleared an alarm raised before a
    restart when the first reading after it was healthy."""
    changes = []
    m = HealthModel(debounce=2, on_change=lambda *a: changes.append(a), held={"mains"})
    m.update([Probe("mains", "ok", True), Probe("ups", "ok", True)])
    assert changes == [("mains", "ok", "")]  # the held one is judged again; ups is not news
    m.update([Probe("mains", "ok", True)])
    assert changes == [("mains", "ok", "")]


def test_an_unknown_reading_neither_raises_nor_clears():
    changes = []
    m = HealthModel(debounce=2, on_change=lambda *a: changes.append(a), held={"link"})
    m.update([Probe("link", "unknown", None, "connecting")])
    assert changes == [] and m.status == "ok"
    m.update([Probe("link", "degraded", None, "unreachable")])  # the first known reading
    assert changes == [("link", "degraded", "unreachable")]


def test_the_modem_probe_never_blocks_the_agents_loop():
    """mmcli can take 5 s on a 4G station; the loop only ever takes the last answer."""
    import threading
    from station_agent.health import ModemProbe
    release = threading.Event()
    calls = []

    def slow_mmcli():
        calls.append(1)
        release.wait(30)  # mmcli hanging
        return Probe("modem", "ok", 80)

    probe = ModemProbe(slow_mmcli)
    done = threading.Event()
    threading.Thread(target=lambda: (probe.latest(), probe.latest(), done.set()),
                     daemon=True).start()
    assert done.wait(5), "latest() waited for mmcli"
    assert probe.latest() is None and len(calls) == 1  # one reading at a time
    release.set()
    import time
    deadline = time.monotonic() + 10
    while probe.latest() is None:  # the answer arrives on its own thread
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert probe.latest().value == 80


def test_a_blinking_led_asked_every_step_keeps_one_blink_and_changes_when_asked():
    """The agent sets every LED on every step: a blink restarted each time never blinks and
    costs a thread each time (issue 13)."""
    import threading
    b = open_board("simulated", Wiring(led_link="GPIO20"), sim={"amp_warmup_ms": 0})
    try:
        led = b._leds["link"]
        b.led("link", "blink")
        first = led._blink_thread
        threads = threading.active_count()
        for _ in range(200):
            b.led("link", "blink")
        assert led._blink_thread is first and first.is_alive()
        assert threading.active_count() == threads
        b.led("link", "on")
        assert led._blink_thread is None and b.led_state("link") is True
        b.led("link", "off")
        assert b.led_state("link") is False
    finally:
        b.close()
