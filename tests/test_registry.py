"""Registry lookups and their errors."""

import re
from pathlib import Path

import pytest

from featdistill import ADAPTERS, LOGIT_LOSSES, LOSSES, UnknownNameError
from featdistill.registry import Registry

README = Path(__file__).resolve().parents[1] / "README.md"


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


def readme_names(heading: str) -> set[str]:
    """Backticked words of the README bullet that starts with ``- **<heading>**``."""
    text = README.read_text()
    start = text.index(f"- **{heading}**")
    end = text.find("\n- **", start + 1)
    return set(re.findall(r"`([a-z_0-9]+)`", text[start:end]))


def test_shipped_registries_hold_exactly_the_documented_names():
    losses = {"mse", "smooth_l1", "cosine", "attention_transfer", "at", "attention_transfer_tokens", "attention_kl",
              "value_relation_kl", "attention_mse", "sp", "similarity_preserving", "rkd", "relational_kd", "pkt",
              "probabilistic_kt", "cc", "correlation_congruence", "nst", "vid", "crd",
              "review_kd", "reviewkd"}
    logit = {"soft", "hard", "dkd", "dist", "ls", "logit_standardized", "forward_kl", "reverse_kl", "jsd", "gkd",
             "skew_kl", "skew_rkl"}
    adapters = {"identity", "linear", "mlp", "conv1x1", "resize", "tokens", "tokens_to_map", "map_to_tokens",
                "attention"}
    assert set(LOSSES) == losses and set(ADAPTERS) == adapters and set(LOGIT_LOSSES) == logit
    # every registered name is documented where users look for it
    documented = readme_names("Losses") | readme_names("Relational losses") | readme_names("Multi-layer losses")
    documented |= readme_names("Contrastive losses")
    assert losses <= documented and adapters <= readme_names("Adapters") and logit <= readme_names("Logit losses")
