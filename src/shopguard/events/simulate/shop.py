"""Normal shop behaviour: merchant price changes, signups and sessions from login to after-sale.

A user's sessions per day follow their persona, a personal activity level, the day of the week and the
hour of the day. A session is a login, a run of views and searches (Zipf-popular items, mostly in the
user's favourite category), sometimes a cart, an order, a coupon and a payment, then shipment, review,
return, refund or a chat with customer service in the days after.
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate import flows
from shopguard.events.simulate.personas import CHANNELS, EMAIL_DOMAINS, FIRST_NAMES, GEOS, geo_ips
from shopguard.events.simulate.text import search_queries
from shopguard.events.simulate.world import DAY, HOUR, MINUTE, WEEKLY, World

RETURN_REASONS = ("wrong_size", "not_as_described", "changed_mind", "damaged", "defective", "better_price")
CANCEL_REASONS = ("changed_mind", "ordered_by_mistake", "found_cheaper", "delivery_too_slow")


def group_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each group (groups are consecutive runs of ``counts``)."""
    cs = np.cumsum(values)
    starts = np.cumsum(counts) - counts
    before = np.where(starts > 0, cs[np.maximum(starts - 1, 0)], 0.0)
    return cs - np.repeat(before, counts)


def emit_price_changes(world: World) -> None:
    """Merchants nudge prices (cost changes, promotions and their ends): a chain per item."""
    rng = world.rng("prices")
    cat = world.catalog
    n = int(rng.poisson(0.04 * cat.n_items * world.config.days))
    item = rng.integers(0, cat.n_items, n)
    t = world.random_times(rng, n)
    order = np.lexsort((t, item))
    item, t = item[order], t[order]
    promo = rng.random(n) < 0.3
    step = np.where(promo, -rng.uniform(0.08, 0.3, n), rng.normal(0.0, 0.05, n))
    counts = np.unique(item, return_counts=True)[1]
    log_mult = group_cumsum(step, counts)
    log_mult = np.clip(log_mult, -0.6, 0.5)  # merchants stay near their usual price band
    new = np.round(cat.item_price[item] * np.exp(log_mult), 2)
    starts = np.cumsum(counts) - counts
    old = np.empty(n)
    old[1:] = new[:-1]
    old[starts] = cat.item_price[item[starts]]
    world.prices.set_changes(item, t, new)
    world.events.add(
        "price_change",
        t,
        merchant=cat.item_merchant[item],
        item=item,
        category=cat.item_category[item],
        old_price=old,
        new_price=new,
        currency=world.config.currency,
    )


def emit_signups(
    world: World,
    users: np.ndarray,
    t: np.ndarray,
    device: np.ndarray,
    ip: np.ndarray,
    geo: np.ndarray,
    channel: np.ndarray,
    email: list[str] | np.ndarray,
    phone: list[str] | np.ndarray,
    session: np.ndarray | None = None,
) -> np.ndarray:
    return world.events.add(
        "signup",
        t,
        user=users,
        device=device,
        ip=ip,
        geo=geo,
        session=session,
        channel=np.asarray(CHANNELS, dtype=object)[channel],
        email=email,
        phone=phone,
    )


def person_emails(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    """Ordinary-looking e-mails and phones of new accounts."""
    names = rng.choice(FIRST_NAMES, n)
    sep = rng.choice(["", ".", "_"], n)
    digits = rng.integers(1, 9999, n)
    dom = rng.choice(EMAIL_DOMAINS, n, p=[0.2, 0.2, 0.12, 0.1, 0.08, 0.08, 0.08, 0.06, 0.04, 0.04])
    nums = rng.integers(10_000_000, 99_999_999, n)
    pre = rng.choice(["+86-13", "+86-15", "+86-18", "+1-415", "+1-212", "+44-7", "+65-9"], n)
    emails = [f"{a}{s}{d}@{m}" for a, s, d, m in zip(names, sep, digits, dom, strict=True)]
    phones = [f"{p}{x}" for p, x in zip(pre, nums, strict=True)]
    return emails, phones


def simulate_sessions(world: World) -> None:
    """Every ordinary user's sessions over the window, with everything that follows an order."""
    rng = world.rng("sessions")
    cfg, pop, cat, ev = world.config, world.pop, world.catalog, world.events
    days = cfg.days
    rate = pop.attr("sessions_per_day") * pop.activity * cfg.activity
    day_factor = WEEKLY[world.weekday(np.arange(days) * DAY)]
    lam = rate[:, None] * day_factor[None, :]
    signup_day = np.where(np.isnan(pop.signup_t), -1, np.floor(np.nan_to_num(pop.signup_t) / DAY)).astype(
        np.int64
    )
    lam[np.arange(days)[None, :] < signup_day[:, None]] = 0.0
    counts = rng.poisson(lam)
    uu, dd = np.nonzero(counts)
    reps = counts[uu, dd]
    su = np.repeat(uu, reps)
    t0 = world.diurnal_times(rng, np.repeat(dd, reps))
    st = pop.signup_t[su]
    early = t0 < np.nan_to_num(st, nan=-1.0)
    t0[early] = st[early] + rng.uniform(10 * MINUTE, 6 * HOUR, int(early.sum()))

    # New accounts: the signup itself opens a session.
    new_users = np.flatnonzero(~np.isnan(pop.signup_t))
    su = np.concatenate([new_users, su])
    t0 = np.concatenate([pop.signup_t[new_users] + rng.uniform(20, 120, new_users.size), t0])
    is_signup = np.zeros(su.size, dtype=bool)
    is_signup[: new_users.size] = True
    keep = t0 < world.horizon
    su, t0, is_signup = su[keep], t0[keep], is_signup[keep]
    S = su.size
    session = world.alloc("session", S)

    # Where each session comes from: a home device and IP mostly, a phone network or a trip sometimes.
    second = (pop.device1[su] >= 0) & (rng.random(S) < 0.4)
    device = np.where(second, pop.device1[su], pop.device0[su])
    # Now and then a new phone, a borrowed laptop or a cleared browser: a device never seen before.
    fresh = ~is_signup & (rng.random(S) < 0.012)
    device[fresh] = world.alloc("device", int(fresh.sum()))
    geo = pop.geo[su].copy()
    travel = rng.random(S) < 0.02
    geo[travel] = rng.integers(0, len(GEOS), int(travel.sum()))
    ip = pop.home_ip[su].copy()
    mobile = travel | (rng.random(S) < 0.25)
    ip[mobile] = geo_ips(rng, geo[mobile])
    lang = pop.lang[su]
    channel = pop.channel[su]
    ctx = dict(user=su, session=session, device=device, ip=ip, geo=geo)

    def sub(mask_or_idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[mask_or_idx] for k, v in ctx.items()}

    # Signups of the new accounts.
    sidx = np.flatnonzero(is_signup)
    emails, phones = person_emails(rng, sidx.size)
    emit_signups(
        world,
        su[sidx],
        pop.signup_t[su[sidx]],
        device[sidx],
        ip[sidx],
        geo[sidx],
        channel[sidx],
        emails,
        phones,
        session=session[sidx],
    )

    # Logins; a few typos first.
    logged = is_signup | fresh | (rng.random(S) < 0.55)  # a new device always needs a login
    typo = (
        logged & ~is_signup & (rng.random(S) < np.where(fresh, 0.3, 0.04))
    )  # new devices: forgotten passwords
    ti = np.flatnonzero(typo)
    ev.add(
        "login",
        t0[ti] - rng.uniform(5, 40, ti.size),
        **sub(ti),
        status="failure",
        reason="wrong_password",
        channel=np.asarray(CHANNELS, dtype=object)[channel[ti]],
    )
    li = np.flatnonzero(logged & ~is_signup)
    ev.add(
        "login", t0[li], **sub(li), status="success", channel=np.asarray(CHANNELS, dtype=object)[channel[li]]
    )

    # Browsing: views and searches.
    views_mean = pop.attr("views_per_session")[su]
    nb = np.minimum(rng.geometric(1.0 / views_mean), 60)
    step_s = np.repeat(np.arange(S), nb)
    B = step_s.size
    gaps = 4.0 + rng.exponential(35.0, B)
    step_t = t0[step_s] + 2.0 + group_cumsum(gaps, nb)
    fav = rng.random(B) < 0.55
    step_cat = np.where(fav, pop.fav_category[su[step_s]], cat.sample_categories(rng, B))
    is_search = rng.random(B) < 0.18
    qi = np.flatnonzero(is_search)
    ev.add(
        "search",
        step_t[qi],
        **sub(step_s[qi]),
        text=search_queries(rng, step_cat[qi], lang[step_s[qi]]),
        language=np.where(lang[step_s[qi]] == 1, "zh", "en"),
    )
    vi = np.flatnonzero(~is_search)
    view_item = cat.sample_items(rng, step_cat[vi])
    ev.add(
        "view",
        step_t[vi],
        **sub(step_s[vi]),
        item=view_item,
        merchant=cat.item_merchant[view_item],
        category=cat.item_category[view_item],
    )
    last_view = np.full(S, -1, dtype=np.int64)
    np.maximum.at(last_view, step_s[vi], np.arange(vi.size))
    t_end = t0.copy()
    np.maximum.at(t_end, step_s, step_t)

    # Carts.
    has_view = last_view >= 0
    carting = has_view & (rng.random(S) < pop.attr("cart_rate")[su])
    ci = np.flatnonzero(carting)
    c_item = view_item[last_view[ci]]
    c_t = step_t[vi][last_view[ci]] + 5.0 + rng.exponential(25.0, ci.size)
    qty = 1 + rng.poisson(pop.attr("quantity_mean")[su[ci]] - 1.0)
    ev.add(
        "add_to_cart",
        c_t,
        **sub(ci),
        item=c_item,
        merchant=cat.item_merchant[c_item],
        category=cat.item_category[c_item],
        quantity=qty,
    )
    extra = rng.random(ci.size) < 0.3
    xi = ci[extra]
    x_item = cat.sample_items(rng, pop.fav_category[su[xi]])
    x_t = c_t[extra] + rng.uniform(15, 120, xi.size)
    ev.add(
        "add_to_cart",
        x_t,
        **sub(xi),
        item=x_item,
        merchant=cat.item_merchant[x_item],
        category=cat.item_category[x_item],
        quantity=1,
    )
    removed = rng.random(xi.size) < 0.6
    ev.add(
        "remove_from_cart",
        x_t[removed] + rng.uniform(10, 200, int(removed.sum())),
        **sub(xi[removed]),
        item=x_item[removed],
        merchant=cat.item_merchant[x_item[removed]],
        category=cat.item_category[x_item[removed]],
        quantity=1,
    )

    # Orders.
    ordering = rng.random(ci.size) < pop.attr("order_rate")[su[ci]]
    oi = ci[ordering]
    o_item, o_qty = c_item[ordering], qty[ordering]
    o_t = c_t[ordering] + 15.0 + rng.exponential(90.0, oi.size)
    o_user = su[oi]
    coupon = np.full(oi.size, None, dtype=object)
    use = rng.random(oi.size) < pop.attr("coupon_rate")[o_user]
    coupon[use] = rng.choice(flows.REGULAR_COUPONS, int(use.sum()))
    new_acct = ~np.isnan(pop.signup_t[o_user])
    if new_acct.any():  # a new account's first order gets the welcome coupon, most of the time
        idx = np.flatnonzero(new_acct)
        by_time = idx[np.argsort(o_t[idx], kind="stable")]
        first = by_time[np.unique(o_user[by_time], return_index=True)[1]]
        welcome = first[rng.random(first.size) < 0.7]
        coupon[welcome] = "WELCOME15"
    second_card = (pop.instrument1[o_user] >= 0) & (rng.random(oi.size) < 0.3)
    instrument = np.where(second_card, pop.instrument1[o_user], pop.instrument0[o_user])
    address = pop.address[o_user]
    orders = flows.place_orders(
        world,
        rng,
        **sub(oi),
        t=o_t,
        item=o_item,
        quantity=o_qty,
        instrument=instrument,
        address=address,
        coupon=coupon,
    )
    np.maximum.at(t_end, oi, np.nan_to_num(orders.t_paid, nan=0.0))

    # Cancellations before shipping, with the refund of what was paid.
    paid = ~np.isnan(orders.t_paid)
    cancel = paid & (rng.random(oi.size) < 0.03)
    k = np.flatnonzero(cancel)
    t_c = orders.t_paid[k] + rng.uniform(5 * MINUTE, 3 * HOUR, k.size)
    ev.add(
        "cancel",
        t_c,
        user=o_user[k],
        order=orders.order[k],
        merchant=orders.merchant[k],
        item=o_item[k],
        reason=rng.choice(CANCEL_REASONS, k.size),
        session=session[oi[k]],
        device=device[oi[k]],
        ip=ip[oi[k]],
        geo=geo[oi[k]],
    )
    ev.add(
        "refund",
        t_c + rng.uniform(1, 24, k.size) * HOUR,
        user=o_user[k],
        order=orders.order[k],
        merchant=orders.merchant[k],
        item=o_item[k],
        amount=orders.amount[k],
        currency=cfg.currency,
        reason="order_cancelled",
    )

    # Shipments.
    si = np.flatnonzero(paid & ~cancel)
    sh = flows.ship(world, rng, orders=orders, idx=si, user=o_user[si], item=o_item[si], address=address[si])
    delivered = ~np.isnan(sh.delivered_t)
    d_idx = si[delivered]
    d_t = sh.delivered_t[delivered]
    d_user = o_user[d_idx]
    d_late = sh.late[delivered]
    d_lang = pop.lang[d_user]
    home = dict(device=pop.device0[d_user], ip=pop.home_ip[d_user], geo=pop.geo[d_user])
    world.delivered.add(
        user=d_user,
        order=orders.order[d_idx],
        item=o_item[d_idx],
        amount=orders.amount[d_idx],
        delivered_t=d_t,
        t_order=orders.t_order[d_idx],
        merchant=orders.merchant[d_idx],
    )

    # Reviews of delivered orders.
    rv = rng.random(d_idx.size) < pop.attr("review_rate")[d_user]
    r = np.flatnonzero(rv)
    ratings = flows.genuine_ratings(world, rng, o_item[d_idx[r]], d_late[r])
    flows.post_reviews(
        world,
        rng,
        user=d_user[r],
        t=d_t[r] + HOUR + rng.exponential(2.5 * DAY, r.size),
        item=o_item[d_idx[r]],
        rating=ratings,
        lang=d_lang[r],
        kind="genuine",
        verified=True,
        order=orders.order[d_idx[r]],
        **{k: v[r] for k, v in home.items()},
    )
    # A few people review what they saw but bought elsewhere (unverified, still genuine).
    uv = vi[rng.random(vi.size) < 0.0006]
    uv_user = su[step_s[uv]]
    uv_item = view_item[np.searchsorted(vi, uv)]
    flows.post_reviews(
        world,
        rng,
        user=uv_user,
        t=step_t[uv] + rng.uniform(0.5, 5, uv.size) * DAY,
        item=uv_item,
        rating=flows.genuine_ratings(world, rng, uv_item, np.zeros(uv.size, dtype=bool)),
        lang=pop.lang[uv_user],
        kind="genuine",
        verified=False,
        device=pop.device0[uv_user],
        ip=pop.home_ip[uv_user],
        geo=pop.geo[uv_user],
    )

    # Returns and refunds (refund abusers' after-sale is simulated by their scenario).
    normal = ~np.isin(d_user, world.refund_abusers)
    ret = normal & (rng.random(d_idx.size) < pop.attr("return_rate")[d_user])
    r = np.flatnonzero(ret)
    reason = rng.choice(RETURN_REASONS, r.size, p=[0.3, 0.2, 0.2, 0.12, 0.12, 0.06])
    t_r = d_t[r] + rng.uniform(1, 10, r.size) * DAY
    common = dict(
        user=d_user[r],
        order=orders.order[d_idx[r]],
        item=o_item[d_idx[r]],
        merchant=orders.merchant[d_idx[r]],
    )
    ev.add(
        "return",
        t_r,
        **common,
        reason=reason,
        amount=orders.amount[d_idx[r]],
        currency=cfg.currency,
        **{k: v[r] for k, v in home.items()},
    )
    ev.add(
        "refund",
        t_r + rng.uniform(2, 7, r.size) * DAY,
        **common,
        reason=reason,
        amount=orders.amount[d_idx[r]],
        currency=cfg.currency,
    )
    # Genuinely late parcels: a chat, and once in a while a claim that it never came.
    late_claim = normal & d_late & (rng.random(d_idx.size) < 0.04)
    r = np.flatnonzero(late_claim)
    ev.add(
        "refund",
        d_t[r] + rng.uniform(0.5, 3, r.size) * DAY,
        user=d_user[r],
        order=orders.order[d_idx[r]],
        item=o_item[d_idx[r]],
        merchant=orders.merchant[d_idx[r]],
        amount=orders.amount[d_idx[r]],
        currency=cfg.currency,
        reason="item_not_received",
    )

    # Customer-service chats about orders.
    ch = rng.random(oi.size) < pop.attr("chat_rate")[o_user]
    r = np.flatnonzero(ch)
    intent = rng.choice(
        np.array(["where", "product", "return", "address"], dtype=object), r.size, p=[0.45, 0.25, 0.2, 0.1]
    )
    t_chat = orders.t_order[r] + rng.uniform(0.1, 4.0, r.size) * DAY
    flows.chats(
        world,
        rng,
        user=o_user[r],
        t=t_chat,
        item=o_item[r],
        lang=pop.lang[o_user[r]],
        intent=intent,
        order=orders.order[r],
        device=device[oi[r]],
        ip=ip[oi[r]],
        geo=geo[oi[r]],
    )
    # Product questions while browsing.
    pq = np.flatnonzero(has_view & (rng.random(S) < 0.006))
    flows.chats(
        world,
        rng,
        user=su[pq],
        t=t_end[pq] + rng.uniform(5, 60, pq.size),
        item=view_item[last_view[pq]],
        lang=lang[pq],
        intent="product",
        device=device[pq],
        ip=ip[pq],
        geo=geo[pq],
    )

    # Account maintenance and logouts.
    pw = np.flatnonzero(logged & (rng.random(S) < 0.002))
    ev.add("password_change", t_end[pw] + rng.uniform(10, 120, pw.size), **sub(pw))
    ad = np.flatnonzero(logged & (rng.random(S) < 0.003))
    ev.add(
        "address_change",
        t_end[ad] + rng.uniform(10, 120, ad.size),
        **sub(ad),
        address=world.alloc("address", ad.size),
    )
    lo = np.flatnonzero(rng.random(S) < 0.3)
    ev.add("logout", t_end[lo] + rng.uniform(10, 300, lo.size), **sub(lo))
