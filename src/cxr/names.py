"""Every registry of names that params.yaml uses, for the `params` stage, which validates all of
params.yaml, and for the check that params.yaml's comments list each kind's names.
`python -m cxr.names` prints each params key with the names it accepts."""

from __future__ import annotations

from cxr.core.registry import Registry
from cxr.data.augment import OPERATIONS
from cxr.explanation.faithfulness import SALIENCY
from cxr.explanation.gradcam import METHODS
from cxr.training.loop import REGIMES
from cxr.training.models import MODELS
from cxr.training.optim import OPTIMIZERS, SCHEDULERS
from cxr.training.preprocessing import PREPROCESSING
from cxr.training.state import SELECTION


def registries() -> tuple[Registry, ...]:
    """Each kind's registry: models, optimizers, schedulers, fine-tuning regimes, selection
    rules, augment operations, explanation methods, saliency methods, preprocessing methods."""
    return (
        MODELS,
        OPTIMIZERS,
        SCHEDULERS,
        REGIMES,
        SELECTION,
        OPERATIONS,
        METHODS,
        SALIENCY,
        PREPROCESSING,
    )


if __name__ == "__main__":
    for registry in registries():
        print(f"{registry.key} ({registry.kind}): {', '.join(registry.names())}")
