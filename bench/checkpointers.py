"""LangGraph checkpointers: the same chat graph on sessionstore's SessionStoreSaver and
on langgraph-checkpoint-postgres's AsyncPostgresSaver, both on one PostgreSQL, in one run.

    python bench/checkpointers.py --dsn URL [--threads 50 --turns 5 --rounds 2 --rtts 0,5]

The graph: a chat agent (``StateGraph(MessagesState)``, one node calling a fake chat
model that answers at once, no network). A turn: one ``ainvoke`` with one user message on
a thread, so what is measured is the checkpointer's ``aget_tuple``, ``aput`` and
``aput_writes`` under LangGraph's own runtime. ``--threads`` threads run at once, each
doing ``--turns`` timed turns after one untimed warm-up turn; both savers have a pool of
``--pool`` connections (AsyncPostgresSaver an ``AsyncConnectionPool`` as its docs set it
up, ``setup()`` called). Each saver runs ``--rounds`` times per RTT, alternating
(sessionstore, postgres, sessionstore, …) so that the machine's noise falls on both;
every run has threads of its own, so each starts from empty threads.

RTT 0 is a direct connection (loopback); a larger RTT goes through bench/latency.py's
proxy, one per run, which also counts the statements and round trips of the timed turns,
each statement by its SQL. Prints one JSON line per run, then the docs/benchmarks.md
section (``--json``: one JSON line with the rows and the section, which is how
bench/run.py takes it; the per-run lines then go to stderr).

``--savers`` (default ``sessionstore,postgres``) can add ``postgres-unlocked``, a
control: AsyncPostgresSaver with its per-instance lock removed (bench/run.py runs it),
and ``memory``, LangGraph's InMemorySaver: the graph's own cost, no database.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from common import pool_runs, proxy_counts, rtt_parser, run_cells, scratch_database
from latency import LatencyProxy
from rtt import through, upstream_of

import sessionstore

SAVERS = ["sessionstore", "postgres"]
#: The checkpointer calls counted per turn (LangGraph calls them on the saver object).
CALLS = ["aget_tuple", "aput", "aput_writes", "alist"]
REPLY = "Here is a short answer of a fake model, about as long as a chat reply. " * 3

Config = dict[str, Any]
#: A saver, and the config of each thread (made before the clock starts).
Opened = tuple[Any, Callable[[list[str]], Awaitable[list[Config]]]]


def missing(savers: list[str]) -> list[str]:
    """The modules ``savers`` need that are not installed."""
    needed = ["langgraph.graph"]
    if any(s.startswith("postgres") for s in savers):
        needed += ["langgraph.checkpoint.postgres.aio", "psycopg_pool"]
    if "sessionstore" in savers:
        needed.append("sessionstore.integrations.langgraph")
    out = []
    for name in needed:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            out.append(name)
    return out


def build_graph() -> Any:
    """The chat agent, not compiled: ``MessagesState``, START → agent → END."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langgraph.graph import END, START, MessagesState, StateGraph

    class FakeChat(BaseChatModel):
        """Answers at once, in the event loop (no thread hop, no network)."""

        @property
        def _llm_type(self) -> str:
            return "bench-fake-chat"

        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            text = f"{REPLY}({len(messages)} messages so far)"
            return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])

        async def _agenerate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            return self._generate(messages)

    model = FakeChat()

    async def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    builder.add_edge("agent", END)
    return builder


@asynccontextmanager
async def sessionstore_saver(dsn: str, pool: int) -> AsyncIterator[Opened]:
    """SessionStoreSaver on a store of ``pool`` connections; each thread bound to a
    session of its own (created before the clock starts), as an application binds them."""
    from sessionstore.integrations.langgraph import SessionStoreSaver

    store = await sessionstore.connect(dsn, max_size=pool, min_size=pool)
    try:

        async def configs(threads: list[str]) -> list[Config]:
            sessions = await asyncio.gather(
                *(store.sessions.create(f"lg-{thread}") for thread in threads)
            )
            return [
                {"configurable": {"thread_id": thread, "session_id": str(session.id)}}
                for thread, session in zip(threads, sessions, strict=True)
            ]

        yield SessionStoreSaver(store), configs
    finally:
        await store.close()


@asynccontextmanager
async def postgres_saver(dsn: str, pool: int) -> AsyncIterator[Opened]:
    """AsyncPostgresSaver on an AsyncConnectionPool of ``pool`` connections, with the
    connection settings its documentation gives (autocommit, prepare_threshold=0,
    dict_row); ``setup()`` creates its tables (once per database)."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(
        dsn, min_size=pool, max_size=pool, kwargs=kwargs, open=False
    ) as connections:
        await connections.wait()
        saver = AsyncPostgresSaver(connections)  # type: ignore[arg-type]
        await saver.setup()

        async def configs(threads: list[str]) -> list[Config]:
            return [{"configurable": {"thread_id": thread}} for thread in threads]

        yield saver, configs


@asynccontextmanager
async def postgres_unlocked_saver(dsn: str, pool: int) -> AsyncIterator[Opened]:
    """A control, not in the default run: AsyncPostgresSaver with its instance lock
    replaced by a no-op. The saver holds that lock around every call, pool or not, so
    one saver's calls run one at a time; without it each call takes a pooled connection
    of its own (safe here: the lock guards a shared connection or pipeline, and a pool
    has neither)."""
    async with postgres_saver(dsn, pool) as (saver, configs):
        saver.lock = nullcontext()
        yield saver, configs


@asynccontextmanager
async def memory_saver(dsn: str, pool: int) -> AsyncIterator[Opened]:
    """A floor, not in the default run: LangGraph's InMemorySaver (no database), so the
    graph's own time and client CPU per turn show."""
    from langgraph.checkpoint.memory import InMemorySaver

    async def configs(threads: list[str]) -> list[Config]:
        return [{"configurable": {"thread_id": thread}} for thread in threads]

    yield InMemorySaver(), configs


OPEN = {
    "sessionstore": sessionstore_saver,
    "postgres": postgres_saver,
    "postgres-unlocked": postgres_unlocked_saver,
    "memory": memory_saver,
}
NAMES = {
    "sessionstore": "SessionStoreSaver",
    "postgres": "AsyncPostgresSaver",
    "postgres-unlocked": "AsyncPostgresSaver, lock removed (control)",
    "memory": "InMemorySaver (no database: the graph alone)",
}


def count_calls(saver: Any, counts: Counter[str]) -> None:
    """Count ``saver``'s checkpointer calls in ``counts`` (the graph calls them through
    the instance, so instance attributes wrap them)."""
    for name in CALLS:
        original = getattr(saver, name)

        def wrapped(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            counts[_name] += 1
            return _original(*args, **kw)

        setattr(saver, name, wrapped)


async def one_run(
    saver_name: str,
    dsn: str,
    *,
    tag: str,
    threads: int,
    turns: int,
    pool: int,
    proxy_pid: int | None = None,
) -> dict[str, Any]:
    """One saver's run: ``threads`` threads at once, ``turns`` timed turns each."""
    from langchain_core.messages import HumanMessage

    async with OPEN[saver_name](dsn, pool) as (saver, make_configs):
        graph = build_graph().compile(checkpointer=saver)
        configs = await make_configs([f"{tag}-{c}" for c in range(threads)])
        counts: Counter[str] = Counter()
        count_calls(saver, counts)
        latencies: list[float] = []

        async def turn(c: int, t: int) -> None:
            question = HumanMessage(f"Question {t} of thread {c}: what should I read next?")
            await graph.ainvoke({"messages": [question]}, configs[c])

        async def client(c: int) -> None:
            for t in range(turns):
                started = time.perf_counter()
                await turn(c, t)
                latencies.append((time.perf_counter() - started) * 1000)

        # Warm-up: each thread's first turn, all at once, so that every pooled connection
        # is open and has prepared its statements before the clock starts.
        await asyncio.gather(*(turn(c, -1) for c in range(threads)))
        counts.clear()
        if proxy_pid is not None:
            os.kill(proxy_pid, signal.SIGUSR1)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(threads)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if proxy_pid is not None:
            os.kill(proxy_pid, signal.SIGUSR2)
        calls = Counter(counts)  # before the check below calls the saver once more
        stored = await saver.aget_tuple(configs[0])
        messages = len(stored.checkpoint["channel_values"]["messages"]) if stored else 0
    if messages != 2 * (turns + 1):  # the graph's state as stored: every turn is in it
        raise AssertionError(f"{saver_name}: thread 0 holds {messages} messages")
    done = len(latencies)
    return {
        "saver": saver_name,
        "turns": done,
        "seconds": round(elapsed, 3),
        "turns_per_s": round(done / elapsed, 1),
        "latencies_ms": [round(x, 3) for x in latencies],
        "client_cpu_ms_per_turn": round(cpu / done * 1000, 2),
        "calls_per_turn": {k: round(calls[k] / done, 2) for k in CALLS if calls[k]},
    }


def run(
    dsn: str,
    rtts: list[float],
    threads: int,
    turns: int,
    pool: int,
    rounds: int,
    savers: list[str] = SAVERS,
) -> list[dict[str, Any]]:
    """Every saver ``rounds`` times at every RTT, alternating, on one fresh database
    (dropped after); one row per RTT and saver (its rounds pooled), each run's JSON line
    printed (to stderr with ``--json``)."""
    with scratch_database(dsn, "langgraph") as target:
        runs = _runs(target, rtts, threads, turns, pool, rounds, savers)
    return [_pooled(runs, rtt, saver) for rtt in rtts for saver in savers]


def _runs(
    target: str,
    rtts: list[float],
    threads: int,
    turns: int,
    pool: int,
    rounds: int,
    savers: list[str],
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for rtt in rtts:
        for r in range(rounds):
            for saver in savers:
                tag = f"{saver}-rtt{rtt:g}-r{r}"
                proxy = LatencyProxy(upstream_of(target), rtt_ms=rtt) if rtt > 0 else None
                with proxy or nullcontext(None) as port:
                    row = asyncio.run(
                        one_run(
                            saver,
                            target if port is None else through(target, port),
                            tag=tag,
                            threads=threads,
                            turns=turns,
                            pool=pool,
                            proxy_pid=None if proxy is None else proxy.pid,
                        )
                    )
                row["rtt_ms"] = rtt
                if proxy is not None:
                    per_turn = 1 / row["turns"]
                    row.update(proxy_counts(proxy.counts, row["turns"], "turn"))
                    row["by_statement"] = {
                        sql: round(n * per_turn, 2)
                        for sql, n in proxy.counts["by_statement"].items()
                    }
                runs.append(row)
                shown = {k: v for k, v in row.items() if k not in ("latencies_ms", "by_statement")}
                print(json.dumps(shown), file=_log, flush=True)
    return runs


def _pooled(runs: list[dict[str, Any]], rtt: float, saver: str) -> dict[str, Any]:
    """One saver's rounds at ``rtt`` as one row: turns/s over their summed time,
    percentiles over all their turns."""
    mine = [r for r in runs if r["rtt_ms"] == rtt and r["saver"] == saver]
    row: dict[str, Any] = {
        "rtt_ms": rtt,
        "saver": saver,
        **pool_runs(mine, "turn", cpu_digits=2),
        "calls_per_turn": mine[-1]["calls_per_turn"],
    }
    done = row["turns"]
    for key in ("statements_per_turn", "round_trips_per_turn"):
        if key in mine[-1]:
            row[key] = round(sum(r[key] * r["turns"] for r in mine) / done, 2)
    if "by_statement" in mine[-1]:
        sqls = {sql for r in mine for sql in r["by_statement"]}
        per_sql = {
            sql: round(sum(r["by_statement"].get(sql, 0) * r["turns"] for r in mine) / done, 2)
            for sql in sqls
        }
        row["by_statement"] = dict(sorted(per_sql.items(), key=lambda kv: -kv[1]))
    return row


def ratios(rows: list[dict[str, Any]], rtt: float, peer: str = "postgres") -> dict[str, float]:
    """sessionstore against ``peer`` at ``rtt``: turns/s (higher is better for
    sessionstore) and p50, p99 (the peer's over sessionstore's: also higher is better)."""
    by = {r["saver"]: r for r in rows if r["rtt_ms"] == rtt}
    ours, theirs = by["sessionstore"], by[peer]
    return {
        "turns_per_s": round(ours["turns_per_s"] / theirs["turns_per_s"], 2),
        "p50": round(theirs["p50_ms"] / ours["p50_ms"], 2),
        "p99": round(theirs["p99_ms"] / ours["p99_ms"], 2),
    }


def label(sql: str) -> str:
    """What a statement does, by the tables it writes and reads, in order."""
    seen: dict[str, None] = {}
    for verb, table in re.findall(
        r"\b(INSERT INTO|UPDATE|DELETE FROM|FROM|JOIN)\s+(\w+)", sql, re.I
    ):
        if table.lower() in ("set", "ok", "th", "saved", "blobs", "unnest", "jsonb_each_text"):
            continue  # a CTE's or a function's name, not a table
        seen[
            f"{'read' if verb.upper() in ('FROM', 'JOIN') else verb.split()[0].upper()} {table}"
        ] = None
    return ", ".join(seen) or sql[:60]


def _peer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langgraph-checkpoint-postgres")
    except PackageNotFoundError:
        return "?"


def section(rows: list[dict[str, Any]], threads: int, turns: int, pool: int, rounds: int) -> str:
    """The docs/benchmarks.md section for one run."""
    if not rows:
        return ""
    table = [
        "| RTT ms | checkpointer | turns/s (each round) | p50 ms | p99 ms"
        " | client CPU ms/turn | statements/turn | round trips/turn |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        table.append(
            f"| {r['rtt_ms']:g} | {NAMES[r['saver']]} | {run_cells(r, 'turn')}"
            f" | {r.get('statements_per_turn', '—')} | {r.get('round_trips_per_turn', '—')} |"
        )
    calls = ", ".join(f"`{k}` ×{v:g}" for k, v in rows[0]["calls_per_turn"].items())
    lines = []
    for rtt in dict.fromkeys(r["rtt_ms"] for r in rows):
        present = {r["saver"] for r in rows if r["rtt_ms"] == rtt}
        if "sessionstore" not in present:
            continue
        where = "loopback" if rtt == 0 else f"{rtt:g} ms RTT"
        for peer in ("postgres", "postgres-unlocked"):
            if peer in present:
                q = ratios(rows, rtt, peer)
                lines.append(
                    f"- {where}, against {NAMES[peer]}: **{q['turns_per_s']}×** the turns/s;"
                    f" p50 {q['p50']}× and p99 **{q['p99']}×** lower"
                )
    statements = []
    shown: set[str] = set()
    for r in rows:
        if "by_statement" not in r or r["saver"] in shown:
            continue
        shown.add(r["saver"])
        statements += [
            "",
            f"{NAMES[r['saver']]}: {r['statements_per_turn']:g} statements in"
            f" {r['round_trips_per_turn']:g} round trips per turn (at {r['rtt_ms']:g} ms):",
            "",
            "| per turn | statement: tables it writes and reads |",
            "| ---: | --- |",
            *(f"| {n:g} | {label(sql)} |" for sql, n in r["by_statement"].items() if n >= 0.01),
        ]
    proxied = ", ".join(f"{x:g}" for x in sorted({r["rtt_ms"] for r in rows if r["rtt_ms"]}))
    return f"""### LangGraph checkpointers

The same chat graph (`StateGraph(MessagesState)`, one node calling a fake chat model
that answers at once) on sessionstore's `SessionStoreSaver` and on
`AsyncPostgresSaver` (langgraph-checkpoint-postgres {_peer_version()}), both on the same
PostgreSQL with a pool of {pool} connections (`AsyncConnectionPool` with autocommit,
`prepare_threshold=0` and `dict_row`, as its documentation sets it up; `setup()` called).
A turn is one `ainvoke` with one user message on a thread, in which the graph calls the
checkpointer: {calls}. {threads} threads at once, {turns} turns each after one
untimed warm-up turn (which creates the thread); for `SessionStoreSaver` each thread is
bound to a session of its own. {rounds} rounds per checkpointer and RTT, alternating,
each on new threads: turns/s over the rounds' summed time (each round's in brackets),
percentiles over all their turns. RTT 0 is a direct connection; {proxied or "—"} ms
goes through bench/latency.py's proxy, which counts statements (Query and Execute
messages) and round trips (Query and Sync). The control, where shown:
`AsyncPostgresSaver` holds an `asyncio.Lock` of its own around every call, pool or not,
so one saver's calls run one at a time; with that lock replaced by a no-op each call
takes a connection of the pool.

{chr(10).join(table)}

`SessionStoreSaver` (target: at least 2× `AsyncPostgresSaver`'s turns/s):

{chr(10).join(lines)}
{chr(10).join(statements)}
"""


_log = sys.stdout


def main() -> None:
    global _log
    parser = rtt_parser(__doc__, "0,5")
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--turns", type=int, default=5, help="timed turns per thread")
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="runs per checkpointer and RTT")
    parser.add_argument(
        "--savers",
        default=",".join(SAVERS),
        help=f"which, in each round's order (of {', '.join(OPEN)})",
    )
    args = parser.parse_args()
    if args.json:
        _log = sys.stderr
    savers = args.savers.split(",")
    absent = missing(savers)
    if absent:
        note = f"LangGraph checkpointers: skipped ({', '.join(absent)} not installed)"
        print(json.dumps({"rows": [], "section": "", "skipped": note}) if args.json else note)
        return
    rows = run(args.dsn, args.rtts, args.threads, args.turns, args.pool, args.rounds, savers)
    text = section(rows, args.threads, args.turns, args.pool, args.rounds)
    if args.json:
        print(json.dumps({"rows": rows, "section": text}))
    else:
        for row in rows:
            print(json.dumps(row))
        print(text)


if __name__ == "__main__":
    main()
