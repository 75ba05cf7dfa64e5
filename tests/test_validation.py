"""Numeric settings are checked at construction, with one line naming the setting and its range."""

from __future__ import annotations

import math

import pytest

from text2brain.data import TextMapDataModule
from text2brain.models.settings import DecoderSettings, OptimSettings
from text2brain.validation import check_number, check_numbers


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (-0.01, {"low": 0, "low_open": True}, "lr must be a number > 0, got -0.01"),
        (math.nan, {"low": 0}, "lr must be a number >= 0, got nan"),
        (math.inf, {}, "lr must be a finite number, got inf"),
        (True, {"integer": True}, "lr must be a finite int, got True"),
        (1.0, {"low": 0, "high": 1, "high_open": True}, "lr must be a number in [0, 1), got 1.0"),
        (2.5, {"low": 1, "integer": True}, "lr must be an int >= 1, got 2.5"),
        ("3", {"low": 0}, "lr must be a number >= 0, got '3'"),
    ],
)
def test_a_bad_number_is_one_line_naming_it(value: object, bounds: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_number(value, "lr", **bounds)
    assert str(info.value) == message


def test_good_numbers_and_none_when_optional_pass() -> None:
    check_number(0.5, "x", 0, 1)
    check_number(3, "k", 1, integer=True)
    check_number(None, "k", 1, integer=True, optional=True)
    check_numbers([1, 2], "grid", 0, low_open=True)
    with pytest.raises(ValueError, match=r"grid\[1\] must be a number > 0, got 0"):
        check_numbers([1, 0], "grid", 0, low_open=True)
    with pytest.raises(ValueError, match="grid must not be empty"):
        check_numbers([], "grid")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": -0.01}, "optim.lr must be a number > 0, got -0.01"),
        ({"encoder_lr": -1e-5}, "optim.encoder_lr must be a number >= 0"),
        ({"weight_decay": -0.1}, "optim.weight_decay must be a number >= 0"),
        ({"lr": math.nan}, "optim.lr must be a number > 0, got nan"),
    ],
)
def test_optimisation_settings_are_checked(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        OptimSettings(**changes)


def test_decoder_dropout_is_checked_at_construction() -> None:
    with pytest.raises(ValueError, match=r"decoder.dropout must be a number in \[0, 1\), got 2"):
        DecoderSettings(dropout=2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fwhm": -1.0}, "data.fwhm must be a number > 0, got -1.0"),
        ({"n_val": 0}, "data.n_val must be an int >= 1, got 0"),
        ({"n_test": -3}, "data.n_test must be an int >= 1, got -3"),
        ({"batch_size": 0}, "data.batch_size must be an int >= 1, got 0"),
        ({"keyword_max_df": 2.0}, r"data.keyword_max_df must be a number in \(0, 1\], got 2.0"),
        ({"num_workers": -1}, "data.num_workers must be an int >= 0, got -1"),
    ],
)
def test_data_module_numbers_are_checked_before_any_work(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextMapDataModule(corpus="/nonexistent.jsonl", tokenizer=None, **changes)
