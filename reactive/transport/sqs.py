"""SNS + SQS through boto3. Works against real AWS and against moto's server (``AWS_ENDPOINT_URL``)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import boto3
import botocore.exceptions as bexc
from botocore.config import Config
from botocore.parsers import ResponseParserError

from reactive import settings
from reactive.errors import (
    ConfigError,
    CredentialsError,
    ResourceNotFound,
    ServiceUnavailable,
    TransportError,
)
from reactive.transport.base import (
    BatchResult,
    OutgoingMessage,
    QueueDepth,
    ReceivedMessage,
    chunks,
    packed,
    too_big_reason,
)

# AWS's rule for MessageGroupId and MessageDeduplicationId: 1-128 characters, letters, digits and
# punctuation (printable ASCII without the space).
FIFO_ID = re.compile(r"[\x21-\x7e]{1,128}")

NOT_FOUND = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NotFound", "NotFoundException"}
BAD_CREDENTIALS = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "InvalidAccessKeyId",
}
# The credentials are good but lack a permission: the IAM policy (or a resource policy) needs a change.
PERMISSION_DENIED = {"AccessDenied", "AccessDeniedException", "AuthorizationError"}
# botocore's ways of saying that no answer came back: no connection, TLS or proxy failure, a silent peer.
UNREACHABLE = (bexc.ConnectionError, bexc.HTTPClientError)
LEAN_ATTRIBUTES = ("SentTimestamp", "ApproximateReceiveCount")  # what the listener reads besides the body
# Long polls last up to 20 s, so the read timeout must be longer; connection problems fail fast.
READ_TIMEOUT_SECONDS = 30
MAX_ATTEMPTS = 3  # botocore's "max_attempts": retries after the first call
# botocore rewrites the retries dict it is given when it makes a client (max_attempts becomes
# total_max_attempts): read the constants above, not BOTO_CONFIG.retries.
BOTO_CONFIG = Config(
    connect_timeout=3,
    read_timeout=READ_TIMEOUT_SECONDS,
    retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
)


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Translate botocore's exceptions into reactive's tree, naming what was being done."""
    try:
        yield
    except UNREACHABLE as exc:
        where = settings.aws_endpoint_url() or "AWS"
        raise ServiceUnavailable(f"cannot reach {where} while trying to {what}: {exc}") from exc
    except (bexc.NoCredentialsError, bexc.PartialCredentialsError) as exc:
        raise CredentialsError(f"no AWS credentials found while trying to {what} ({exc})") from exc
    except bexc.NoRegionError as exc:
        raise CredentialsError("no AWS region: set AWS_DEFAULT_REGION") from exc
    except bexc.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if code in NOT_FOUND:
            raise ResourceNotFound(f"{what}: does not exist ({message}); run `reactive provision`?") from exc
        if code in BAD_CREDENTIALS:
            raise CredentialsError(
                f"AWS refused the credentials while trying to {what}: {code}: {message}"
            ) from exc
        if code in PERMISSION_DENIED:
            raise CredentialsError(
                f"AWS denied the permission to {what} (check the IAM policy): {code}: {message}"
            ) from exc
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise TransportError(f"{what}: {code}: {message}", code, status) from exc
    except ResponseParserError as exc:  # something answered, but not AWS (a wrong port, a proxy's page)
        where = settings.aws_endpoint_url() or "AWS"
        raise ServiceUnavailable(f"{where} did not answer as AWS while trying to {what}: {exc}") from exc
    except bexc.BotoCoreError as exc:
        raise TransportError(f"{what}: {exc}") from exc


def partition() -> str:
    """The ARN partition of the region: aws, aws-cn (China), aws-us-gov (GovCloud), ..."""
    try:
        return str(boto3.session.Session().get_partition_for_region(settings.aws_region()))
    except bexc.UnknownRegionError:  # a region botocore does not know yet (or moto's own): the usual one
        return "aws"


def make_client(service: str) -> Any:
    region, endpoint = settings.aws_region(), settings.aws_endpoint_url()
    try:
        return boto3.session.Session().client(
            service, region_name=region, endpoint_url=endpoint, config=BOTO_CONFIG
        )
    except bexc.InvalidRegionError as exc:
        raise ConfigError(
            f"AWS_DEFAULT_REGION must be a region name such as us-east-1, got {region!r}"
        ) from exc
    except ValueError as exc:  # botocore's "Invalid endpoint", or another setting it cannot use
        if endpoint is None:
            raise ConfigError(f"cannot make an AWS {service} client: {exc}") from exc
        raise ConfigError(
            f"AWS_ENDPOINT_URL must be an http(s) address such as http://127.0.0.1:5000, got {endpoint!r}"
        ) from exc


class SqsTransport:
    def __init__(self, topic_name: str, sns: Any = None, sqs: Any = None, sts: Any = None) -> None:
        self.topic_name = topic_name
        self.fifo = topic_name.endswith(".fifo")
        self.sns = sns or make_client("sns")
        self.sqs = sqs or make_client("sqs")
        self._sts = sts

    @classmethod
    def from_settings(cls) -> SqsTransport:
        return cls(settings.names().topic)

    # -- names ----------------------------------------------------------------------------------
    @functools.cached_property
    def account_id(self) -> str:
        with aws_errors("read the AWS account id"):
            sts = self._sts or make_client("sts")
            return str(sts.get_caller_identity()["Account"])

    @functools.cached_property
    def topic_arn(self) -> str:
        return f"arn:{partition()}:sns:{settings.aws_region()}:{self.account_id}:{self.topic_name}"

    def queue_arn(self, queue: str) -> str:
        return f"arn:{partition()}:sqs:{settings.aws_region()}:{self.account_id}:{queue}"

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one transport per process; URLs never change
    def queue_url(self, queue: str) -> str:
        with aws_errors(f"find queue {queue}"):
            return str(self.sqs.get_queue_url(QueueName=queue)["QueueUrl"])

    # -- sending --------------------------------------------------------------------------------
    def publish(self, messages: Sequence[OutgoingMessage]) -> BatchResult:
        batches, too_big = packed(messages)
        succeeded: list[str] = []
        failed: dict[str, str] = {m.id: too_big_reason(m) for m in too_big}  # refused here, not by SNS
        for batch in batches:
            entries = [self._sns_entry(m) for m in batch]
            with aws_errors(f"publish to topic {self.topic_name}"):
                response = self.sns.publish_batch(TopicArn=self.topic_arn, PublishBatchRequestEntries=entries)
            succeeded += [e["Id"] for e in response.get("Successful", [])]
            failed.update(
                {e["Id"]: f"{e.get('Code')}: {e.get('Message', '')}" for e in response.get("Failed", [])}
            )
        return BatchResult(tuple(succeeded), failed)

    def send(self, queue: str, messages: Sequence[OutgoingMessage]) -> BatchResult:
        url = self.queue_url(queue)
        batches, too_big = packed(messages)
        succeeded: list[str] = []
        failed: dict[str, str] = {m.id: too_big_reason(m) for m in too_big}
        message_ids: dict[str, str] = {}
        for batch in batches:
            entries = [self._sqs_entry(m, queue.endswith(".fifo")) for m in batch]
            with aws_errors(f"send to queue {queue}"):
                response = self.sqs.send_message_batch(QueueUrl=url, Entries=entries)
            succeeded += [e["Id"] for e in response.get("Successful", [])]
            message_ids.update(
                {e["Id"]: e["MessageId"] for e in response.get("Successful", []) if "MessageId" in e}
            )
            failed.update(
                {e["Id"]: f"{e.get('Code')}: {e.get('Message', '')}" for e in response.get("Failed", [])}
            )
        return BatchResult(tuple(succeeded), failed, message_ids)

    # -- receiving ------------------------------------------------------------------------------
    def receive(
        self,
        queue: str,
        *,
        max_messages: int = 10,
        wait_seconds: float = 20,
        visibility_timeout: int | None = None,
        lean: bool = False,
    ) -> list[ReceivedMessage]:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url(queue),
            "MaxNumberOfMessages": max(1, min(10, max_messages)),
            "WaitTimeSeconds": int(max(0, min(20, wait_seconds))),
            "MessageSystemAttributeNames": list(LEAN_ATTRIBUTES) if lean else ["All"],
        }
        if not lean:  # the DLQ tools show and replay message attributes; the listener reads the body
            kwargs["MessageAttributeNames"] = ["All"]
        if visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = visibility_timeout
        with aws_errors(f"receive from queue {queue}"):
            response = self.sqs.receive_message(**kwargs)
        return [_received(m) for m in response.get("Messages", [])]

    def delete(self, queue: str, receipts: Sequence[str]) -> BatchResult:
        url = self.queue_url(queue)
        succeeded: list[str] = []
        failed: dict[str, str] = {}
        for chunk in chunks(list(receipts)):
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
            with aws_errors(f"delete messages from queue {queue}"):
                response = self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
            succeeded += [chunk[int(e["Id"])] for e in response.get("Successful", [])]
            failed.update(
                {chunk[int(e["Id"])]: e.get("Message", e.get("Code", "")) for e in response.get("Failed", [])}
            )
        return BatchResult(tuple(succeeded), failed)

    def release(self, queue: str, receipts: Sequence[str]) -> None:
        url = self.queue_url(queue)
        for chunk in chunks(list(receipts)):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(chunk)
            ]
            with aws_errors(f"release messages in queue {queue}"):
                self.sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)

    def depth(self, queue: str) -> QueueDepth:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        with aws_errors(f"read the depth of queue {queue}"):
            attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url(queue), AttributeNames=names)[
                "Attributes"
            ]
        return QueueDepth(*(int(attrs.get(n, 0)) for n in names))

    def visibility_timeout(self, queue: str) -> float:
        with aws_errors(f"read the visibility timeout of queue {queue}"):
            attrs = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url(queue), AttributeNames=["VisibilityTimeout"]
            )
        return float(attrs["Attributes"].get("VisibilityTimeout", 30))

    def purge(self, queue: str) -> None:
        with aws_errors(f"purge queue {queue}"):
            self.sqs.purge_queue(QueueUrl=self.queue_url(queue))

    # -- entries --------------------------------------------------------------------------------
    def _sns_entry(self, m: OutgoingMessage) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "Id": m.id,
            "Message": m.body,
            "MessageAttributes": _attributes(m.attributes),
        }
        if self.fifo:
            entry.update(_fifo_ids(m))
        return entry

    @staticmethod
    def _sqs_entry(m: OutgoingMessage, fifo: bool) -> dict[str, Any]:
        attributes = _attributes(m.attributes) if m.raw_attributes is None else dict(m.raw_attributes)
        entry: dict[str, Any] = {"Id": m.id, "MessageBody": m.body, "MessageAttributes": attributes}
        if fifo:
            entry.update(_fifo_ids(m))
        return entry


def _fifo_ids(m: OutgoingMessage) -> dict[str, str]:
    return {
        "MessageGroupId": fifo_id(m.group_id or "default"),
        "MessageDeduplicationId": fifo_id(m.dedup_id or m.id),
    }


def fifo_id(value: str) -> str:
    """``value`` as a FIFO group or deduplication id: itself when AWS takes it, else a digest of it.

    Master keys may be longer than 128 characters or hold spaces or non-ASCII text (a string primary key),
    which AWS refuses, failing the whole PublishBatch. A digest keeps what the ids are for: the same key
    gives the same group (its events stay in order), and the same key:version the same deduplication id.
    """
    if FIFO_ID.fullmatch(value):
        return value
    return "sha256-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _attributes(values: Any) -> dict[str, dict[str, str]]:
    return {k: {"DataType": "String", "StringValue": str(v)} for k, v in values.items()}


def _received(m: dict[str, Any]) -> ReceivedMessage:
    attrs = {k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()}
    return ReceivedMessage(
        message_id=m["MessageId"],
        body=m.get("Body", ""),
        receipt=m["ReceiptHandle"],
        attributes=dict(m.get("Attributes", {})),
        message_attributes=attrs,
        raw_message_attributes={k: _sendable(v) for k, v in m.get("MessageAttributes", {}).items()},
    )


def _sendable(value: dict[str, Any]) -> dict[str, Any]:
    """An attribute as SQS takes it back: it may also return StringListValues and BinaryListValues (empty,
    "reserved for future use"), which a send refuses, so a replay would move nothing."""
    return {k: v for k, v in value.items() if k in ("DataType", "StringValue", "BinaryValue")}
