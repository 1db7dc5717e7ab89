"""The option objects of the Python API: what a shorthand means, and that they cannot be changed in place."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from quantlab.calibrate import CalibrationOutput, CollectOptions, Method
from quantlab.evaluation.options import EvalOptions
from quantlab.qdq import QdqOptions


def test_a_method_is_a_name_a_pair_or_a_method():
    assert Method.of("entropy") == Method("entropy")
    assert Method.of(("percentile", {"p": 99.9})) == Method("percentile", {"p": 99.9})
    assert Method.of(Method("mse")) == Method("mse")


def test_a_method_label_names_its_parameters():
    assert Method("percentile", {"p": 99.9}).label == "percentile(p=99.9)"
    assert Method("max").label == "max"


def test_a_cache_path_stands_for_an_output_with_the_table_beside_it():
    output = CalibrationOutput.of("out/model.cache")
    assert output == CalibrationOutput("out/model.cache")
    assert output.table_path == Path("out/model.quantlab.json")
    assert CalibrationOutput.of(None) is None


def test_a_table_path_given_is_kept():
    assert CalibrationOutput("m.cache", table="elsewhere.json").table_path == Path("elsewhere.json")


@pytest.mark.parametrize("options", [CollectOptions(), EvalOptions(), QdqOptions(), Method("max"),
                                     CalibrationOutput("m.cache")])
def test_options_cannot_be_changed_in_place(options):
    field = dataclasses.fields(options)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, field, None)


def test_lists_given_to_options_become_tuples():
    assert QdqOptions(exclude_nodes=["a", "b"]).exclude_nodes == ("a", "b")
    assert EvalOptions(outputs=["logits"], providers=["CPUExecutionProvider"]) == \
        EvalOptions(outputs=("logits",), providers=("CPUExecutionProvider",))


def test_none_parameters_mean_none():
    assert Method("entropy", None).params == {} and EvalOptions(metric_params=None).metric_params == {}


def test_a_method_does_not_follow_later_changes_to_the_callers_dict():
    params = {"p": 99.9}
    method = Method("percentile", params)
    params["p"] = 50
    assert method.params == {"p": 99.9}
