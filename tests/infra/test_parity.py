"""Both components, run from `__main__.py` with the example stacks, play the same roles.

Each role is checked by a question per cloud, asked of what the program registered
under Pulumi mocks; a role one cloud lacks fails here, not in production.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from functions.aws import contract as aws_contract
from functions.core.settings import PipelineSettings
from functions.gcp import contract as gcp_contract
from tests.infra.aws_fakes import fake_wheel_dirs, offline_lambda_builds  # noqa: F401 - fixtures
from tests.infra.conftest import (
    AWS_OUTPUT_NAMES,
    GCP_OUTPUT_NAMES,
    SHARED_OUTPUT_NAMES,
    WITH_API_OUTPUT_NAMES,
    WITH_ARCHIVE_OUTPUT_NAMES,
    RecordingMocks,
    set_config,
)
from tests.infra.test_main_config import run_main, stack

Question = Callable[[RecordingMocks, dict[str, Any]], bool]


def _aws_trigger(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (notification,) = mocks.of_type("aws:s3/bucketNotification:BucketNotification")
    (target,) = notification.inputs["lambdaFunctions"]
    return "s3:ObjectCreated:*" in target["events"] and target["filterPrefix"] == "incoming/"


def _gcp_trigger(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    trigger = mocks.one("gcp:cloudfunctionsv2/function:Function").inputs["eventTrigger"]
    return trigger["eventType"] == "google.cloud.storage.object.v1.finalized"


def _aws_deletes(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (notification,) = mocks.of_type("aws:s3/bucketNotification:BucketNotification")
    (target,) = notification.inputs["lambdaFunctions"]
    return "s3:ObjectRemoved:*" in target["events"] and target["filterPrefix"] == "incoming/"


def _gcp_deletes(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (trigger,) = mocks.of_type("gcp:eventarc/trigger:Trigger")
    criteria = {c["attribute"]: c["value"] for c in trigger.inputs["matchingCriterias"]}
    destination = trigger.inputs["destination"]["cloudRunService"]["service"]
    return (
        criteria == {"type": gcp_contract.DELETE_EVENT_TYPE, "bucket": outputs["uploadsBucket"]}
        and destination == outputs["functionName"]
    )


def _aws_work_queue(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (mapping,) = mocks.of_type("aws:lambda/eventSourceMapping:EventSourceMapping")
    (function,) = mocks.of_type("aws:lambda/function:Function")
    work = [
        q for q in mocks.of_type("aws:sqs/queue:Queue") if q.state["url"] == outputs["workQueue"]
    ]
    return (
        len(work) == 1
        and mapping.inputs["eventSourceArn"] == work[0].state["arn"]
        and mapping.inputs["functionName"] == function.state["arn"]
        and mapping.inputs["scalingConfig"]["maximumConcurrency"] == BACKFILL_CONCURRENCY
    )


def _gcp_work_queue(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (queue,) = mocks.of_type("gcp:cloudtasks/queue:Queue")
    return (
        outputs["workQueue"].endswith(f"/queues/{queue.state['name']}")
        and queue.inputs["httpTarget"]["oidcToken"]["audience"] == outputs["workUrl"]
        and queue.inputs["httpTarget"]["oidcToken"]["serviceAccountEmail"] == outputs["workInvoker"]
        and queue.inputs["rateLimits"]["maxConcurrentDispatches"] == BACKFILL_CONCURRENCY
    )


def _aws_work_retries(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    queues = {q.state["url"]: q for q in mocks.of_type("aws:sqs/queue:Queue")}
    redrive = json.loads(queues[outputs["workQueue"]].inputs["redrivePolicy"])
    dead_letters = queues[outputs["workDeadLetterQueue"]].state["arn"]
    return redrive == {
        "deadLetterTargetArn": dead_letters,
        "maxReceiveCount": aws_contract.WORK_MAX_RECEIVES,
    }


def _gcp_work_retries(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (queue,) = mocks.of_type("gcp:cloudtasks/queue:Queue")
    retry = queue.inputs["retryConfig"]
    return retry["maxAttempts"] == gcp_contract.WORK_MAX_ATTEMPTS and bool(retry["minBackoff"])


def _settings_exported(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    settings = PipelineSettings.from_json(outputs["settings"])
    return [spec.name for spec in settings.renditions] == RENDITION_NAMES[
        "aws" if "recordsTable" in outputs else "gcp"
    ]


def _aws_index(hash_key: str) -> Question:
    def question(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
        (table,) = mocks.of_type("aws:dynamodb/table:Table")
        keys = [(i["hashKey"], i["rangeKey"]) for i in table.inputs["globalSecondaryIndexes"]]
        return (hash_key, "updated_at") in keys

    return question


def _gcp_index(field: str) -> Question:
    def question(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
        indexes = mocks.of_type("gcp:firestore/index:Index")
        fields = [[f["fieldPath"] for f in index.inputs["fields"]] for index in indexes]
        return [field, "updated_at"] in fields

    return question


def _aws_failure_path(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (config,) = mocks.of_type("aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig")
    return bool(config.inputs["destinationConfig"]["onFailure"]["destination"])


def _gcp_failure_path(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    trigger = mocks.one("gcp:cloudfunctionsv2/function:Function").inputs["eventTrigger"]
    return trigger["retryPolicy"] == "RETRY_POLICY_RETRY"


def _aws_alerts_reach_the_email(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    ops = mocks.one("aws:sns/topic:Topic", "ops").state["arn"]
    emails = [
        s
        for s in mocks.of_type("aws:sns/topicSubscription:TopicSubscription")
        if s.inputs["protocol"] == "email" and s.inputs["topic"] == ops
    ]
    alarms = mocks.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    return len(emails) == 1 and all(a.inputs["alarmActions"] == [ops] for a in alarms)


def _gcp_alerts_reach_the_email(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (channel,) = mocks.of_type("gcp:monitoring/notificationChannel:NotificationChannel")
    policies = mocks.of_type("gcp:monitoring/alertPolicy:AlertPolicy")
    return bool(policies) and all(
        p.inputs["notificationChannels"] == [channel.state["name"]] for p in policies
    )


def _one(kind: str) -> Question:
    return lambda mocks, outputs: len(mocks.of_type(kind)) == 1


def _failed_images_alert(cloud: str) -> Question:
    if cloud == "aws":
        return lambda mocks, outputs: any(
            a.inputs["metricName"] == "ImagesFailed"
            for a in mocks.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
        )
    return lambda mocks, outputs: any(
        p.name.endswith("failed-images-alert")
        for p in mocks.of_type("gcp:monitoring/alertPolicy:AlertPolicy")
    )


ROLES: dict[str, dict[str, Question]] = {
    "the bucket's new objects trigger the function": {"aws": _aws_trigger, "gcp": _gcp_trigger},
    "one function": {
        "aws": _one("aws:lambda/function:Function"),
        "gcp": _one("gcp:cloudfunctionsv2/function:Function"),
    },
    "records listed by status, newest first": {
        "aws": _aws_index("status"),
        "gcp": _gcp_index("status"),
    },
    "finished records found by content, newest first": {
        "aws": _aws_index("completed_sha256"),
        "gcp": _gcp_index("completed_sha256"),
    },
    "an events topic": {
        "aws": lambda mocks, outputs: outputs["eventsTopic"].startswith("arn:aws:sns:"),
        "gcp": _one("gcp:pubsub/topic:Topic"),
    },
    "a failure path when retries run out": {
        "aws": _aws_failure_path,
        "gcp": _gcp_failure_path,
    },
    "renditions delivered from their own bucket": {
        "aws": _one("aws:cloudfront/distribution:Distribution"),
        "gcp": lambda mocks, outputs: outputs["cdnUrl"].endswith(outputs["renditionsBucket"]),
    },
    "an alert on FAILED images": {
        "aws": _failed_images_alert("aws"),
        "gcp": _failed_images_alert("gcp"),
    },
    "alerts e-mailed to alarmEmail": {
        "aws": _aws_alerts_reach_the_email,
        "gcp": _gcp_alerts_reach_the_email,
    },
    "deletes of uploads reach the function": {"aws": _aws_deletes, "gcp": _gcp_deletes},
    "a work queue in front of the same function, at backfillConcurrency": {
        "aws": _aws_work_queue,
        "gcp": _gcp_work_queue,
    },
    "work items retried the contract's number of times": {
        "aws": _aws_work_retries,
        "gcp": _gcp_work_retries,
    },
    "the function's settings exported for backfill --stale": {
        "aws": _settings_exported,
        "gcp": _settings_exported,
    },
}
BACKFILL_CONCURRENCY = 4  # deployed() sets it: the stacks' own values differ
RENDITION_NAMES = {
    cloud: [text.split(":")[0] for text in stack(f"{cloud}-dev")["imagepipe:renditions"]]
    for cloud in ("aws", "gcp")
}


@pytest.fixture
def mocked(pulumi_mocks, offline_lambda_builds):  # noqa: F811 - pytest fixture injection
    return pulumi_mocks


def deployed(cloud: str) -> dict[str, Any]:
    config = {
        **stack(f"{cloud}-dev"),
        "imagepipe:alarmEmail": "ops@example.com",
        "imagepipe:backfillConcurrency": str(BACKFILL_CONCURRENCY),
    }
    if cloud == "gcp":
        config["imagepipe:uploadsPrefix"] = "incoming/"
    set_config(config)
    return run_main()


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_both_clouds_play_every_role(mocked, cloud):
    outputs = deployed(cloud)
    missing = [role for role, asked in ROLES.items() if not asked[cloud](mocked, outputs)]
    assert missing == []


@pytest.mark.parametrize(("cloud", "names"), [("aws", AWS_OUTPUT_NAMES), ("gcp", GCP_OUTPUT_NAMES)])
def test_the_same_things_have_the_same_output_names(mocked, cloud, names):
    outputs = deployed(cloud)
    assert set(outputs) == names
    assert set(outputs) >= SHARED_OUTPUT_NAMES
    assert outputs["uploadsPrefix"] == "incoming/"


API_CONFIG = {
    "imagepipe:api": "true",
    "imagepipe:apiJwtIssuer": "https://login.example.com/",
    "imagepipe:apiJwtAudience": "imagepipe-api",
    "imagepipe:apiAllowedOrigins": '["https://app.example.com"]',
}


def _aws_api(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    routes = {r.inputs["routeKey"] for r in mocks.of_type("aws:apigatewayv2/route:Route")}
    cors = mocks.of_type("aws:s3/bucketCorsConfiguration:BucketCorsConfiguration")
    return routes == {"POST /uploads", "GET /images/{id}"} and len(cors) == 1


def _gcp_api(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    api = mocks.one("gcp:cloudfunctionsv2/function:Function", "imagepipe-api-fn")
    uploads = mocks.one("gcp:storage/bucket:Bucket", "imagepipe-uploads")
    return "eventTrigger" not in api.inputs and bool(uploads.inputs.get("cors"))


@pytest.mark.parametrize(("cloud", "names"), [("aws", AWS_OUTPUT_NAMES), ("gcp", GCP_OUTPUT_NAMES)])
def test_with_the_api_both_clouds_serve_it_and_export_its_url(mocked, cloud, names):
    set_config({**stack(f"{cloud}-dev"), **API_CONFIG})
    outputs = run_main()
    assert set(outputs) == names | WITH_API_OUTPUT_NAMES
    assert outputs["apiUrl"].startswith("https://")
    assert {"aws": _aws_api, "gcp": _gcp_api}[cloud](mocked, outputs)


def _aws_archive(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (bucket,) = [b for b in mocks.of_type("aws:s3/bucket:Bucket") if b.name.endswith("-archive")]
    (lifecycle,) = [
        r
        for r in mocks.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
        if r.name.endswith("-archive-lifecycle")
    ]
    classes = {
        t["storageClass"] for rule in lifecycle.inputs["rules"] for t in rule.get("transitions", [])
    }
    return bucket.state["bucket"] == outputs["archiveBucket"] and classes == {"GLACIER_IR"}


def _gcp_archive(mocks: RecordingMocks, outputs: dict[str, Any]) -> bool:
    (bucket,) = [
        b for b in mocks.of_type("gcp:storage/bucket:Bucket") if b.name.endswith("-archive")
    ]
    return bucket.state["name"] == outputs["archiveBucket"] and (
        bucket.inputs["storageClass"] == "ARCHIVE"
    )


@pytest.mark.parametrize(("cloud", "names"), [("aws", AWS_OUTPUT_NAMES), ("gcp", GCP_OUTPUT_NAMES)])
def test_with_originals_archive_both_clouds_archive_cold_and_export_the_bucket(
    mocked, cloud, names
):
    set_config({**stack(f"{cloud}-dev"), "imagepipe:originals": "archive"})
    outputs = run_main()
    assert set(outputs) == names | WITH_ARCHIVE_OUTPUT_NAMES
    assert {"aws": _aws_archive, "gcp": _gcp_archive}[cloud](mocked, outputs)
