"""A faster drop-in for textworld's PDDL engine, saying exactly what the stock engine says.

The stock loop (``textworld.start(game, infos, wrappers=[AlfredDemangler(), AlfredInfos])``) spends
its time on work that is a pure function of its inputs and is redone on every call:

* ``PddlState.__init__`` runs fast-downward's PDDL->SAS translate twice (plain and "replan"), on
  ``load`` and again on every ``reset``. The result depends only on (domain, problem): we translate once
  per game and keep it, and translate the replan task only when the planner is asked for.
* ``ContextSensitiveGrammar.derive`` re-parses every template string ("take {o} from {r}", each
  feedback rule, each rule condition) with TatSu on every call, and deep-copies the derivation context
  for every symbol. We parse each distinct string once into an immutable template and derive with
  shared, never-mutated contexts.
* ``GameLogic`` re-parses the whole grammar document per load, one TatSu call per rule although the
  games share all their rules but the task sentence: rules are parsed once per distinct text.
* Translations are also kept on disk (content-addressed, ``$SDAR_CACHE_DIR/alfworld/translations``,
  ``SDAR_ALFWORLD_TRANSLATION_CACHE=off`` to disable), so a game seen in any earlier run loads in
  milliseconds. A cache entry that fails to load is translated again and rewritten.

Nothing here changes what the engine reports; ``tests/envs/test_alfworld_engine.py`` replays expert
walkthroughs and seeded random walks through both engines and compares every observation, admissible
command list, score and ``won`` flag.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import tempfile
import threading
import zlib
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fast_downward
import textworld
import textworld.envs.pddl.textgen as tw_textgen
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredExpertType, AlfredInfos
from textworld.core import EnvInfos, GameState
from textworld.envs.pddl import PddlEnv
from textworld.envs.pddl import logic as pddl_logic
from textworld.logic import Proposition, Rule, Variable

__all__ = [
    "REQUEST_INFOS",
    "AlfredDemangler",
    "AlfredExpert",
    "AlfredExpertType",
    "AlfredInfos",
    "FastPddlEnv",
    "GameCache",
    "TranslationCache",
    "make_engine",
    "start_fast",
    "start_stock",
]

# What our environment asks of the engine (the same as alfworld's AlfredTWEnv).
REQUEST_INFOS = EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])

# kinds of node in a compiled text-generation template
TERMINAL, NONTERMINAL, CONDITIONAL, EVAL, LIST = range(5)


def _translate(domain: str, problem: str, optimize: bool) -> tuple[Any, str]:
    # fast-downward's translate overwrites sys.argv on every call; give the caller its argv back.
    argv = list(sys.argv)
    try:
        return fast_downward.pddl2sas(domain, problem, optimize=optimize)
    finally:
        sys.argv[:] = argv


def _to_template(symbol: tw_textgen.Symbol) -> tuple:
    """textworld's parsed grammar symbols -> immutable tuples our derivation walks."""
    if isinstance(symbol, tw_textgen.TerminalSymbol):
        return (TERMINAL, str(symbol.symbol))
    if isinstance(symbol, tw_textgen.NonterminalSymbol):
        return (NONTERMINAL, str(symbol.symbol))
    if isinstance(symbol, tw_textgen.ConditionalSymbol):
        return (CONDITIONAL, _to_template(symbol.expression), symbol.given)
    if isinstance(symbol, tw_textgen.EvalSymbol):
        return (EVAL, compile(symbol.expression, "<grammar>", "eval"))
    if isinstance(symbol, tw_textgen.ListSymbol):
        return (LIST, _to_template(symbol.symbol))
    raise NotImplementedError(f"Unknown grammar symbol: {type(symbol).__name__}")


class _Memo:
    """Process-wide memo of TatSu parses; the parses are pure functions of the text."""

    def __init__(self) -> None:
        self._symbols: dict[str, list] = {}
        self._templates: dict[str, tuple] = {}
        self._queries: dict[str, Rule] = {}
        self._lock = threading.Lock()

    def symbols(self, text: str) -> list:
        """textworld's parsed symbols for a grammar string (shared: callers must not mutate them)."""
        symbols = self._symbols.get(text)
        if symbols is None:
            symbols = tw_textgen._parse_and_convert(text, rule_name="symbols")
            with self._lock:
                self._symbols[text] = symbols
        return symbols

    def template(self, text: str) -> tuple:
        tpl = self._templates.get(text)
        if tpl is None:
            tpl = tuple(_to_template(s) for s in self.symbols(text))
            with self._lock:
                self._templates[text] = tpl
        return tpl

    def query(self, expr: str) -> Rule:
        rule = self._queries.get(expr)
        if rule is None:
            rule = Rule.parse_conjunctive_query(expr)
            with self._lock:
                self._queries[expr] = rule
        return rule


_MEMO = _Memo()


class _LogicConverter(pddl_logic._ModelConverter):
    """textworld's converter, building the grammar from rule parses shared across games (the stock
    ``replace`` deep-copies a rule's symbols before use, so sharing them is safe)."""

    def walk_PddlDocumentNode(self, node: Any) -> tuple[dict, tw_textgen.ContextSensitiveGrammar]:
        actions: dict[str, pddl_logic.Action] = {}
        data: dict[str, list] = {}
        for part in node.parts:
            if isinstance(part, textworld.envs.pddl.logic.model.ActionTypeNode):
                action = self.walk(part)
                actions[action.name.lower()] = action
                lines = (line for line in action.grammar.split("\n") if not line.lstrip().startswith("#"))
                data.update(json.loads("\n".join(lines)))
            elif isinstance(part, textworld.envs.pddl.logic.model.ActionGrammarNode):
                data.update(json.loads(self._unescape_block(part.code)))
        grammar = tw_textgen.ContextSensitiveGrammar()
        for name, rules in data.items():
            for rule in rules:
                grammar.add_rule(
                    tw_textgen.ProductionRule(
                        lhs=name,
                        rhs=_MEMO.symbols(rule["rhs"]),
                        weight=rule.get("weight", 1),
                        condition=rule.get("condition", ""),
                    )
                )
        return actions, grammar


def _game_logic(domain: str, grammar: str) -> pddl_logic.GameLogic:
    """``GameLogic(domain, grammar)``, with the per-rule parses memoised."""
    logic = pddl_logic.GameLogic.__new__(pddl_logic.GameLogic)
    logic.domain = domain
    logic.grammar = tw_textgen.ContextSensitiveGrammar()
    logic.actions = {}
    logic.types = textworld.logic.TypeHierarchy()
    actions, parsed = _LogicConverter().walk(pddl_logic._PARSER.parse(grammar, rule_name="pddlStart"))
    logic.actions.update(actions)
    logic.grammar.update(parsed)
    return logic


def _default_translation_dir() -> Path | None:
    setting = os.environ.get("SDAR_ALFWORLD_TRANSLATION_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("SDAR_CACHE_DIR", Path.home() / ".cache" / "sdar")) / "alfworld" / "translations"


class TranslationCache:
    """fast-downward translations on disk, keyed by the hash of (domain, problem, translator version)."""

    VERSION = f"fd-{getattr(fast_downward, '__version__', '20.6.4')}-v1"

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def get(self, domain: str, problem: str) -> tuple[Any, str]:
        if self.directory is None:
            return _translate(domain, problem, optimize=False)
        key = hashlib.sha256(f"{self.VERSION}\0{domain}\0{problem}".encode()).hexdigest()[:40]
        path = self.directory / key[:2] / f"{key}.pkl.z"
        try:
            with open(path, "rb") as f:
                return pickle.loads(zlib.decompress(f.read()))
        except Exception:  # missing, truncated or foreign: translate again and (over)write it
            pass
        result = _translate(domain, problem, optimize=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(zlib.compress(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL), 6))
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        except OSError:
            pass  # a read-only cache is still a working engine
        return result


class FastGrammar:
    """Derives text from a ``ContextSensitiveGrammar``'s rules the way its ``derive`` does.

    A context is the pair (variables, mapping) plus the state; contexts are never mutated once built,
    so they are shared instead of deep-copied.
    """

    def __init__(self, grammar: tw_textgen.ContextSensitiveGrammar) -> None:
        self._rules: dict[str, list[tuple[str, tuple]]] = {}
        for lhs, rules in grammar._rules.items():
            self._rules[lhs] = [(rule.condition or "", tuple(_to_template(s) for s in rule.rhs)) for rule in rules]

    def derive(self, start: str, state: Any, infos: dict, variables: dict, mapping: dict) -> str:
        """Text for ``start`` in ``state``; ``infos`` maps entity ids to their (demangled) EntityInfo."""
        out: list[str] = []
        ctx = (variables, mapping)
        stack = [(node, ctx) for node in reversed(_MEMO.template(start))]
        while stack:
            node, ctx = stack.pop()
            kind = node[0]
            if kind == TERMINAL:
                out.append(node[1])
            elif kind == NONTERMINAL:
                rhs = self._first_applicable(node[1], state, ctx[1])
                stack.extend((n, ctx) for n in reversed(rhs))
            elif kind == EVAL:
                out.append(str(eval(node[1], tw_textgen.__dict__, dict(ctx[0]))))
            else:
                stack.extend(reversed(self._expand(node, state, infos, ctx)))
        return "".join(out)

    def _first_applicable(self, name: str, state: Any, mapping: dict) -> tuple:
        rules = self._rules.get(name)
        if not rules:
            raise tw_textgen.CSGUnknownSymbolError(tw_textgen.NonterminalSymbol(name))
        for condition, rhs in rules:
            if not condition or next(iter(state.all_assignments(_MEMO.query(condition), mapping)), None) is not None:
                return rhs
        raise IndexError("list index out of range")  # what the stock engine raises: rules[0] of []

    def _expand(self, node: tuple, state: Any, infos: dict, ctx: tuple) -> list[tuple]:
        """One derivation step of a conditional or list symbol: (node, context) pairs to push."""
        if node[0] == CONDITIONAL:
            _, expression, given = node
            return [(expression, c) for c in self._query(given, state, infos, ctx)] if given else [(expression, ctx)]
        # A list symbol derives its inner symbol once and joins the parts, as textgen.display_list does.
        inner = node[1]
        if inner[0] == EVAL:
            items = [((TERMINAL, str(eval(inner[1], tw_textgen.__dict__, dict(ctx[0])))), ctx)]
        else:
            items = self._expand(inner, state, infos, ctx)
        if not items:
            return [((NONTERMINAL, "list_empty"), ctx)]
        if len(items) == 1:
            return items
        sep, last = ((NONTERMINAL, "list_separator"), ctx), ((NONTERMINAL, "list_last_separator"), ctx)
        joined: list[tuple] = []
        for item in items[:-1]:
            joined += [item, sep]
        joined[-1] = last
        return joined + [items[-1]]

    @staticmethod
    def _query(expr: str, state: Any, infos: dict, ctx: tuple) -> list[tuple]:
        variables, mapping = ctx
        out = []
        for assignment in state.all_assignments(_MEMO.query(expr), mapping):
            new_vars = dict(variables)
            new_vars.update({ph.name: infos[var.name] for ph, var in assignment.items()})
            new_map = dict(mapping)
            new_map.update(assignment)
            out.append((new_vars, new_map))
        return out


@dataclass
class _Game:
    """Everything about one game file that no reset changes."""

    data: dict
    logic: pddl_logic.GameLogic
    grammar: FastGrammar
    task: Any  # fast-downward's normalised PDDL task
    sas: str
    init_facts: list[Proposition]
    name2type: dict[str, str]
    sas_replan: str | None = None

    def replan_sas(self) -> str:
        if self.sas_replan is None:
            self.sas_replan = _translate(self.logic.domain, self.data["pddl_problem"], optimize=True)[1]
        return self.sas_replan


class GameCache:
    """Per-process LRU of loaded games, keyed by file path (games are read-only files)."""

    def __init__(self, maxsize: int = 256, translations: TranslationCache | None = None) -> None:
        self.maxsize = maxsize
        self.translations = translations or TranslationCache(_default_translation_dir())
        self._games: OrderedDict[str, _Game] = OrderedDict()
        self._logics: dict[tuple[str, str], tuple[pddl_logic.GameLogic, FastGrammar]] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> _Game:
        with self._lock:
            game = self._games.get(path)
            if game is not None:
                self._games.move_to_end(path)
                return game
        game = self._load(path)
        with self._lock:
            self._games[path] = game
            while len(self._games) > self.maxsize:
                self._games.popitem(last=False)
        return game

    def _load(self, path: str) -> _Game:
        with open(path) as f:
            data = json.load(f)
        key = (data["pddl_domain"], data["grammar"])  # the texts themselves: no collision can alias games
        cached = self._logics.get(key)
        if cached is None:
            logic = _game_logic(data["pddl_domain"], data["grammar"])
            cached = (logic, FastGrammar(logic.grammar))
            if len(self._logics) > self.maxsize:
                self._logics.clear()
            self._logics[key] = cached
        logic, grammar = cached
        task, sas = self.translations.get(logic.domain, data["pddl_problem"])
        for type_ in task.types:  # what PddlState.__init__ does, once per game
            try:
                logic.types.add(textworld.logic.Type(type_.name, type_.supertype_names))
            except ValueError:
                pass
        name2type = {o.name: o.type_name for o in task.objects}
        init_facts = []
        for atom in task.init:
            if isinstance(atom, fast_downward.translate.pddl.conditions.Atom):
                if atom.predicate != "=":
                    init_facts.append(Proposition(atom.predicate, [Variable(a, name2type[a]) for a in atom.args]))
            elif isinstance(atom, fast_downward.translate.pddl.f_expression.Assign):
                name = f"{atom.expression.value}"
                if atom.fluent.symbol != "total-cost" and not str.isdigit(name):
                    init_facts.append(Proposition(name, [Variable(a, name2type[a]) for a in atom.fluent.args]))
        return _Game(data, logic, grammar, task, sas, init_facts, name2type)


_GAMES = GameCache()


class _FastPddlState(pddl_logic.PddlState):
    """``PddlState`` built from a cached translation instead of translating again."""

    def __init__(self, downward_lib: Any, game: _Game, replan: bool) -> None:
        self._facts: defaultdict[Any, set[Any]] = defaultdict(set)
        self._vars_by_name: dict[str, Any] = {}
        self._vars_by_type: defaultdict[Any, set[Any]] = defaultdict(set)
        self._var_counts: Counter[Any] = Counter()
        self._logic = game.logic
        self.downward_lib = downward_lib
        self.pddl_problem = game.data["pddl_problem"]
        self.task, self.sas = game.task, game.sas
        self._actions = {a.name: a for a in game.task.actions}
        self._game = game
        self._replan_loaded = False
        downward_lib.load_sas(game.sas.encode("utf-8"))
        if replan:
            self._load_replan()
        self.name2type = game.name2type
        self.add_facts(game.init_facts)
        atoms = (pddl_logic.Atom * downward_lib.get_state_size())()
        downward_lib.get_state(atoms)
        self.add_facts([f for f in (a.get_fact(self.name2type) for a in atoms) if not f.is_negation])

    def _load_replan(self) -> None:
        self.sas_replan = self._game.replan_sas()
        self.downward_lib.load_sas_replan(self.sas_replan.encode("utf-8"))
        self._replan_loaded = True

    def replan(self, infos: Any) -> list[str]:
        if not self._replan_loaded:
            self._load_replan()
        return super().replan(infos)


class FastPddlEnv(PddlEnv):
    """textworld's ``PddlEnv`` with cached games, translations and grammar parses."""

    def __init__(self, infos: EnvInfos | None = None, cache: GameCache | None = None) -> None:
        super().__init__(infos)
        self._cache = cache or _GAMES

    def load(self, filename_or_data: str) -> None:
        self._game = self._cache.get(filename_or_data)
        self._game_file = filename_or_data
        self._game_data = self._game.data
        self.walkthrough = self._game_data.get("walkthrough", None)
        self._logic = self._game.logic
        self._pddl_state = self._new_state()
        self._entity_infos = self._get_entity_infos()

    def _new_state(self) -> _FastPddlState:
        return _FastPddlState(self.downward_lib, self._game, replan=bool(self.request_infos.policy_commands))

    def _derive(self, start: str, mapping: dict) -> str:
        variables = {ph.name: self._entity_infos[var.name] for ph, var in mapping.items()}
        return self._game.grammar.derive(start, self._pddl_state, self._entity_infos, variables, mapping)

    def _gather_infos(self) -> None:
        state = self.state
        state["command_templates"] = sorted(set(action.template for action in self._logic.actions.values()))
        state["won"] = self._pddl_state.check_goal()
        state["lost"] = False
        state["_entity_infos"] = dict(self._entity_infos)
        state["_facts"] = list(self._pddl_state.facts)
        if self.request_infos.facts:
            state["facts"] = list(map(self._get_human_readable_fact, state["_facts"]))
        state["last_action"] = None
        state["_last_action"] = self._last_action
        state["_valid_actions"] = list(self._pddl_state.all_applicable_actions())
        names = {k: info.name for k, info in self._entity_infos.items()}
        commands = []
        for action in state["_valid_actions"]:
            action.command_template = self._derive(action.command_template, action.mapping)
            commands.append(action.format_command(names))
        state["_valid_commands"] = commands
        state["admissible_commands"] = sorted(set(commands))
        if self.request_infos.moves:
            state["moves"] = self._moves
        if self.request_infos.policy_commands:
            state["policy_commands"] = self._pddl_state.replan(self._entity_infos)

    def reset(self) -> GameState:
        self._pddl_state = self._new_state()
        self.prev_state: Any = None
        self.state = GameState()
        self._last_action: Any = None
        self._moves = 0
        self.state.feedback = self._derive("#intro#", {})
        self.state.raw = self.state.feedback
        self._gather_infos()
        if "walkthrough" in self.request_infos.extras:
            self.state["extra.walkthrough"] = self.walkthrough or self._pddl_state.replan(self._entity_infos)
        return self.state

    def step(self, command: str) -> tuple[GameState, int, bool]:
        command = command.strip()
        self.prev_state = self.state
        self.state = GameState()
        self.state.last_command = command
        self._last_action = None
        try:
            idx = self.prev_state["_valid_commands"].index(command)
        except ValueError:
            self.state.feedback = "Nothing happens."  # the engine's own answer to a non-command
        else:
            self._last_action = self.prev_state["_valid_actions"][idx]
            self._pddl_state.apply(self._last_action)
            self.state.feedback = self._derive(self._last_action.feedback_rule, self._last_action.mapping)
            self._moves += 1
        self.state.raw = self.state.feedback
        self._gather_infos()
        if "walkthrough" in self.request_infos.extras:
            self.state["extra.walkthrough"] = self.prev_state["extra.walkthrough"]
        self.state["score"] = 1 if self.state["won"] else 0
        self.state["done"] = self.state["won"] or self.state["lost"]
        return self.state, self.state["score"], self.state["done"]


def make_engine(
    request_infos: EnvInfos = REQUEST_INFOS, cache: GameCache | None = None, handcoded_expert: bool = False
) -> textworld.Environment:
    """Our engine wrapped as alfworld's AlfredTWEnv wraps it (no name shuffling, as in its evaluation);
    ``load(game_file)`` it before use. ``handcoded_expert`` adds alfworld's expert wrapper."""
    request_infos = request_infos.copy()  # never mutate the caller's (or the module's) EnvInfos
    request_infos.facts = request_infos.facts or handcoded_expert  # the handcoded expert reads facts
    env: textworld.Environment = AlfredInfos(AlfredDemangler(FastPddlEnv(request_infos, cache=cache), shuffle=False))
    if handcoded_expert:
        env = AlfredExpert(env, AlfredExpertType.HANDCODED)
    return env


def start_fast(
    path: str, request_infos: EnvInfos = REQUEST_INFOS, cache: GameCache | None = None
) -> textworld.Environment:
    """Our engine for one game, wrapped as alfworld wraps it."""
    env = make_engine(request_infos, cache)
    env.load(path)
    return env


def start_stock(path: str, request_infos: EnvInfos = REQUEST_INFOS) -> textworld.Environment:
    """alfworld's stock engine for one game (the reference the tests and benchmark compare against)."""
    argv = list(sys.argv)
    try:
        return textworld.start(path, request_infos, wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])
    finally:
        sys.argv[:] = argv
