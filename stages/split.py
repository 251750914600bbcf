"""Stage `split`: data/raw → data/split/{train,val,test}/<Class> with split-folders."""

from cxr import layout
from cxr.config import load_params
from cxr.errors import run_stage
from cxr.fsio import write_json
from cxr.split import split_dataset
from cxr.tracking import pipeline_run


def main() -> None:
    params = load_params()
    with pipeline_run("split", params):
        summary = split_dataset(
            layout.RAW,
            layout.MANIFEST,
            layout.METADATA,
            layout.SPLIT,
            params.split,
            layout.CLASS_DISTRIBUTION,
        )
        write_json(layout.DATA_REPORT, summary)


if __name__ == "__main__":
    run_stage(main)
