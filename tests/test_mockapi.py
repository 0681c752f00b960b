"""The mock model APIs themselves: they answer, fault on demand, and stop cleanly
(the autouse leak check in conftest fails any test that leaves a thread)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.mockapi import AnthropicMock, ChatMock, Faults, GeminiMock, MockServer, ResponsesMock

MOCKS: list[type[MockServer]] = [AnthropicMock, ChatMock, GeminiMock, ResponsesMock]
ROUTES = {
    AnthropicMock: "/v1/messages",
    ChatMock: "/v1/chat/completions",
    GeminiMock: "/v1beta/models/m:generateContent",
    ResponsesMock: "/v1/responses",
}


# a request as an agent's own turn looks to every mock (Gemini faults only those)
AGENT_TURN: dict[str, Any] = {
    "messages": [],
    "contents": [],
    "input": [],
    "tools": [{"functionDeclarations": [{"name": "write_file"}]}],
}


def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


@pytest.mark.parametrize("mock_type", MOCKS)
def test_server_errors_then_recovery(mock_type: type[MockServer]) -> None:
    with mock_type(faults=Faults(fail_500_times=2)) as mock:
        url = mock.url + ROUTES[mock_type]
        statuses = [_post(url, AGENT_TURN)[0] for _ in range(3)]
    assert statuses == [500, 500, 200]


@pytest.mark.parametrize("mock_type", MOCKS)
def test_rate_limit_says_when_to_retry(mock_type: type[MockServer]) -> None:
    with mock_type(faults=Faults(rate_limit=True, reset_after_s=120)) as mock:
        status, body, headers = _post(mock.url + ROUTES[mock_type], AGENT_TURN)
    assert status == 429
    assert headers.get("retry-after") == "120"
    assert json.loads(body)["error"]


def test_stopped_server_refuses_connections() -> None:
    mock = AnthropicMock()
    with mock:
        url = mock.url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/v1/messages", timeout=5)
