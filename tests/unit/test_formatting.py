"""Tests of msnet.formatting: the one place numbers and headers are formatted for people."""

import math

import numpy as np
import pandas as pd
import pytest

from msnet.formatting import (LABELS, MISSING, column_label, format_number, format_p,
                              format_table, format_value, metric_label, p_relation)


@pytest.mark.parametrize("p, text", [(0.0004, "< 0.001"), (1e-12, "< 0.001"),
                                     (0.001, "0.001"), (0.0346, "0.035"), (1.0, "1.000"),
                                     (np.nan, MISSING), (None, MISSING), ("n/a", MISSING)])
def test_p_values(p, text):
    assert format_p(p) == text


def test_p_relation_follows_a_name():
    assert p_relation(2e-5) == "< 0.001"
    assert p_relation(0.2) == "= 0.200"
    assert p_relation(math.inf) == "= n/a"


@pytest.mark.parametrize("value, decimals, text", [
    (0.123456, None, "0.123"), (12.3456, None, "12.3"), (1234.56, None, "1235"),
    (3.0, None, "3"), (0.000123, None, "1.23e-04"), (-0.4567, 2, "-0.46"),
    (-0.2, 0, "0"), (np.inf, None, MISSING)])
def test_numbers_to_meaningful_digits(value, decimals, text):
    assert format_number(value, decimals) == text


def test_cells_by_column():
    assert format_value("q_fdr", 0.00001) == "< 0.001"
    assert format_value("g", 0.51234) == "0.51"
    assert format_value("i2", 37.345) == "37.3"
    assert format_value("peak_x", -41.9) == "-42"
    assert format_value("tau2", 0.0123456) == "0.012"
    assert format_value("beta", 0.0123456) == "0.0123"
    assert format_value("include", "False") == "no" and format_value("found", True) == "yes"
    assert format_value("metric", "within_DMN") == "DMN (within)"
    assert format_value("exclusion_reason", "n/a") == MISSING
    assert metric_label("between_DMN_SN") == "DMN\u2013SN"


def test_every_known_column_has_a_human_header():
    for name in LABELS:
        assert "_" not in column_label(name), name
    assert column_label("some_new_column") == "Some new column"


def test_cluster_table_headers_are_distinct():
    """A cluster table holds the peak's z coordinate and its z statistic side by side."""
    from msnet.stats import cluster_columns

    for columns in (cluster_columns("g"), cluster_columns("stat")):
        columns = ["network", *columns, "peak_zstat"]
        labels = [column_label(c) for c in columns]
        assert len(set(labels)) == len(labels), labels


def test_format_table_headers_and_cells():
    out = format_table(pd.DataFrame({"metric": ["within_SN"], "p": [1e-6], "n_ms": [12]}))
    assert list(out.columns) == ["Metric", "p", "n MS"]
    assert out.iloc[0].tolist() == ["SN (within)", "< 0.001", "12"]
