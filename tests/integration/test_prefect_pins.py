"""The pinned fastapi / SQLAlchemy work with Prefect 3.8.8 against a real local Prefect API.

With fastapi >= 0.151 the API answers 422 to deployment registration and artifact reads; with SQLAlchemy 2.1
the scheduler never inserts runs. Registering a deployment (with a cron schedule, as ``rlhf deploy`` does),
reading it back, and reading an artifact back fail loudly if either pin drifts.
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version
from prefect import flow
from prefect.artifacts import Artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType


@flow(name="pin-check")
def pin_check(n: int = 3) -> int:
    create_table_artifact(key="pin-check-table", table=[{"i": i, "square": i * i} for i in range(n)])
    return n * n


def test_versions_stay_inside_the_pins():
    assert Version(version("fastapi")) < Version("0.151"), "Prefect 3.8.8 answers 422 with fastapi >= 0.151"
    assert Version(version("sqlalchemy")) < Version("2.1"), "Prefect 3.8.8's scheduler fails with SQLAlchemy 2.1"


def test_register_a_scheduled_deployment_and_read_an_artifact_back(prefect_api):
    deployment_id = pin_check.to_deployment("pins", cron="*/30 * * * *", parameters={"n": 4}).apply()

    state = pin_check(n=4, return_state=True)
    assert state.type == StateType.COMPLETED and state.result() == 16

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("pin-check/pins")
        assert dep.id == deployment_id
        assert dep.parameters == {"n": 4}
        assert [s.schedule.cron for s in dep.schedules] == ["*/30 * * * *"]
        listed = client.read_deployments()
        assert deployment_id in [d.id for d in listed]

    artifact = Artifact.get("pin-check-table")
    assert artifact is not None and artifact.type == "table"
    assert "square" in str(artifact.data) and "9" in str(artifact.data)
