"""Input/output: fMRIPrep file discovery, table validation, atomic writing."""
