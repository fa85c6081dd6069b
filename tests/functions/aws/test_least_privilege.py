"""The function's role allows exactly what runs with it, and nothing more.

The real handler runs on moto through every path that calls AWS (a completed upload, its
duplicate, a hostile file that fails, an upload deleted before processing, an SNS outage
that leaves the record PENDING and the retry that completes it, work from the work queue,
deletes of originals down to their shared renditions and their CDN invalidation, and an
original archived). Hooks on the botocore clients the handler built record each operation
it performs; each is mapped to the IAM action and resource AWS authorizes it as. To those
come what AWS does with the same role: S3's own s3:ListBucket check when a missing key
answers 404, and what Lambda does with the execution role (logs, X-Ray with tracing, the
on-failure destination, polling the work queue). The role from `policies.function_policy`
must allow every one of them, and grant no action outside them.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.stub import Stubber
from PIL import Image, ImageDraw

from components.aws import policies
from functions.aws.adapters import CloudFrontInvalidator
from functions.aws.bootstrap import build_pipeline
from functions.aws.contract import from_env
from functions.core.records import ObjectRef, PublisherUnavailable
from functions.core.settings import PipelineSettings
from functions.core.work import WorkItem
from functions.local.emulated_aws import drain_queue

from .conftest import REGION, EmulatedStack, LambdaContext
from .test_handler_operations import work_message
from .test_operations_adapters import moto_distribution

pytestmark = [
    pytest.mark.emulator,
    # Powertools warns when an invocation (an outage) records no metric.
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

FUNCTION_NAME = "imagepipe-test-fn"
HANDLER = "the handler"
LAMBDA = "Lambda, with the execution role"
S3_NOT_FOUND_CHECK = "S3, deciding that a missing key answers 404"


@dataclass(frozen=True)
class Call:
    """One request AWS authorizes against the role: an IAM action on one resource."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()  # condition keys the request carries
    by: str = HANDLER


def _object_arn(params: Mapping[str, Any], _: str) -> str:
    return f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"


def _table_arn(params: Mapping[str, Any], account: str) -> str:
    return f"arn:aws:dynamodb:{REGION}:{account}:table/{params['TableName']}"


def _index_arn(params: Mapping[str, Any], account: str) -> str:
    return f"{_table_arn(params, account)}/index/{params['IndexName']}"


def _copy_calls(params: Mapping[str, Any], _: str) -> list[tuple[str, str]]:
    """CopyObject: read the source (its version's action when it names one), write the copy.
    botocore has already turned a CopySource mapping into "<bucket>/<key>[?versionId=]"."""
    source = params["CopySource"]
    if isinstance(source, Mapping):
        path, version = f"{source['Bucket']}/{source['Key']}", source.get("VersionId")
    else:
        path, _sep, query = str(source).partition("?versionId=")
        path, version = unquote(path), query or None
    read = "s3:GetObjectVersion" if version else "s3:GetObject"
    return [(read, f"arn:aws:s3:::{path}"), ("s3:PutObject", _object_arn(params, _))]


def _delete_calls(params: Mapping[str, Any], _: str) -> list[tuple[str, str]]:
    """DeleteObjects is authorized as s3:DeleteObject on each key it names."""
    return [
        ("s3:DeleteObject", f"arn:aws:s3:::{params['Bucket']}/{entry['Key']}")
        for entry in params["Delete"]["Objects"]
    ]


# (service, operation) -> (the IAM action AWS checks, the resource it checks it on), or a
# function of the request giving several (action, resource) pairs.
OPERATIONS: dict[tuple[str, str], Any] = {
    ("s3", "GetObject"): ("s3:GetObject", _object_arn),
    ("s3", "HeadObject"): ("s3:GetObject", _object_arn),
    ("s3", "PutObject"): ("s3:PutObject", _object_arn),
    ("s3", "DeleteObject"): lambda params, account: [
        (
            "s3:DeleteObjectVersion" if params.get("VersionId") else "s3:DeleteObject",
            _object_arn(params, account),
        )
    ],
    ("s3", "DeleteObjects"): _delete_calls,
    ("s3", "CopyObject"): _copy_calls,
    ("dynamodb", "GetItem"): ("dynamodb:GetItem", _table_arn),
    ("dynamodb", "PutItem"): ("dynamodb:PutItem", _table_arn),
    ("dynamodb", "UpdateItem"): ("dynamodb:UpdateItem", _table_arn),
    ("dynamodb", "DeleteItem"): ("dynamodb:DeleteItem", _table_arn),
    ("dynamodb", "Query"): ("dynamodb:Query", _index_arn),
    ("sns", "Publish"): ("sns:Publish", lambda params, _: params["TopicArn"]),
    ("s3", "ListObjectsV2"): (
        "s3:ListBucket",
        lambda params, _: f"arn:aws:s3:::{params['Bucket']}",
    ),
    ("cloudfront", "CreateInvalidation"): (
        "cloudfront:CreateInvalidation",
        lambda params, account: (
            f"arn:aws:cloudfront::{account}:distribution/{params['DistributionId']}"
        ),
    ),
}
# Condition keys a request carries, by operation: a listing's prefix is checked as s3:prefix.
CONTEXT_KEYS = {("s3", "ListObjectsV2"): (("s3:prefix", "Prefix"),)}
_PARAMS = "imagepipe.least_privilege.params"


class CallRecorder:
    """Records, through botocore's event hooks, what the watched clients ask AWS to do."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.calls: list[Call] = []
        self.unmapped: list[str] = []
        self._hooks: list[tuple[Any, str, Any]] = []

    def watch(self, client: Any) -> None:
        for event, hook in (
            ("before-parameter-build", self._requested),
            ("after-call", self._answered),
        ):
            client.meta.events.register(event, hook)
            self._hooks.append((client, event, hook))

    def watch_pipeline(self, pipeline: Any) -> None:
        """The clients an AWS pipeline's adapters were built with."""
        for client in (pipeline.blobs._s3, pipeline.records._dynamodb, pipeline.events._sns):
            self.watch(client)
        cdn = getattr(pipeline, "cdn", None)
        if cdn is not None:
            self.watch(cdn._cloudfront)

    def stop(self) -> None:
        for client, event, hook in self._hooks:
            client.meta.events.unregister(event, hook)
        self._hooks.clear()

    def _requested(self, params: Mapping[str, Any], model: Any, context: dict, **_: Any) -> None:
        if context.get("is_presign_request"):
            # Signed here, sent later by whoever holds it (botocore builds a presigned POST on
            # CreateBucket's model, for its URL): authorized then, as the call it makes.
            return
        operation = (model.service_model.service_name, model.name)
        if operation not in OPERATIONS:
            self.unmapped.append(".".join(operation))
            return
        mapped = OPERATIONS[operation]
        context[_PARAMS] = dict(params)
        keys = tuple(
            (key, str(params.get(name, ""))) for key, name in CONTEXT_KEYS.get(operation, ())
        )
        if callable(mapped):
            pairs = mapped(params, self.account)
        else:
            action, resource = mapped
            pairs = [(action, resource(params, self.account))]
        self.calls.extend(Call(action, resource, keys) for action, resource in pairs)

    def _answered(self, http_response: Any, model: Any, context: dict, **_: Any) -> None:
        # S3 answers 404 for a missing key only after checking s3:ListBucket on the bucket,
        # with the requested key as s3:prefix; without that grant it answers 403.
        missing = model.name in ("GetObject", "HeadObject") and http_response.status_code == 404
        if model.service_model.service_name == "s3" and missing:
            params = context[_PARAMS]
            bucket_arn = f"arn:aws:s3:::{params['Bucket']}"
            prefix = (("s3:prefix", params["Key"]),)
            self.calls.append(Call("s3:ListBucket", bucket_arn, prefix, by=S3_NOT_FOUND_CHECK))


def lambda_service_calls(
    *, log_group_arn: str, dead_letter_queue_arn: str, work_queue_arn: str, tracing: bool
) -> list[Call]:
    """What Lambda itself does with the execution role for this function."""
    stream = f"{log_group_arn}:log-stream:2026/01/01/[$LATEST]0123456789abcdef"
    calls = [
        Call("logs:CreateLogStream", stream, by=LAMBDA),
        Call("logs:PutLogEvents", stream, by=LAMBDA),
        # The async invoke config's on-failure destination: events that failed every retry.
        Call("sqs:SendMessage", dead_letter_queue_arn, by=LAMBDA),
        # The work queue's event source mapping polls, deletes what was processed, and
        # reads the queue's attributes (AWS's own list for an SQS event source).
        *(
            Call(action, work_queue_arn, by=LAMBDA)
            for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
        ),
    ]
    if tracing:  # X-Ray has no resource-level permissions
        calls += [Call("xray:PutTraceSegments", "*", by=LAMBDA)]
        calls += [Call("xray:PutTelemetryRecords", "*", by=LAMBDA)]
    return calls


# --- a small IAM evaluator: wildcards, literals, StringLike / StringEquals -------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _iam_pattern(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """IAM's matching: `*` any run, `?` one character, `${*}` `${?}` `${$}` literally."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern[i : i + 2] == "${" and pattern[i + 3 : i + 4] == "}" and pattern[i + 2] in "*?$":
            parts.append(re.escape(pattern[i + 2]))
            i += 4
            continue
        parts.append({"*": ".*", "?": "."}.get(pattern[i], re.escape(pattern[i])))
        i += 1
    return re.compile("".join(parts), flags | re.DOTALL)


def _conditions_hold(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in condition.items():
        for key, expected in tests.items():
            actual = context.get(key)
            if actual is None:  # an absent key matches no StringLike / StringEquals
                return False
            if operator == "StringLike":
                held = any(_iam_pattern(value).fullmatch(actual) for value in _as_list(expected))
            elif operator == "StringEquals":
                held = actual in _as_list(expected)
            else:
                raise AssertionError(f"this test cannot evaluate the condition operator {operator}")
            if not held:
                return False
    return True


def _matches(statement: Mapping[str, Any], call: Call) -> bool:
    return (
        any(
            _iam_pattern(a, re.IGNORECASE).fullmatch(call.action)
            for a in _as_list(statement["Action"])
        )
        and any(_iam_pattern(r).fullmatch(call.resource) for r in _as_list(statement["Resource"]))
        and _conditions_hold(statement.get("Condition", {}), dict(call.context))
    )


def allows(document: Mapping[str, Any], call: Call) -> bool:
    statements = document["Statement"]
    if any(s["Effect"] == "Deny" and _matches(s, call) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and _matches(s, call) for s in statements)


def least_privilege_problems(document: Mapping[str, Any], calls: Iterable[Call]) -> list[str]:
    """Every call the role refuses, then every granted action no call needs; [] when exact."""
    calls = list(dict.fromkeys(calls))
    problems = []
    for call in calls:
        if not allows(document, call):
            context = "".join(f" with {key}={value!r}" for key, value in call.context)
            problems.append(
                f"{call.by} needs {call.action} on {call.resource}{context}, "
                "which the role does not allow"
            )
    used = {call.action for call in calls}
    granted = {
        action
        for statement in document["Statement"]
        if statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"])
    }
    problems += [
        f"the role grants {action}, which neither the handler nor AWS on its behalf uses"
        for action in sorted(granted - used)
    ]
    return problems


# --- the stack's ARNs and the role for it ----------------------------------------------------


@dataclass(frozen=True)
class StackArns:
    account: str
    uploads: str
    renditions: str
    table: str
    topic: str
    dead_letter_queue: str
    work_queue: str
    log_group: str
    archive: str = "arn:aws:s3:::imagepipe-archive"

    def distribution(self, distribution_id: str) -> str:
        return f"arn:aws:cloudfront::{self.account}:distribution/{distribution_id}"

    def policy(
        self,
        *,
        uploads_prefix: str | None,
        tracing: bool,
        originals: str = "keep",
        delete_renditions: bool = True,
        distribution_arn: str | None = None,
    ) -> dict[str, Any]:
        return policies.function_policy(
            uploads_bucket_arn=self.uploads,
            renditions_bucket_arn=self.renditions,
            records_table_arn=self.table,
            events_topic_arn=self.topic,
            dead_letter_queue_arn=self.dead_letter_queue,
            work_queue_arn=self.work_queue,
            log_group_arn=self.log_group,
            tracing=tracing,
            uploads_prefix=uploads_prefix,
            delete_uploads=originals != "keep",
            archive_bucket_arn=self.archive if originals == "archive" else None,
            delete_renditions=delete_renditions,
            distribution_arn=distribution_arn,
        )

    def lambda_calls(self, *, tracing: bool) -> list[Call]:
        return lambda_service_calls(
            log_group_arn=self.log_group,
            dead_letter_queue_arn=self.dead_letter_queue,
            work_queue_arn=self.work_queue,
            tracing=tracing,
        )


def arns_of(stack: EmulatedStack) -> StackArns:
    account = stack.topic_arn.split(":")[4]
    return StackArns(
        account=account,
        uploads=f"arn:aws:s3:::{stack.uploads}",
        renditions=f"arn:aws:s3:::{stack.renditions}",
        table=stack.dynamodb.describe_table(TableName=stack.table)["Table"]["TableArn"],
        topic=stack.topic_arn,
        dead_letter_queue=stack.resources.dead_letter_queue_arn,
        work_queue=stack.resources.work_queue_arn,
        log_group=f"arn:aws:logs:{REGION}:{account}:log-group:/aws/lambda/{FUNCTION_NAME}",
        archive=f"arn:aws:s3:::{ARCHIVE_BUCKET}",
    )


EXAMPLE_ARNS = StackArns(
    account="123456789012",
    uploads="arn:aws:s3:::imagepipe-uploads",
    renditions="arn:aws:s3:::imagepipe-renditions",
    table="arn:aws:dynamodb:us-east-1:123456789012:table/imagepipe-records",
    topic="arn:aws:sns:us-east-1:123456789012:imagepipe-events",
    dead_letter_queue="arn:aws:sqs:us-east-1:123456789012:imagepipe-dlq",
    work_queue="arn:aws:sqs:us-east-1:123456789012:imagepipe-work",
    log_group="arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/imagepipe-fn",
)
ARCHIVE_BUCKET = "imagepipe-test-archive"


def example_calls(arns: StackArns, key: str = "incoming/cat.jpg") -> list[Call]:
    """What one completed upload, one deleted before processing, one of the same bytes and
    the deletes of both originals cost, as a recording would list them."""
    content = "0f1e"
    return [
        # Both originals deleted: their records found by key, the last one's renditions
        # listed and deleted, the content's reference item updated and removed.
        Call("dynamodb:Query", f"{arns.table}/index/by-object"),
        Call("dynamodb:UpdateItem", arns.table),
        Call("dynamodb:DeleteItem", arns.table),
        Call("s3:ListBucket", arns.renditions),
        Call("s3:DeleteObject", f"{arns.renditions}/{content}/thumb-200x200-cover-abc.jpg"),
        Call("dynamodb:GetItem", arns.table),
        Call("dynamodb:PutItem", arns.table),
        Call("s3:GetObject", f"{arns.uploads}/{key}"),
        Call("s3:ListBucket", arns.uploads, (("s3:prefix", key),), by=S3_NOT_FOUND_CHECK),
        Call("s3:PutObject", f"{arns.renditions}/0f1e/thumb-200x200-cover-abc.jpg"),
        Call("sns:Publish", arns.topic),
        # The same bytes again: a finished record found, its renditions checked (HEAD).
        Call("dynamodb:Query", f"{arns.table}/index/by-content"),
        Call("s3:GetObject", f"{arns.renditions}/0f1e/thumb-200x200-cover-abc.jpg"),
    ]


# --- driving the handler through every path that calls AWS -----------------------------------


def small_jpeg(colour: tuple[int, int, int] = (40, 90, 160)) -> bytes:
    image = Image.new("RGB", (320, 240), colour)
    ImageDraw.Draw(image).ellipse((80, 60, 240, 180), fill=(200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def record_of(stack: EmulatedStack, key: str) -> dict[str, Any]:
    deserialize = TypeDeserializer().deserialize
    items = [{name: deserialize(value) for name, value in item.items()} for item in stack.items()]
    (item,) = [item for item in items if item["source"]["key"] == key]
    return item


def outcomes(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(summary["action"], summary["status"]) for summary in result["records"]]


def drive_every_path(
    stack: EmulatedStack,
    handler_module: ModuleType,
    context: LambdaContext,
    recorder: CallRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each path that calls AWS once, each checked to have ended as that path ends."""
    recorder.watch_pipeline(handler_module.PIPELINE)
    handler = handler_module.handler
    photo = small_jpeg()

    completed = stack.upload("incoming/photo.jpg", photo)
    assert outcomes(handler(completed, context)) == [("completed", "COMPLETED")]
    assert outcomes(handler(completed, context)) == [("duplicate", "COMPLETED")]

    hostile = stack.upload("incoming/evil.jpg", b"#!/bin/sh\necho this is not a JPEG\n" * 20)
    assert outcomes(handler(hostile, context)) == [("failed", "FAILED")]
    assert record_of(stack, "incoming/evil.jpg")["error"]["code"] == "unsupported_format"

    gone = stack.upload("incoming/gone.jpg", photo)
    stack.s3.delete_object(Bucket=stack.uploads, Key="incoming/gone.jpg")
    assert outcomes(handler(gone, context)) == [("failed", "FAILED")]
    assert record_of(stack, "incoming/gone.jpg")["error"]["code"] == "object_missing"
    (removed,) = drain_queue(stack.sqs, stack.resources.trigger_queue_url)
    assert outcomes(handler(removed, context)) == [("deleted", "DELETED")]

    later = stack.upload("incoming/later.jpg", photo)
    with monkeypatch.context() as outage:
        outage.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{closed_port()}")
        outage.setenv("AWS_MAX_ATTEMPTS", "2")
        sns_down = build_pipeline(from_env(os.environ))
    recorder.watch_pipeline(sns_down)
    with pytest.raises(PublisherUnavailable):
        handler_module.handle_event(later, sns_down)
    pending = record_of(stack, "incoming/later.jpg")
    assert (pending["status"], pending["error"]["code"]) == ("PENDING", "publisher_unavailable")
    assert outcomes(handler(later, context)) == [("completed", "COMPLETED")]  # Lambda's retry

    # Work from the work queue: an upload the trigger never saw.
    etag = stack.s3.put_object(Bucket=stack.uploads, Key="incoming/before.jpg", Body=photo)["ETag"]
    drain_queue(stack.sqs, stack.resources.trigger_queue_url)
    item = WorkItem(ObjectRef(stack.uploads, "incoming/before.jpg", etag.strip('"'), len(photo)))
    assert handler({"Records": [work_message(item.to_json())]}, context) == {
        "batchItemFailures": []
    }
    assert record_of(stack, "incoming/before.jpg")["status"] == "COMPLETED"


def drive_deletes(
    stack: EmulatedStack, handler_module: ModuleType, pipeline: Any, recorder: CallRecorder
) -> None:
    """Every original of the photo's bytes deleted: the last one out takes the renditions."""
    recorder.watch_pipeline(pipeline)
    for key in ("incoming/photo.jpg", "incoming/later.jpg", "incoming/before.jpg"):
        stack.s3.delete_object(Bucket=stack.uploads, Key=key)
        (removed,) = drain_queue(stack.sqs, stack.resources.trigger_queue_url)
        assert outcomes(handler_module.handle_event(removed, pipeline)) == [("deleted", "DELETED")]
    assert stack.rendition_keys() == []


def drive_archive(stack: EmulatedStack, handler_module: ModuleType, pipeline: Any) -> None:
    """originals: archive, for an upload of new bytes: copied to the archive, then deleted;
    the delete event that follows is the pipeline's own and changes nothing."""
    archived = stack.upload("incoming/archived.jpg", small_jpeg(colour=(10, 200, 10)))
    assert outcomes(handler_module.handle_event(archived, pipeline)) == [("completed", "COMPLETED")]
    assert record_of(stack, "incoming/archived.jpg")["original"].startswith("archived:")
    (removed,) = drain_queue(stack.sqs, stack.resources.trigger_queue_url)
    assert handler_module.handle_event(removed, pipeline) == {"records": []}


@pytest.fixture
def recorder(stack: EmulatedStack) -> Iterator[CallRecorder]:
    watching = CallRecorder(account=arns_of(stack).account)
    yield watching
    watching.stop()


@pytest.mark.parametrize(
    ("uploads_prefix", "tracing", "originals", "cdn"),
    [
        (None, False, "keep", False),
        ("incoming/", True, "keep", True),
        (None, False, "archive", False),
    ],
    ids=["whole-bucket", "uploads-prefix-tracing-and-cdn", "originals-archive"],
)
def test_the_role_allows_exactly_what_the_handler_and_aws_do_with_it(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    recorder: CallRecorder,
    monkeypatch: pytest.MonkeyPatch,
    uploads_prefix: str | None,
    tracing: bool,
    originals: str,
    cdn: bool,
) -> None:
    drive_every_path(stack, handler_module, lambda_context, recorder, monkeypatch)
    pipeline = handler_module.PIPELINE
    distribution_arn = None
    if cdn:
        cloudfront = boto3.client("cloudfront")
        distribution = moto_distribution(cloudfront, stack.renditions)
        distribution_arn = arns_of(stack).distribution(distribution)
        pipeline = dataclasses.replace(
            pipeline, cdn=CloudFrontInvalidator(cloudfront, distribution)
        )
    drive_deletes(stack, handler_module, pipeline, recorder)
    if originals == "archive":
        stack.s3.create_bucket(Bucket=ARCHIVE_BUCKET)
        pipeline = dataclasses.replace(
            pipeline,
            settings=PipelineSettings(originals="archive"),
            archive_bucket=ARCHIVE_BUCKET,
        )
        drive_archive(stack, handler_module, pipeline)

    assert recorder.unmapped == [], (
        f"the handler calls {recorder.unmapped}, which this test cannot map to IAM actions; "
        "add them to OPERATIONS"
    )
    recorded = {call.action for call in recorder.calls}
    # Not vacuous: every path that calls AWS was taken, the 404 included.
    assert recorded == {
        "s3:GetObject",
        "s3:ListBucket",
        "s3:PutObject",
        "s3:DeleteObject",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "sns:Publish",
        *(["cloudfront:CreateInvalidation"] if cdn else []),
    }
    # The same bytes under later.jpg took photo.jpg's renditions, checked with a HEAD each.
    assert any(
        c.resource.startswith(arns_of(stack).renditions)
        for c in recorder.calls
        if c.action == "s3:GetObject"
    )
    arns = arns_of(stack)
    calls = [*recorder.calls, *arns.lambda_calls(tracing=tracing)]
    document = arns.policy(
        uploads_prefix=uploads_prefix,
        tracing=tracing,
        originals=originals,
        distribution_arn=distribution_arn,
    )
    assert least_privilege_problems(document, calls) == []


# --- the check can fail -------------------------------------------------------------------------


def test_the_example_calls_need_exactly_the_role():
    calls = [*example_calls(EXAMPLE_ARNS), *EXAMPLE_ARNS.lambda_calls(tracing=False)]
    document = EXAMPLE_ARNS.policy(uploads_prefix="incoming/", tracing=False)
    assert least_privilege_problems(document, calls) == []


def test_a_grant_no_call_needs_is_named():
    calls = [*example_calls(EXAMPLE_ARNS), *EXAMPLE_ARNS.lambda_calls(tracing=False)]
    document = EXAMPLE_ARNS.policy(uploads_prefix=None, tracing=False)
    records = next(s for s in document["Statement"] if s["Sid"] == "KeepRecords")
    records["Action"] = [*records["Action"], "dynamodb:Scan"]

    assert least_privilege_problems(document, calls) == [
        "the role grants dynamodb:Scan, which neither the handler nor AWS on its behalf uses"
    ]


def test_tracing_grants_are_extra_without_tracing():
    calls = [*example_calls(EXAMPLE_ARNS), *EXAMPLE_ARNS.lambda_calls(tracing=False)]
    document = EXAMPLE_ARNS.policy(uploads_prefix=None, tracing=True)

    assert least_privilege_problems(document, calls) == [
        f"the role grants {action}, which neither the handler nor AWS on its behalf uses"
        for action in ("xray:PutTelemetryRecords", "xray:PutTraceSegments")
    ]


def test_a_call_the_role_does_not_allow_is_named():
    # With originals: keep, an upload is never the function's to delete.
    delete = Call("s3:DeleteObject", f"{EXAMPLE_ARNS.uploads}/incoming/cat.jpg")
    calls = [*example_calls(EXAMPLE_ARNS), *EXAMPLE_ARNS.lambda_calls(tracing=False), delete]
    document = EXAMPLE_ARNS.policy(uploads_prefix=None, tracing=False)

    assert least_privilege_problems(document, calls) == [
        f"the handler needs s3:DeleteObject on {EXAMPLE_ARNS.uploads}/incoming/cat.jpg, "
        "which the role does not allow"
    ]


def test_without_list_bucket_the_404_check_is_named():
    calls = [*example_calls(EXAMPLE_ARNS), *EXAMPLE_ARNS.lambda_calls(tracing=False)]
    document = EXAMPLE_ARNS.policy(uploads_prefix=None, tracing=False)
    document["Statement"] = [
        s for s in document["Statement"] if s["Sid"] != "TellMissingUploadsApart"
    ]

    (problem,) = least_privilege_problems(document, calls)
    assert problem.startswith(f"{S3_NOT_FOUND_CHECK} needs s3:ListBucket on {EXAMPLE_ARNS.uploads}")


def test_with_an_uploads_prefix_keys_outside_it_are_neither_read_nor_listed():
    document = EXAMPLE_ARNS.policy(uploads_prefix="incoming/", tracing=False)
    outside = "private/secret.jpg"

    assert not allows(document, Call("s3:GetObject", f"{EXAMPLE_ARNS.uploads}/{outside}"))
    list_outside = Call("s3:ListBucket", EXAMPLE_ARNS.uploads, (("s3:prefix", outside),))
    assert not allows(document, list_outside)
    assert not allows(document, Call("s3:ListBucket", EXAMPLE_ARNS.uploads))  # no prefix at all
    inside = Call("s3:ListBucket", EXAMPLE_ARNS.uploads, (("s3:prefix", "incoming/a.jpg"),))
    assert allows(document, inside)


def test_iam_wildcards_in_a_prefix_match_only_themselves():
    document = EXAMPLE_ARNS.policy(uploads_prefix="a*b/", tracing=False)

    assert allows(document, Call("s3:GetObject", f"{EXAMPLE_ARNS.uploads}/a*b/x.jpg"))
    assert not allows(document, Call("s3:GetObject", f"{EXAMPLE_ARNS.uploads}/aXYb/x.jpg"))


def test_the_recorder_names_an_operation_it_cannot_map():
    client = boto3.client(
        "s3",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        endpoint_url="http://127.0.0.1:1",  # never reached: the stubber answers
    )
    watching = CallRecorder(account=EXAMPLE_ARNS.account)
    watching.watch(client)
    with Stubber(client) as stub:
        stub.add_response("list_buckets", {"Buckets": []}, {})
        stub.add_response("get_object", {}, {"Bucket": "b", "Key": "k"})
        client.list_buckets()
        client.get_object(Bucket="b", Key="k")
    watching.stop()

    assert watching.unmapped == ["s3.ListBuckets"]
    assert watching.calls == [Call("s3:GetObject", "arn:aws:s3:::b/k")]


def test_the_recorder_stops_recording_when_stopped():
    client = boto3.client(
        "sns",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        endpoint_url="http://127.0.0.1:1",
    )
    watching = CallRecorder(account=EXAMPLE_ARNS.account)
    watching.watch_pipeline(
        SimpleNamespace(
            blobs=SimpleNamespace(_s3=client),
            records=SimpleNamespace(_dynamodb=client),
            events=SimpleNamespace(_sns=client),
        )
    )
    watching.stop()
    with Stubber(client) as stub:
        stub.add_response(
            "publish", {"MessageId": "1"}, {"TopicArn": EXAMPLE_ARNS.topic, "Message": "m"}
        )
        client.publish(TopicArn=EXAMPLE_ARNS.topic, Message="m")

    assert watching.calls == []


# --- the upload API's role (policies.api_function_policy) ----------------------------------------

API_HANDLER = "the API handler"
BROWSER = "a browser, with the API's presigned POST"


def api_policy(arns: StackArns, uploads_prefix: str | None) -> dict[str, Any]:
    return policies.api_function_policy(
        uploads_bucket_arn=arns.uploads,
        records_table_arn=arns.table,
        log_group_arn=arns.log_group,
        uploads_prefix=uploads_prefix,
    )


def api_calls(arns: StackArns, prefix: str = "incoming/") -> list[Call]:
    """POST /uploads and GET /images/{id} for one caller, as AWS authorizes them."""
    upload = f"{prefix}alice/0123456789abcdef0123456789abcdef/"
    stream = f"{arns.log_group}:log-stream:2026/01/01/[$LATEST]0123456789abcdef"
    return [
        # S3 authorizes the POST as the signer's PutObject on the key the policy pins.
        Call("s3:PutObject", f"{arns.uploads}/{upload}cat.jpg", by=BROWSER),
        Call("s3:ListBucket", arns.uploads, (("s3:prefix", upload),), by=API_HANDLER),
        Call("dynamodb:GetItem", arns.table, by=API_HANDLER),
        # Not in the bucket (yet, or any more): its records by upload id.
        Call("dynamodb:Query", f"{arns.table}/index/by-upload", by=API_HANDLER),
        Call("logs:CreateLogStream", stream, by=LAMBDA),
        Call("logs:PutLogEvents", stream, by=LAMBDA),
    ]


def test_the_api_role_allows_exactly_what_the_real_api_handler_asks_of_aws(
    stack: EmulatedStack, recorder: CallRecorder, lambda_context: LambdaContext, monkeypatch
):
    """The real API function on moto: POST /uploads, the browser's form POST it enables,
    GET /images/{id} before and after the upload arrives."""
    import base64
    import importlib
    import json

    import requests

    from functions.aws import contract
    from functions.aws.bootstrap import build_api
    from functions.core.settings import PipelineSettings
    from functions.core.uploads import ApiOptions

    variables = contract.api_to_env(
        settings=PipelineSettings(),
        options=ApiOptions(60, "jwt", jwt_issuer="https://issuer.example", jwt_audience="app"),
        uploads_bucket=stack.uploads,
        uploads_prefix="incoming/",
        records_table=stack.table,
        cdn_url="https://cdn.example",
    )
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # The entry point builds its own API from the environment at import, as a cold start.
    handle_request = importlib.reload(importlib.import_module("functions.aws.api")).handle_request
    env = contract.api_from_env(variables)
    api = build_api(env)
    recorder.watch(api.bucket._s3)
    recorder.watch(api.records._dynamodb)

    def request(method: str, path: str, body: dict | None = None) -> dict:
        raw = base64.b64encode(json.dumps(body).encode()).decode() if body else None
        event = {
            "rawPath": path,
            "requestContext": {
                "http": {"method": method},
                "authorizer": {"jwt": {"claims": {"sub": "alice"}}},
            },
            "body": raw,
            "isBase64Encoded": raw is not None,
        }
        answer = handle_request(event, api)
        return {**json.loads(answer["body"]), "code": answer["statusCode"]}

    created = request(
        "POST", "/uploads", {"filename": "a.jpg", "contentType": "image/jpeg", "bytes": 3}
    )
    assert created["code"] == 201
    assert request("GET", f"/images/{created['id']}")["code"] == 404
    form = created["upload"]
    posted = requests.post(form["url"], data=form["fields"], files={"file": b"abc"}, timeout=10)
    assert posted.ok
    assert request("GET", f"/images/{created['id']}")["status"] == "PENDING"  # no record yet

    assert recorder.unmapped == []
    assert {call.action for call in recorder.calls} == {
        "s3:ListBucket",
        "dynamodb:GetItem",
        "dynamodb:Query",
    }
    arns = arns_of(stack)
    stream = f"{arns.log_group}:log-stream:2026/01/01/[$LATEST]0123456789abcdef"
    calls = [
        *recorder.calls,
        # S3 authorizes the browser's POST as the signer's PutObject on the pinned key.
        Call("s3:PutObject", f"{arns.uploads}/{created['key']}", by=BROWSER),
        Call("logs:CreateLogStream", stream, by=LAMBDA),
        Call("logs:PutLogEvents", stream, by=LAMBDA),
    ]
    assert least_privilege_problems(api_policy(arns, "incoming/"), calls) == []


@pytest.mark.parametrize("uploads_prefix", [None, "incoming/"], ids=["whole-bucket", "prefix"])
def test_the_api_role_allows_exactly_what_the_api_does(uploads_prefix):
    calls = api_calls(EXAMPLE_ARNS, uploads_prefix or "")
    assert least_privilege_problems(api_policy(EXAMPLE_ARNS, uploads_prefix), calls) == []


def test_the_api_role_reads_no_upload_writes_no_record_and_lists_nothing_unprefixed():
    document = api_policy(EXAMPLE_ARNS, "incoming/")
    uploads = EXAMPLE_ARNS.uploads
    refused = [
        Call("s3:GetObject", f"{uploads}/incoming/alice/x/cat.jpg"),
        Call("s3:PutObject", f"{uploads}/elsewhere/cat.jpg"),
        Call("s3:PutObject", f"{EXAMPLE_ARNS.renditions}/0f1e/thumb.jpg"),
        Call("s3:ListBucket", uploads),  # no prefix at all
        Call("s3:ListBucket", uploads, (("s3:prefix", "elsewhere/"),)),
        Call("dynamodb:PutItem", EXAMPLE_ARNS.table),
        Call("sns:Publish", EXAMPLE_ARNS.topic),
    ]
    assert [call for call in refused if allows(document, call)] == []
    assert not allows(api_policy(EXAMPLE_ARNS, None), Call("s3:ListBucket", uploads))


def test_iam_wildcards_in_a_prefix_bind_the_api_role_literally():
    document = api_policy(EXAMPLE_ARNS, "a*b/")
    assert allows(document, Call("s3:PutObject", f"{EXAMPLE_ARNS.uploads}/a*b/x/y/cat.jpg"))
    assert not allows(document, Call("s3:PutObject", f"{EXAMPLE_ARNS.uploads}/aXb/x/y/cat.jpg"))
