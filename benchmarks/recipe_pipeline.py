"""README's real-data recipe run exactly as README writes it: `dvc exp run` of the
`<!-- recipe:cpu -->` block, `<folder>` replaced by --data, once per training seed, in a
temporary git+DVC copy of the project. Prints per seed the wall-clock minutes of the whole
`dvc exp run` (the first seed's includes download, split and augment, as a fresh clone's
does) and of each stage (from its "Running stage" line to the next), and the test numbers the
pipeline wrote: balanced accuracy with its interval, the model minus the majority and the
source-only baselines, per-source balanced accuracy, the audit's verdict and the external
folders' results.

    python benchmarks/recipe_pipeline.py --data ../shared/data/cxrmix
    python benchmarks/recipe_pipeline.py --data <folder> --seeds 0 --external <other folder>
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import yaml
from dvc.exceptions import DvcException
from dvc.repo import Repo

from cxr.core import layout

PROJECT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^Running stage '(\w+)'", re.M)
# Stages in this run whose outputs DVC restored or kept, unchanged
KEPT_LINE = re.compile(r"^Stage '(\w+)' (?:didn't change|is cached)", re.M)
# What is reported, where the pipeline writes it. A report is read only if the stage that
# writes it (dvc.yaml's outs) was in the run: a stage outside the run (--stages) leaves the
# copy's committed smoke-profile file in place, which must not be read as this run's.
REPORTS = {
    "eval": layout.EVAL_REPORT,
    "audit": layout.AUDIT_REPORT,
    "external": layout.EXTERNAL_REPORT,
    "train": layout.TRAIN_METRICS,
    "gradcam": layout.GRADCAM_METRICS,
    "deferral": layout.DEFERRAL_REPORT,
}


def readme_recipe() -> list[str]:
    """The `dvc exp run ...` words of README's `<!-- recipe:cpu -->` block."""
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    block = re.match(r"```bash\n(.*?)```", text.split("<!-- recipe:cpu -->\n", 1)[1], re.S)
    if block is None:
        raise SystemExit("README: no ```bash block after <!-- recipe:cpu -->")
    return shlex.split(block.group(1).replace("\\\n", " "))


def _related(a: str, b: str) -> bool:
    """Whether two paths of dvc.yaml are the same or one holds the other."""
    return a == b or a.startswith(f"{b}/") or b.startswith(f"{a}/")


def _plot_paths(project: Path) -> list[str]:
    """The paths dvc.yaml's top-level plots read (a file, a folder, or a titled entry)."""
    plots = yaml.safe_load((project / "dvc.yaml").read_text(encoding="utf-8")).get("plots", [])
    paths = []
    for entry in plots:
        if isinstance(entry, str):
            paths.append(entry)
            continue
        ((name, spec),) = entry.items()
        y = spec.get("y") if isinstance(spec, dict) else None
        paths.extend(y if isinstance(y, dict) else [name])
    return paths


def directories_left_out(project: Path, targets: list[str]) -> dict[str, list[str]]:
    """The stages a `dvc exp run <targets>` leaves out whose cached directory outputs hold
    plots that dvc.yaml shows, with those directories. A fresh copy has neither the folders
    nor their cache, and DVC cannot save the experiment without them: it stops after the run
    with "failed to load directory"."""
    if not targets:  # every stage runs
        return {}
    shown = _plot_paths(project)
    with Repo(str(project)) as repo:  # DVC's own graph says what the targets pull in
        # a target names a stage of the project's dvc.yaml, wherever this runs from
        addresses = [f"{project / 'dvc.yaml'}:{target}" for target in targets]
        run = {s.name for a in addresses for s in repo.stage.collect(a, with_deps=True)}
        return {
            stage.name: dirs
            for stage in repo.index.stages
            if stage.name not in run
            if (
                dirs := [
                    out.def_path
                    for out in stage.outs
                    if out.hash_info.isdir and any(_related(out.def_path, p) for p in shown)
                ]
            )
        }


def _git(project: Path, *args: str) -> str:
    """A git command's stdout in `project`."""
    return subprocess.run(
        ["git", *args], cwd=project, capture_output=True, text=True, check=True
    ).stdout


def committed(name: str, project: Path = PROJECT) -> bytes:
    """A file's bytes as committed (HEAD) in `project`."""
    return subprocess.run(
        ["git", "show", f"HEAD:{name}"], cwd=project, capture_output=True, check=True
    ).stdout


def pipeline_state_changed(project: Path = PROJECT) -> list[str]:
    """The files of the pipeline's state (params.yaml, dvc.lock and the outputs the committed
    dvc.lock lists that git tracks) that differ from their committed versions: what an
    experiment run in the workspace (`dvc exp run`, `dvc exp apply`) leaves there."""
    lock = yaml.safe_load(_git(project, "show", "HEAD:dvc.lock"))
    outs = {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    paths = ["params.yaml", "dvc.lock", *sorted(outs)]
    changed = _git(project, "diff", "--name-only", "-z", "HEAD", "--", *paths)
    return [name for name in changed.split("\0") if name]


def copy_project(dest: Path, project: Path = PROJECT) -> Path:
    """`project`'s tracked and untracked-but-not-ignored files, in a fresh git repo; the
    pipeline's state (`pipeline_state_changed`) as committed, so that a copy runs on the
    project's own params and results, not on the last experiment's."""
    listed = _git(project, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for name in filter(None, listed):
        if (project / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / name, dest / name)
    for name in pipeline_state_changed(project):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(committed(name, project))
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    for command in (["git", "init", "-q", "-b", "main"], [*git, "add", "-A"]):
        subprocess.run(command, cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=dest, check=True)
    return dest


class Timed(NamedTuple):
    """A DVC command's wall-clock minutes, stdout, exit status and its stages' minutes."""

    minutes: float
    stdout: str
    returncode: int
    stages: dict[str, float]


def run_seed(project: Path, command: list[str], seed: int) -> Timed:
    """One `dvc exp run` with `seed` (its stderr streamed to this terminal's)."""
    timed = run_timed(project, [*command, "-S", f"train.seed={seed}"])
    if timed.returncode != 0:
        print(timed.stdout[-4000:], file=sys.stderr)
        raise SystemExit(f"dvc exp run failed for seed {seed}")
    return timed


def run_timed(project: Path, command: list[str]) -> Timed:
    """Run a DVC command in `project`, noting when each "Running stage" line arrives: a stage
    lasts from its line to the next stage's line (or the command's end), DVC's own work
    between stages included."""
    start = time.perf_counter()
    lines: list[str] = []
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(
        command,
        cwd=project,
        stdout=subprocess.PIPE,
        text=True,
        env={**_env(project), "PYTHONUNBUFFERED": "1"},  # lines arrive when printed
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if match := STAGE_LINE.match(line):
                marks.append((match.group(1), time.perf_counter()))
    end = time.perf_counter()
    times = [when for _, when in marks] + [end]
    stages = {name: (times[i + 1] - times[i]) / 60 for i, (name, _) in enumerate(marks)}
    return Timed((end - start) / 60, "".join(lines), process.returncode, stages)


def _env(project: Path) -> dict[str, str]:
    """This interpreter's tools on PATH, and the copy's own package first on the import path:
    an editable install would otherwise run the working tree's code, edits made since the copy
    included."""
    import os

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project / "src"), env.get("PYTHONPATH")]))
    return env


def _read(project: Path, name: Path) -> dict:
    path = project / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _ci(entry: dict, key: str = "balanced_accuracy") -> str:
    ci = entry.get(f"{key}_ci", {})
    if ci.get("low") is None:
        return f"{entry[key]:.3f}"
    return f"{entry[key]:.3f} [{ci['low']:.2f}, {ci['high']:.2f}]"


def _difference(entry: dict) -> str:
    d = entry["balanced_accuracy"]
    return f"{d['difference']:+.3f} [{d['low']:.3f}, {d['high']:.3f}] ({entry['verdict']})"


def writers(project: Path) -> dict[Path, str]:
    """Each output, metric and plot path of the project's dvc.yaml -> the stage writing it,
    read from DVC's own index (a stage's outs hold its metrics and plots too)."""
    with Repo(str(project)) as repo:
        return {Path(out.def_path): stage.name for stage in repo.index.stages for out in stage.outs}


def summary(project: Path, stdout: str) -> dict:
    """What the run's stages wrote that docs/results.md reports ({} for a stage not in it)."""
    in_run = set(STAGE_LINE.findall(stdout)) | set(KEPT_LINE.findall(stdout))
    writer = writers(project)
    return {
        key: _read(project, path) if writer.get(path) in in_run else {}
        for key, path in REPORTS.items()
    }


def print_seed(seed: int, timed: Timed, result: dict) -> None:
    report, baselines = result["eval"], result["eval"]["baselines"]
    stages = ", ".join(f"{name} {minutes:.1f}" for name, minutes in timed.stages.items())
    recall = ", ".join(f"{c} {v['recall']:.2f}" for c, v in report["per_class"].items())
    auc = ", ".join(f"{c} {v['roc_auc']:.2f}" for c, v in report["per_class"].items())
    print(f"\nseed {seed}: dvc exp run {timed.minutes:.1f} min (stages run, minutes: {stages})")
    print(
        f"  test balanced accuracy {_ci(report)}, accuracy {report['accuracy']:.3f}, "
        f"macro-F1 {report['macro']['f1']:.3f}; recall {recall}; AUC {auc}"
    )
    print(f"  minus majority {_difference(baselines['model_minus_majority'])}")
    if "source_only" in baselines:
        print(
            f"  source-only baseline {baselines['source_only']['balanced_accuracy']:.3f}; "
            f"minus it {_difference(baselines['model_minus_source_only'])}"
        )
    for source, entry in report.get("subgroups", {}).get("source", {}).items():
        recalls = ", ".join(f"{c} {v:.2f}" for c, v in entry["recall"].items() if v is not None)
        print(f"  source {source} ({entry['images']}): balanced {_ci(entry)}; recall {recalls}")
    audit = result["audit"]
    if audit:
        occlusion = audit["occlusion"]
        shown = {
            c: occlusion[c]["balanced_accuracy"] for c in ("intact", "lungs_hidden", "lungs_only")
        }
        print(
            f"  audit: {occlusion['verdict']}, balanced accuracy {shown}, lungs hidden CI "
            f"{occlusion['lungs_hidden']['balanced_accuracy_ci']}"
        )
        print(f"  audit probes: {json.dumps(audit['probes'])[:600]}")
    sets = result["deferral"].get("conformal")
    if sets:
        test = sets["test"]
        per_class = ", ".join(
            f"{c} {v['coverage']:.2f} (size {v['mean_set_size']:.2f})"
            for c, v in test["per_class"].items()
        )
        print(
            f"  conformal {sets['method']} alpha {sets['alpha']}: coverage {test['coverage']:.3f} "
            f"[{test['coverage_ci']['low']:.3f}, {test['coverage_ci']['high']:.3f}], mean size "
            f"{test['mean_set_size']:.2f}, singletons {test['singleton']:.2f}, full "
            f"{test['full']:.2f}; per class {per_class}"
        )
    for name, entry in result["external"].items():
        recalls = ", ".join(f"{c} {v['recall']:.2f}" for c, v in entry["per_class"].items())
        print(f"  external {name}: {entry['images']} images, balanced {_ci(entry)}; {recalls}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a source folder (cxrmix)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--external", type=Path, nargs="*", default=[], help="scored folders")
    parser.add_argument("--json", type=Path, help="also write every seed's results here")
    parser.add_argument("--set", nargs="*", default=[], help="more key=value params (-S)")
    parser.add_argument(
        "--stages",
        nargs="*",
        default=[],
        help="run only up to these stages (default: all); they must include every stage whose "
        "folder holds plots dvc.yaml shows (gradcam, or audit, which reads it)",
    )
    parser.add_argument(
        "--keep", type=Path, help="run in this new folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args()
    try:
        left_out = directories_left_out(PROJECT, args.stages)
    except DvcException as err:  # e.g. a stage dvc.yaml does not have
        raise SystemExit(f"--stages {' '.join(args.stages)}: {err}") from None
    if left_out:
        names = " ".join(left_out)
        raise SystemExit(
            f"--stages {' '.join(args.stages)} leaves out {names}, whose directory outputs "
            f"({', '.join(d for dirs in left_out.values() for d in dirs)}) a fresh copy lacks: "
            f"DVC could not save the experiment. Add {names} to --stages."
        )
    command = [word.replace("<folder>", str(args.data.resolve())) for word in readme_recipe()]
    if args.external:
        folders = ",".join(str(p.resolve()) for p in args.external)
        command += ["-S", f"evaluate.external=[{folders}]"]
    for setting in args.set:
        command += ["-S", setting]
    command += args.stages
    print("running:", shlex.join(command), "-S train.seed=<seed>", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="cxr-recipe-") as scratch:
        if args.keep is not None and args.keep.exists():
            raise SystemExit(f"--keep {args.keep}: exists already; name a new folder")
        project = copy_project(args.keep or Path(scratch) / "project")
        for seed in args.seeds:
            timed = run_seed(project, command, seed)
            results[seed] = {
                "minutes": timed.minutes,
                "stage_minutes": timed.stages,
                **summary(project, timed.stdout),
            }
            print_seed(seed, timed, results[seed])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
