"""Model checkpoints: weights plus card, byte-identical for equal models."""

from __future__ import annotations

from pathlib import Path

import torch

from cxr.training.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from cxr.training.models import build_model


def test_equal_models_give_equal_bytes_and_load_back(tmp_path: Path) -> None:
    # Every write goes through a scratch file of its own name; the bytes must not carry it.
    torch.manual_seed(0)
    model = build_model("squeezenet1_1", 3)
    card = ModelCard("squeezenet1_1", ("a", "b", "c"), 32, "none", 1)
    save_checkpoint(tmp_path / "one.pt", model, card)
    save_checkpoint(tmp_path / "two.pt", model, card)
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "two.pt").read_bytes()
    loaded, loaded_card = load_checkpoint(tmp_path / "two.pt")
    assert loaded_card == card
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )
