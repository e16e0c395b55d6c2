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
    b = open_board("simulated", FULL, sim={"amp_warmup_ms": 10})
    try:
        assert relays(b).status == "ok" and amplifier(b).status == "ok"
        assert [p.status for p in power(b)] == ["ok", "ok"]
        b.equipment.inject(Fault.RELAY_STUCK_CLOSED)
        import time
        time.sleep(0.05)
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
