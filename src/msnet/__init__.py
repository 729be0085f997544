"""msnet: multi-study resting-state network connectivity in multiple sclerosis.

The package holds all the science; the Snakemake workflow in ``workflow/`` only wires
files to the functions here.
"""

__version__ = "0.1.0"

ANALYSIS_NETWORKS = ("DMN", "SMN", "VN", "SN")
"""The four analysis networks, in the order every table and figure uses."""
