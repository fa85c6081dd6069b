"""`imagepipe dev`: the whole pipeline on an emulated AWS on 127.0.0.1.

moto's server plays S3, DynamoDB, SNS and SQS; `lambda_service.AsyncInvoker`
plays the Lambda service and calls the real handler (`functions.aws.main`)
in this process, with the environment the component gives the function;
`cdn.RenditionServer` plays CloudFront. Nothing but the Lambda service is
stood in for, so what works here is what `pulumi up` deploys.

The pipeline heals or says it cannot: a worker outlives any failed call (see
`lambda_service`), and when the emulator itself ends, everything it held is gone,
so `imagepipe dev` says so in one line and exits 1 rather than pretend to run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from functions.aws import contract
from functions.core.settings import PipelineSettings
from functions.local.cdn import RenditionServer
from functions.local.emulated_aws import (
    REGION,
    MotoServer,
    PipelineResources,
    PortInUse,
    boto3_client,
    client_environment,
    create_pipeline_resources,
)
from functions.local.lambda_service import DEFAULT_RETRY_DELAYS, AsyncInvoker, Handler
from functions.local.stack_config import LocalStackConfig, read_stack_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_PORT = 4566
DEFAULT_STACK_CONFIG = Path("stacks/Pulumi.aws-dev.yaml")
DEFAULT_OUTPUTS = Path(".imagepipe-dev.json")
ACCOUNT_ID = "123456789012"  # moto's default account
HEALTH_CHECK_SECONDS = 0.5  # how often `imagepipe dev` checks the emulator and the workers
# Without the emulator an attempt in hand can only fail: wait this long for it, not 30 s.
STOP_SECONDS_AFTER_FAILURE = 5.0


def load_lambda_handler() -> Handler:
    """Import the real handler as a Lambda cold start would: with the environment already set.

    The handler builds its clients at import time from environment variables; a
    module imported earlier (another pipeline, another port) is imported afresh.
    """
    name = contract.HANDLER.rpartition(".")[0]
    module = importlib.reload(sys.modules[name]) if name in sys.modules else None
    if module is None:
        module = importlib.import_module(name)
    return module.handler  # type: ignore[no-any-return]


class PipelineAlreadyRunning(RuntimeError):
    pass


_active_lock = threading.Lock()
_active: DevPipeline | None = None


class DevPipeline:
    """Start with `start()` (or `with DevPipeline(...) as pipeline:`); `stop()` undoes everything.

    One at a time per process: the handler module, moto's backends and the
    environment variables are process-wide, as they are in one Lambda sandbox.

    `wrap_handler` receives the real handler and returns what the workers call:
    the way to inject a fault for one object without patching any module.
    """

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        cdn_port: int = 0,
        stack: LocalStackConfig | None = None,
        name: str = "imagepipe",
        log_level: str = "INFO",
        workers: int = 3,
        retry_delays: Sequence[int] = DEFAULT_RETRY_DELAYS,
        wrap_handler: Callable[[Handler], Handler] | None = None,
    ) -> None:
        self.stack = stack or LocalStackConfig()
        self.settings: PipelineSettings = self.stack.settings
        self.name = name
        self._log_level = log_level
        self._moto = MotoServer(port)
        self._cdn_port = cdn_port
        self._workers = workers
        self._retry_delays = retry_delays
        self._wrap_handler = wrap_handler
        self._saved_environ: dict[str, str | None] = {}
        self._cdn: RenditionServer | None = None
        self.invoker: AsyncInvoker | None = None
        self.resources: PipelineResources | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> DevPipeline:
        # Metrics are disabled locally (POWERTOOLS_METRICS_DISABLED), so the handler records
        # none and every flush would warn that it found none to publish.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        global _active
        self._moto.start()  # raises PortInUse before anything else exists
        with _active_lock:
            if _active is not None:
                self._moto.stop()
                raise PipelineAlreadyRunning(
                    f"a dev pipeline already runs in this process at {_active.endpoint}"
                )
            _active = self
        try:
            self.resources = create_pipeline_resources(
                self.endpoint, self.name, self.stack.uploads_prefix, self.stack.uploads_suffix
            )
            self._set_environ(self.function_environment())
            handler = load_lambda_handler()
            if self._wrap_handler is not None:
                handler = self._wrap_handler(handler)
            self.invoker = AsyncInvoker(
                sqs=boto3_client("sqs", self.endpoint),
                trigger_queue_url=self.resources.trigger_queue_url,
                dead_letter_queue_url=self.resources.dead_letter_queue_url,
                handler=handler,
                function_name=self.function_name,
                function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}",
                workers=self._workers,
                retry_delays=self._retry_delays,
                max_event_age_seconds=self.stack.max_event_age_seconds,
            )
            self.invoker.start()
            self._cdn = RenditionServer(
                boto3_client("s3", self.endpoint), self.resources.renditions_bucket, self._cdn_port
            )
            self._cdn.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop taking events, finish the ones in hand (for up to `timeout` seconds), shut the
        servers down, restore the env."""
        if self.invoker is not None:
            self.invoker.stop(timeout)
            self.invoker = None
        if self._cdn is not None:
            self._cdn.stop()
            self._cdn = None
        self._moto.stop()
        self._restore_environ()
        global _active
        with _active_lock:
            if _active is self:
                _active = None

    def __enter__(self) -> DevPipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failure(self) -> str | None:
        """Why the pipeline cannot go on, in a sentence; None while it can."""
        code = self._moto.exit_code()
        if code is not None:
            return (
                f"the emulated AWS (moto, pid {self._moto.pid}) {_how_it_ended(code)}; "
                "its buckets, tables and queues are gone"
            )
        if self.invoker is not None and self.invoker.workers_alive < self._workers:
            return (
                f"{self._workers - self.invoker.workers_alive} of the {self._workers} Lambda "
                "workers stopped; uploads would wait for ever"
            )
        return None

    # --- what the stack would tell you --------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self._moto.endpoint

    @property
    def function_name(self) -> str:
        return f"{self.name}-fn"

    def function_environment(self) -> dict[str, str]:
        """What the component sets on the function, plus what Lambda itself provides."""
        assert self.resources is not None
        return {
            **client_environment(self.endpoint),
            **contract.to_env(
                settings=self.settings,
                renditions_bucket=self.resources.renditions_bucket,
                records_table=self.resources.records_table,
                events_topic_arn=self.resources.events_topic_arn,
            ),
            # Lambda's own variable; the handler names its event source after it.
            contract.FUNCTION_NAME: self.function_name,
            # CloudWatch would swallow the EMF metric blobs; on a terminal they are noise.
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": self._log_level,
        }

    def outputs(self) -> dict[str, str]:
        """The stack outputs (same names as `pulumi stack output`), plus the emulator's address."""
        assert self.resources is not None and self._cdn is not None
        return {
            "uploadsBucket": self.resources.uploads_bucket,
            "uploadsPrefix": self.stack.uploads_prefix,
            "renditionsBucket": self.resources.renditions_bucket,
            "cdnUrl": self._cdn.url,
            "recordsTable": self.resources.records_table,
            "eventsTopic": self.resources.events_topic_arn,
            "functionName": self.function_name,
            "deadLetterQueue": self.resources.dead_letter_queue_url,
            "eventsQueue": self.resources.events_queue_url,
            "endpoint": self.endpoint,
            "region": REGION,
        }

    # --- environment --------------------------------------------------------------------------

    def _set_environ(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._saved_environ.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_environ(self) -> None:
        for key, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_environ.clear()


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of the emulated AWS endpoint on 127.0.0.1 (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--cdn-port",
        type=int,
        default=0,
        help="port of the renditions server (default: any free port)",
    )
    parser.add_argument(
        "--stack-config",
        type=Path,
        default=None,
        help=f"stack config with the imagepipe:* settings (default {DEFAULT_STACK_CONFIG} "
        "when it exists, else the built-in defaults)",
    )
    parser.add_argument(
        "--outputs",
        type=Path,
        default=DEFAULT_OUTPUTS,
        help=f"where to write the outputs as JSON (default {DEFAULT_OUTPUTS}); "
        "`imagepipe upload --dev` reads them from there",
    )


def resolve_stack_config(path: Path | None) -> tuple[LocalStackConfig, str]:
    """The given stack config; else the example one when run from the project; else defaults."""
    if path is not None:
        return read_stack_config(path), str(path)
    if DEFAULT_STACK_CONFIG.exists():
        return read_stack_config(DEFAULT_STACK_CONFIG), str(DEFAULT_STACK_CONFIG)
    return LocalStackConfig(), "built-in defaults"


def _how_it_ended(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def run(args: argparse.Namespace) -> int:
    for option, port in (("--port", args.port), ("--cdn-port", args.cdn_port)):
        if not 0 <= port <= 65535:
            print(
                f"imagepipe dev: {option} is {port}; use a port from 1 to 65535.", file=sys.stderr
            )
            return EXIT_USAGE
    stack, settings_source = resolve_stack_config(args.stack_config)

    stop_requested = threading.Event()
    previous_sigterm = signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    pipeline = DevPipeline(port=args.port, cdn_port=args.cdn_port, stack=stack)
    outputs: dict[str, str] = {}
    failure: str | None = None
    try:
        try:
            pipeline.start()
        except PortInUse as error:
            print(f"imagepipe dev: {error}", file=sys.stderr)
            return EXIT_USAGE
        outputs = pipeline.outputs()
        args.outputs.write_text(json.dumps(outputs, indent=2) + "\n", encoding="utf-8")
        _print_banner(outputs, stack.settings, settings_source, args.outputs)
        try:
            while failure is None and not stop_requested.wait(HEALTH_CHECK_SECONDS):
                failure = pipeline.failure()
        except KeyboardInterrupt:
            pass
        if failure is not None:
            print(f"imagepipe dev: {failure}. Stopping.", file=sys.stderr, flush=True)
        else:
            print("imagepipe dev: stopping ...", file=sys.stderr, flush=True)
    finally:
        pipeline.stop(STOP_SECONDS_AFTER_FAILURE if failure is not None else 30)
        if outputs:
            _remove_outputs(args.outputs, outputs["endpoint"])
        signal.signal(signal.SIGTERM, previous_sigterm)
    if failure is not None:
        return EXIT_FAILED
    print("imagepipe dev: stopped", file=sys.stderr, flush=True)
    return EXIT_OK


def _remove_outputs(path: Path, endpoint: str) -> None:
    """Remove the outputs file if it is still ours: a stale one would point at a dead port."""
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("endpoint") == endpoint:
            path.unlink()
    except (OSError, ValueError):
        pass


def _print_banner(
    outputs: Mapping[str, Any], settings: PipelineSettings, source: str, outputs_path: Path
) -> None:
    renditions = ", ".join(spec.to_compact() for spec in settings.renditions)
    width = max(len(name) for name in outputs)
    lines = [
        "imagepipe dev: the pipeline is running on an emulated AWS (Ctrl-C stops it)",
        f"settings from {source}: {renditions}",
        "",
        *(f"  {name:<{width}}  {value}" for name, value in outputs.items()),
        "",
        f"outputs written to {outputs_path}",
        "upload with imagepipe:   imagepipe upload photo.jpg --dev",
        "or with the AWS CLI:     "
        + " ".join(
            f"{k}={v}"
            for k, v in client_environment(outputs["endpoint"]).items()
            if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL" and k != "AWS_REGION"
        )
        + f" aws s3 cp photo.jpg s3://{outputs['uploadsBucket']}/{outputs['uploadsPrefix']}"
        + f" --endpoint-url {outputs['endpoint']}",
        f"then:                    imagepipe status {outputs['uploadsPrefix']}photo.jpg --dev",
    ]
    print("\n".join(lines), flush=True)
