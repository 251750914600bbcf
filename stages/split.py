"""Stage `split`: data/raw → data/split/{train,val,test}/<Class> with split-folders."""

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_json
from cxr.data.split import split_dataset
from cxr.tracking.runs import pipeline_run


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
        for warning in summary["groups"].get("warnings", []):
            print(f"WARNING: {warning}")


if __name__ == "__main__":
    run_stage(main)
