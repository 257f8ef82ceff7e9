"""Registry: names, errors, parameter specs."""

import pytest
import torch

from benchbench import registry
from benchbench.errors import BenchError, InvalidArgument, UnknownName
from benchbench.registry import (
    PurifierSpec,
    available_purifiers,
    get_purifier,
    parse_purifier_list,
    purifier_params,
    register_purifier,
)


def test_builtins_are_found_through_their_entry_points():
    eps = registry.PURIFIERS.entry_points()
    assert {"identity", "ddpm"} <= set(eps)
    assert eps["ddpm"].value == "purifiers.ddpm:DDPMPurifier"
    assert {"identity", "ddpm"} <= set(available_purifiers())
    assert available_purifiers("dd*") == ["ddpm"]


def test_unknown_name_lists_the_available_ones_and_the_closest():
    with pytest.raises(UnknownName) as info:
        get_purifier("dpm")
    message = str(info.value)
    assert "'ddpm'" in message.split("did you mean")[1]
    for name in available_purifiers():
        assert name in message


def test_decorator_registers_and_refuses_a_second_owner(monkeypatch):
    monkeypatch.setattr(registry.PURIFIERS, "_items", {})

    @register_purifier("halve")
    class Halve:
        """Halves the image."""

        networks = ()

        def __init__(self, factor: float = 0.5):
            self.factor = factor

        def __call__(self, x_noisy, sigma):
            return x_noisy * self.factor

    assert "halve" in available_purifiers()
    assert get_purifier("halve", factor=0.25)(torch.ones(1, 1, 2, 2), 0.1).max().item() == 0.25
    assert register_purifier("halve")(Halve) is Halve  # same object again is fine
    with pytest.raises(BenchError, match="already registered"):
        register_purifier("halve")(lambda: None)
    assert [(p.name, p.default, p.kind) for p in purifier_params("halve")] == [("factor", 0.5, float)]
    with pytest.raises(InvalidArgument, match="accepted: factor"):
        get_purifier("halve", facto=1.0)


def test_spec_parsing_converts_types_and_labels_rows(monkeypatch):
    monkeypatch.setattr(registry.PURIFIERS, "_items", {})

    @register_purifier("toy")
    def toy(steps: int = 5, solver: str = "ddim", churn: float = 0.0, clip: bool = True, device: str = "cpu"):
        """A toy."""

    spec = PurifierSpec.parse("toy:solver=heun:steps=10")
    assert spec.params == {"steps": 10, "solver": "heun"}
    assert spec.label == "toy(steps=10,solver=heun)"  # signature order, not typing order
    assert PurifierSpec.parse("toy:clip=false").params == {"clip": False}
    assert PurifierSpec.parse("toy").label == "toy"
    for bad, match in [("toy:steps=ten", "not a valid int"), ("toy:step=3", "no parameter 'step'"),
                       ("toy:steps", "expected key=value"), ("toy:device=cuda", "no parameter 'device'")]:
        with pytest.raises(InvalidArgument, match=match):
            PurifierSpec.parse(bad)
    with pytest.raises(InvalidArgument, match="listed twice"):
        parse_purifier_list("toy,toy")


def test_all_expands_to_every_available_purifier():
    assert [s.label for s in parse_purifier_list("all")] == available_purifiers()
