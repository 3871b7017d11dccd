"""The short texts bench/run.py generates from one run's rows: the summary at the top of
docs/benchmarks.md, and the README's "compared with" table.

Both live between markers in their files and are rewritten whole by each run, so the
README's numbers are always those of the run docs/benchmarks.md shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOC = ROOT / "docs" / "benchmarks.md"
SUMMARY = ("<!-- bench/run.py: summary begin -->", "<!-- bench/run.py: summary end -->")
COMPARISON = ("<!-- bench/run.py: comparison begin -->", "<!-- bench/run.py: comparison end -->")

#: The framework stores compared, in the README's column order: (bench key, column head).
FRAMEWORKS = [
    ("langchain", "langchain-postgres"),
    ("agents", "OpenAI Agents `SQLAlchemySession`"),
    ("adk", "Google ADK `DatabaseSessionService`"),
]

#: What each store keeps or offers, in FRAMEWORKS' order after sessionstore's own cell:
#: facts of the libraries, not of a run.
FEATURES = [
    ("sessions that expire (TTL, sliding), turn and token counters", "yes", "no", "no", "no"),
    ("row-level security per Supabase user", "yes (`as_user`)", "no", "no", "no"),
    ("write-behind: append without waiting, `flush()`", "yes", "no", "no", "no"),
]


def ratio(rows: list[dict[str, Any]], a: str, b: str) -> float:
    by = {r["impl"]: r["turns_per_s"] for r in rows}
    return round(by[a] / by[b], 2)


def number(value: float) -> str:
    return f"{value:,.0f}"


def replace_between(path: Path, markers: tuple[str, str], text: str) -> None:
    """Replace what stands between ``markers`` in ``path`` by ``text``."""
    begin, end = markers
    whole = path.read_text()
    head, rest = whole.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def summary(
    env: str,
    turns: list[dict[str, Any]],
    ceiling: dict[str, Any] | None,
    loop_ceiling: dict[str, Any] | None,
    framework_rows: list[dict[str, Any]],
    rtt_rows: list[dict[str, Any]],
    langgraph_rows: list[dict[str, Any]] | None = None,
) -> str:
    """docs/benchmarks.md's summary, from this run's rows."""
    by = {r["impl"]: r for r in turns}
    lines = [
        f"One run of `python3 dev.py bench` ({env}), 50 concurrent chat clients, pool of 10.",
        "",
        "Across a network (bench/latency.py adds the round-trip time; a turn = append the"
        " user's message, read the last 20, append the reply):",
        "",
        "| RTT | system | turns/s per client | p50 ms | p99 ms | round trips per turn |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    top = max(r["rtt_ms"] for r in rtt_rows) if rtt_rows else None
    for r in rtt_rows:
        if r["rtt_ms"] == top and r["clients"] > 1:
            lines.append(
                f"| {r['rtt_ms']:g} ms | {r['impl']} | {r['per_client_turns_per_s']}"
                f" | {r['p50_ms']} | {r['p99_ms']} | {r['round_trips_per_turn']} |"
            )
    alone = {r["impl"]: r for r in rtt_rows if r["clients"] == 1}
    if "sessionstore-context" in alone and "asyncpg" in alone:
        mine, raw = alone["sessionstore-context"], alone["asyncpg"]
        lines += [
            "",
            f"One client alone at {top:g} ms: a chat turn's p50 is {mine['p50_ms']} ms with"
            f" `add_turn(context=20)` + `add_turn` ({raw['p50_ms']} ms for raw asyncpg"
            " step by step); above, 50 clients share 10 connections and the wait for one"
            " is most of a turn.",
        ]
    lines += [
        "",
        "On loopback (the server's CPU is the limit; ratios to raw asyncpg step by step and"
        " to the thread-pool design sessionstore replaces):",
        "",
        "| | turns/s | vs asyncpg | vs thread pool |",
        "| --- | ---: | ---: | ---: |",
    ]
    named = [
        ("`add_turn` ×2 + `history`", "sessionstore"),
        ("`enqueue_turn` ×2 + `history` (durable after `flush()`)", "sessionstore-writebehind"),
        ("chat loop: `add_turn(context=20)` + `add_turn`", "sessionstore-context"),
    ]
    for label, impl in named:
        r = by[impl]
        lines.append(
            f"| {label} | {number(r['turns_per_s'])} | {ratio(turns, impl, 'asyncpg')}×"
            f" | {ratio(turns, impl, 'threadpool')}× |"
        )
    base, pool = by["asyncpg"]["turns_per_s"], by["threadpool"]["turns_per_s"]
    for ceil, impl, what in (
        (ceiling, "sessionstore", "`add_turn` ×2 + `history`"),
        (loop_ceiling, "sessionstore-context", "the chat loop"),
    ):
        if ceil is None:
            continue
        share = round(by[impl]["turns_per_s"] / ceil["turns_per_s"] * 100)
        lines.append(
            f"| pgbench sending the statements of {what} (its ceiling; reached: {share}%)"
            f" | {number(ceil['turns_per_s'])} | {round(ceil['turns_per_s'] / base, 2)}×"
            f" | {round(ceil['turns_per_s'] / pool, 2)}× |"
        )
    fw = {r["impl"]: r for r in framework_rows}
    pairs = [
        ("OpenAI Agents (`SQLAlchemySession`)", "agents"),
        ("Google ADK (`DatabaseSessionService`)", "adk"),
        ("LangChain (langchain-postgres)", "langchain"),
    ]
    present = [(label, k) for label, k in pairs if f"{k}-builtin" in fw]
    if present:
        lines += [
            "",
            "Through the frameworks' own session interfaces, on loopback:",
            "",
            "| framework | its own store | sessionstore's adapter | ratio | client CPU per turn |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, k in present:
            own, ours = fw[f"{k}-builtin"], fw[f"{k}-sessionstore"]
            cpu = [round(r["client_cpu_s"] / r["turns"] * 1000, 2) for r in (own, ours)]
            lines.append(
                f"| {label} | {number(own['turns_per_s'])} turns/s,"
                f" p99 {number(own['p99_ms'])} ms"
                f" | {number(ours['turns_per_s'])} turns/s, p99 {number(ours['p99_ms'])} ms"
                f" | {round(ours['turns_per_s'] / own['turns_per_s'], 2)}×"
                f" | {cpu[0]} → {cpu[1]} ms |"
            )
    graph = {(r["rtt_ms"], r["saver"]): r for r in langgraph_rows or []}
    rtts = sorted({rtt for rtt, saver in graph if saver == "sessionstore"})
    if rtts:
        lines += [
            "",
            "A LangGraph chat graph, 50 threads at once, on sessionstore's checkpointer and on"
            " langgraph-checkpoint-postgres's, same pool size (bench/checkpointers.py; the control"
            " is `AsyncPostgresSaver` with its per-instance lock removed):",
            "",
            "| RTT | `AsyncPostgresSaver` | `SessionStoreSaver` | turns/s ratio | p99 ratio"
            " | turns/s ratio to the control |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for rtt in rtts:
            mine = graph[(rtt, "sessionstore")]
            peer = graph.get((rtt, "postgres"))
            control = graph.get((rtt, "postgres-unlocked"))
            if peer is None:
                continue
            to_control = (
                f"{round(mine['turns_per_s'] / control['turns_per_s'], 2)}×" if control else "—"
            )
            lines.append(
                f"| {rtt:g} ms | {number(peer['turns_per_s'])} turns/s,"
                f" p99 {number(peer['p99_ms'])} ms"
                f" | {number(mine['turns_per_s'])} turns/s, p99 {number(mine['p99_ms'])} ms"
                f" | {round(mine['turns_per_s'] / peer['turns_per_s'], 2)}×"
                f" | {round(peer['p99_ms'] / mine['p99_ms'], 2)}× lower | {to_control} |"
            )
    return "\n".join(lines)


def comparison(
    env: str, framework_rows: list[dict[str, Any]], rtt_rows: list[dict[str, Any]]
) -> str:
    """The README's "compared with" table: the features, then two measured rows — the
    round trips a chat turn takes at the highest RTT run (the proxy counts them) and the
    turns/s through each framework's own interface, its store against sessionstore's
    adapter. A store this run could not measure reads "not measured"."""
    top = max((r["rtt_ms"] for r in rtt_rows), default=None)
    trips = {
        r["impl"]: f"{r['round_trips_per_turn']:g}"
        for r in rtt_rows
        if r["rtt_ms"] == top and r["clients"] > 1
    }
    fw = {r["impl"]: r for r in framework_rows}

    def loopback(key: str) -> str:
        own, ours = fw.get(f"{key}-builtin"), fw.get(f"{key}-sessionstore")
        if own is None or ours is None:
            return "not measured"
        return (
            f"{number(own['turns_per_s'])} → {number(ours['turns_per_s'])}"
            f" ({round(ours['turns_per_s'] / own['turns_per_s'], 2)}×)"
        )

    heads = ["", "sessionstore", *(head for _, head in FRAMEWORKS)]
    rows = [list(feature) for feature in FEATURES]
    rows.append(
        [
            f"round trips per chat turn at {top:g} ms RTT, counted (sessionstore: the MCP loop)"
            if top
            else "round trips per chat turn",
            trips.get("sessionstore-chat-loop", "not measured"),
            *(trips.get(f"{key}-builtin", "not measured") for key, _ in FRAMEWORKS),
        ]
    )
    rows.append(
        [
            "turns/s on loopback, 50 clients, through the framework's interface:"
            " its store → sessionstore's adapter",
            "—",
            *(loopback(key) for key, _ in FRAMEWORKS),
        ]
    )
    lines = ["| " + " | ".join(heads) + " |", "| --- " * len(heads) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", f"The last two rows: one run of `python3 dev.py bench` ({env})."]
    return "\n".join(lines)
