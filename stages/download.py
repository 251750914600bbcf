"""Stage `download`: fetch `data.source` into data/raw, data/masks and data/manifest.csv."""

from cxr.core import layout
from cxr.core.config import load_params
from cxr.core.errors import run_stage
from cxr.core.fsio import write_json
from cxr.data.sources import fetch
from cxr.tracking.runs import pipeline_run


def main() -> None:
    params = load_params()
    with pipeline_run("download", params):
        summary = fetch(
            params.data,
            layout.project_root(),
            layout.RAW,
            layout.MASKS,
            layout.MANIFEST,
            layout.REJECTED,
            layout.METADATA,
        )
        write_json(layout.DOWNLOAD_REPORT, summary)
        for warning in summary["warnings"]:
            print(f"WARNING: {warning}")


if __name__ == "__main__":
    run_stage(main)
