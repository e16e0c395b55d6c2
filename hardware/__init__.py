"""Relays, amplifier inputs and the simulated board, behind gpiozero pin factories.

Only this package imports gpiozero (and through it RPi.GPIO or lgpio). The device code is the
same on every backend; configuration picks the pin factory.
"""
from .board import Board, Wiring, open_board, BoardError
from .simulated import SimulatedEquipment, Fault

__all__ = ["Board", "BoardError", "Fault", "SimulatedEquipment", "Wiring", "open_board"]
