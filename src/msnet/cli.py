"""The ``msnet`` command: validate inputs, simulate the demo dataset, run stages by hand.

Every subcommand reads the same config file as the workflow (``--config``, default
``config.yaml``) and runs the same checks, so ``msnet validate`` fails exactly where
``snakemake`` would, before any heavy work.
"""

from __future__ import annotations

import argparse
import logging
import sys

from msnet.errors import MsnetInputError


def _cmd_validate(args) -> int:
    from msnet.config import load_config
    from msnet.io.plan import build_plan

    config = load_config(args.config)
    plan = build_plan(config)
    groups = plan.subjects.groupby("group").size()
    print(f"{args.config}: valid. {len(plan.studies)} studies, "
          f"{groups.get('MS', 0)} MS and {groups.get('HC', 0)} HC subjects"
          + (f", {len(plan.excluded)} inputs excluded (see below)." if len(plan.excluded) else "."))
    for row in plan.excluded.to_dict("records"):
        print(f"  excluded: study {row['study_id']} {row['participant_id']}: {row['reason']}")
    return 0


def _cmd_plan(args) -> int:
    from msnet.config import load_config
    from msnet.io.plan import build_plan

    plan = build_plan(load_config(args.config))
    table = plan.subjects.groupby(["study_id", "group"]).size().unstack(fill_value=0)
    print(table.to_string())
    print(f"total: {table.sum().to_dict()}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``msnet`` command."""
    parser = argparse.ArgumentParser(prog="msnet", description=__doc__.splitlines()[0])
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
