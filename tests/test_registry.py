"""Registry lookups and their errors."""

import pytest

from featdistill import ADAPTERS, LOSSES, UnknownNameError
from featdistill.registry import Registry


def test_register_get_aliases_and_duplicates():
    reg = Registry("widget")

    @reg.register("a", "alias")
    def make():
        return 1

    assert reg.get("a") is make and reg.get("alias") is make and "a" in reg and len(reg) == 2
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    with pytest.raises(UnknownNameError) as err:
        reg.get("b")
    assert "unknown widget 'b'" in str(err.value) and "Known widgets: a, alias" in str(err.value)


def test_shipped_registries_hold_the_documented_names():
    assert {"mse", "smooth_l1", "cosine", "attention_transfer", "attention_transfer_tokens"} <= set(LOSSES)
    assert {"identity", "linear", "mlp", "conv1x1", "tokens_to_map", "map_to_tokens", "tokens"} <= set(ADAPTERS)
