"""Stage `augment`: oversample the train split's minority classes with Augmentor."""

from cxr import layout
from cxr.augment import augment_train
from cxr.config import load_params
from cxr.errors import run_stage
from cxr.fsio import write_json
from cxr.tracking import pipeline_run


def main() -> None:
    params = load_params()
    with pipeline_run("augment", params):
        summary = augment_train(layout.SPLIT / "train", layout.AUGMENTED, params.augment)
        write_json(layout.AUGMENT_REPORT, summary)


if __name__ == "__main__":
    run_stage(main)
