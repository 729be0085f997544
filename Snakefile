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
    for _path in workflow.configfiles:  # keys given twice, as `msnet validate` refuses them
        read_config_file(_path)
    config.update(validate_config(config, source="config (config.yaml + --config overrides)"))
    PLAN = build_plan(config)
except MsnetInputError as exc:
    raise WorkflowError(f"msnet: invalid input.\n{exc}") from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/subject.smk"
include: "workflow/rules/group.smk"
include: "workflow/rules/clinical.smk"
include: "workflow/rules/meta.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        ALL_TARGETS,
    default_target: True
