"""``python -m featdistill.run --list-losses``: every registered loss, grouped by the module that defines it, read
from the registries (so losses added later show up without touching the listing)."""

import re

from featdistill.losses import LOGIT_LOSSES, LOSSES, Loss
from featdistill.run import main

GROUP = {"logit": "logit", "feature": "feature", "attention": "attention", "relational": "relational",
         "contrastive": "contrastive", "multilevel": "multi-level"}


def listing(capsys) -> dict[str, dict]:
    """``{first name: {'names', 'group', 'text'}}`` parsed from the printed listing: a group header is a line
    without indent, an entry starts with exactly two spaces (names, then the description), its details follow;
    the footer explaining the needs ends it."""
    assert main(["--list-losses"]) == 0
    entries, group, current = {}, None, None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("needs ("):  # the footer: what each need means
            break
        if line and not line.startswith(" "):
            group, current = line.split(" (")[0], None
        elif line.startswith("  ") and not line.startswith("   "):
            names = re.split(r"\s{2,}", line.strip())[0].split(", ")
            current = entries.setdefault(names[0], {"names": names, "group": group, "text": line})
        elif current is not None:
            current["text"] += "\n" + line
    return entries


def test_every_registered_name_is_listed_once_with_its_aliases_and_group(capsys):
    entries = listing(capsys)
    expected = LOGIT_LOSSES.entries() + LOSSES.entries()
    assert len(entries) == len(expected)
    listed = [n for e in entries.values() for n in e["names"]]
    assert sorted(listed) == sorted(set(LOSSES) | set(LOGIT_LOSSES)) and len(listed) == len(set(listed))
    for names, obj in expected:
        entry = entries[names[0]]
        assert entry["names"] == names, names
        module = (obj if isinstance(obj, type) or callable(obj) else type(obj)).__module__.rsplit(".", 1)[-1]
        if module in GROUP:
            assert entry["group"] == GROUP[module], (names, entry["group"])
    assert entries["soft"]["group"] == "logit" and entries["sp"]["group"] == "relational"
    assert entries["attention_transfer"]["names"] == ["attention_transfer", "at"]


def test_spot_checks_defaults_needs_and_descriptions(capsys):
    entries = listing(capsys)
    dkd = entries["dkd"]["text"]
    assert "Decoupled KD (Zhao et al., CVPR 2022)" in dkd
    assert "alpha=1.0" in dkd and "beta=8.0" in dkd and "warmup_steps=0" in dkd and "kd.temperature" in dkd
    rkd = entries["rkd"]["text"]
    assert "distance_weight=25.0, angle_weight=50.0" in rkd and "needs: relational" in rkd
    at = entries["attention_transfer"]["text"]
    assert "p=2" in at and "needs: channel_free" in at
    assert "defaults: none" in entries["mse"]["text"] and "FitNet" in entries["mse"]["text"]
    assert "temperature" not in entries["hard"]["text"].split("\n", 1)[1]  # its formula has no T
    if "crd" in LOSSES:
        assert "needs_index" in entries["crd"]["text"]


def test_a_loss_registered_later_lands_in_its_modules_group(capsys, monkeypatch):
    def margin_loss(student, teacher, margin=0.5, index=None):
        """Margin loss (Someone et al., 2030): a test. Second sentence is dropped."""

    class Fancy(Loss):
        """Fancy contrastive loss for tests.

        More text."""

        needs_text = True  # a need no shipped loss declares

        def __init__(self, scale: float = 2.0):
            super().__init__()

    margin_loss.__module__ = "featdistill.losses.brand_new"
    Fancy.__module__ = "featdistill.losses.contrastive"
    monkeypatch.setitem(LOSSES._items, "margin", margin_loss)
    monkeypatch.setitem(LOSSES._items, "margin_alias", margin_loss)
    monkeypatch.setitem(LOSSES._items, "fancy", Fancy)
    entries = listing(capsys)
    margin = entries["margin"]
    assert margin["names"] == ["margin", "margin_alias"] and margin["group"] == "brand-new"
    assert "Margin loss (Someone et al., 2030): a test." in margin["text"] and "dropped" not in margin["text"]
    assert "margin=0.5" in margin["text"] and "index" not in margin["text"].split("\n", 1)[1]
    fancy = entries["fancy"]
    assert fancy["group"] == "contrastive" and "scale=2.0" in fancy["text"] and "needs: needs_text" in fancy["text"]


def test_registry_entries_group_aliases_in_registration_order():
    from featdistill.registry import Registry

    reg = Registry("widget")
    reg.register("b", "b_alias")(len)
    reg.register("a")(abs)
    assert reg.entries() == [(["b", "b_alias"], len), (["a"], abs)]
