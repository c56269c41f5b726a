"""The WebShop site. Every page is a pure function of its URL (the shop state lives in the URL, as in
the original), so any number of worker processes and sessions can serve in parallel without sharing
memory; a session id only chooses the goal (``fixed_<n>`` = goal n; any other id a goal fixed by a hash
of it).

    /<sid>                                   search page with the instruction
    /<sid>/results?q=..&page=N               10 results per page of the top 50
    /<sid>/item/<asin>?q=..&page=N&opt=name:value&...
    /<sid>/item/<asin>/<description|features|reviews|attributes>?...
    /<sid>/done/<asin>?opt=...               the purchase, its score and purchased-vs-target

``?format=json`` (or ``Accept: application/json``) returns the page as data: its text, clickables and
the state each leads to (what the environment's HTTP back-end reads). Everything rendered is escaped by
Jinja; malformed URLs, unknown ASINs, bad options and absurd page numbers get a 4xx page.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict
from typing import Any

from flask import Flask, abort, jsonify, redirect, render_template_string, request
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from sdar_envs.webshop.catalog import Goal
from sdar_envs.webshop.shop import (
    MAX_QUERY_CHARS,
    PRODUCTS_PER_PAGE,
    SEARCH_RETURN_N,
    SUB_PAGES,
    Page,
    Shop,
    ShopState,
    state_url,
)

__all__ = ["create_app", "state_url"]

_DIGITS = re.compile(r"[0-9]{1,9}")  # str.isdigit() also accepts "²", which int() refuses

BASE = """<!doctype html><html><head><meta charset="utf-8"><title>WebShop</title>
<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}.instr{background:#eef;padding:.6em}
.btn{display:inline-block;margin:.2em;padding:.3em .7em;border:1px solid #888;border-radius:4px;text-decoration:none}
.on{background:#cde}.res{margin:.8em 0}.err{color:#a00}</style></head><body>
<div class="instr" id="instruction-text"><b>Instruction:</b> {{ goal.instruction }}</div>{% block body %}{% endblock %}</body></html>"""

PAGES = {
    "search": """{% extends base %}{% block body %}<h1>WebShop</h1>
<form action="/{{ sid }}/search" method="get"><input name="q" size="60" id="search_input"><button class="btn" id="search">Search</button></form>{% endblock %}""",
    "results": """{% extends base %}{% block body %}<a class="btn" href="/{{ sid }}">Back to Search</a>
<p>Results for <i id="keywords">{{ page.state.keywords }}</i>: page {{ page.state.page }} (Total results: {{ page.total_results }})</p>
{% if '< prev' in links %}<a class="btn" href="{{ links['< prev'] }}">&lt; Prev</a>{% endif %}
{% if 'next >' in links %}<a class="btn" href="{{ links['next >'] }}">Next &gt;</a>{% endif %}
{% for p in page.products %}<div class="res"><a class="product-link" href="{{ links[p.asin.lower()] }}">{{ p.asin }}</a>
<div>{{ p.title }}</div><div>{{ p.price_tag }}</div></div>{% endfor %}{% endblock %}""",
    "item": """{% extends base %}{% block body %}<a class="btn" href="/{{ sid }}">Back to Search</a>
<a class="btn" href="{{ links['< prev'] }}">&lt; Prev</a><h2 id="product-title">{{ product.title }}</h2>
<p>Price: {{ product.price_tag }} &middot; Rating: {{ product.rating }}</p>
{% for name, values in product.options.items() %}<div class="option"><b>{{ name }}</b>
{% for v in values %}<label><input type="radio" name="{{ name }}" {% if chosen.get(name) == v %}checked{% endif %}
onclick="location.href=this.dataset.href" data-href="{{ option_links[(name, v)] }}"> {{ v }}</label>{% endfor %}</div>{% endfor %}
<p>{% for sub in subs if sub in links %}<a class="btn" href="{{ links[sub] }}">{{ sub|capitalize }}</a>{% endfor %}</p>
<a class="btn" id="buy-now" href="{{ links['buy now'] }}">Buy Now</a>{% endblock %}""",
    "sub": """{% extends base %}{% block body %}<a class="btn" href="/{{ sid }}">Back to Search</a>
<a class="btn" href="{{ links['< prev'] }}">&lt; Prev</a><h2>{{ page.state.sub|capitalize }}</h2>
{% for part in page.parts[2:] %}<p>{{ part }}</p>{% endfor %}{% endblock %}""",
    "done": """{% extends base %}{% block body %}<h1>Thank you for shopping with us!</h1>
<p id="reward">Your score (min 0.0, max 1.0): <b>{{ '%.4f' % page.reward.score }}</b></p>
<table border="1" cellpadding="4"><tr><th></th><th>purchased</th><th>target</th></tr>
<tr><td>product</td><td>{{ product.asin }}: {{ product.title }}</td><td>{{ goal.asin }}: {{ goal.name }}</td></tr>
<tr><td>options</td><td>{{ listed(chosen.items()) }}</td><td>{{ listed(goal.goal_options) }}</td></tr>
<tr><td>attributes</td><td>{{ listed(product.attributes) }}</td><td>{{ listed(goal.attributes) }}</td></tr>
<tr><td>price</td><td>${{ '%.2f' % product.price }}</td><td>under ${{ '%.2f' % goal.price_upper }}</td></tr></table>
<p>type match {{ page.reward.r_type }}, attributes {{ page.reward.r_attribute }}, options {{ page.reward.r_option }}, price {{ page.reward.r_price }}</p>{% endblock %}""",
}


def _listed(items: Any) -> str:
    """Options and attributes as a person reads them: "size: large, color: black" (not Python reprs)."""
    parts = [(f"{x[0]}: {x[1]}" if x[0] else str(x[1])) if isinstance(x, tuple) else str(x) for x in items]
    return ", ".join(parts) or "(none)"


def create_app(shop: Shop | None = None) -> Flask:
    shop = shop or Shop()
    app = Flask("sdar-webshop", static_folder=None)  # no /static route: "static" is a session id like any other
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's default provider has it

    def goal_for(sid: str) -> tuple[Goal, str]:
        kind = request.args.get("goals", "synthetic")
        if kind not in ("synthetic", "human"):
            abort(400, "goals must be 'synthetic' or 'human'")
        goals = shop.catalog.goals(kind, "all")  # type: ignore[arg-type]  # checked just above
        if len(sid) > 100 or not sid.replace("_", "").replace("-", "").isalnum():
            abort(404, "session ids are letters, digits, '_' and '-' (at most 100)")
        if sid.startswith("fixed_"):
            n = sid[len("fixed_") :]
            if not _DIGITS.fullmatch(n) or int(n) >= len(goals):
                abort(404, f"fixed_<n> needs 0 <= n < {len(goals)}")
            return goals[int(n)], kind
        return goals[int(hashlib.sha256(sid.encode()).hexdigest(), 16) % len(goals)], kind

    def page_number() -> int:
        raw = request.args.get("page", "1")
        if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= SEARCH_RETURN_N // PRODUCTS_PER_PAGE:
            abort(400, f"page must be an integer in [1, {SEARCH_RETURN_N // PRODUCTS_PER_PAGE}]")
        return int(raw)

    def keywords() -> str:
        q = " ".join(request.args.get("q", "").split())
        if not q or len(q) > MAX_QUERY_CHARS:
            abort(400, f"q must be 1 to {MAX_QUERY_CHARS} characters")  # the env's own rule (sdar_envs.webshop.shop)
        return q

    def product_options(asin: str) -> tuple[tuple[str, str], ...]:
        if asin not in shop.catalog.by_asin:
            abort(404, "no product with this ASIN")
        product = shop.catalog.by_asin[asin]
        chosen: list[tuple[str, str]] = []
        for raw in request.args.getlist("opt"):
            name, sep, value = raw.partition(":")
            if not sep or name not in product.options or value not in product.options[name]:
                abort(400, "opt must be <option name>:<value> of this product")
            chosen = [(n, v) for n, v in chosen if n != name] + [(name, value)]
        return tuple(chosen)

    def respond(sid: str, kind: str, goal: Goal, page: Page) -> Any:
        links = {text: state_url(sid, target, kind) for text, target in page.clickables.items()}
        wants_json = request.args.get("format") == "json" or request.accept_mimetypes.best == "application/json"
        if wants_json:
            return jsonify(
                state=asdict(page.state),
                parts=page.parts,
                has_search_bar=page.has_search_bar,
                clickables={text: asdict(target) for text, target in page.clickables.items()},
                links=links,
                reward=None if page.reward is None else asdict(page.reward),
                total_results=page.total_results,
            )
        product = page.product
        option_links = {}
        if product is not None and page.state.view == "item":
            for name, values in product.options.items():
                for v in values:
                    chosen = tuple((n, x) for n, x in page.state.options if n != name) + ((name, v),)
                    option_links[(name, v)] = state_url(
                        sid, ShopState("item", page.state.keywords, page.state.page, product.asin, chosen), kind
                    )
        return render_template_string(
            PAGES[page.state.view],
            base=app.jinja_env.from_string(BASE),
            sid=sid,
            goal=goal,
            page=page,
            links=links,
            product=product,
            chosen=dict(page.state.options),
            option_links=option_links,
            subs=SUB_PAGES,
            listed=_listed,
        )

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if request.args.get("format") == "json" or request.accept_mimetypes.best == "application/json":
            return jsonify(error=f"{e.code} {e.name}: {e.description}"), e.code
        return f"<!doctype html><h1>{e.code} {escape(e.name)}</h1><p class=err>{escape(e.description)}</p>", e.code

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        app.logger.exception("webshop page failed")
        return "<!doctype html><h1>500</h1><p>internal error; see the server log</p>", 500

    @app.get("/health")
    def health():
        return jsonify(status="ok", products=len(shop.catalog.products), goals=len(shop.catalog.synthetic_goals))

    @app.get("/")
    def index():
        return redirect("/fixed_0")

    @app.get("/<sid>")
    def search_page(sid: str):
        goal, kind = goal_for(sid)
        return respond(sid, kind, goal, shop.render(ShopState(), goal))

    @app.get("/<sid>/search")
    def do_search(sid: str):
        goal, kind = goal_for(sid)
        url = state_url(sid, ShopState("results", keywords(), 1), kind)
        if request.args.get("format") == "json":  # the redirect keeps what the client asked for
            url += ("&" if "?" in url else "?") + "format=json"
        return redirect(url)

    @app.get("/<sid>/results")
    def results(sid: str):
        goal, kind = goal_for(sid)
        state = ShopState("results", keywords(), page_number())
        return respond(sid, kind, goal, shop.render(state, goal))

    @app.get("/<sid>/item/<asin>")
    def item(sid: str, asin: str):
        goal, kind = goal_for(sid)
        state = ShopState("item", keywords(), page_number(), asin, product_options(asin))
        return respond(sid, kind, goal, shop.render(state, goal))

    @app.get("/<sid>/item/<asin>/<sub>")
    def item_sub(sid: str, asin: str, sub: str):
        goal, kind = goal_for(sid)
        if sub not in SUB_PAGES:
            abort(404, f"no such tab; tabs are {', '.join(SUB_PAGES)}")
        state = ShopState("sub", keywords(), page_number(), asin, product_options(asin), sub)
        return respond(sid, kind, goal, shop.render(state, goal))

    @app.get("/<sid>/done/<asin>")
    def done(sid: str, asin: str):
        goal, kind = goal_for(sid)
        state = ShopState("done", "", 1, asin, product_options(asin))
        return respond(sid, kind, goal, shop.render(state, goal))

    return app
