"""ray-cluster.yaml passes Ray's own autoscaler config validation (as `ray up` would run it)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "ray-cluster.yaml"


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_config_is_valid() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    _validate(config)
    assert config["provider"]["type"] == "gcp"
    worker = config["available_node_types"]["cpu_worker"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert {"preemptible": True} in worker["node_config"]["scheduling"]
    assert config["idle_timeout_minutes"] > 0


def test_validation_can_fail() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["cpu_worker"]["no_such_field"] = 1
    with pytest.raises(Exception):  # noqa: B017 - whichever validator error Ray's schema raises
        _validate(config)
