"""Routing of alarms to projects' channels, and its configuration."""

from __future__ import annotations

import pytest

from mesh.alarm import Severity
from mesh.config import parse_config
from mesh.errors import ConfigError
from sinks.errors import SinkConfigError
from sinks.routing import (
    MatchReason,
    Router,
    parse_duration,
    parse_routing,
    subject_host,
)

SINKS = ["ops-slack", "pay-telegram", "pay-discord", "web-teams", "stdout"]

ROUTES = {
    "default": {"receivers": ["ops-slack"]},
    "payments": {
        "receivers": ["pay-telegram", "pay-discord"],
        "severities": ["critical", "warning"],
        "group_window": "30s",
        "repeat_interval": "4h",
        "fallback": ["ops-slack"],
        "fallback_after": "10m",
    },
    "shop": {"receivers": ["web-teams"]},
    "platform": {"receivers": ["stdout"]},
}
PROJECTS = {
    "payments": {
        "domains": ["pay.example.com", "*.pay.example.com"],
        "route": "payments",
    },
    "shop": {
        "domains": ["shop.pay.example.com", "*.eu.pay.example.com"],
        "route": "shop",
    },
    "platform": {"clusters": ["busan"], "route": "platform"},
}


@pytest.fixture
def router() -> Router:
    return parse_routing(ROUTES, PROJECTS, SINKS)


@pytest.mark.parametrize(
    "subject, host",
    [
        ("https://Shop.Pay.Example.com:8443/health?x=1", "shop.pay.example.com"),
        ("http://user@api.example.com/", "api.example.com"),
        ("domain/shop.pay.example.com", "shop.pay.example.com"),
        ("dns/pay.example.com.", "pay.example.com"),
        ("tcp/db.example.com:5432", "db.example.com"),
        ("tls/api.example.com:443", "api.example.com"),
        ("tcp/[2001:db8::1]:443", "2001:db8::1"),
        ("https://bücher.example/", "xn--bcher-kva.example"),
        ("member/busan", None),
        ("apiserver", None),
        ("nodes/node-1", None),
    ],
)
def test_subject_host(subject, host):
    assert subject_host(subject) == host


@pytest.mark.parametrize(
    "subject, cluster, route, reason, matched",
    [
        # An exact domain beats every wildcard that covers it.
        (
            "https://shop.pay.example.com/",
            "seoul",
            "shop",
            MatchReason.DOMAIN,
            "shop.pay.example.com",
        ),
        (
            "https://pay.example.com/",
            "seoul",
            "payments",
            MatchReason.DOMAIN,
            "pay.example.com",
        ),
        # The longest wildcard wins.
        (
            "domain/a.eu.pay.example.com",
            "seoul",
            "shop",
            MatchReason.WILDCARD_DOMAIN,
            "*.eu.pay.example.com",
        ),
        (
            "tcp/x.y.pay.example.com:443",
            "seoul",
            "payments",
            MatchReason.WILDCARD_DOMAIN,
            "*.pay.example.com",
        ),
        # A domain owner beats the cluster owner.
        (
            "https://api.pay.example.com/",
            "busan",
            "payments",
            MatchReason.WILDCARD_DOMAIN,
            "*.pay.example.com",
        ),
        # Member-down alarms match by cluster.
        ("member/busan", "busan", "platform", MatchReason.CLUSTER, "busan"),
        ("member/seoul", "seoul", "default", MatchReason.DEFAULT, None),
        ("https://example.com/", "seoul", "default", MatchReason.DEFAULT, None),
        ("https://notpay.example.com/", "seoul", "default", MatchReason.DEFAULT, None),
    ],
)
def test_decide_owner_precedence(router, subject, cluster, route, reason, matched):
    decision = router.decide(
        subject=subject, cluster=cluster, severity=Severity.CRITICAL
    )

    assert (decision.route.name, decision.reason, decision.matched) == (
        route,
        reason,
        matched,
    )


def test_severity_filter_archives_only(router):
    decision = router.decide(
        subject="https://pay.example.com/", cluster="c", severity=Severity.INFO
    )
    assert decision.passes_filter is False
    assert decision.receivers == ()


def test_route_options_parsed(router):
    payments = router.routes["payments"]

    assert payments.group_window == 30
    assert payments.repeat_interval == 4 * 3600
    assert payments.fallbacks == ("ops-slack",)
    assert payments.fallback_after == 600


def test_explain_names_project_rule_and_channels(router):
    decision = router.decide(
        subject="https://api.pay.example.com/",
        cluster="busan",
        severity=Severity.WARNING,
    )
    text = "\n".join(decision.explain())

    assert "domain:    api.pay.example.com (from the subject)" in text
    assert "project:   payments (owns the wildcard *.pay.example.com)" in text
    assert "route:     payments (reason: wildcard_domain)" in text
    assert "severity:  warning passes the filter [critical, warning]" in text
    assert "receivers: pay-telegram, pay-discord" in text
    assert "fallback:  ops-slack after 10m of failures" in text
    assert "grouping:  alarms within 30s go out in one message" in text
    assert "repeat:    every 4h while the incident fires" in text


def test_no_routes_sends_everything_everywhere():
    router = parse_routing(None, None, SINKS)
    decision = router.decide(subject="member/x", cluster="x", severity=Severity.INFO)
    assert decision.receivers == tuple(SINKS)


@pytest.mark.parametrize(
    "routes, projects, message",
    [
        ({"payments": {"receivers": []}}, None, "routes.default: missing"),
        (
            {"default": {"receivers": ["nope"]}},
            None,
            "routes.default.receivers: unknown sink 'nope'",
        ),
        ({"default": {}}, None, "routes.default.receivers: missing"),
        (
            {"default": {"receivers": [], "colour": 1}},
            None,
            "routes.default.colour: unknown key",
        ),
        (
            {"default": {"receivers": [], "severities": ["fatal"]}},
            None,
            "routes.default.severities: invalid value ['fatal']",
        ),
        (
            {"default": {"receivers": [], "group_window": "soon"}},
            None,
            "routes.default.group_window: invalid value 'soon'",
        ),
        (
            {"default": {"receivers": ["stdout"], "fallback": ["stdout"]}},
            None,
            "routes.default.fallback: invalid value 'stdout', already a receiver",
        ),
        (
            {"Default": {"receivers": []}, "default": {"receivers": []}},
            None,
            "routes.Default: invalid name 'Default'",
        ),
        (
            {"default": {"receivers": []}},
            {"p": {"domains": ["a.com"], "route": "x"}},
            "projects.p.route: invalid value 'x'",
        ),
        (
            {"default": {"receivers": []}},
            {"p": {"route": "default"}},
            "projects.p: owns nothing",
        ),
        (
            {"default": {"receivers": []}},
            {"p": {"domains": ["*.com"], "route": "default"}},
            "projects.p.domains[0]: invalid value '*.com'",
        ),
        (
            {"default": {"receivers": []}},
            {"p": {"domains": ["a_b.com"], "route": "default"}},
            "projects.p.domains[0]: invalid value 'a_b.com'",
        ),
        (
            {"default": {"receivers": []}},
            {
                "p": {"clusters": ["busan"], "route": "default"},
                "q": {"clusters": ["busan"], "route": "default"},
            },
            "projects: cluster 'busan' is owned by both 'p' and 'q'",
        ),
        (
            None,
            {"p": {"clusters": ["busan"], "route": "default"}},
            "projects: set, but routes is missing",
        ),
    ],
)
def test_invalid_routing_names_key_value_and_expectation(routes, projects, message):
    with pytest.raises(SinkConfigError) as caught:
        parse_routing(routes, projects, SINKS)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "text, seconds",
    [
        (30, 30.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text, "x") == seconds


def agent_config(**changes):
    raw = {
        "name": "seoul",
        "listen": "127.0.0.1:7001",
        "key_file": "k",
        "data_dir": "d",
        "archive": "a",
        "sinks": [
            {"name": "ops-hook", "type": "webhook", "url": "http://127.0.0.1:9/a"}
        ],
    }
    raw.update(changes)
    return raw


def test_agent_config_reads_routes_projects_and_outbox(tmp_path):
    config = parse_config(
        agent_config(
            routes={"default": {"receivers": ["ops-hook"]}},
            projects={"web": {"domains": ["example.com"], "route": "default"}},
            outbox={"max_age": "2h", "initial_delay": 0.5},
        ),
        base=tmp_path,
        environ={},
    )
    assert config.routing.projects[0].name == "web"
    assert config.outbox_policy.max_age == 7200
    assert config.outbox_policy.initial_delay == 0.5


def test_agent_config_without_routes_keeps_working(tmp_path):
    config = parse_config(agent_config(), base=tmp_path, environ={})
    decision = config.routing.decide(
        subject="member/x", cluster="x", severity=Severity.INFO
    )
    assert decision.receivers == ("ops-hook",)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"routes": {"default": {"receivers": ["pager"]}}},
            "routes.default.receivers: unknown sink 'pager'",
        ),
        ({"outbox": {"max_age": -1}}, "outbox.max_age: invalid value -1"),
        ({"outbox": {"retries": 3}}, "outbox.retries: unknown key"),
        (
            {"outbox": {"initial_delay": 10, "max_delay": 1}},
            "outbox: invalid max_delay 1.0",
        ),
    ],
)
def test_agent_config_routing_errors(tmp_path, changes, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(agent_config(**changes), base=tmp_path, environ={})
    assert str(caught.value).startswith(message)
