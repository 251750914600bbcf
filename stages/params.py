"""Stage `params`: validate all of params.yaml before any other stage runs.

DVC removes a stage's outputs before it runs the stage's command, so an error that the stage
itself found in params.yaml would already have cost its previous outputs. This stage depends on
every key of params.yaml, so it runs first whenever any of them changes (a new, unknown or
deleted key included) and stops `dvc repro` there. It also checks what can be checked without
doing the work: a local data source exists, a URL source carries its sha256, a local weights
file exists, loads safely and fits the model. Its one output, data/params.checked, has
constant content: passing never makes a later stage run.
"""

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import atomic_file
from cxr.data.sources import check_source
from cxr.names import registries
from cxr.training.models import check_weights_file

CHECKED = "params.yaml passed validation (stages/params.py)\n"


def main() -> None:
    params = load_params(registries=registries())
    check_source(params.data, layout.project_root())
    check_weights_file(params.train.model, params.train.weights, layout.project_root())
    with atomic_file(layout.PARAMS_CHECKED) as scratch:
        scratch.write_text(CHECKED)
    print("params: params.yaml is complete and valid")


if __name__ == "__main__":
    run_stage(main)
