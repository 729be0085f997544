"""The ``msnet`` command: validate inputs, simulate the demo dataset, process one subject.

Every subcommand reads the same config file as the workflow (``--config``, default
``config.yaml``) and runs the same checks, so ``msnet validate`` fails exactly where
``snakemake`` would, before any heavy work, and lists every problem it finds in one pass.
``msnet subject`` writes to its own folder (``--out``, default
``{results_dir}/msnet_subject``), never over the workflow's outputs, so it does not make
``snakemake`` re-run the jobs downstream of that subject.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from msnet.errors import MsnetInputError


def _cmd_validate(args) -> int:
    """Check the config, the tables and the files in one pass and list every problem found:
    the config's (all keys at once), then, with the bad keys at their defaults, the results
    folder, studies.tsv, every participants.tsv and every subject's file headers."""
    from msnet.config import config_problems, read_config_file
    from msnet.errors import MsnetInputErrors
    from msnet.io.atomic import check_writable, nearest_existing
    from msnet.io.plan import build_plan
    from msnet.literature import published_studies

    config, problems = config_problems(read_config_file(args.config), str(args.config))
    plan, start = None, time.perf_counter()
    if config is not None:
        try:
            check_writable([nearest_existing(config["results_dir"])],
                           f"results folder (results_dir: {config['results_dir']}) or its "
                           "parent")
        except MsnetInputError as exc:
            problems.append(exc)
        data = config["data"]
        if data["mode"] != "fmriprep" or data["studies_tsv"]:
            try:
                plan = build_plan(config)
            except MsnetInputError as exc:
                problems.append(exc)
    if problems:
        raise MsnetInputErrors(problems, f"{args.config} and the inputs it names")
    groups = plan.subjects.groupby("group").size()
    checked = (f" Tables and the file headers of {len(plan.subjects)} subjects checked in "
               f"{time.perf_counter() - start:.1f} s."
               if config["data"]["mode"] == "fmriprep" else "")
    if config["data"]["mode"] != "literature":
        print(f"{args.config}: valid. {len(plan.studies)} studies, "
              f"{groups.get('MS', 0)} MS and {groups.get('HC', 0)} HC subjects"
              + (f", {len(plan.excluded)} inputs excluded (see below)."
                 if len(plan.excluded) else ".") + checked)
    published = published_studies(config)
    if published is not None:
        print(("" if config["data"]["mode"] != "literature" else f"{args.config}: valid. ")
              + f"Literature: {len(published)} published studies "
              f"({published['n_ms'].sum()} MS, {published['n_hc'].sum()} HC) with "
              f"{published['peaks'].sum()} peaks ({config['literature']['peaks_tsv']}).")
    for row in plan.excluded.to_dict("records"):
        print(f"  excluded: study {row['study_id']} {row['participant_id']}: {row['reason']}")
    return 0


def _cmd_plan(args) -> int:
    from msnet.config import load_config
    from msnet.io.plan import build_plan
    from msnet.literature import published_studies

    config = load_config(args.config)
    plan = build_plan(config)
    tables = [plan_table(plan.subjects, plan.excluded)] if len(plan.subjects) else []
    published = published_studies(config)
    if published is not None:
        tables.append("published studies (literature mode)\n" + text_table(
            ["study", "MS", "HC", "peaks"], published.to_numpy().tolist()))
    print("\n\n".join(tables) or "no studies")
    return 0


def plan_table(subjects, excluded=None) -> str:
    """The subjects per study and group as an aligned text table with a total row.

    Parameters
    ----------
    subjects : pandas.DataFrame
        ``study_id, group`` per subject (:attr:`msnet.io.plan.Plan.subjects`).
    excluded : pandas.DataFrame, optional
        ``study_id, participant_id, reason`` of inputs excluded before analysis.

    Returns
    -------
    str
        Columns ``study, MS, HC, subjects`` (and ``excluded`` when any input was excluded),
        one row per study in study order, then ``total``.
    """
    counts = subjects.groupby(["study_id", "group"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["MS", "HC"], fill_value=0)
    rows = [[str(study), int(r["MS"]), int(r["HC"]), int(r["MS"] + r["HC"])]
            for study, r in counts.iterrows()]
    header = ["study", "MS", "HC", "subjects"]
    n_excl = {}
    if excluded is not None and len(excluded):
        n_excl = excluded.groupby("study_id").size().to_dict()
        header.append("excluded")
        rows = [r + [int(n_excl.get(r[0], 0))] for r in rows]
    return text_table(header, rows)


def text_table(header: list, rows: list) -> str:
    """Rows as an aligned text table (first column left, numbers right) with a total row."""
    total = ["total"] + [sum(int(r[i]) for r in rows) for i in range(1, len(header))]
    widths = [max(len(str(r[i])) for r in [header, *rows, total]) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, rows), rule, line(total)])


def _cmd_simulate(args) -> int:
    from msnet.config import load_config
    from msnet.io.plan import simulated_dataset_dir
    from msnet.simulate import plan_dataset, simulate_study, write_dataset_index

    config = load_config(args.config)
    out = args.out or simulated_dataset_dir(config["results_dir"])
    sim, seed = config["simulate"], config["seed"]
    studies = args.study or list(plan_dataset(sim, seed)["study_id"].unique())
    for i, study in enumerate(studies, 1):
        logging.getLogger("msnet").info("study %s (%d/%d)", study, i, len(studies))
        simulate_study(sim, seed, study, out)
    write_dataset_index(sim, seed, out)
    print(f"synthetic dataset written to {out}")
    return 0


def _cmd_subject(args) -> int:
    from msnet.config import load_config
    from msnet.connectivity import compute_subject_connectivity
    from msnet.io.plan import analysis_space, build_plan, subject_outputs

    config = load_config(args.config)
    plan = build_plan(config, preflight=False)  # the job checks this subject's files itself
    pid = args.participant if args.participant.startswith("sub-") else f"sub-{args.participant}"
    rows = plan.subjects[(plan.subjects["study_id"] == args.study)
                         & (plan.subjects["participant_id"] == pid)]
    if rows.empty:
        raise MsnetInputError(f"{args.config}: no subject {pid} in study {args.study} in the "
                              "plan (see `msnet plan`).")
    row = rows.iloc[0]
    study = plan.studies.set_index("study_id").loc[args.study]
    if not all(Path(f).is_file() for f in row["bold"]):
        raise MsnetInputError(f"{row['bold'][0]} does not exist. For the demo, write the "
                              f"dataset first: msnet simulate --config {args.config}")
    out = Path(args.out) if args.out else default_subject_out(config["results_dir"])
    if _same_folder(out, config["results_dir"]):
        print(f"msnet: warning: --out {out} is the workflow's results folder: the subject's "
              "files there will be newer than the workflow's later outputs, and the next "
              "snakemake run re-runs every job downstream of this subject.", file=sys.stderr)
    paths = subject_outputs(out, args.study, row["label"], config["connectivity"]["seed_maps"],
                            config["qc"]["subject_pages"], analysis_space(plan.studies),
                            config["qcfc"]["enabled"])
    qc = compute_subject_connectivity(
        study["fmriprep_dir"], pid, paths, denoise_options=config["denoise"],
        qc_options=config["qc"], connectivity_options=config["connectivity"],
        task=study["task"], space=study["space"], multi_run=config["data"]["multi_run"],
        lesion_mask=row["lesion_mask"], study_id=args.study,
        threads=config["resources"]["compute_subject_connectivity"].get("threads", 1),
        qcfc_options=config["qcfc"],
    )
    verdict = "included" if qc["include"] else f"excluded: {qc['exclusion_reason']}"
    print(f"{pid} ({args.study}) {verdict}; outputs in {Path(paths['qc']).parent}")
    return 0


def default_subject_out(results_dir) -> Path:
    """Where ``msnet subject`` writes by default: ``{results_dir}/msnet_subject``, apart from
    the workflow's own ``{results_dir}/subjects`` (the files go to
    ``msnet_subject/subjects/study-{study}/sub-{label}/``, the workflow's layout)."""
    return Path(results_dir) / "msnet_subject"


def _same_folder(a, b) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``msnet`` command."""
    from msnet import __version__

    parser = argparse.ArgumentParser(prog="msnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"msnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default="config.yaml", help="config file (default: config.yaml)")
        p.set_defaults(func=func)
        return p

    add("validate", _cmd_validate,
        "check the config, studies.tsv, every participants.tsv and the fMRIPrep files")
    add("plan", _cmd_plan, "print the subjects per study and group the workflow will analyse")
    p = add("simulate", _cmd_simulate, "write the synthetic multi-study dataset")
    p.add_argument("--out", help="output folder (default: {results_dir}/simulated)")
    p.add_argument("--study", action="append", help="simulate only this study (repeatable)")
    p = add("subject", _cmd_subject,
            "run the subject stage (denoise, QC, connectivity) for one subject, as the "
            "workflow's compute_subject_connectivity job does, into a folder of its own")
    p.add_argument("--study", required=True, help="study id")
    p.add_argument("--participant", required=True, help="participant id (sub-XX or XX)")
    p.add_argument("--out", help="output folder; the files go to OUT/subjects/study-{study}/"
                   "sub-{label}/ (default: {results_dir}/msnet_subject, apart from the "
                   "workflow's outputs, which a later snakemake run would otherwise redo)")
    return parser


def main(argv=None) -> int:
    """Entry point of the ``msnet`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MsnetInputError as exc:
        print(f"msnet: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
