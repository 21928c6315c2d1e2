"""The boto3 boundary: botocore's errors become reactive's, and received attributes go back as SQS takes them."""

from __future__ import annotations

import botocore.exceptions as bexc
import pytest

from reactive.errors import CredentialsError, ServiceUnavailable, TransportError
from reactive.transport.sqs import _received, aws_errors

URL = "https://sqs.eu-west-1.amazonaws.com/"


@pytest.mark.parametrize(
    "error",
    [
        bexc.EndpointConnectionError(endpoint_url=URL),
        bexc.SSLError(endpoint_url=URL, error="certificate verify failed"),
        bexc.ProxyConnectionError(proxy_url="http://proxy:3128", error="refused"),
        bexc.ReadTimeoutError(endpoint_url=URL),
    ],
    ids=["no connection", "tls", "proxy", "silent endpoint"],
)
def test_no_answer_from_aws_is_a_service_unavailable(error: Exception) -> None:
    unreachable = pytest.raises(ServiceUnavailable, match="cannot reach .* while trying to receive")
    with unreachable as caught, aws_errors("receive"):
        raise error
    assert caught.value.exit_code == 3


def client_error(code: str, status: int = 400) -> bexc.ClientError:
    response = {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bexc.ClientError(response, "SendMessageBatch")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "code", ["ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidSignatureException"]
)
def test_expired_or_bad_credentials_are_named_as_such(code: str) -> None:
    with (
        pytest.raises(
            CredentialsError, match=f"refused the credentials while trying to send: {code}"
        ) as caught,
        aws_errors("send"),
    ):
        raise client_error(code, 403)
    assert not caught.value.refused_request  # the relay backs off; it does not retry row by row


@pytest.mark.parametrize("code", ["AccessDenied", "AccessDeniedException", "AuthorizationError"])
def test_a_missing_permission_points_at_the_iam_policy(code: str) -> None:
    with (
        pytest.raises(
            CredentialsError, match=f"denied the permission to send .check the IAM policy.: {code}"
        ),
        aws_errors("send"),
    ):
        raise client_error(code, 403)


def test_other_refusals_keep_their_code_and_status() -> None:
    with pytest.raises(TransportError) as caught, aws_errors("send"):
        raise client_error("InvalidParameterValue")
    assert type(caught.value) is TransportError and caught.value.refused_request


def test_received_attributes_keep_only_what_a_send_takes_back() -> None:
    # Real SQS answers with empty list fields too; SendMessageBatch refuses them ("not supported").
    received = _received(
        {
            "MessageId": "m",
            "ReceiptHandle": "r",
            "Body": "{}",
            "MessageAttributes": {
                "model": {
                    "DataType": "String",
                    "StringValue": "auth.user",
                    "StringListValues": [],
                    "BinaryListValues": [],
                },
                "blob": {"DataType": "Binary", "BinaryValue": b"\x00", "StringListValues": []},
            },
        }
    )
    assert received.raw_message_attributes == {
        "model": {"DataType": "String", "StringValue": "auth.user"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00"},
    }
    assert received.message_attributes["model"] == "auth.user"


def test_an_endpoint_that_is_not_aws_is_a_service_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.parsers import ResponseParserError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8000")  # a web site, say, not moto
    not_aws = pytest.raises(ServiceUnavailable, match="http://127.0.0.1:8000 did not answer as AWS")
    with not_aws as caught, aws_errors("list queues"):
        raise ResponseParserError("Unable to parse response (syntax error), invalid XML received")
    assert caught.value.exit_code == 3


def test_fifo_ids_aws_would_refuse_are_replaced_by_a_digest_of_them() -> None:
    """AWS takes 1-128 printable ASCII characters without spaces as a group or deduplication id (moto takes
    anything): a long or non-ASCII string key would fail the whole PublishBatch. The digest is the same for
    the same key (its events stay one group, in order) and differs by version (no false deduplication)."""
    from reactive.events import Event
    from reactive.transport.base import OutgoingMessage
    from reactive.transport.sqs import FIFO_ID, SqsTransport

    def entry(key: str, version: int) -> dict[str, str]:
        event = Event(model="auth.user", action="update", key=key, version=version, data={})
        message = OutgoingMessage("1", "{}", {}, group_id=event.key, dedup_id=event.dedup_id)
        return {
            k: v for k, v in SqsTransport._sqs_entry(message, fifo=True).items() if k.startswith("Message")
        }

    assert entry("42", 7) == {"MessageBody": "{}", "MessageAttributes": {}, "MessageGroupId": "42",
                              "MessageDeduplicationId": "42:7"}  # fmt: skip
    for key in ("k" * 200, "Zoë Noël", "user one", "k" * 127):
        first, second, again = entry(key, 1), entry(key, 2), entry(key, 1)
        ids = [e[name] for e in (first, second) for name in ("MessageGroupId", "MessageDeduplicationId")]
        assert all(FIFO_ID.fullmatch(value) for value in ids), ids
        assert first == again and first["MessageGroupId"] == second["MessageGroupId"]
        assert first["MessageDeduplicationId"] != second["MessageDeduplicationId"]
    assert entry("k" * 126, 1)["MessageDeduplicationId"] == "k" * 126 + ":1"  # 128: still itself
