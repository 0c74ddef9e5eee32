"""The address guard: blocked families, literal spellings, allow-list, pinned connections."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from conversions.delivery import guard
from conversions.delivery.guard import (
    BlockedAddress,
    HostNotFound,
    allowed_addresses,
    is_blocked_ip,
    parse_host_literal,
    resolve_host,
)
from tests import test_transport
from tests.test_transport import RawServer, prepared, send_attempt

fast = test_transport.fast
raw_server = test_transport.raw_server
session = test_transport.session

ip = ipaddress.ip_address


def teredo(server: str, client: str) -> ipaddress.IPv6Address:
    """A Teredo address: 2001::/32, server IPv4, flags/port (zero here), client IPv4 xor-ed."""
    value = (0x20010000 << 96) | (int(ip(server)) << 64) | (int(ip(client)) ^ 0xFFFFFFFF)
    return ipaddress.IPv6Address(value)


def sixtofour(v4: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0x2002 << 112) | (int(ip(v4)) << 80) | 1)


BLOCKED_V4 = {
    "loopback": "127.0.0.1",
    "loopback-other": "127.255.255.254",
    "private-10": "10.0.0.1",
    "private-172": "172.16.5.4",
    "private-192": "192.168.0.1",
    "link-local": "169.254.169.254",
    "multicast": "224.0.0.251",
    "multicast-high": "239.255.255.250",
    "reserved": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "shared": "100.64.0.1",
    "shared-top": "100.127.255.254",
    "unspecified": "0.0.0.0",
    "this-network": "0.1.2.3",
    "benchmark": "198.18.0.1",
    "documentation": "192.0.2.1",
    "ietf": "192.0.0.8",
}
BLOCKED_V6 = {
    "loopback": "::1",
    "unspecified": "::",
    "link-local": "fe80::1",
    "unique-local": "fd12:3456::1",
    "site-local": "fec0::1",
    "multicast": "ff02::1",
    "multicast-global": "ff0e::1",
    "documentation": "2001:db8::1",
    "discard": "100::1",
    "ipv4-compatible": "::10.0.0.1",
    "local-nat64": "64:ff9b:1::a00:1",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450::1"]


@pytest.mark.parametrize("address", BLOCKED_V4.values(), ids=BLOCKED_V4.keys())
def test_blocked_ipv4_families(settings, address):
    settings.POSTBACK_ALLOWED_NETWORKS = []
    assert is_blocked_ip(ip(address))


@pytest.mark.parametrize("address", BLOCKED_V6.values(), ids=BLOCKED_V6.keys())
def test_blocked_ipv6_families(settings, address):
    settings.POSTBACK_ALLOWED_NETWORKS = []
    assert is_blocked_ip(ip(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(settings, address):
    settings.POSTBACK_ALLOWED_NETWORKS = []
    assert not is_blocked_ip(ip(address))


EMBEDDED = {
    "mapped": lambda v4: ipaddress.IPv6Address(f"::ffff:{v4}"),
    "nat64": lambda v4: ipaddress.IPv6Address(f"64:ff9b::{v4}"),
    "6to4": sixtofour,
    "teredo-client": lambda v4: teredo("8.8.8.8", v4),
    "teredo-server": lambda v4: teredo(v4, "8.8.4.4"),
}


@pytest.mark.parametrize("form", EMBEDDED.values(), ids=EMBEDDED.keys())
@pytest.mark.parametrize("inner", BLOCKED_V4.values(), ids=BLOCKED_V4.keys())
def test_embedded_blocked_ipv4_is_blocked(settings, form, inner):
    settings.POSTBACK_ALLOWED_NETWORKS = []
    assert is_blocked_ip(form(inner))


@pytest.mark.parametrize("form", EMBEDDED.values(), ids=EMBEDDED.keys())
def test_embedded_public_ipv4_passes(settings, form):
    # given: NAT64 and friends are how IPv6-only hosts reach public IPv4 receivers
    settings.POSTBACK_ALLOWED_NETWORKS = []

    # when / then
    assert not is_blocked_ip(form("1.1.1.1"))


def test_teredo_client_is_unxored():
    # given: the client 127.0.0.1 sits xor-ed in the last 32 bits
    address = teredo("8.8.8.8", "127.0.0.1")

    # then
    assert str(address).endswith(":80ff:fffe")
    assert guard.embedded_ipv4(address) == [ip("8.8.8.8"), ip("127.0.0.1")]


@pytest.mark.parametrize(
    ("allowed", "address", "blocked"),
    [
        (["127.0.0.1/32"], "127.0.0.1", False),
        (["127.0.0.1/32"], "127.0.0.2", True),
        (["127.0.0.1/32"], "::ffff:127.0.0.1", True),
        (["127.0.0.1/32"], "::1", True),
        (["10.0.0.0/8"], "10.200.3.4", False),
        (["10.0.0.0/8"], "11.0.0.1", False),  # public anyway
        (["10.0.0.0/8"], "172.16.0.1", True),
        (["::1/128"], "::1", False),
        (["::1/128"], "127.0.0.1", True),
        (["fd00::/8"], "fd12::1", False),
        (["not a cidr", "127.0.0.1/32"], "127.0.0.1", False),
        (["not a cidr"], "127.0.0.1", True),
        ("127.0.0.1/32,10.1.0.0/16", "10.1.2.3", False),
    ],
)
def test_allow_list_opens_exactly_the_listed_networks(settings, allowed, address, blocked):
    # given: read at call time, so the settings fixture reaches it
    settings.POSTBACK_ALLOWED_NETWORKS = allowed

    # when / then
    assert is_blocked_ip(ip(address)) is blocked


def test_explicit_allowed_argument_wins_over_settings(settings):
    settings.POSTBACK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    assert is_blocked_ip(ip("127.0.0.1"), allowed=[])
    assert not is_blocked_ip(ip("10.0.0.1"), allowed=[ipaddress.ip_network("10.0.0.0/8")])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F.0.0.1", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0xa9.0376.43518", "169.254.169.254"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1"),
        ("tracker.example", None),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("1.2.3.16777216", None),
        ("08.0.0.1", None),
        ("0x7g.0.0.1", None),
        ("١٢٧.0.0.1", None),
        ("", None),
        ("[nope]", None),
    ],
)
def test_parse_host_literal(host, expected):
    result = parse_host_literal(host)
    assert result == (None if expected is None else ip(expected))


# --- resolution and pinning --------------------------------------------------------------


@pytest.fixture
def resolver(monkeypatch):
    """Fake DNS answers for names we own; counts lookups."""
    answers: dict[str, list[str]] = {}
    calls: list[str] = []

    def fake(host: str, port: int):
        calls.append(host)
        literal = parse_host_literal(host)
        if literal is not None:
            return [literal]
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip(a) for a in answers[host]]

    monkeypatch.setattr(guard, "resolve_host", fake)
    fake.answers = answers  # type: ignore[attr-defined]
    fake.calls = calls  # type: ignore[attr-defined]
    return fake


@pytest.fixture
def no_system_dns(monkeypatch):
    """Fail loudly if anything but the guard looks a name up (no second lookup)."""
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def checked(host, *args, **kwargs):
        looked_up.append(host)
        if parse_host_literal(str(host)) is None:
            raise AssertionError(f"unexpected DNS lookup of {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", checked)
    return looked_up


def ok(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def test_name_is_resolved_once_and_pinned(fast, raw_server, session, resolver, no_system_dns):
    # given
    server = raw_server(ok)
    resolver.answers["tracker.example"] = ["127.0.0.1"]

    # when
    outcome = send_attempt(
        prepared(f"http://tracker.example:{server.port}/pb?c={{click_id}}"), session=session
    )

    # then: connected to the checked IP, Host header keeps the name
    assert outcome.delivered
    assert resolver.calls == ["tracker.example"]
    assert f"Host: tracker.example:{server.port}\r\n".encode() in server.requests[0]
    assert "tracker.example" not in no_system_dns


@pytest.mark.parametrize("answer", ["10.0.0.1", "127.0.0.1", "169.254.169.254", "::1", "fd00::1"])
def test_name_resolving_to_a_blocked_address_is_blocked(settings, session, resolver, answer):
    # given
    settings.POSTBACK_ALLOWED_NETWORKS = []
    resolver.answers["tracker.example"] = [answer]

    # when
    outcome = send_attempt(prepared("http://tracker.example/pb"), session=session)

    # then
    assert outcome.error == "blocked_address"
    assert answer in outcome.error_detail


def test_every_candidate_is_checked_and_only_an_allowed_one_is_used(
    fast, raw_server, session, resolver
):
    # given: the name resolves to a blocked 127.0.0.2 first, then to the allowed 127.0.0.1;
    # both listen on the same port
    good = raw_server(ok)
    try:
        bad_sock = socket.create_server(("127.0.0.2", good.port))
    except OSError:
        pytest.skip("port taken on 127.0.0.2")
    bad_sock.settimeout(0.2)
    resolver.answers["tracker.example"] = ["127.0.0.2", "127.0.0.1"]

    # when
    outcome = send_attempt(prepared(f"http://tracker.example:{good.port}/pb"), session=session)

    # then
    assert outcome.delivered
    assert good.connections == 1
    with pytest.raises(TimeoutError):
        bad_sock.accept()
    bad_sock.close()


def test_second_listener_on_127_0_0_2_never_gets_a_connection(fast, raw_server, session, resolver):
    # given: allow 127.0.0.1/32 only; a listener on 127.0.0.2
    other = raw_server(ok, host="127.0.0.2")
    resolver.answers["tracker.example"] = ["127.0.0.2"]
    resolver.answers["mixed.example"] = ["127.0.0.2", "::1"]
    urls = [
        other.url(),
        f"http://tracker.example:{other.port}/pb",
        f"http://mixed.example:{other.port}/pb",
        f"http://2130706434:{other.port}/pb",
        f"http://0x7f.0.0.2:{other.port}/pb",
    ]

    # when
    outcomes = [send_attempt(prepared(url), session=session) for url in urls]

    # then
    assert [o.error for o in outcomes] == ["blocked_address"] * len(urls)
    assert other.connections == 0
    # ... and it really was listening all along
    socket.create_connection(("127.0.0.2", other.port), timeout=2).close()
    deadline = time.monotonic() + 5
    while other.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert other.connections == 1


def test_a_name_that_rebinds_is_checked_again(fast, raw_server, session, resolver):
    # given: first answer allowed, later answer blocked (DNS rebinding)
    server = raw_server(ok)
    resolver.answers["tracker.example"] = ["127.0.0.1"]
    url = f"http://tracker.example:{server.port}/pb"
    first = send_attempt(prepared(url), session=session)
    resolver.answers["tracker.example"] = ["10.0.0.5"]

    # when
    second = send_attempt(prepared(url), session=session)

    # then
    assert first.delivered
    assert second.error == "blocked_address"
    assert server.connections == 1


def test_a_narrowed_allow_list_also_stops_a_kept_alive_connection(fast, raw_server, session):
    # given: a keep-alive receiver, one postback delivered while 127.0.0.1 is allowed
    def keep_alive(server: RawServer, conn: socket.socket) -> None:
        while server.read_request(conn):
            server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = raw_server(keep_alive)
    first = send_attempt(prepared(server.url()), session=session)

    # when: the allow-list no longer opens it
    fast.POSTBACK_ALLOWED_NETWORKS = []
    second = send_attempt(prepared(server.url()), session=session)

    # then: the pooled connection was not used for a second request
    assert first.delivered
    assert second.error == "blocked_address"
    assert server.connections == 1
    assert len([r for r in server.requests if r]) == 1


def test_the_connector_refuses_a_kept_alive_connection_to_a_name(
    fast, raw_server, session, resolver
):
    # given: a name whose connection stays open
    def keep_alive(server: RawServer, conn: socket.socket) -> None:
        while server.read_request(conn):
            server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = raw_server(keep_alive)
    resolver.answers["tracker.example"] = ["127.0.0.1"]
    url = f"http://tracker.example:{server.port}/pb"
    first = send_attempt(prepared(url), session=session)

    # when
    fast.POSTBACK_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    second = send_attempt(prepared(url), session=session)

    # then
    assert first.delivered
    assert (second.error, second.retryable) == ("blocked_address", False)
    assert "127.0.0.1" in second.error_detail
    assert resolver.calls == ["tracker.example"]  # the kept connection, not a new lookup
    assert len([r for r in server.requests if r]) == 1


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_loopback_follows_the_allow_list(settings, raw_server, session):
    # given
    try:
        server = raw_server(ok, host="::1")
    except OSError:
        pytest.skip("::1 not available")
    url = f"http://[::1]:{server.port}/pb"

    # when
    settings.POSTBACK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    blocked = send_attempt(prepared(url), session=session)
    settings.POSTBACK_ALLOWED_NETWORKS = ["::1/128"]
    allowed = send_attempt(prepared(url), session=session)

    # then
    assert blocked.error == "blocked_address"
    assert allowed.delivered
    assert server.connections == 1


def test_unresolvable_name_is_a_connection_error(fast, session, resolver):
    # when
    outcome = send_attempt(prepared("http://nowhere.example/pb"), session=session)

    # then
    assert outcome.error == "connection_error"
    assert outcome.retryable


def test_allowed_addresses_raises_blocked_with_the_address(settings, resolver):
    # given
    settings.POSTBACK_ALLOWED_NETWORKS = []
    resolver.answers["tracker.example"] = ["192.168.1.10", "10.0.0.1"]

    # when
    with pytest.raises(BlockedAddress) as caught:
        allowed_addresses("tracker.example", 80)

    # then
    assert caught.value.address == ip("192.168.1.10")
    assert isinstance(caught.value, OSError)  # aiohttp reports resolver OSErrors as such


def test_allowed_addresses_keeps_only_allowed_candidates_in_order(settings, resolver):
    # given
    settings.POSTBACK_ALLOWED_NETWORKS = ["127.0.0.1/32", "::1/128"]
    resolver.answers["mixed.example"] = ["10.0.0.1", "::1", "127.0.0.2", "127.0.0.1"]

    # then
    assert allowed_addresses("mixed.example", 80) == [ip("::1"), ip("127.0.0.1")]


def test_allowed_addresses_with_no_answer(resolver):
    resolver.answers["empty.example"] = []
    with pytest.raises(HostNotFound):
        allowed_addresses("empty.example", 80)


def test_guarded_resolver_resolves_once_and_hands_aiohttp_only_allowed_addresses(
    settings, resolver
):
    # given
    settings.POSTBACK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    resolver.answers["tracker.example"] = ["127.0.0.2", "127.0.0.1"]

    # when
    answer = asyncio.run(guard.GuardedResolver().resolve("tracker.example", 8080))

    # then
    assert resolver.calls == ["tracker.example"]
    assert [(a["hostname"], a["host"], a["port"]) for a in answer] == [
        ("tracker.example", "127.0.0.1", 8080)
    ]


def test_resolve_host_does_not_look_up_literals(no_system_dns):
    assert resolve_host("0x7f.1", 80) == [ip("127.0.0.1")]
    assert resolve_host("::1", 80) == [ip("::1")]
    assert no_system_dns == []


def test_session_ignores_environment_proxies(fast, raw_server, monkeypatch):
    # given: a proxy in the environment would make its own DNS lookup
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    server = raw_server(ok)
    s = test_transport.new_session(pool_size=1)

    # when
    outcome = send_attempt(prepared(server.url()), session=s)

    # then
    assert outcome.delivered
    assert server.connections == 1
    assert s.client.trust_env is False
    s.close()


# --- TLS: certificate and SNI keep the name while the socket goes to the pinned IP -------


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=Test CA", "-keyout", "ca.key", "-out", "ca.pem",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=tracker.example",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:tracker.example\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem",
             cwd=d)  # fmt: skip
    return d


@pytest.fixture
def tls_session(tls_files):
    s = test_transport.new_session(
        pool_size=4, ssl_context=ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    )
    yield s
    s.close()


def test_https_verifies_the_name_and_sends_sni_to_the_pinned_ip(
    fast, raw_server, tls_session, resolver, tls_files, no_system_dns
):
    # given: a TLS receiver on 127.0.0.1 with a certificate for tracker.example only
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files / "server.pem", tls_files / "server.key")
    seen_sni: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)

    def tls_ok(server: RawServer, conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            ok(server, tls)

    server = raw_server(tls_ok)
    resolver.answers["tracker.example"] = ["127.0.0.1"]
    resolver.answers["other.example"] = ["127.0.0.1"]
    session = tls_session

    # when
    good = send_attempt(prepared(f"https://tracker.example:{server.port}/pb"), session=session)
    wrong = send_attempt(prepared(f"https://other.example:{server.port}/pb"), session=session)

    # then
    assert good.delivered
    assert seen_sni[0] == "tracker.example"
    assert f"Host: tracker.example:{server.port}".encode() in server.requests[0]
    assert wrong.error == "connection_error"  # certificate does not match other.example
    assert "certificate" in wrong.error_detail.lower()
