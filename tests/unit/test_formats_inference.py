"""Date-order inference on its own: what the values of a column allow, what rules a reading out, never a guess."""

from __future__ import annotations

from datetime import date

from common.drift.formats import Ambiguous, DateOrder

DAY_FIRST = "%d-%m-%y %H:%M"


def orders(*values: str) -> DateOrder:
    inference = DateOrder(latest=date(2027, 1, 17))
    for value in values:
        inference.observe(value)
    return inference


def test_a_first_field_above_twelve_pins_day_first_only_with_a_four_digit_year():
    assert orders("31-12-2020 23:59").decided == "%d-%m-%Y %H:%M"
    assert orders("12/31/2020").decided == "%m/%d/%Y"
    assert orders("05-06-2020 10:00").decided is None  # both readings are real dates
    assert orders("05-06-2020 10:00").remaining == ["%d-%m-%Y %H:%M", "%m-%d-%Y %H:%M"]


def test_two_digit_years_are_also_ambiguous_with_yy_mm_dd_until_the_values_rule_it_out():
    assert orders("25-12-20 23:59").remaining == ["%d-%m-%y %H:%M", "%y-%m-%d %H:%M"]  # or 2025-12-20
    assert orders("31-12-20 23:59").decided == DAY_FIRST  # 2031-12-20 lies in the future
    both = orders("25-12-20 23:59", "28-01-18 23:59")  # 2028-01-18 has not happened yet: not YY-MM-DD
    assert both.decided == DAY_FIRST
    assert both.evidence()["ruled_out"] == {
        "%m-%d-%y %H:%M": "'25-12-20 23:59': no such date in that order",
        "%y-%m-%d %H:%M": "'28-01-18 23:59': would be 2028-01-18, in the future",
    }
    assert orders("12-31-20").decided == "%m-%d-%y"
    assert orders("20-12-31").decided == "%y-%m-%d"  # 31 cannot be a year's first field and a month


def test_every_value_seen_counts_not_a_sample():
    inference = orders(*[f"{day:02d}-01-18 23:59" for day in range(1, 13)] * 3)  # 36 values, all <= 12
    assert inference.decided is None
    inference.observe("13-01-18 23:59")
    assert inference.decided is None  # month-first is out, YY-MM-DD (2013-01-18) is not
    inference.observe("29-01-18 23:59")
    assert inference.decided == DAY_FIRST


def test_values_that_fit_no_single_order_are_never_guessed():
    inference = orders("31-12-2020", "12-31-2020")
    assert inference.decided is None and inference.remaining == []
    refusal = inference.refuse("Date", "31-12-2020", "source_b", "observed_at")
    assert isinstance(refusal, Ambiguous) and "the values of Date fit no single format" in str(refusal)
    assert 'FIELD_FORMATS=\'{"source_b": {"observed_at": "%d-%m-%Y"}}\'' in str(refusal)


def test_the_time_part_of_the_format_is_read_from_the_value_itself():
    assert DateOrder.candidates("31/12/2020 11:59:30 PM") == ["%d/%m/%Y %I:%M:%S %p", "%m/%d/%Y %I:%M:%S %p"]
    assert DateOrder.candidates("31.12.20T23:59") == ["%d.%m.%yT%H:%M", "%m.%d.%yT%H:%M", "%y.%m.%dT%H:%M"]
    assert DateOrder.candidates("2020/12/31") == ["%Y/%m/%d"]  # a 4-digit year first: only one order
    assert orders("12/31/2020 11:59 PM").decided == "%m/%d/%Y %I:%M %p"


def test_shapes_that_are_not_spreadsheet_dates_are_not_inferred():
    for value in ("garbage", "31.12.2020.5", "2020", "1-2-3-4", "١٢-١٢-٢٠"):
        assert DateOrder.candidates(value) == []
