"""Device layer: memristive device models, non-idealities and device cards (see ``device_models/README.md``).

>>> from neuromorph.devices import load_card, DeviceArray
>>> card = load_card("taox_hfox")
>>> arr = DeviceArray(card, (4, 3), generator=torch.Generator().manual_seed(0))   # doctest: +SKIP
"""

from .cards import (
    MODELS,
    PARAMETERS,
    DeviceCard,
    DeviceCardError,
    card_to_toml,
    dump_card,
    list_presets,
    load_card,
    preset_dir,
)
from .models import DeviceArray, pulse_response

__all__ = ["DeviceCard", "DeviceCardError", "DeviceArray", "MODELS", "PARAMETERS", "card_to_toml", "dump_card",
           "list_presets", "load_card", "preset_dir", "pulse_response"]
