"""Pulumi mocks for the infrastructure tests.

Mocks are process-global, so they (and the config) are set in a per-test
fixture, never at import time. `call()` answers every data source the
programs use and fails loudly on any other: an unanswered call would
silently yield None and hide a broken program.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

from components import outputs

# What an AWS stack exports: the names `imagepipe upload --stack` and the README rely on.
SHARED_OUTPUT_NAMES = set(outputs.SHARED)
AWS_OUTPUT_NAMES = set(outputs.AWS)
GCP_OUTPUT_NAMES = set(outputs.GCP)
WITH_API_OUTPUT_NAMES = set(outputs.WITH_API)  # on both clouds, with imagepipe:api true
WITH_ARCHIVE_OUTPUT_NAMES = set(outputs.WITH_ARCHIVE)  # on both, with originals archive

ACCOUNT_ID = "123456789012"
AWS_REGION = "eu-west-1"
GCP_PROJECT = "imagepipe-test"
GCP_PROJECT_NUMBER = "987654321098"
GCS_SERVICE_AGENT = f"service-{GCP_PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
API_ID = "a1b2c3d4e5"  # an HTTP API's id, as API Gateway makes them
CACHING_OPTIMIZED_POLICY_ID = "658327ea-f89d-4fab-a63d-7e88639e58f6"

DATA_SOURCES: dict[str, dict[str, Any]] = {
    "aws:index/getCallerIdentity:getCallerIdentity": {
        "accountId": ACCOUNT_ID,
        "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/ci",
        "userId": "AIDACI",
        "id": ACCOUNT_ID,
    },
    "aws:index/getRegion:getRegion": {
        "name": AWS_REGION,
        "region": AWS_REGION,
        "id": AWS_REGION,
        "endpoint": f"ec2.{AWS_REGION}.amazonaws.com",
        "description": "Europe (Ireland)",
    },
    "aws:index/getPartition:getPartition": {
        "partition": "aws",
        "dnsSuffix": "amazonaws.com",
        "id": "aws",
        "reverseDnsPrefix": "com.amazonaws",
    },
    "aws:cloudfront/getCachePolicy:getCachePolicy": {
        "id": CACHING_OPTIMIZED_POLICY_ID,
        "name": "Managed-CachingOptimized",
    },
    "gcp:organizations/getProject:getProject": {
        "projectId": GCP_PROJECT,
        "number": GCP_PROJECT_NUMBER,
        "name": GCP_PROJECT,
        "id": f"projects/{GCP_PROJECT}",
    },
    "gcp:storage/getProjectServiceAccount:getProjectServiceAccount": {
        "emailAddress": GCS_SERVICE_AGENT,
        "member": f"serviceAccount:{GCS_SERVICE_AGENT}",
        "project": GCP_PROJECT,
        "id": GCS_SERVICE_AGENT,
    },
}


@dataclass
class RegisteredResource:
    type: str
    name: str
    inputs: dict[str, Any]
    urn: str
    parent: str  # URN of the parent ("" for the stack's direct children)
    dependencies: list[str]  # URNs this resource waits for (explicit and implicit)
    state: dict[str, Any] = field(default_factory=dict)


def _computed_state(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a provider would fill in after create: names, ARNs, URLs."""
    service = typ.split(":")[1].split("/")[0] if typ.count(":") >= 2 else "custom"
    physical = inputs.get("name") or f"{name}-1a2b3c"
    state: dict[str, Any] = {
        "arn": f"arn:aws:{service}:{AWS_REGION}:{ACCOUNT_ID}:{physical}",
        "name": physical,
    }
    if typ.startswith("aws:s3/bucket"):
        bucket = inputs.get("bucket") or f"{name}-1a2b3c"
        state |= {
            "bucket": bucket,
            "arn": f"arn:aws:s3:::{bucket}",
            "bucketRegionalDomainName": f"{bucket}.s3.{AWS_REGION}.amazonaws.com",
            "bucketDomainName": f"{bucket}.s3.amazonaws.com",
        }
    elif typ == "aws:sqs/queue:Queue":
        state["url"] = f"https://sqs.{AWS_REGION}.amazonaws.com/{ACCOUNT_ID}/{physical}"
    elif typ == "aws:cloudfront/distribution:Distribution":
        state |= {
            "domainName": "d111111abcdef8.cloudfront.net",
            "arn": f"arn:aws:cloudfront::{ACCOUNT_ID}:distribution/E2QWRUHEXAMPLE",
            "id": "E2QWRUHEXAMPLE",
        }
    elif typ == "aws:lambda/function:Function":
        state |= {
            "arn": f"arn:aws:lambda:{AWS_REGION}:{ACCOUNT_ID}:function:{physical}",
            "invokeArn": f"arn:aws:apigateway:{AWS_REGION}:lambda:path/functions/{physical}",
        }
    elif typ == "aws:apigatewayv2/api:Api":
        state |= {
            "id": API_ID,
            "apiEndpoint": f"https://{API_ID}.execute-api.{AWS_REGION}.amazonaws.com",
            "executionArn": f"arn:aws:execute-api:{AWS_REGION}:{ACCOUNT_ID}:{API_ID}",
        }
    elif typ == "aws:iam/role:Role":
        state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{physical}"
    elif typ == "aws:dynamodb/table:Table":
        state["arn"] = f"arn:aws:dynamodb:{AWS_REGION}:{ACCOUNT_ID}:table/{physical}"
    elif typ == "aws:cloudwatch/logGroup:LogGroup":
        state["arn"] = f"arn:aws:logs:{AWS_REGION}:{ACCOUNT_ID}:log-group:{physical}"
    elif typ.startswith("gcp:"):
        state.pop("arn")
        project = inputs.get("project") or GCP_PROJECT
        state |= {"project": project, "selfLink": f"https://gcp.example/{typ}/{physical}"}
        if typ == "gcp:storage/bucket:Bucket":
            state["url"] = f"gs://{physical}"
        elif typ == "gcp:pubsub/topic:Topic":
            state["id"] = f"projects/{project}/topics/{physical}"
        elif typ == "gcp:serviceaccount/account:Account":
            account_id = inputs.get("accountId", physical)
            email = f"{account_id}@{project}.iam.gserviceaccount.com"
            state |= {"email": email, "member": f"serviceAccount:{email}"}
        elif typ == "gcp:cloudfunctionsv2/function:Function":
            state |= {
                "url": f"https://{physical}-abc123-ew.a.run.app",
                "serviceConfig": {
                    **(inputs.get("serviceConfig") or {}),
                    "service": f"projects/{project}/locations/x/services/{physical}",
                    "uri": f"https://{physical}-abc123-ew.a.run.app",
                },
            }
        elif typ == "gcp:compute/globalAddress:GlobalAddress":
            state["address"] = "203.0.113.10"
    # Inputs first, then what the provider computes: nested computed blocks (a gen2
    # function's serviceConfig.service) must survive the inputs of the same name.
    return inputs | state


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[RegisteredResource] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = _computed_state(args.typ, args.name, dict(args.inputs))
        resource_id = state.get("id") or f"{args.name}-id"
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append((args.token, dict(args.args)))
        if args.token not in DATA_SOURCES:
            raise AssertionError(f"the program calls {args.token}, which the mocks do not answer")
        return DATA_SOURCES[args.token]

    # --- queries for assertions -------------------------------------------------
    def of_type(self, typ: str) -> list[RegisteredResource]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name_contains: str = "") -> RegisteredResource:
        found = [r for r in self.of_type(typ) if name_contains in r.name]
        assert len(found) == 1, f"expected one {typ} named *{name_contains}*, found {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> RegisteredResource:
        return next(r for r in self.resources if r.urn == urn)


class RecordingMonitor(MockMonitor):
    """Keeps the parent and dependencies of every registration, which the mocks API omits."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            registration = self.resources.get(response.urn)
            self.recording.resources.append(
                RegisteredResource(
                    type=request.type,
                    name=request.name,
                    inputs=pulumi.runtime.rpc.deserialize_properties(request.object),
                    urn=response.urn,
                    parent=request.parent,
                    dependencies=list(request.dependencies),
                    state=dict(registration.state) if registration else {},
                )
            )
        return response


@pytest.fixture
def pulumi_mocks() -> RecordingMocks:
    """Fresh mocks, a fresh event loop and empty config for one test."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(
        mocks, project="imagepipe", stack="test", preview=False, monitor=RecordingMonitor(mocks)
    )
    pulumi.runtime.set_all_config({}, [])
    yield mocks
    pulumi.runtime.set_all_config({}, [])


def set_config(values: dict[str, Any]) -> None:
    """Stack config as the CLI hands it over: structured values as JSON text."""
    pulumi.runtime.set_all_config(
        {
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in values.items()
        },
        [],
    )


def run_program(program: Callable[[], Any]) -> Any:
    """Run `program` under the mocks and wait for every registration; returns its result
    with Outputs resolved to plain values."""
    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def wrapped():
        output = pulumi.Output.from_input(program())
        return output.apply(lambda value: result.setdefault("value", value))

    wrapped()
    return result.get("value")
