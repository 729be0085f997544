"""msnet: MS vs HC resting-state network connectivity across studies.

Run the bundled synthetic demo with `snakemake --cores 2`; see README.md for real data and
SLURM. All science lives in the `msnet` package; the rules only wire files.
"""

from snakemake.utils import min_version
from snakemake.exceptions import WorkflowError

min_version("8.0")


configfile: "config.yaml"


from msnet.config import read_config_file, validate_config
from msnet.errors import MsnetInputError
from msnet.io.plan import build_plan

try:
    # keys given twice are refused, as `msnet validate` refuses them
    for _path in workflow.configfiles:
        read_config_file(_path)
    config.update(
        validate_config(config, source="config (config.yaml + --config overrides)")
    )
    # Real data: every subject's file headers are checked here, in parallel, before any job
    # (msnet.io.preflight); subjects unchanged since they passed are cached in .snakemake/.
    # A job that re-parses this file in its own process (SLURM) skips it: checked already.
    PLAN = build_plan(
        config,
        preflight=workflow.is_main_process,
        cache=".snakemake/msnet/preflight_passed.json",
    )
except MsnetInputError as exc:
    raise WorkflowError(f"msnet: invalid input.\n{exc}") from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


if config["data"]["mode"] == "literature":  # published peaks only: no image stages

    include: "workflow/rules/literature.smk"
    include: "workflow/rules/derivatives.smk"

    localrules:
        all,
        describe_derivatives,

else:

    include: "workflow/rules/simulate.smk"
    include: "workflow/rules/subject.smk"
    include: "workflow/rules/group.smk"
    include: "workflow/rules/clinical.smk"
    include: "workflow/rules/nbs.smk"
    include: "workflow/rules/meta.smk"
    include: "workflow/rules/qcfc.smk"
    include: "workflow/rules/literature.smk"
    include: "workflow/rules/report.smk"
    include: "workflow/rules/derivatives.smk"

    # Bookkeeping rules (well under a second of work each) run on the submitting host, not
    # as cluster jobs: each SLURM job costs seconds of start-up and a scheduling round.
    localrules:
        all,
        describe_derivatives,
        meta_vs_mega,
        record_excluded_inputs,
        summarise_study_qc,


if SIMULATE:

    localrules:
        simulate,


rule all:
    default_target: True
    input:
        ALL_TARGETS,


onsuccess:
    # The few lines a user needs at the end: report path, QC counts, warnings and where.
    from msnet.logs import run_summary

    print(
        run_summary(config["results_dir"], studies=list(PLAN.studies["study_id"]))
    )
