"""The Go-regexp syntax check: a table, the real agent's verdict on it, and a fuzzer.

The oracle is a real ``serf agent``: ``members-filtered`` compiles each tag filter as
``^<pattern>$`` and closes the connection when Go refuses it (reference/serf-rpc.md §3).
It is asked over raw RPC (``tests.lab.serfagents.raw_request``), not through our client,
so the agent's verdict never passes through the code under test. Query tag filters
(unanchored, a refusing node just skips the query) and stream filters (not regexes, but
refused by the agent all the same) get their own tables against the same agent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serfbridge.cli import cli
from serfbridge.cli.serf import check_event_filter
from serfbridge.errors import UsageError
from serfbridge.re2syntax import MAX_PATTERN, check_go_regex, go_regex_error
from serfbridge.rpc.client import SerfClient
from tests.lab.errors import LabError
from tests.lab.serfagents import AgentSpec, SerfCluster, free_port, raw_request

_PIECES_FOR_UNITS = st.sampled_from([*"()[]{}|*+?^$.\\-:,<>PpQEx0129imsU\n", "(?P<", "[:"])

# (pattern, Go accepts it inside members-filtered's ^...$)
CASES = [
    # the four: Python's re takes them, Go does not
    pytest.param("x{1001}", False, id="repeat-over-1000"),
    pytest.param("a*+", False, id="possessive"),
    pytest.param("(?>a)", False, id="atomic-group"),
    pytest.param(r"\Z", False, id="backslash-Z"),
    # more that Python takes and Go refuses
    pytest.param("(?=x)", False, id="lookahead"),
    pytest.param("(?<!x)y", False, id="lookbehind"),
    pytest.param(r"(a)\1", False, id="backreference"),
    pytest.param("(?<n>a)", False, id="dotnet-named-group"),
    pytest.param("(?P=n)", False, id="python-named-backref"),
    pytest.param("a**", False, id="nested-star"),
    pytest.param("a{2}{3}", False, id="nested-counts"),
    pytest.param("a*??", False, id="nested-after-lazy"),
    pytest.param("(a{100}){11}", False, id="nested-product-1100"),
    pytest.param(r"\C", False, id="any-byte"),
    pytest.param(r"\8", False, id="digit-escape"),
    pytest.param(r"\q", False, id="letter-escape"),
    pytest.param(r"\é", False, id="non-ascii-escape"),
    pytest.param(r"\x{110000}", False, id="hex-over-max-rune"),
    pytest.param(r"\xg1", False, id="bad-hex"),
    pytest.param(r"\p{Foo}", False, id="unknown-unicode-class"),
    pytest.param(r"\p{Cn}", False, id="category-go-lacks"),
    pytest.param("[[:foo:]]", False, id="unknown-posix-class"),
    pytest.param("[[:a]b:]]", False, id="posix-class-reaching-far"),
    pytest.param(r"[a-\d]", False, id="range-to-class"),
    pytest.param("[z-a]", False, id="reversed-range"),
    pytest.param(r"[\b]", False, id="backspace-in-class"),
    pytest.param("(?i-)", False, id="dangling-negation"),
    pytest.param("(?i", False, id="unclosed-flags"),
    pytest.param("(?P<>a)", False, id="empty-group-name"),
    pytest.param("(?P<a-b>x)", False, id="bad-group-name"),
    pytest.param("a{2,1}", False, id="counts-reversed"),
    pytest.param("a{1000000000}", False, id="count-overflow"),
    pytest.param("(a", False, id="unclosed-group"),
    pytest.param("a)", False, id="stray-paren"),
    pytest.param("[a", False, id="unclosed-class"),
    pytest.param("(*)", False, id="star-after-paren"),
    pytest.param("a|*", False, id="star-after-bar"),
    pytest.param("\udcff", False, id="invalid-utf8"),
    # Python's re refuses these, Go takes them
    pytest.param(r"\pN", True, id="unicode-class-letter"),
    pytest.param(r"\p{Greek}\P{^Han}", True, id="unicode-scripts"),
    pytest.param(r"\z", True, id="end-of-text"),
    pytest.param(r"\Qa.b*\E+", True, id="quoted-literal"),
    pytest.param("(?U)a+", True, id="ungreedy-flag"),
    # Go takes them although they look wrong
    pytest.param("*", True, id="star-after-anchor"),
    pytest.param("(?i)*", True, id="star-after-flags-repeats-anchor"),
    pytest.param("\\", True, id="backslash-escapes-the-dollar"),
    pytest.param("x{,3}", True, id="open-count-is-literal"),
    pytest.param("a{01}", True, id="leading-zero-count-is-literal"),
    pytest.param("(?P<n>a)(?P<n>b)", True, id="duplicate-names"),
    pytest.param("[]a]", True, id="bracket-first-in-class"),
    pytest.param("[a-]", True, id="dash-last-in-class"),
    pytest.param("[[:^alpha:][:word:]]", True, id="posix-classes"),
    pytest.param(r"\_\-\0\12\x41\x{10FFFF}", True, id="escapes"),
    pytest.param("(a{100}){10}", True, id="nested-product-1000"),
    pytest.param("(a{1000}){0}", True, id="zero-count-stops-the-product"),
    pytest.param("a{2,}b{0,1000}?", True, id="counts"),
    pytest.param("(?i-s:a.b)(?m)^x$", True, id="flag-groups"),
    pytest.param("(?)", True, id="empty-flags"),
    pytest.param("()|(?:)*", True, id="empty-groups"),
    pytest.param("web|db", True, id="alternation"),
    pytest.param("10\\.0\\.[0-9]+\\.[0-9]{1,3}", True, id="an-address"),
]


def test_the_table_has_both_verdicts() -> None:
    verdicts = [case.values[1] for case in CASES]
    assert verdicts.count(True) >= 15 and verdicts.count(False) >= 30


@pytest.mark.parametrize(("pattern", "accepted"), CASES)
def test_our_verdict(pattern: str, accepted: bool) -> None:
    problem = go_regex_error(f"^{pattern}$")
    assert (problem is None) == accepted, problem
    if problem is not None:
        assert "\n" not in problem


def test_check_names_the_flag_and_refuses_long_patterns() -> None:
    with pytest.raises(UsageError, match=r"--tag role: 'a\*\+' is not a valid Go \(RE2\) regex"):
        check_go_regex("a*+", "--tag role", anchored=True)
    assert check_go_regex("a" * MAX_PATTERN, "--tag role", anchored=True) == "a" * MAX_PATTERN
    with pytest.raises(UsageError, match="longer than"):
        check_go_regex("a" * (MAX_PATTERN + 1), "--tag role", anchored=True)


def test_anchoring_changes_the_verdict_as_it_does_for_the_agent() -> None:
    # members-filtered compiles "^*$" (fine); a query node compiles "*" (refused).
    assert check_go_regex("*", "--tag k", anchored=True) == "*"
    with pytest.raises(UsageError):
        check_go_regex("*", "--tag k", anchored=False)


@settings(max_examples=1000, deadline=500)
@given(
    pattern=st.text(max_size=MAX_PATTERN) | st.lists(_PIECES_FOR_UNITS, max_size=300).map("".join)
)
def test_any_text_gives_a_verdict_never_a_crash(pattern: str) -> None:
    """Only our verdict comes out (no IndexError and the like), and as one line."""
    problem = go_regex_error(pattern)
    if problem is None:
        return
    with pytest.raises(UsageError) as info:
        check_go_regex(pattern, "--tag k", anchored=False)
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


# --- the real agent ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent() -> Iterator[SerfCluster]:
    with SerfCluster(specs=[AgentSpec("re2", tags={"k": "ab"})]) as cluster:
        yield cluster


def agent_accepts(cluster: SerfCluster, pattern: str) -> bool:
    """The agent's verdict: a reply means Go compiled ``^pattern$``; a closed connection
    means it did not."""
    body = {"Tags": {"k": pattern}, "Status": "", "Name": ""}
    try:
        error, _ = raw_request(cluster.agent("re2").rpc_addr, "members-filtered", body=body)
    except LabError:
        return False
    assert error == "", error
    return True


@pytest.mark.integration
@pytest.mark.parametrize(("pattern", "accepted"), CASES)
def test_the_agent_agrees_with_the_table(agent: SerfCluster, pattern: str, accepted: bool) -> None:
    if "\udcff" in pattern:
        return  # msgpack cannot even send it; our check refuses it (test_our_verdict)
    assert agent_accepts(agent, pattern) == accepted


@pytest.mark.integration
@pytest.mark.parametrize(("pattern", "accepted"), CASES)
def test_members_cli_exits_2_before_sending_or_works(
    agent: SerfCluster, pattern: str, accepted: bool
) -> None:
    """Refused: exit 2 with nothing listening at --rpc-addr (so before any connection).
    Accepted: the same command against the real agent exits 0."""
    runner = CliRunner()
    if not accepted:
        nobody = f"127.0.0.1:{free_port()}"
        result = runner.invoke(cli, ["--rpc-addr", nobody, "members", "--tag", f"k={pattern}"])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1
        assert "not a valid Go (RE2) regex" in result.stderr
        return
    addr = agent.agent("re2").rpc_addr
    result = runner.invoke(cli, ["--rpc-addr", addr, "members", "--tag", f"k={pattern}"])
    assert result.exit_code == 0, result.output


@pytest.mark.integration
@pytest.mark.parametrize("flag", ["--status", "--name"])
def test_status_and_name_filters_are_checked_too(agent: SerfCluster, flag: str) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["--rpc-addr", nobody, "members", flag, "a*+"])
    assert result.exit_code == 2 and flag in result.stderr
    addr = agent.agent("re2").rpc_addr
    result = CliRunner().invoke(cli, ["--rpc-addr", addr, "members", flag, r"\p{L}+|alive"])
    assert result.exit_code == 0, result.output


# Query tag filters run unanchored on every node; a node whose Go refuses the filter
# skips the query (no ack). Every accepted pattern here matches the tag value "ab".
QUERY_CASES = [
    pytest.param("a", True, id="plain"),
    pytest.param("b$", True, id="anchored-end"),
    pytest.param(r"\pL", True, id="unicode-class"),
    pytest.param("a*+", False, id="possessive"),
    pytest.param("(?=a)", False, id="lookahead"),
    pytest.param("*", False, id="bare-star"),
    pytest.param("x{1001}|a", False, id="repeat-over-1000"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("pattern", "accepted"), QUERY_CASES)
def test_query_filters_agree_with_the_agent(
    agent: SerfCluster, pattern: str, accepted: bool
) -> None:
    addr = agent.agent("re2").rpc_addr
    with SerfClient(addr) as client:  # the client sends query filters unchecked
        records = list(
            client.query("re2q", b"", filter_tags={"k": pattern}, request_ack=True, timeout_s=1.5)
        )
    acked = any(r.type == "ack" for r in records)
    assert acked == accepted
    nobody = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["--rpc-addr", nobody, "query", "q", "--tag", f"k={pattern}"])
    assert result.exit_code == (1 if accepted else 2), result.output  # 1: nobody listens


_MULTI = ["(?", "(?P<", "[:", ":]", "\\p{", "\\x{", "{2}", "{1,}", "{0,1000}", "{1001}"]
_PIECES = st.sampled_from(
    [
        *"ab()[]{}|*+?^$.\\-:,<>=!PpQEdwsbBzZACx019_imsU ",
        *_MULTI,
        "\\Q",
        "\\E",
        "[[:alpha:]",
        "\\pL",
        "é",
    ]
)


@pytest.mark.integration
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pieces=st.lists(_PIECES, min_size=1, max_size=14))
def test_fuzz_our_verdict_is_the_agents(agent: SerfCluster, pieces: list[str]) -> None:
    pattern = "".join(pieces)
    assert (go_regex_error(f"^{pattern}$") is None) == agent_accepts(agent, pattern), pattern


# --- stream filters: not regexes, but checked the same way --------------------------------

STREAM_CASES = [
    pytest.param("", True, id="empty-means-all"),
    pytest.param("*", True, id="star"),
    pytest.param("member-join,member-reap", True, id="member-events"),
    pytest.param("user", True, id="user"),
    pytest.param("user:", True, id="user-empty-name"),
    pytest.param("user:a b", True, id="space-inside-a-name"),
    pytest.param("query:x:y", True, id="colon-inside-a-name"),
    pytest.param("*,user:deploy", True, id="mixed"),
    pytest.param("member-join,", False, id="trailing-comma"),
    pytest.param(",", False, id="only-a-comma"),
    pytest.param("member-join, user", False, id="space-after-comma"),
    pytest.param("MEMBER-JOIN", False, id="upper-case"),
    pytest.param("member-join:x", False, id="member-event-with-name"),
    pytest.param("users", False, id="unknown-type"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("event_filter", "accepted"), STREAM_CASES)
def test_stream_filters_agree_with_the_agent(
    agent: SerfCluster, event_filter: str, accepted: bool
) -> None:
    error, _ = raw_request(
        agent.agent("re2").rpc_addr, "stream", body={"Type": event_filter}, timeout=3
    )
    assert (error == "") == accepted, error
    try:
        check_event_filter(event_filter)
        ours = True
    except UsageError:
        ours = False
    assert ours == accepted
