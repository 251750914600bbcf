"""Stage `augment`: oversample the train split's minority classes with Augmentor."""

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_json
from cxr.data.augment import OPERATIONS, augment_train
from cxr.tracking.runs import pipeline_run


def main() -> None:
    params = load_params(registries=(OPERATIONS,))
    with pipeline_run("augment", params):
        summary = augment_train(layout.SPLIT / "train", layout.AUGMENTED, params.augment)
        write_json(layout.AUGMENT_REPORT, summary)


if __name__ == "__main__":
    run_stage(main)
