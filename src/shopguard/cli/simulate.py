"""``shopguard simulate``: generate a realistic shop with labelled abuse, into a store or Parquet files."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from shopguard.cli.common import DbOption, console, db_path, handle_errors, out, progress
from shopguard.errors import ValidationFailed
from shopguard.events.simulate import SCENARIOS, SimulatedShop, SimulationConfig, simulate_shop
from shopguard.store import EventStore


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


@handle_errors
def simulate(
    users: Annotated[
        int, typer.Option("--users", help="Users in the shop (some sign up during the window).")
    ] = 2000,
    days: Annotated[int, typer.Option("--days", help="Days to simulate.")] = 14,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same events.")] = 7,
    start: Annotated[str, typer.Option("--start", help="First day, ISO date (UTC).")] = "2024-03-01",
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Write events.parquet and labels.parquet here instead of a store."),
    ] = None,
    db: DbOption = None,
    rate: Annotated[
        list[str] | None,
        typer.Option(
            "--rate",
            help="Override a scenario rate, e.g. --rate card_testing=0.5 (0 switches it off; "
            "units in docs/scenarios.md). Repeatable.",
        ),
    ] = None,
) -> None:
    """Simulate a shop: personas, sessions, orders to delivery, and nine labelled abuse scenarios."""
    try:
        start_dt = datetime.fromisoformat(start)
    except ValueError:
        raise ValidationFailed(
            f"--start: not an ISO date (got {start!r})", field="start", value=start
        ) from None
    if out_dir is not None and db is not None:
        raise ValidationFailed("give either --out (Parquet files) or --db (a store), not both", field="out")
    rates: dict[str, float] = {}
    for item in rate or []:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in SCENARIOS:
            raise ValidationFailed(
                f"--rate: expected SCENARIO=NUMBER with SCENARIO one of {', '.join(SCENARIOS)} "
                f"(got {item!r})",
                field="rate",
                value=item,
            )
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise ValidationFailed(
                f"--rate: {value!r} is not a number (in {item!r})", field="rate", value=item
            ) from None
    try:
        config = SimulationConfig(users=users, days=days, seed=seed, start=start_dt, rates=rates)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = ".".join(str(p) for p in err["loc"])
        raise ValidationFailed(
            f"--{name}: {err['msg']} (got {err.get('input')!r})", field=name, value=err.get("input")
        ) from None
    t0 = time.perf_counter()
    with progress() as prog:
        task = prog.add_task("simulating", total=1)

        def step(desc: str, done: int, total: int) -> None:
            prog.update(task, description=f"simulating: {desc}", completed=done, total=total)

        shop = simulate_shop(config, progress=step)
        sim_s = time.perf_counter() - t0
        if out_dir is not None:
            prog.update(task, description=f"writing {out_dir}")
            ev_path, _ = shop.write(out_dir)
            target = str(ev_path.parent)
            added_events, added_labels = shop.events.height, shop.labels.height
        else:
            path = db_path(db)
            prog.update(task, description=f"storing into {path}")
            with EventStore(path) as store:
                from shopguard.store.identifiers import store_pseudonymiser

                store_pseudonymiser(store, simulated=True)  # synthetic identifiers: kept as they are
                added_events, added_labels = shop.to_store(store)
            target = str(path)
    total_s = time.perf_counter() - t0
    print_summary(shop, target, added_events, added_labels, sim_s, total_s)


def print_summary(
    shop: SimulatedShop, target: str, added_events: int, added_labels: int, sim_s: float, total_s: float
) -> None:
    s = shop.summary()
    rate = s["events"] / sim_s if sim_s > 0 else float("nan")
    out.print(
        f"[bold]{s['events']:,}[/] events from {s['users']:,} users, {s['first_event']} .. {s['last_event']} "
        f"(simulated in {sim_s:.1f} s, {rate:,.0f} events/s; {total_s:.1f} s in all)"
    )
    out.print(f"wrote to [bold]{target}[/]: {added_events:,} new events, {added_labels:,} new labels")
    t = Table(title="Events by type")
    t.add_column("type")
    t.add_column("events", justify="right")
    for k, v in s["events_by_type"].items():
        t.add_row(k, f"{v:,}")
    out.print(t)
    t = Table(title="Labels by scenario (positives)")
    t.add_column("scenario")
    kinds = ("event", "user", "order", "merchant")
    for k in kinds:
        t.add_column(k, justify="right")
    t.add_column("share of events", justify="right")
    for scen in SCENARIOS:
        per = s["labels_by_scenario"].get(scen, {})
        t.add_row(
            scen, *(f"{per.get(k, 0):,}" for k in kinds), f"{per.get('event', 0) / max(1, s['events']):.3%}"
        )
    out.print(t)
    console.print("next: [bold]shopguard stats[/] to see what the store holds")
