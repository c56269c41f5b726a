"""SDAR/SearchQA-v0: answer scoring, datasets, BM25 search over the shipped corpus, the protocol, and
the in-process and HTTP back-ends agreeing."""

from __future__ import annotations

import gzip
import json
import re

import gymnasium as gym
import pytest

from sdar_envs.searchqa.data import CORPUS_PATH, DATASETS, DEFAULT_DATASETS, load_dataset, load_questions, split_of
from sdar_envs.searchqa.env import INVALID_MESSAGE, evidence_quote, grounded_answer, parse_action, search_query
from sdar_envs.searchqa.metrics import exact_match, f1_score, normalize_answer, substring_match
from sdar_envs.searchqa.search import HttpSearcher, Passage, format_passages


@pytest.mark.parametrize(
    ("prediction", "gold", "em"),
    [
        ("The Beatles", ["Beatles"], 1.0),  # articles
        ("beatles!", ["The Beatles"], 1.0),  # punctuation and case
        ("  Paul   McCartney ", ["paul mccartney"], 1.0),  # whitespace
        ("an apple", ["Apple"], 1.0),
        ("Dec. 1972", ["14 December 1972 UTC", "December 1972"], 0.0),
        ("December 1972", ["14 December 1972 UTC", "December 1972"], 1.0),  # any of several gold answers
        ("theatre", ["the atre"], 0.0),  # "the" is dropped only as a word
        ("Lennon and McCartney", ["McCartney"], 0.0),
        ("", ["x"], 0.0),
    ],
)
def test_exact_match_normalisation(prediction, gold, em):
    assert exact_match(prediction, gold) == em


def test_f1_and_substring_match():
    assert normalize_answer("The  U.S.A.") == "usa"
    assert substring_match("it was Lennon and McCartney", ["McCartney"]) == 1.0
    assert f1_score("Lennon and McCartney", ["McCartney"]) == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert f1_score("nothing", ["McCartney"]) == 0.0
    assert f1_score("Paul McCartney", ["McCartney", "Paul McCartney"]) == 1.0


def test_datasets_have_one_record_shape_and_stable_splits():
    sizes = {"nq": 3610, "nq_oracle": 2655, "hotpotqa": 200, "musique": 299, "bamboogle": 125, "2wikimultihopqa": 500}
    for name, n in sizes.items():
        records = load_dataset(name)
        assert len(records) == n and len({r.id for r in records}) == n
        assert all(r.question and r.golden_answers and all(r.golden_answers) for r in records)
    assert {r.data_source for name in DATASETS for r in load_dataset(name)} == {
        "nq",
        "hotpotqa",
        "musique",
        "2wikimultihopqa",
        "bamboogle",
    }
    train, test = load_questions(DEFAULT_DATASETS, "train"), load_questions(DEFAULT_DATASETS, "test")
    assert not {r.id for r in train} & {r.id for r in test}
    assert len(train) + len(test) == 3610 + 200 + 299
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.25
    assert split_of("nq-dev-0") == split_of("nq-dev-0") and load_questions(["nq"], "test") == load_questions(
        ["nq"], "test"
    )
    # NQ oracle questions reuse NQ-open ids, so a question is in the same split in both sets
    nq_ids = {r.id for r in load_dataset("nq")}
    assert all(r.id in nq_ids for r in load_dataset("nq_oracle"))
    with pytest.raises(ValueError, match="unknown Search-QA dataset"):
        load_questions(["triviaqa"])


def test_searching_a_passages_own_title_and_sentence_returns_it_first(local_searcher):
    with gzip.open(CORPUS_PATH, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f][::713]  # 25 passages from every source
    queries = []
    for d in docs:
        title, text = d["contents"].split("\n", 1)
        queries.append(f"{title.strip(chr(34))} {text.split('. ')[0]}")
    results = local_searcher.search(queries, 3)
    firsts = [r[0].id for r in results]
    assert sum(f == d["id"] for f, d in zip(firsts, docs, strict=True)) >= 24, list(
        zip(firsts, [d["id"] for d in docs], strict=True)
    )
    assert all(len(r) == 3 and r[0].score >= r[1].score >= r[2].score for r in results)


def _episode(env, task_id, actions):
    obs, info = env.reset(options={"task_id": task_id})
    trace = [obs]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, terminated, truncated, info["valid_action"]))
        if terminated or truncated:
            break
    return trace, info


def test_an_episode_that_searches_and_answers_right_gets_reward_1(local_searcher):
    env = gym.make("SDAR/SearchQA-v0", split="all", searcher=local_searcher)
    record = next(r for r in load_dataset("nq_oracle") if r.golden_answers[0] == "Wilhelm Conrad Röntgen")
    trace, info = _episode(
        env,
        record.id,
        [
            "<think>I should look it up.</think><search> first nobel prize in physics </search>",
            "<think>Doc 1 says it.</think> <answer>Wilhelm Conrad Röntgen</answer>",
        ],
    )
    information = trace[1][0]
    assert information.startswith('<information>Doc 1(Title: "List of Nobel laureates in Physics") The first Nobel')
    assert information.count("Doc ") == 3 and information.endswith("</information>")
    assert trace[2][1:4] == (1.0, True, False)
    assert info["won"] and info["em"] == 1.0 and info["f1"] == 1.0 and info["data_source"] == "nq"
    assert info["searches"] == ["first nobel prize in physics"] and info["task_type"] == "nq"
    # a wrong answer ends the episode with reward 0 and partial credit in info
    trace, info = _episode(env, record.id, ["<answer>Conrad Adenauer</answer>"])
    assert trace[1][1:4] == (0.0, True, False) and not info["won"] and 0 < info["f1"] < 1


@pytest.mark.parametrize(
    "output",
    [
        "",
        "I think the answer is Paris.",
        "<search></search>",
        "<answer>   </answer>",
        "<answer>unclosed",
        "<think><answer>hidden in thought</answer></think>",
        "<seach>typo</seach>",
        "\udcff\x00" * 50 + "<search",
        "x" * 100_000,
    ],
)
def test_malformed_outputs_are_invalid_steps_not_exceptions(local_searcher, output):
    env = gym.make("SDAR/SearchQA-v0", split="test", searcher=local_searcher)
    env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(output)
    assert obs == INVALID_MESSAGE and reward == 0.0 and not terminated and not truncated
    assert info["valid_action"] is False and info["step"] == 1


def test_first_tag_outside_thoughts_counts_and_four_turns_truncate(local_searcher):
    assert parse_action("<think>maybe <search>a</search></think><search>b</search><answer>c</answer>") == (
        "search",
        "b",
    )
    env = gym.make("SDAR/SearchQA-v0", split="test", searcher=local_searcher)
    _, info = env.reset(seed=3)
    for turn in range(4):
        *_, terminated, truncated, info = env.step(f"<search>{info['task']}</search>")
        assert not terminated and truncated == (turn == 3)
    assert info["step"] == 4 and not info["won"] and len(info["searches"]) == 4


def test_expert_actions_solve_an_answerable_question(local_searcher):
    env = gym.make("SDAR/SearchQA-v0", split="all", datasets=["nq_oracle"], searcher=local_searcher)
    _, info = env.reset(options={"task_id": load_dataset("nq_oracle")[0].id})
    done = False
    while not done:
        _, reward, terminated, truncated, info = env.step(info["expert_action"])
        done = terminated or truncated
    assert reward == 1.0 and info["step"] == 2


def test_the_grounded_answer_is_a_gold_answer_as_the_passages_spell_it():
    docs = [Passage("1", '"Abbey Road"\nAbbey Road is an album by the beatles, released in 1969.', 1.0)]
    assert grounded_answer(["The Beatles"], docs) == "the beatles"  # the passage's span, not the gold's case
    assert grounded_answer(["Let It Be", "1969"], docs) == "1969"  # the first gold answer the passages hold
    assert grounded_answer(["bey"], docs) is None  # whole words only: "Abbey" does not hold "bey"
    assert grounded_answer(["Paul McCartney"], docs) is None
    assert grounded_answer(["yes"], docs) == "yes"  # a yes/no answer is never a span
    two = [*docs, Passage("2", '"Road"\nroad works', 1.0)]
    assert grounded_answer(["1969 Road"], two) is None  # a span is held by one passage, not across two


def test_the_evidence_quote_is_the_answers_sentence_cut_around_it():
    text = '"Abbey Road"\nIt is an album. It was released in 1969 by the band ("The Beatles") in London, England.'
    at = text.index("The Beatles")
    # the sentence, never the title line or the sentence before; punctuation glued to the span stays
    assert (
        evidence_quote(text, at, at + 11) == 'It was released in 1969 by the band ("The Beatles") in London, England.'
    )
    assert evidence_quote(text, at, at + 11, max_words=4) == 'band ("The Beatles") in'
    assert evidence_quote(text, at, at + 11, max_words=1) == '("The Beatles")'  # the span is never cut
    title = text.index("Road")
    assert evidence_quote(text, title, title + 4) == '"Abbey Road"'


def test_the_grounded_expert_answers_only_what_it_retrieved(local_searcher):
    """Behaviour cloning's Search-QA expert: every demonstrated answer scores and is in the passages
    the search just returned; without such a passage the demonstration stops after the search."""
    env = gym.make("SDAR/SearchQA-v0", split="train", searcher=local_searcher, expert="grounded")
    assert env.unwrapped.demonstration_kwargs == {"expert": "grounded"}
    answered = stopped = 0
    for seed in range(40):
        _, info = env.reset(seed=seed)
        assert info["expert_action"] == f"<search>{info['task']}</search>"
        obs, *_, info = env.step(info["expert_action"])
        if info["expert_action"] is None:
            stopped += 1
            continue
        answer = parse_action(info["expert_action"])[1]
        assert normalize_answer(answer) in normalize_answer(obs) or normalize_answer(answer) in ("yes", "no")
        _, reward, terminated, *_ = env.step(info["expert_action"])
        assert terminated and reward == 1.0
        answered += 1
    assert answered > 10 and stopped > 5  # the train split holds both kinds
    with pytest.raises(ValueError, match="expert must be"):
        gym.make("SDAR/SearchQA-v0", expert="oracle")


def test_the_quoting_expert_quotes_the_evidence_then_gives_the_grounded_answer(local_searcher):
    grounded = gym.make("SDAR/SearchQA-v0", split="train", searcher=local_searcher, expert="grounded")
    quoted = gym.make("SDAR/SearchQA-v0", split="train", searcher=local_searcher, expert="quoted")
    thought = 0
    for seed in range(20):
        (_, a), (_, b) = grounded.reset(seed=seed), quoted.reset(seed=seed)
        obs, *_, a = grounded.step(a["expert_action"])
        _, *_, b = quoted.step(b["expert_action"])
        if a["expert_action"] is None:
            assert b["expert_action"] is None
            continue
        # the same answer (the env reads an action after dropping <think>), after a quote of the passages
        assert parse_action(b["expert_action"]) == parse_action(a["expert_action"])
        quote = re.fullmatch(r"(?:<think>(.*)</think>)?<answer>.*</answer>", b["expert_action"], re.DOTALL)
        if quote and quote.group(1):
            thought += 1
            assert " ".join(quote.group(1).split()) in " ".join(obs.split())
            assert len(quote.group(1).split()) <= 16 + len(parse_action(a["expert_action"])[1].split())
    assert thought > 5


def test_grounding_tells_a_policy_that_reads_the_passages_from_one_that_guesses(local_searcher):
    from sdar_envs.searchqa.answerability import grounding

    env = gym.make("SDAR/SearchQA-v0", split="test", searcher=local_searcher, expert="grounded")
    questions = {r.id: r.question for r in load_questions(DEFAULT_DATASETS, "test")}
    expert, guesser, titler, echoer = [], [], [], []
    for seed in range(30):
        _, info = env.reset(seed=seed)
        search = info["expert_action"]
        top = local_searcher.search([search_query(parse_action(search)[1])], 3)[0][0]
        *_, info = env.step(search)
        actions = [search] + ([info["expert_action"]] if info["expert_action"] else [])
        task, won = info["task_id"], len(actions) == 2
        expert.append({"task_id": task, "won": won, "actions": actions})
        guesser.append({"task_id": task, "won": False, "actions": [search, "<answer>1969</answer>"]})
        titler.append({"task_id": task, "won": False, "actions": [search, f"<answer>{top.title}</answer>"]})
        echo = max(questions[task].split(), key=len)  # its longest word
        echoer.append({"task_id": task, "won": False, "actions": [search, f"<answer>{echo}</answer>"]})
    read = grounding(local_searcher, {"results": expert})
    assert 0 < read["answerable"] < 1 and read["answerable"] == read["em"]  # it answers exactly those
    assert read["em_answerable"] == read["copied"] == read["copied_right"] == 1.0 and read["em_other"] == 0.0
    guessed = grounding(local_searcher, {"results": guesser})
    assert guessed["answered"] == 1.0 and guessed["copied"] < 0.2 and guessed["em"] == 0.0
    assert guessed["wrong_title"] < 0.2 and guessed["wrong_echo"] < 0.2
    assert grounding(local_searcher, {"results": titler})["wrong_title"] == 1.0
    assert grounding(local_searcher, {"results": echoer})["wrong_echo"] == 1.0


def test_seeded_resets_pick_the_same_question_everywhere(local_searcher):
    a = gym.make("SDAR/SearchQA-v0", searcher=local_searcher)
    b = gym.make("SDAR/SearchQA-v0", searcher=local_searcher)
    assert [a.reset(seed=s)[1]["task_id"] for s in range(5)] == [b.reset(seed=s)[1]["task_id"] for s in range(5)]


def test_http_and_in_process_backends_return_the_same(local_searcher, retrieval_server):
    http = HttpSearcher(retrieval_server.url)
    questions = [r.question for r in load_questions(["nq", "hotpotqa", "musique"], "test")][:100]
    assert http.search(questions, 3) == local_searcher.search(questions, 3)
    assert format_passages(http.search(questions[:1], 5)[0]) == format_passages(
        local_searcher.search(questions[:1], 5)[0]
    )
    script = [
        "<search>capital of australia</search>",
        "bad output",
        "<search>who wrote hamlet</search>",
        "<answer>x</answer>",
    ]
    task_id = load_questions(["nq"], "test")[7].id
    local_env = gym.make("SDAR/SearchQA-v0", split="test", searcher=local_searcher)
    http_env = gym.make("SDAR/SearchQA-v0", split="test", retrieval_url=retrieval_server.url)
    assert _episode(local_env, task_id, script) == _episode(http_env, task_id, script)


def test_the_in_process_searcher_is_thread_safe(local_searcher):
    """pyjnius shares bound Java methods across threads; 16 threads searching at once must each get
    their own results (before the searcher's lock this raised NullPointerExceptions)."""
    from concurrent.futures import ThreadPoolExecutor

    questions = [r.question for r in load_questions(["nq"], "all")][:256]
    expected = local_searcher.search(questions, 3)

    def worker(i: int) -> bool:
        return all(local_searcher.search(questions[i::16], 3) == expected[i::16] for _ in range(5))

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(worker, range(16)))
