"""External HTTP functions, the pure part: the invocation's checks, the request's headers and
signature, the answer's mapping (no sockets; see test_external_inprocess.py for the calls)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from iii_supervisor.errors import (
    HttpStatusError,
    InvalidInvocation,
    InvalidResponse,
    MissingEnvVar,
    RegistrationError,
    error_from_wire,
)
from iii_supervisor.modules.external.endpoint import (
    Endpoint,
    parse_invocation,
    request_headers,
    result_of,
    safe_url,
    sign,
)
from iii_supervisor.worker.external import HttpInvocationConfig, invocation_wire

ENV = {"HMAC_SECRET": "s3cr3t-hmac", "TOKEN": "s3cr3t-token", "API_KEY": "s3cr3t-key", "EMPTY": ""}


def parse(invocation, **kw):
    kw.setdefault("environ", ENV)
    kw.setdefault("max_timeout_ms", 60_000)
    return parse_invocation("fn.x", invocation, **kw)


def test_minimal_invocation_defaults_to_post_and_the_calls_deadline():
    endpoint = parse({"url": "http://127.0.0.1:8080/hook"})
    assert endpoint == Endpoint(url="http://127.0.0.1:8080/hook", method="POST", timeout=None)


def test_full_invocation_as_the_official_sdk_sends_it():
    endpoint = parse({"url": "https://api.example.com/v1/charge", "method": "PUT", "timeout_ms": 2500,
                      "headers": {"X-Team": "billing"}, "auth": {"type": "api_key", "header": "X-Api-Key",
                                                                  "value_key": "API_KEY"},
                      "some_future_field": 1})
    assert (endpoint.method, endpoint.timeout, endpoint.headers) == ("PUT", 2.5, (("X-Team", "billing"),))
    assert endpoint.auth is not None and endpoint.auth.secret == "s3cr3t-key" and endpoint.auth.header == "X-Api-Key"
    assert "s3cr3t" not in repr(endpoint)  # the secret is kept out of reprs (and so of logs)


@pytest.mark.parametrize(
    ("invocation", "field"),
    [
        ("https://x", "invocation must be an object"),
        ({}, "invocation.url"),
        ({"url": 5}, "invocation.url"),
        ({"url": "ftp://example.com/x"}, "invocation.url must be an http:// or https://"),
        ({"url": "example.com/x"}, "invocation.url must be an http:// or https://"),
        ({"url": "http:///nohost"}, "invocation.url must be an http:// or https://"),
        ({"url": "http://exa mple.com/"}, "invocation.url must not contain spaces"),
        ({"url": "http://example.com:99999/"}, "invocation.url has an invalid port"),
        ({"url": "http://[::1/"}, "invocation.url is not a URL (Invalid IPv6 URL)"),
        ({"url": "http://" + "h" * 64 + ".com/"}, "invocation.url's host is not a valid host name"),
        ({"url": "http://a..b/"}, "invocation.url's host is not a valid host name"),
        ({"url": "http://example.com/" + "a" * 9000}, "invocation.url is 9019 characters long"),
        ({"url": "http://h/", "method": "FETCH"}, "invocation.method must be one of GET, POST, PUT, PATCH, DELETE"),
        ({"url": "http://h/", "method": 1}, "invocation.method"),
        ({"url": "http://h/", "timeout_ms": 0}, "invocation.timeout_ms must be an integer from 1 to 60000"),
        ({"url": "http://h/", "timeout_ms": 60_001}, "invocation.timeout_ms"),
        ({"url": "http://h/", "timeout_ms": True}, "invocation.timeout_ms"),
        ({"url": "http://h/", "timeout_ms": 1.5}, "invocation.timeout_ms"),
        ({"url": "http://h/", "headers": ["a: b"]}, "invocation.headers must be an object"),
        ({"url": "http://h/", "headers": {"x-a": 1}}, "invocation.headers['x-a'] must be a string"),
        ({"url": "http://h/", "headers": {"bad name": "v"}}, "invocation.headers name must be an HTTP header name"),
        ({"url": "http://h/", "headers": {"x-a": "v\r\nx-b: w"}}, "invocation.headers['x-a'] must be at most"),
        ({"url": "http://h/", "headers": {"x-iii-Signature": "forged"}}, "is set by the engine"),
        ({"url": "http://h/", "headers": {"Content-Type": "text/plain"}}, "is set by the engine"),
        ({"url": "http://h/", "headers": {f"x-{i}": "v" for i in range(65)}}, "65 entries (at most 64)"),
        ({"url": "http://h/", "auth": "hmac"}, "invocation.auth must be an object"),
        ({"url": "http://h/", "auth": {"type": "basic"}}, "invocation.auth.type must be one of hmac, bearer, api_key"),
        ({"url": "http://h/", "auth": {"type": "hmac"}}, "invocation.auth.secret_key must be the name"),
        ({"url": "http://h/", "auth": {"type": "bearer", "token_key": 3}}, "invocation.auth.token_key"),
        ({"url": "http://h/", "auth": {"type": "api_key", "value_key": "API_KEY"}}, "invocation.auth.header"),
        ({"url": "http://h/", "auth": {"type": "bearer", "token_key": "TOKEN"}, "headers": {"Authorization": "x"}},
         "would replace the header invocation.auth sets"),
    ],
)
def test_a_bad_invocation_is_refused_naming_the_field(invocation, field):
    with pytest.raises(InvalidInvocation) as info:
        parse(invocation)
    assert isinstance(info.value, RegistrationError) and info.value.code == "invalid_invocation"
    assert field in info.value.message and "'fn.x'" in info.value.message, info.value.message


def test_header_values_are_not_echoed_in_refusals():
    with pytest.raises(InvalidInvocation) as info:
        parse({"url": "http://h/", "headers": {"x-token": "hunter2\n"}})
    assert "hunter2" not in info.value.message


def test_values_that_cannot_be_sent_as_headers_are_refused_at_registration():
    # httpx encodes header values as ASCII: registered, such a function failed every call
    with pytest.raises(InvalidInvocation, match=r"invocation.headers\['x-name'\] must be .* ASCII") as info:
        parse({"url": "http://h/", "headers": {"x-name": "hunter2é"}})
    assert "hunter2" not in info.value.message
    environ = {"TOKEN": "s3cr3t\u00e9", "KEY": "s3cr3t\r\nx-evil: 1"}
    for auth in ({"type": "bearer", "token_key": "TOKEN"}, {"type": "api_key", "header": "x-k", "value_key": "KEY"}):
        with pytest.raises(InvalidInvocation, match="must be ASCII without line breaks") as info:
            parse_invocation("fn.x", {"url": "http://h/", "auth": auth}, environ=environ, max_timeout_ms=60_000)
        assert "s3cr3t" not in info.value.message
    # an HMAC secret is only a key: any text
    assert parse_invocation("fn.x", {"url": "http://h/", "auth": {"type": "hmac", "secret_key": "TOKEN"}},
                            environ=environ, max_timeout_ms=60_000).auth is not None


@pytest.mark.parametrize("env", ["NOT_SET", "EMPTY"])
def test_a_missing_secret_variable_is_refused_by_name(env):
    with pytest.raises(MissingEnvVar) as info:
        parse({"url": "http://h/", "auth": {"type": "hmac", "secret_key": env}})
    assert info.value.code == "missing_env_var" and repr(env) in info.value.message
    assert ("is empty" if env == "EMPTY" else "is not set") in info.value.message
    assert error_from_wire("missing_env_var", "m").__class__ is MissingEnvVar


def test_https_and_host_restrictions():
    with pytest.raises(InvalidInvocation, match="must be https://"):
        parse({"url": "http://example.com/"}, require_https=True)
    assert parse({"url": "https://example.com/"}, require_https=True).url == "https://example.com/"
    allowed = ("*.internal", "127.0.0.1")
    assert parse({"url": "http://billing.internal/x"}, allowed_hosts=allowed)
    assert parse({"url": "http://127.0.0.1:9/x"}, allowed_hosts=allowed)
    with pytest.raises(InvalidInvocation, match=r"host 'evil\.com' is not in \[external_functions\] allowed_hosts"):
        parse({"url": "http://evil.com/x"}, allowed_hosts=allowed)


def test_secrets_restricted_to_allowed_variables():
    auth = {"type": "bearer", "token_key": "TOKEN"}
    with pytest.raises(InvalidInvocation, match=r"auth.token_key 'TOKEN' is not in \[external_functions\] "
                                                r"allowed_secrets \('HMAC_\*'\)"):
        parse({"url": "http://h/", "auth": auth}, allowed_secrets=("HMAC_*",))
    assert parse({"url": "http://h/", "auth": {"type": "hmac", "secret_key": "HMAC_SECRET"}},
                 allowed_secrets=("HMAC_*",)).auth is not None


def test_method_case_is_normalised():
    assert parse({"url": "http://h/", "method": "get"}).method == "GET"


def test_safe_url_drops_user_info_and_query():
    assert safe_url("https://user:pw@api.example.com:8443/fn?code=SECRET#x") == "https://api.example.com:8443/fn?…"
    assert safe_url("http://[::1]:80/a") == "http://[::1]:80/a"
    endpoint = parse({"url": "https://user:pw@h.example/fn?code=SECRET"})
    assert endpoint.label == "POST https://h.example/fn?…"


# --- the request ------------------------------------------------------------------------------------


def test_signature_matches_the_reference_recipe():
    # what an endpoint checks: HMAC-SHA256(secret, f"{timestamp}:{base64(body)}"), hex, "sha256=" prefix
    body, secret, ts = b'{"a":1}', "s3cr3t-hmac", 1_700_000_000
    expected = hmac.new(secret.encode(), f"{ts}:{base64.b64encode(body).decode()}".encode(), hashlib.sha256)
    assert sign(body, secret, ts) == "sha256=" + expected.hexdigest()
    # a fixed vector, so that a change of the recipe cannot go unnoticed
    assert sign(b"hello", "secret", 1000) == \
        "sha256=" + hmac.new(b"secret", b"1000:aGVsbG8=", hashlib.sha256).hexdigest()
    assert sign(b"hello", "secret", 1000) != sign(b"hello", "secret", 1001) != sign(b"hello", "other", 1000)


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"type": "hmac", "secret_key": "HMAC_SECRET"}, ("x-iii-Signature", sign(b"{}", "s3cr3t-hmac", 42))),
        ({"type": "bearer", "token_key": "TOKEN"}, ("authorization", "Bearer s3cr3t-token")),
        ({"type": "api_key", "header": "X-Api-Key", "value_key": "API_KEY"}, ("X-Api-Key", "s3cr3t-key")),
    ],
)
def test_request_headers(auth, expected):
    endpoint = parse({"url": "http://h/", "headers": {"X-Team": "t"}, "auth": auth})
    headers = request_headers(endpoint, function_id="fn.x", invocation_id="inv-1", timestamp=42, body=b"{}",
                              traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert headers[:5] == [("content-type", "application/json"), ("accept-encoding", "identity"),
                           ("x-iii-Function-Path", "fn.x"), ("x-iii-Invocation-ID", "inv-1"), ("x-iii-Timestamp", "42")]
    assert ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01") in headers
    assert ("X-Team", "t") in headers and headers[-1] == expected


# --- the answer -------------------------------------------------------------------------------------

ENDPOINT = Endpoint(url="http://h.example/fn?code=SECRET", method="POST", timeout=None)


@pytest.mark.parametrize(
    ("status", "body", "result"),
    [(200, b'{"ok":true}', {"ok": True}), (201, b"[1,2]", [1, 2]), (200, b"", None), (204, b"", None),
     (200, b"  \n", None), (200, b'"text"', "text"), (302, b"<html>moved</html>", None), (304, b"", None),
     (301, b'{"moved":1}', {"moved": 1})],
)
def test_answers_below_400_are_results(status, body, result):
    assert result_of(ENDPOINT, status, body) == result


def test_a_2xx_body_that_is_not_json_is_invalid_response():
    with pytest.raises(InvalidResponse) as info:
        result_of(ENDPOINT, 200, b"<html>oops</html>")
    assert info.value.code == "invalid_response"
    assert "POST http://h.example/fn?… answered 200 with a body that is not JSON (17 bytes" in info.value.message
    assert "SECRET" not in info.value.message


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (500, b"Internal Server Error", "http_error", "POST http://h.example/fn?… answered HTTP 500"),
        (404, b"", "http_error", "answered HTTP 404"),
        (422, b'{"error":{"code":"not_allowed","message":"amount too high"}}', "not_allowed",
         "answered HTTP 422: amount too high"),
        (400, b'{"error":{"code":"has spaces","message":"m"}}', "http_error", "answered HTTP 400: m"),
        (503, b'{"error":"down"}', "http_error", "answered HTTP 503"),
    ],
)
def test_answers_from_400_are_errors_naming_url_and_status(status, body, code, message):
    with pytest.raises(HttpStatusError) as info:
        result_of(ENDPOINT, status, body)
    assert info.value.code == code and message in info.value.message, info.value.message


def test_the_sdk_shapes_of_an_invocation():
    ours = HttpInvocationConfig(url="http://h/", timeout_ms=5, auth={"type": "bearer", "token_key": "TOKEN"})
    assert invocation_wire(ours) == {"url": "http://h/", "method": "POST", "timeout_ms": 5,
                                     "auth": {"type": "bearer", "token_key": "TOKEN"}}
    assert invocation_wire({"url": "http://h/"}) == {"url": "http://h/"}
    assert invocation_wire(lambda data: data) is None and invocation_wire({"id": "x"}) is None
    official = pytest.importorskip("iii_helpers.http")
    config = official.HttpInvocationConfig(url="http://h/", method="GET",
                                           auth=official.HttpAuthHmac(secret_key="HMAC_SECRET"))
    wire = invocation_wire(config)
    assert wire == {"url": "http://h/", "method": "GET", "auth": {"type": "hmac", "secret_key": "HMAC_SECRET"}}
    assert parse(wire).auth is not None


def test_what_the_official_sdk_sends_decodes_and_registers():
    """The released SDK's ``registerfunction`` (pydantic, by_alias, exclude_none) through our codec."""
    import orjson

    from iii_supervisor.protocol import RegisterFunction, decode_payload

    http = pytest.importorskip("iii_helpers.http")
    iii_types = pytest.importorskip("iii.iii_types")
    for auth in (http.HttpAuthHmac(secret_key="HMAC_SECRET"), http.HttpAuthBearer(token_key="TOKEN"),
                 http.HttpAuthApiKey(header="X-Key", value_key="API_KEY"), None):
        config = http.HttpInvocationConfig(url="https://fn.example/x", method="PATCH", timeout_ms=1500,
                                           headers={"X-A": "b"}, auth=auth)
        msg = iii_types.RegisterFunctionMessage(id="sdk.fn", invocation=config, description="d")
        decoded = decode_payload(orjson.dumps(msg.model_dump(by_alias=True, exclude_none=True)))
        assert isinstance(decoded, RegisterFunction) and decoded.invocation is not None
        endpoint = parse_invocation("sdk.fn", decoded.invocation, environ=ENV, max_timeout_ms=60_000)
        assert (endpoint.method, endpoint.timeout, endpoint.headers) == ("PATCH", 1.5, (("X-A", "b"),))
        assert (endpoint.auth.type if endpoint.auth else None) == (auth.type if auth else None)


def test_fuzzed_invocations_are_refused_cleanly():
    """Whatever JSON arrives as ``invocation``, the answer is a refusal or an endpoint, never a crash."""
    import random

    rng = random.Random(13)
    atoms = [None, True, 0, -1, 2**63, 1.5, "", "x", "http://h/", "https://a.b:1/c?d", "http://[::1]:8/",
             "http://%zz/", "ftp://h", "\x00", "é" * 10, "GET", "hmac", "TOKEN", "X-A", "a b", "x-iii-a"]
    keys = ["url", "method", "timeout_ms", "headers", "auth", "type", "secret_key", "token_key", "value_key",
            "header", "X-A", ""]

    def value(depth: int) -> object:
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(atoms)
        if roll < 0.6:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(5))}

    outcomes = {"ok": 0, "refused": 0}
    for _ in range(3000):
        invocation = value(0)
        if isinstance(invocation, dict) and rng.random() < 0.7:
            invocation["url"] = rng.choice(atoms)
        try:
            parse(invocation)
            outcomes["ok"] += 1
        except (InvalidInvocation, MissingEnvVar):
            outcomes["refused"] += 1
    assert outcomes["ok"] > 0 and outcomes["refused"] > 0, outcomes
