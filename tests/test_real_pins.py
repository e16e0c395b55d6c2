"""The same device code on real GPIO. Opt-in: on a Raspberry Pi with a jumper from the
output pin to the input pin, run with LOAXA_REAL_PINS=1 (and LOAXA_PIN_FACTORY=rpigpio on a
Pi <= 4, lgpio on a Pi 5; LOAXA_PIN_OUT / LOAXA_PIN_IN, default GPIO17 -> GPIO27)."""
import os
import time

import pytest

from hardware import BoardError, Wiring, open_board

REAL = os.environ.get("LOAXA_REAL_PINS") == "1"


@pytest.mark.real_pins
@pytest.mark.skipif(not REAL, reason="needs a Raspberry Pi with a jumper; LOAXA_REAL_PINS=1")
def test_relay_output_reaches_the_power_good_input_on_real_pins():
    w = Wiring(amp_relay=os.environ.get("LOAXA_PIN_OUT", "GPIO17"),
               amp_power_good=os.environ.get("LOAXA_PIN_IN", "GPIO27"))
    board = open_board(os.environ.get("LOAXA_PIN_FACTORY", "lgpio"), w)
    try:
        board.amp_on()
        time.sleep(0.05)
        assert board.amp_power_good
        board.amp_off()
        time.sleep(0.05)
        assert not board.amp_power_good
    finally:
        board.close()


@pytest.mark.skipif(REAL, reason="on a Pi the real factories work")
@pytest.mark.parametrize("backend", ["rpigpio", "lgpio"])
def test_real_factories_off_a_pi_fail_with_a_clear_error(backend):
    """Only configuration selects the factory; off a Pi it says why it cannot open."""
    with pytest.raises(BoardError, match=f"cannot open {backend} GPIO"):
        open_board(backend, Wiring())
