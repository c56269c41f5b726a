"""SDAR/WebShop-v0 in-process and over HTTP, and the sdar-webshop site itself."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import pytest
import requests

from sdar_envs import INFO_KEYS, prompt_builder
from sdar_envs.webshop.catalog import load_catalog
from sdar_envs.webshop.reward import score_purchase, target_options
from tests.helpers import ROOT


def _play(env, task_id, script=(), expert=True):
    obs, info = env.reset(options={"task_id": task_id})
    trace = [obs]
    for action in script:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, terminated, truncated, info["valid_action"]))
    done = False
    while expert and not done and info["expert_action"]:
        obs, reward, terminated, truncated, info = env.step(
            f"<think>go</think><action>{info['expert_action']}</action>"
        )
        trace.append((obs, reward, terminated, truncated, info["valid_action"]))
        done = terminated or truncated
    return trace, info


def test_contract_and_the_expert_path_wins():
    env = gym.make("SDAR/WebShop-v0", split="test")
    obs, info = env.reset(seed=0)
    first = info
    assert set(INFO_KEYS) <= set(info)
    assert obs.startswith("WebShop [SEP] Instruction: [SEP] ") and obs.endswith(" [SEP] Search")
    assert info["available_actions"] == {"has_search_bar": True, "clickables": ["search"]}
    assert info["task_type"] in {"beauty", "electronics", "fashion", "garden", "grocery"}
    assert info["purchase"] is None and info["asin"] and isinstance(info["target_options"], dict)
    wins = 0
    for i in range(20):
        _, start = env.reset(options={"task_id": f"synthetic-{i}"})
        trace, info = _play(env, f"synthetic-{i}")
        wins += info["won"]
        assert info["score"] == trace[-1][1] and trace[-1][2] is True
        # what was bought, beside what a perfect agent buys: the expert path buys exactly that
        assert info["purchase"] == {"asin": start["asin"], "options": start["target_options"]}
    assert wins == 20
    prompt = prompt_builder("SDAR/WebShop-v0")(
        task=first["task"], observation=obs, admissible_actions=first["admissible_actions"]
    )
    assert "search[<your query>]" in prompt


def test_infos_share_no_object_between_calls():
    """A user who keeps every step's info (a rollout buffer) and edits one must not change another: gymnasium's
    own passive checker warns otherwise. An invalid click keeps the page, so it would return the same lists."""
    env = gym.make("SDAR/WebShop-v0", split="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium's "share an object" warning fails the test
        _, start = env.reset(options={"task_id": "synthetic-0"})
        infos = [start]
        for action in ["click[nothing]", "click[nothing]", f"search[{start['task']}]", "click[nothing]"]:
            infos.append(env.step(f"<action>{action}</action>")[-1])
    target, admissible = dict(start["target_options"]), list(infos[1]["admissible_actions"])
    start["target_options"]["edited"] = "x"
    infos[1]["admissible_actions"].append("edited")
    assert infos[2]["target_options"] == infos[-1]["target_options"] == target
    assert infos[2]["admissible_actions"] == admissible  # the same page: equal, not the same list


def test_invalid_actions_are_counted_no_ops_and_15_steps_truncate():
    env = gym.make("SDAR/WebShop-v0", split="test")
    obs, _ = env.reset(options={"task_id": "synthetic-0"})
    for bad in ["click[buy now]", "buy it", "search[]", "<action>click[nothing]</action>", "x" * 10_000, "\udcff"]:
        obs2, reward, terminated, truncated, info = env.step(bad)
        assert obs2 == obs and reward == 0.0 and not terminated and info["valid_action"] is False
    for _ in range(9):
        *_, truncated, info = env.step("click[nothing]")
    assert truncated and info["step"] == 15


def test_text_rich_marks_buttons_and_clicked_options():
    env = gym.make("SDAR/WebShop-v0", split="test", observation_mode="text_rich")
    env.reset(options={"task_id": "synthetic-0"})
    obs, *_ = env.step("search[decorative pillows]")
    assert "[button] Back to Search [button_]" in obs and "[button] Next > [button_]" in obs
    env2 = gym.make("SDAR/WebShop-v0", split="test", observation_mode="text_rich")
    _, info = env2.reset(options={"task_id": "synthetic-0"})
    while not (info["expert_action"] or "").startswith("click[buy"):
        obs, *_, info = env2.step(info["expert_action"])
    assert "[clicked button]" in obs  # the goal's option was clicked on the item page


def test_human_goals_and_the_corrected_colour_mode():
    env = gym.make("SDAR/WebShop-v0", goals="human", split="all", colour="words")
    assert len(env.unwrapped.task_ids()) == 13
    _, info = _play(env, "human-0")
    assert info["won"]


def test_http_and_in_process_backends_agree(webshop_server):
    script = [
        "click[buy now]",
        "search[pillow covers 18 x 18]",
        "click[next >]",
        "click[< prev]",
        "bad",
        "click[back to search]",
    ]
    local = gym.make("SDAR/WebShop-v0", split="test")
    remote = gym.make("SDAR/WebShop-v0", split="test", webshop_url=webshop_server.url)
    for task in ("synthetic-0", "synthetic-5", "synthetic-17"):
        assert _play(local, task, script) == _play(remote, task, script)


def test_fifty_sessions_shop_in_parallel_over_http(webshop_server):
    def shop(i: int) -> tuple[int, float, str]:
        env = gym.make("SDAR/WebShop-v0", split="test", webshop_url=webshop_server.url)
        trace, info = _play(env, f"synthetic-{i}")
        return i, trace[-1][1], info["task_id"]

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(shop, range(50)))
    assert [r[2] for r in results] == [f"synthetic-{i}" for i in range(50)]
    catalog = (
        load_catalog()
    )  # the expert buys the target: what master's reward gives it (20 and 28 hit the colour quirk)
    test = catalog.goals("synthetic", "test")
    expected = [
        score_purchase(catalog.by_asin[g.asin], g, target_options(g, catalog.by_asin[g.asin])).score for g in test[:50]
    ]
    assert [r[1] for r in results] == expected and expected.count(1.0) == 48


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/fixed_999999", 404),
        ("/fixed_x", 404),
        ("/fixed_0/results?q=pillow&page=999", 400),
        ("/fixed_0/results?q=pillow&page=-1", 400),
        ("/fixed_0/results?q=pillow&page=abc", 400),
        ("/fixed_0/results?page=1", 400),
        ("/fixed_0/results?q=" + "a" * 1000 + "&page=1", 400),
        ("/fixed_0/item/NOPE?q=x&page=1", 404),
        ("/fixed_0/item/B0743JKHBV?q=x&page=1&opt=size:huge", 400),
        ("/fixed_0/item/B0743JKHBV?q=x&page=1&opt=nocolon", 400),
        ("/fixed_0/item/B0743JKHBV/secrets?q=x&page=1", 404),
        ("/fixed_0?goals=robots", 400),
        ("/a%20b", 404),
        ("/fixed_0/done/B0743JKHBV?opt={'size':1}", 400),
    ],
)
def test_bad_urls_get_a_4xx_page_never_a_500(webshop_server, path, status):
    resp = requests.get(webshop_server.url + path, timeout=10)
    assert resp.status_code == status, resp.text[:300]
    assert "Traceback" not in resp.text


def test_everything_rendered_is_escaped(webshop_server):
    evil = "<script>alert(1)</script>"
    resp = requests.get(f"{webshop_server.url}/fixed_0/results", params={"q": evil, "page": 1}, timeout=10)
    assert resp.status_code == 200 and "<script>" not in resp.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in resp.text  # shown, as text
    resp = requests.get(f"{webshop_server.url}/fixed_0/item/{evil}", params={"q": "x", "page": 1}, timeout=10)
    assert resp.status_code == 404 and "<script>" not in resp.text


def test_a_person_can_shop_through_the_html_pages(webshop_server):
    """search -> results -> item -> done over the HTML routes a browser uses; the done page shows the score."""
    import re

    base = webshop_server.url
    page = requests.get(f"{base}/fixed_1", timeout=10)
    assert 'id="instruction-text"' in page.text
    env = gym.make("SDAR/WebShop-v0", split="test")
    _, info = env.reset(options={"task_id": "synthetic-1"})
    goal = env.unwrapped.goals[1]
    results = requests.get(f"{base}/fixed_1/search", params={"q": info["expert_action"][7:-1]}, timeout=10)
    assert results.url.startswith(f"{base}/fixed_1/results") and goal.asin in results.text
    item_href = re.search(rf'href="([^"]*/item/{goal.asin}[^"]*)"', results.text).group(1).replace("&amp;", "&")
    item = requests.get(base + item_href, timeout=10)
    assert 'id="buy-now"' in item.text
    done_href = re.search(r'id="buy-now" href="([^"]*)"', item.text).group(1).replace("&amp;", "&")
    for name, value in goal.goal_options:
        done_href += "&" if "?" in done_href else "?"
        done_href += requests.compat.urlencode({"opt": f"{name}:{value}"})
    done = requests.get(base + done_href, timeout=10)
    assert re.search(r"Your score \(min 0.0, max 1.0\): <b>1.0000</b>", done.text)
    assert 'href=""' not in item.text and 'href=""' not in results.text  # every button leads somewhere
    name, value = goal.goal_options[0]
    assert f"<td>{name}: {value}" in done.text.replace("&#34;", '"').replace(
        "&#39;", "'"
    )  # options as a person reads them
    assert "{&#39;" not in done.text and "(&#39;" not in done.text  # no Python reprs
    as_json = requests.get(f"{base}/fixed_1/search", params={"q": "pillow", "format": "json"}, timeout=10)
    assert as_json.url.endswith("format=json") and as_json.json()["state"]["view"] == "results"


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    _chromium() is None, reason="no headless Chromium here (Debian: apt-get install chromium; .ci/run tries)"
)
def test_a_real_browser_walks_search_results_item_done(webshop_server):
    """Headless Chromium renders each page; the next URL is taken from the DOM the browser built."""
    import re
    import subprocess

    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
    ]

    def dom(url: str) -> str:
        out = subprocess.run([_chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    base = webshop_server.url
    env = gym.make("SDAR/WebShop-v0", split="test")
    _, info = env.reset(options={"task_id": "synthetic-2"})
    goal = env.unwrapped.goals[2]
    search = dom(f"{base}/fixed_2")
    assert 'id="search_input"' in search and "Instruction:" in search
    query = requests.compat.quote(info["expert_action"][7:-1])
    results = dom(f"{base}/fixed_2/search?q={query}")
    assert "Total results: 50" in results and goal.asin in results
    item_href = re.search(rf'href="([^"]*/item/{goal.asin}[^"]*)"', results).group(1).replace("&amp;", "&")
    item = dom(base + item_href)
    assert goal.name.split()[0] in item and 'id="buy-now"' in item
    done_href = re.search(r'id="buy-now" href="([^"]*)"', item).group(1).replace("&amp;", "&")
    for name, value in goal.goal_options:
        done_href += ("&" if "?" in done_href else "?") + requests.compat.urlencode({"opt": f"{name}:{value}"})
    done = dom(base + done_href)
    assert re.search(r'id="reward">Your score \(min 0.0, max 1.0\): <b>1.0000</b>', done)
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "webshop_done.png"
    subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1000,700", base + done_href],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.stat().st_size > 5_000


def test_a_custom_catalogue_is_indexed_and_searchable(tmp_path, monkeypatch):
    from sdar_envs.webshop.catalog import load_catalog
    from sdar_envs.webshop.shop import Shop

    monkeypatch.setenv("SDAR_CACHE_DIR", str(tmp_path / "cache"))
    catalog = load_catalog(num_products=300)
    shop = Shop(catalog)
    assert shop.documents().parent == tmp_path / "cache" / "webshop"
    target = catalog.products[123]
    assert shop.search(target.title.lower())[0] == target.asin
    assert set(shop.search("pillow covers")) <= set(catalog.by_asin)


def test_the_search_cache_is_bounded(monkeypatch):
    from sdar_envs.webshop import shop as shop_module

    monkeypatch.setattr(shop_module, "SEARCH_CACHE_SIZE", 3)
    shop = shop_module.Shop()
    first = shop.search("pillow")
    for q in ("lamp", "shoes", "tea", "pillow"):
        shop.search(q)
    assert list(shop._cache) == ["shoes", "tea", "pillow"]  # least recently used dropped, results unchanged
    assert shop.search("pillow") == first


def test_webshop_skills_name_buttons_the_shop_really_has():
    """Every concrete click[...] in the WebShop seed skills is a clickable on some page of a real episode."""
    import re

    from skills import load_skills, seed_bank_path

    found = {m for s, _ in load_skills(seed_bank_path("webshop")) for m in re.findall(r"click\[([^\]]+)\]", s.text)}
    quoted = {m for m in found if not re.fullmatch(r"<\w+>", m)}  # "<button>" is a placeholder
    assert quoted >= {"buy now", "next >", "back to search"}
    env = gym.make("SDAR/WebShop-v0", split="test")
    _, info = env.reset(options={"task_id": "synthetic-0"})
    seen = set(info["available_actions"]["clickables"])
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(info["expert_action"])
        seen |= set(info["available_actions"]["clickables"])
        done = terminated or truncated
    assert quoted <= seen, quoted - seen


def test_an_option_whose_text_holds_a_no_break_space_can_be_clicked():
    """A few option values (``b17-army\\xa0green``) hold a no-break space; the shop compares commands with
    their spaces normalised, and must compare the page's values the same way, or the listed option is
    an invalid no-op (the shopper clicked it until the turn limit)."""
    env = gym.make("SDAR/WebShop-v0", split="test", expert="shopper")
    trace, info = _play(env, "synthetic-315")
    assert info["expert_action"] is None and len(trace) == 6  # search, product, 2 options, buy
    assert all(step[4] for step in trace[1:])  # every click was valid
    env.reset(options={"task_id": "synthetic-315"})
    env.step("search[tops for teen girls b17-army green]")
    _, _, _, _, info = env.step("click[b09npml43m]")
    assert "click[b17-army\xa0green]" in info["admissible_actions"]
    _, _, _, _, info = env.step("<action>click[B17-army green]</action>")  # typed with a plain space
    assert info["valid_action"]


def test_the_shopper_clicks_whole_named_values_only_in_the_instructions_order():
    """``size: 4x-large tall`` names that value, not ``4x`` or ``4x-large`` beside it: a click on those would
    be replaced by the next one of the same option, or replace the right one. The values are clicked in
    the instruction's order, so the one after the last click is the one the instruction names after it."""
    from sdar_envs.webshop.shopper import named_options, options_left, shopper_action

    task = "Find me shirts with color: pale coral red, and size: 4x-large tall, and price lower than 40.00 dollars"
    page = ["4x", "4x-large", "4x-large tall", "pale coral", "pale coral red", "red"]
    assert named_options(task, page) == ["pale coral red", "4x-large tall"]
    assert named_options("Find me rugs with color: blue | gray", ["blue", "blue | gray"]) == ["blue | gray"]
    assert named_options(
        "Find me socks with color: black, white, and size: 8", ["8", "8.5", "black", "black, white"]
    ) == [
        "black, white",
        "8",
    ]
    admissible = ["click[back to search]", *[f"click[{v}]" for v in page], "click[buy now]"]
    assert options_left(task, admissible, "click[pale coral red]") == ["4x-large tall"]
    assert shopper_action(task, admissible, "click[b07hrfsnl4]") == "click[pale coral red]"
    assert shopper_action(task, admissible, "click[pale coral red]") == "click[4x-large tall]"
    assert shopper_action(task, admissible, "click[4x-large tall]") == "click[buy now]"


def test_the_checklist_shopper_writes_its_plan_and_acts_as_the_shopper():
    """``expert="checklist"`` is the shopper's whole reply: the same actions, and on product pages a thought
    listing the options still to click, each turn's list the last one's without the option it clicked."""
    import itertools
    import re

    from sdar_envs.core import command_text, think_action_format

    shopper = gym.make("SDAR/WebShop-v0", split="test", expert="shopper")
    checklist = gym.make("SDAR/WebShop-v0", split="test", expert="checklist")
    with pytest.raises(ValueError, match="expert must be 'target', 'shopper' or 'checklist'"):
        gym.make("SDAR/WebShop-v0", expert="oracle")
    for task_id in ["synthetic-115", "synthetic-150", "synthetic-0"]:
        _, a = shopper.reset(options={"task_id": task_id})
        _, b = checklist.reset(options={"task_id": task_id})
        plans = []
        while b["expert_action"]:
            reply = b["expert_action"]
            assert think_action_format(reply) and command_text(reply) == a["expert_action"]
            thought = re.fullmatch(r"<think>(.*)</think><action>.*</action>", reply).group(1)
            if thought:
                plans.append(re.findall(r"'([^']*)'", thought))
                assert plans[-1][:1] == [] if "buy now" in reply else plans[-1][0] in reply
            *_, a = shopper.step(reply)
            *_, b = checklist.step(reply)
        assert b["won"] == a["won"] and plans
        assert all(later == earlier[1:] for earlier, later in itertools.pairwise(plans))
        assert plans[-1] == []  # "Options to click: none." before buying


def test_purchases_report_says_where_exact_purchases_are_lost(tmp_path, capsys):
    """``python -m sdar_envs.webshop.purchases --report eval.json`` replays each episode: an exact purchase,
    the target bought with an option not clicked and another clicked as a value that only begins the named
    one, another product, no purchase."""
    import json
    import re

    from sdar_envs.webshop.purchases import classify, main

    env = gym.make("SDAR/WebShop-v0", split="test", expert="shopper")
    trace, info = _play(env, "synthetic-115")
    assert info["won"]
    _, info = env.reset(options={"task_id": "synthetic-115"})
    search = info["expert_action"]
    _, _, _, _, info = env.step(search)
    products = [a for a in info["admissible_actions"] if re.fullmatch(r"click\[b[0-9a-z]{9}\]", a)]
    target = info["expert_action"]
    other = next(a for a in products if a != target)
    episodes = {
        "exact": None,
        "target, options missed": [search, target, "click[4x]", "click[buy now]"],
        "other product": [search, other, "click[buy now]"],
        "no purchase": [search, "click[nothing]"],
    }
    _, info = env.reset(options={"task_id": "synthetic-115"})
    exact = []
    while info["expert_action"]:
        exact.append(info["expert_action"])
        *_, info = env.step(exact[-1])
    episodes["exact"] = exact
    report = {
        "env": "SDAR/WebShop-v0",
        "env_kwargs": {"split": "test"},
        "results": [{"task_id": "synthetic-115", "actions": actions} for actions in episodes.values()],
    }
    found = classify(report)
    assert dict(found["outcomes"]) == {name: 1 for name in episodes}
    assert dict(found["slots"]) == {"right": 0, "not clicked": 1, "begins or extends it": 1, "other value": 0}
    with pytest.raises(ValueError, match="a WebShop evaluation report is needed"):
        classify({"env": "SDAR/ALFWorld-v0", "results": []})
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(report))
    assert main(["--report", str(path)]) == 0
    assert "target, options" in capsys.readouterr().out
