"""Crossbar substrate: differential device pairs, tiles with periphery (DAC, ADC, IR drop), pulse programming.

>>> import torch
>>> from neuromorph.devices import load_card
>>> from neuromorph.crossbar import CrossbarLayer, Periphery
>>> layer = CrossbarLayer(10, 784, load_card("ideal"), Periphery(dac_bits=8, adc_bits=8, adc_range=4.0),
...                       tile_size=(256, 256), generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
>>> y = layer.forward(torch.rand(32, 784)); x_back = layer.transpose(y)                       # doctest: +SKIP
>>> layer.program(0.01 * torch.randn(10, 784), mode="stochastic_rounding"); layer.stats()     # doctest: +SKIP

Modules: :mod:`.pairs` (``W = (G+ - G-)/g0``, mappings, programming policies, pulse trains, refresh, counters),
:mod:`.periphery` (DAC/ADC/line resistance, units), :mod:`.irdrop` (nodal analysis of the tile grid),
:mod:`.tile` (tiles and layers: forward and transpose reads).
"""

from .irdrop import NodalSolver, solve_iterative
from .pairs import MAPPINGS, POLICIES, PROGRAM_MODES, DifferentialArray, PulseTrainParams
from .periphery import Periphery, converter_lsb, quantise
from .tile import CrossbarLayer, CrossbarTile

__all__ = ["CrossbarLayer", "CrossbarTile", "DifferentialArray", "Periphery", "PulseTrainParams", "NodalSolver",
           "solve_iterative", "quantise", "converter_lsb", "MAPPINGS", "POLICIES", "PROGRAM_MODES"]
