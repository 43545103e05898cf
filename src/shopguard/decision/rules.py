"""Declarative rules over event fields, features and model scores, with allow/deny lists.

A rule file is YAML::

    mode: first_match            # or all_match
    lists:
      deny:  {users: [u_bad], devices: [], ips: [], instruments: []}
      allow: {users: [u_vip]}
    rules:
      - name: card_testing_burst
        when: "user_failed_payments_10m >= 5 and amount < 2"
        action: block            # allow | review | challenge | block
        reason: CARD_TESTING     # reason code shown with the decision
        priority: 10             # higher runs first
        scenario: card_testing   # optional: what the rule hunts (backtests report precision against it)

Conditions use a small, safe expression language parsed here (never Python ``eval``): numbers,
'strings', true/false/null, names (event fields, feature names, ``score``, ``probability``,
``attrs.key``), ``+ - * /``, comparisons ``== != < <= > >=``, ``in`` / ``not in`` a ``[list]``,
``and`` / ``or`` / ``not``, parentheses and the functions ``abs min max lower len``. A missing value
(null) makes a comparison false, as in SQL, so a rule never fires on data it cannot see.

>>> rs = RuleSet.from_dict({"rules": [{"name": "tiny", "when": "amount < 2 and type == 'pay'",
...                                    "action": "review", "reason": "TINY_PAYMENT"}]})
>>> [h.name for h in rs.evaluate({"amount": 1.0, "type": "pay"}).hits]
['tiny']
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shopguard.errors import ConfigError, ValidationFailed
from shopguard.events.schema import COLUMN_BY_NAME, COLUMN_NAMES

log = logging.getLogger("shopguard.rules")

ACTIONS: tuple[str, ...] = ("allow", "review", "challenge", "block")
SEVERITY: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}
MODES = ("first_match", "all_match")
# Names the decision context always carries besides event fields and features.
SCORE_NAMES: tuple[str, ...] = ("score", "probability", "model_score", "score_percentile")
LIST_KINDS: dict[str, str] = {  # list name in YAML -> event field it matches
    "users": "user_id",
    "devices": "device_id",
    "ips": "ip",
    "instruments": "payment_instrument",
}
MAX_EXPR_CHARS = 2_000
MAX_DEPTH = 50  # parentheses, ``not``, unary minus and calls nested in the source text
# The budget of one condition's tree, checked by ``rules check`` and at every load: evaluation recurses
# once per level, so a chain like ``1+1+...+1`` (975 terms, under 2,000 characters) must be refused
# when the file is checked, never discovered as a RecursionError on the decision path.
MAX_AST_DEPTH = 64
MAX_AST_NODES = 1_000
MAX_RULES = 1_000  # rules in one file
MAX_RULE_FILE_BYTES = 2_000_000
MAX_YAML_DEPTH = 32  # nesting of YAML mappings/lists in a rule file (rules need 4)


class ExpressionError(ValueError):
    """A condition that does not parse or refers to something unknown; ``pos`` is the character offset."""

    def __init__(self, message: str, pos: int | None = None) -> None:
        super().__init__(message if pos is None else f"{message} (at character {pos})")
        self.pos = pos


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\)|\[|\]|,)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    """,
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not", "in", "true", "false", "null", "none"}
FUNCTIONS: dict[str, tuple[int, int]] = {"abs": (1, 1), "min": (1, 16), "max": (1, 16), "lower": (1, 1), "len": (1, 1)}


@dataclass(frozen=True)
class Token:
    kind: str  # num | str | op | name | kw | end
    text: str
    pos: int


def tokenize(src: str) -> list[Token]:
    """Split a condition into tokens; unknown characters raise ``ExpressionError`` with the position."""
    if len(src) > MAX_EXPR_CHARS:
        raise ExpressionError(f"condition longer than {MAX_EXPR_CHARS} characters")
    out: list[Token] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN_RE.match(src, pos)
        if m is None:
            raise ExpressionError(f"unexpected character {src[pos]!r}", pos)
        kind = m.lastgroup or ""
        text = m.group()
        if kind == "name" and text.lower() in KEYWORDS:
            out.append(Token("kw", text.lower(), pos))
        elif kind != "ws":
            out.append(Token(kind, text, pos))
        pos = m.end()
    out.append(Token("end", "", len(src)))
    return out


# ---------------------------------------------------------------------------------------------------
# AST: tuples keep it small and hashable. ("lit", v) ("name", n) ("list", [..]) ("not", x)
# ("and", a, b) ("or", a, b) ("cmp", op, a, b) ("in", a, list, negated) ("arith", op, a, b)
# ("neg", x) ("call", fname, [args])
# ---------------------------------------------------------------------------------------------------
Node = tuple


class _Parser:
    """Recursive descent over the grammar::

        expr    := or
        or      := and ("or" and)*
        and     := not ("and" not)*
        not     := "not" not | cmp
        cmp     := sum [(== != < <= > >=) sum | ["not"] "in" list]
        sum     := term (("+" | "-") term)*
        term    := unary (("*" | "/") unary)*
        unary   := "-" unary | atom
        atom    := num | str | true | false | null | name | name "(" args ")" | "(" expr ")" | list
        list    := "[" [sum ("," sum)*] "]"
    """

    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = tokenize(src)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, kind: str, text: str | None = None) -> Token:
        t = self.take()
        if t.kind != kind or (text is not None and t.text != text):
            want = text or kind
            got = t.text or "end of condition"
            raise ExpressionError(f"expected {want!r}, got {got!r}", t.pos)
        return t

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ExpressionError("empty condition", 0)
        node = self.or_()
        t = self.peek()
        if t.kind != "end":
            raise ExpressionError(f"unexpected {t.text!r}", t.pos)
        check_budget(node)
        return node

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"condition nested deeper than {MAX_DEPTH}", self.peek().pos)

    def or_(self) -> Node:
        node = self.and_()
        while self.peek().kind == "kw" and self.peek().text == "or":
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek().kind == "kw" and self.peek().text == "and":
            self.take()
            node = ("and", node, self.not_())
        return node

    def not_(self) -> Node:
        t = self.peek()
        if t.kind == "kw" and t.text == "not":
            self.take()
            self._enter()
            node = ("not", self.not_())
            self.depth -= 1
            return node
        return self.cmp()

    def cmp(self) -> Node:
        left = self.sum()
        t = self.peek()
        if t.kind == "op" and t.text in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return ("cmp", t.text, left, self.sum())
        negated = False
        if t.kind == "kw" and t.text == "not":
            nxt = self.toks[self.i + 1]
            if nxt.kind == "kw" and nxt.text == "in":
                self.take()
                negated = True
                t = self.peek()
        if t.kind == "kw" and t.text == "in":
            self.take()
            lst = self.list_()
            return ("in", left, lst, negated)
        return left

    def sum(self) -> Node:
        node = self.term()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            op = self.take().text
            node = ("arith", op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/"):
            op = self.take().text
            node = ("arith", op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek().kind == "op" and self.peek().text == "-":
            self.take()
            self._enter()
            node = ("neg", self.unary())
            self.depth -= 1
            return node
        return self.atom()

    def list_(self) -> Node:
        self.expect("op", "[")
        items: list[Node] = []
        if not (self.peek().kind == "op" and self.peek().text == "]"):
            items.append(self.sum())
            while self.peek().kind == "op" and self.peek().text == ",":
                self.take()
                items.append(self.sum())
        self.expect("op", "]")
        return ("list", items)

    def atom(self) -> Node:
        t = self.peek()
        if t.kind == "num":
            self.take()
            v = float(t.text)
            if not math.isfinite(v):
                raise ExpressionError(f"number out of range: {t.text}", t.pos)
            return ("lit", v)
        if t.kind == "str":
            self.take()
            body = t.text[1:-1]
            return ("lit", re.sub(r"\\(.)", r"\1", body))
        if t.kind == "kw" and t.text in ("true", "false", "null", "none"):
            self.take()
            return ("lit", {"true": True, "false": False}.get(t.text))
        if t.kind == "name":
            self.take()
            if self.peek().kind == "op" and self.peek().text == "(":
                return self.call(t)
            return ("name", t.text)
        if t.kind == "op" and t.text == "(":
            self.take()
            self._enter()
            node = self.or_()
            self.depth -= 1
            self.expect("op", ")")
            return node
        if t.kind == "op" and t.text == "[":
            return self.list_()
        raise ExpressionError(f"unexpected {t.text or 'end of condition'!r}", t.pos)

    def call(self, name_tok: Token) -> Node:
        fname = name_tok.text
        if fname not in FUNCTIONS:
            raise ExpressionError(f"unknown function {fname!r} (allowed: {', '.join(FUNCTIONS)})", name_tok.pos)
        self.expect("op", "(")
        args: list[Node] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            self._enter()
            args.append(self.or_())
            while self.peek().kind == "op" and self.peek().text == ",":
                self.take()
                args.append(self.or_())
            self.depth -= 1
        self.expect("op", ")")
        lo, hi = FUNCTIONS[fname]
        if not lo <= len(args) <= hi:
            raise ExpressionError(f"{fname}() takes {lo}..{hi} arguments, got {len(args)}", name_tok.pos)
        return ("call", fname, args)


def parse_expression(src: str) -> Node:
    """Parse a condition into an AST (nested tuples); raises ``ExpressionError`` on bad syntax."""
    if not isinstance(src, str):
        raise ExpressionError(f"condition must be text, got {type(src).__name__}")
    return _Parser(src).parse()


def _children(node: Node) -> list[Node]:
    if node[0] in ("lit", "name"):
        return []
    out: list[Node] = []
    for part in node[1:]:
        if isinstance(part, tuple):
            out.append(part)
        elif isinstance(part, list):
            out.extend(p for p in part if isinstance(p, tuple))
    return out


def tree_size(node: Node) -> tuple[int, int]:
    """(depth, nodes) of a condition's tree, walked without recursion (any tree is safe to measure)."""
    depth = nodes = 0
    stack: list[tuple[Node, int]] = [(node, 1)]
    while stack:
        n, d = stack.pop()
        nodes += 1
        depth = max(depth, d)
        stack.extend((c, d + 1) for c in _children(n))
    return depth, nodes


def check_budget(node: Node) -> None:
    """Refuse a condition whose tree is deeper than ``MAX_AST_DEPTH`` or larger than ``MAX_AST_NODES``."""
    depth, nodes = tree_size(node)
    if depth > MAX_AST_DEPTH:
        raise ExpressionError(f"condition too deeply nested: {depth} levels (at most {MAX_AST_DEPTH}; a long "
                              "chain of + - * / counts one level per operator: split it, or use a feature)")
    if nodes > MAX_AST_NODES:
        raise ExpressionError(f"condition too large: {nodes} parts (at most {MAX_AST_NODES})")


def names_in(node: Node) -> set[str]:
    """Every name a condition reads (iterative: never recurses)."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n[0] == "name":
            out.add(n[1])
        else:
            stack.extend(_children(n))
    return out


# ---------------------------------------------------------------------------------------------------
# Evaluation: compile the AST into closures once, so evaluating a rule is a few function calls.
# ---------------------------------------------------------------------------------------------------
Ctx = Mapping[str, Any]
Fn = Callable[[Ctx], Any]


def _lookup(ctx: Ctx, name: str) -> Any:
    v = ctx.get(name)
    if v is None and "." in name:
        # attrs.key (or deeper): walk nested mappings
        head, *rest = name.split(".")
        v = ctx.get(head)
        for part in rest:
            v = v.get(part) if isinstance(v, Mapping) else None
    return v


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return None


def _compare(op: str, a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False  # SQL-like: a missing value satisfies no comparison
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None:
        a, b = na, nb
    elif type(a) is not type(b):
        return op == "!="  # different kinds are never equal and never ordered
    try:
        if op == "==":
            return bool(a == b)
        if op == "!=":
            return bool(a != b)
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)
    except TypeError:
        return False


def _truthy(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    return bool(v)


def _arith(op: str, a: Any, b: Any) -> float | None:
    na, nb = _num(a), _num(b)
    if na is None or nb is None:
        return None
    if op == "+":
        r = na + nb
    elif op == "-":
        r = na - nb
    elif op == "*":
        r = na * nb
    else:
        if nb == 0:
            return None
        r = na / nb
    return r if math.isfinite(r) else None


def _call(fname: str, args: list[Any]) -> Any:
    if fname == "abs":
        n = _num(args[0])
        return None if n is None else abs(n)
    if fname in ("min", "max"):
        nums = [_num(a) for a in args]
        if any(n is None for n in nums):
            return None
        return (min if fname == "min" else max)(nums)  # type: ignore[type-var]
    if fname == "lower":
        return args[0].lower() if isinstance(args[0], str) else None
    if fname == "len":
        return len(args[0]) if isinstance(args[0], str | list | tuple | dict) else None
    raise ExpressionError(f"unknown function {fname!r}")


def compile_expression(node: Node) -> Fn:
    """Turn an AST into a function of the decision context."""
    kind = node[0]
    if kind == "lit":
        v = node[1]
        return lambda ctx: v
    if kind == "name":
        name = node[1]
        if "." in name:
            return lambda ctx: _lookup(ctx, name)
        return lambda ctx: ctx.get(name)
    if kind == "list":
        items = [compile_expression(n) for n in node[1]]
        return lambda ctx: [f(ctx) for f in items]
    if kind == "not":
        f = compile_expression(node[1])
        return lambda ctx: not _truthy(f(ctx))
    if kind == "and":
        fa, fb = compile_expression(node[1]), compile_expression(node[2])
        return lambda ctx: _truthy(fa(ctx)) and _truthy(fb(ctx))
    if kind == "or":
        fa, fb = compile_expression(node[1]), compile_expression(node[2])
        return lambda ctx: _truthy(fa(ctx)) or _truthy(fb(ctx))
    if kind == "cmp":
        op = node[1]
        fa, fb = compile_expression(node[2]), compile_expression(node[3])
        return lambda ctx: _compare(op, fa(ctx), fb(ctx))
    if kind == "in":
        fa, fl, negated = compile_expression(node[1]), compile_expression(node[2]), node[3]

        def _in(ctx: Ctx) -> bool:
            a = fa(ctx)
            if a is None:
                return False
            hit = any(_compare("==", a, b) for b in fl(ctx))
            return not hit if negated else hit

        return _in
    if kind == "arith":
        op = node[1]
        fa, fb = compile_expression(node[2]), compile_expression(node[3])
        return lambda ctx: _arith(op, fa(ctx), fb(ctx))
    if kind == "neg":
        f = compile_expression(node[1])
        return lambda ctx: _arith("-", 0.0, f(ctx))
    if kind == "call":
        fname = node[1]
        fargs = [compile_expression(n) for n in node[2]]
        return lambda ctx: _call(fname, [f(ctx) for f in fargs])
    raise ExpressionError(f"unknown node {kind!r}")


def evaluate(src: str, ctx: Ctx) -> bool:
    """Parse, compile and evaluate a condition once (tests and the REPL; rules compile once)."""
    return _truthy(compile_expression(parse_expression(src))(ctx))


# ---------------------------------------------------------------------------------------------------
# Rules and rule sets
# ---------------------------------------------------------------------------------------------------
def known_feature_names() -> set[str]:
    """Feature names the online engine computes (empty when the feature package is unavailable)."""
    try:
        from shopguard.features.definitions import DEFAULT_FEATURES
    except Exception:  # features not installed/landed: names are then checked leniently
        return set()
    names: set[str] = set()
    for d in DEFAULT_FEATURES:
        n = getattr(d, "name", None)
        if isinstance(n, str):
            names.add(n)
    return names


# Derived current-event names the service puts in the context next to the raw fields.
CONTEXT_EXTRAS: tuple[str, ...] = ("hour", "weekday", "text_score", "sequence_score")
NUMERIC_FIELDS = {c.name for c in COLUMN_BY_NAME.values() if c.kind in ("float", "int")}


class RuleSpec(BaseModel):
    """One rule as written in YAML."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    when: str = Field(min_length=1, max_length=MAX_EXPR_CHARS)
    action: Literal["allow", "review", "challenge", "block"]
    reason: str = Field(min_length=1, max_length=64)
    description: str = ""
    priority: int = 0
    scenario: str | None = None
    enabled: bool = True

    @field_validator("reason")
    @classmethod
    def _reason_code(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", v):
            raise ValueError("reason code must be UPPER_SNAKE_CASE, e.g. CARD_TESTING")
        return v


class ListSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    ips: list[str] = Field(default_factory=list)
    instruments: list[str] = Field(default_factory=list)


class ListsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow: ListSpec = Field(default_factory=ListSpec)
    deny: ListSpec = Field(default_factory=ListSpec)


class RuleFileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["first_match", "all_match"] = "first_match"
    lists: ListsSpec = Field(default_factory=ListsSpec)
    rules: list[RuleSpec] = Field(default_factory=list, max_length=MAX_RULES)


@dataclass(frozen=True)
class Rule:
    """A validated, compiled rule."""

    spec: RuleSpec
    ast: Node
    fn: Fn

    @property
    def name(self) -> str:
        return self.spec.name

    def matches(self, ctx: Ctx) -> bool:
        try:
            return _truthy(self.fn(ctx))
        except (TypeError, ValueError, AttributeError, RecursionError, OverflowError):
            return False  # a value of an unexpected kind never makes a rule fire


@dataclass(frozen=True)
class RuleHit:
    name: str
    action: str
    reason: str
    description: str
    scenario: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "reason": self.reason, "description": self.description,
                "scenario": self.scenario}


@dataclass
class RuleResult:
    """What the rules say about one event: the hits, the strongest action, and whether a list decided."""

    hits: list[RuleHit] = field(default_factory=list)
    action: str | None = None  # strongest action among hits; None when nothing fired
    list_match: str | None = None  # "allow" or "deny" when an allow/deny list entry matched

    @property
    def reasons(self) -> list[str]:
        return [h.reason for h in self.hits]


class RuleSet:
    """Compiled rules plus allow/deny lists; ``evaluate(ctx)`` applies them to one decision context."""

    def __init__(self, spec: RuleFileSpec, *, source: str = "<rules>", strict_names: set[str] | None = None) -> None:
        self.spec = spec
        self.source = source
        self.mode = spec.mode
        seen: set[str] = set()
        rules: list[Rule] = []
        for i, r in enumerate(spec.rules):
            where = f"{source}: rule {r.name!r} (#{i + 1})"
            if r.name in seen:
                raise ValidationFailed(f"{where}: duplicate rule name", field=f"rules[{i}].name", value=r.name)
            seen.add(r.name)
            try:
                ast = parse_expression(r.when)
            except ExpressionError as exc:
                raise ValidationFailed(f"{where}: bad condition {r.when!r}: {exc}", field=f"rules[{i}].when",
                                       value=r.when) from None
            _check_names(ast, where, i, strict_names)
            _check_types(ast, where, i)
            rules.append(Rule(r, ast, compile_expression(ast)))
        # Higher priority first; stable on file order so equal priorities keep the author's order.
        self.rules = sorted((r for r in rules if r.spec.enabled), key=lambda r: -r.spec.priority)
        self.allow = {k: frozenset(getattr(spec.lists.allow, k)) for k in LIST_KINDS}
        self.deny = {k: frozenset(getattr(spec.lists.deny, k)) for k in LIST_KINDS}

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<rules>", strict_names: set[str] | None = None) -> RuleSet:
        if data is None:
            # An empty (or truncated-to-nothing) file would silently switch every rule and list off.
            raise ValidationFailed(f"{source}: the rule file is empty; write `rules: []` to serve with no rules",
                                   field="rules")
        if not isinstance(data, dict):
            raise ValidationFailed(f"{source}: a rule file must be a mapping with 'rules:', got {type(data).__name__}",
                                   field="rules")
        if "rules" not in data:
            raise ValidationFailed(f"{source}: the rule file has no 'rules:' entry; write `rules: []` to serve "
                                   "with no rules", field="rules")
        try:
            spec = RuleFileSpec.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = list(err.get("loc", ()))
            where = source
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                rules = data.get("rules") or []
                raw = rules[loc[1]] if loc[1] < len(rules) else {}
                name = raw.get("name", "?") if isinstance(raw, dict) else "?"
                where = f"{source}: rule {name!r} (#{loc[1] + 1})"
            fld = ".".join(str(p) for p in loc) or "rules"
            raise ValidationFailed(f"{where}: {fld}: {err.get('msg')} (got {err.get('input')!r})"[:500],
                                   field=fld, value=err.get("input")) from None
        return cls(spec, source=source, strict_names=strict_names)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<rules>", strict_names: set[str] | None = None) -> RuleSet:
        if len(text) > MAX_RULE_FILE_BYTES:
            raise ValidationFailed(f"{source}: rule file over {MAX_RULE_FILE_BYTES:,} characters", field="rules")
        _check_yaml_nesting(text, source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValidationFailed(f"{source}: not valid YAML: {exc}", field="rules") from None
        except RecursionError:
            raise ValidationFailed(f"{source}: not valid YAML: nested too deeply", field="rules") from None
        depth = _data_depth(data)
        if depth > MAX_YAML_DEPTH:
            raise ValidationFailed(f"{source}: YAML nested {depth} levels deep (at most {MAX_YAML_DEPTH})",
                                   field="rules")
        return cls.from_dict(data, source=source, strict_names=strict_names)

    @classmethod
    def load(cls, path: str | Path, *, strict_names: set[str] | None = None) -> RuleSet:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"rule file {p} does not exist", field="rules", value=str(p))
        try:
            with p.open("rb") as fh:
                raw = fh.read(MAX_RULE_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"rule file {p} cannot be read: {exc.strerror}", field="rules", value=str(p)) from None
        if len(raw) > MAX_RULE_FILE_BYTES:
            raise ValidationFailed(f"{p}: rule file over {MAX_RULE_FILE_BYTES:,} bytes", field="rules")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationFailed(f"{p}: not UTF-8 text (byte {exc.start})", field="rules") from None
        return cls.from_yaml(text, source=str(p), strict_names=strict_names)

    @classmethod
    def empty(cls) -> RuleSet:
        return cls(RuleFileSpec(), source="<no rules>")

    def add_pseudonyms(self, pseudonymiser: Any) -> None:
        """Let allow/deny entries of personal fields (devices, IPs, cards) match the pseudonymised values the
        service stores: each raw entry is joined by its pseudonym under the store's key."""
        for lists in (self.allow, self.deny):
            for kind, fld in LIST_KINDS.items():
                if fld in getattr(pseudonymiser, "fields", ()) and lists[kind]:
                    lists[kind] = lists[kind] | frozenset(pseudonymiser.pseudonym(v, fld) for v in lists[kind])

    # -- applying --------------------------------------------------------------------------------------
    def list_match(self, ctx: Ctx) -> tuple[str, str] | None:
        """("deny" | "allow", list kind) when the event's user/device/IP/instrument is listed. Deny wins."""
        for verdict, lists in (("deny", self.deny), ("allow", self.allow)):
            for kind, fld in LIST_KINDS.items():
                v = ctx.get(fld)
                if v is not None and v in lists[kind]:
                    return verdict, kind
        return None

    def evaluate(self, ctx: Ctx) -> RuleResult:
        res = RuleResult()
        lm = self.list_match(ctx)
        if lm is not None:
            verdict, kind = lm
            action = "block" if verdict == "deny" else "allow"
            reason = f"{verdict.upper()}LIST_{kind.upper()}"
            res.hits.append(RuleHit(f"{verdict}list:{kind}", action, reason, f"{kind[:-1]} is on the {verdict} list"))
            res.action = action
            res.list_match = verdict
            return res
        for rule in self.rules:
            if rule.matches(ctx):
                s = rule.spec
                res.hits.append(RuleHit(s.name, s.action, s.reason, s.description or s.when, s.scenario))
                if self.mode == "first_match":
                    break
        if res.hits:
            res.action = max((h.action for h in res.hits), key=SEVERITY.__getitem__)
        return res

    def __len__(self) -> int:
        return len(self.rules)

    def names_used(self) -> set[str]:
        out: set[str] = set()
        for r in self.rules:
            out |= names_in(r.ast)
        return out


def _check_yaml_nesting(text: str, source: str) -> None:
    """Refuse flow-style nesting (``[[[[...`` or ``{{{...``) deeper than ``MAX_YAML_DEPTH`` before the YAML
    parser recurses into it (a cheap upper bound: brackets inside quoted strings count too)."""
    depth = worst = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > worst:
                worst = depth
                if worst > MAX_YAML_DEPTH * 4:
                    raise ValidationFailed(f"{source}: YAML nested too deeply (over {MAX_YAML_DEPTH * 4} "
                                           "brackets)", field="rules")
        elif ch in "]}" and depth:
            depth -= 1


def _data_depth(data: Any) -> int:
    """How deeply lists and mappings nest in loaded YAML (iterative)."""
    worst = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen: set[int] = set()
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if id(v) in seen:  # YAML aliases share objects: walk each once
                continue
            seen.add(id(v))
            worst = max(worst, d)
            if d > MAX_YAML_DEPTH:
                return d
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return worst


def _check_names(ast: Node, where: str, i: int, strict_names: set[str] | None) -> None:
    """Refuse names that are neither event fields, scores, derived extras nor (when known) features."""
    allowed = set(COLUMN_NAMES) | set(SCORE_NAMES) | set(CONTEXT_EXTRAS)
    features = strict_names if strict_names is not None else known_feature_names()
    for name in sorted(names_in(ast)):
        head = name.split(".", 1)[0]
        if "." in name:
            if head != "attrs":
                raise ValidationFailed(f"{where}: unknown name {name!r} (only attrs.<key> may be dotted)",
                                       field=f"rules[{i}].when", value=name)
            continue
        if name in allowed:
            continue
        if features and name not in features:
            close = sorted(n for n in features | allowed if n[:6] == name[:6])[:3]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValidationFailed(f"{where}: unknown name {name!r}: not an event field, score or feature{hint}",
                                   field=f"rules[{i}].when", value=name)
        if not features and not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValidationFailed(f"{where}: unknown name {name!r}", field=f"rules[{i}].when", value=name)


def _check_types(ast: Node, where: str, i: int) -> None:
    """Catch comparisons that can never be true, e.g. a numeric field against text."""
    numeric = NUMERIC_FIELDS | set(SCORE_NAMES)
    stack = [ast]
    while stack:
        node = stack.pop()
        if node[0] == "cmp":
            _, op, a, b = node
            for x, y in ((a, b), (b, a)):
                if x[0] == "name" and x[1] in numeric and y[0] == "lit" and isinstance(y[1], str):
                    raise ValidationFailed(f"{where}: {x[1]!r} is a number but is compared with text {y[1]!r}",
                                           field=f"rules[{i}].when", value=y[1])
        stack.extend(_children(node))


# ---------------------------------------------------------------------------------------------------
# Hot reload
# ---------------------------------------------------------------------------------------------------
class ReloadingRules:
    """A rule file that reloads itself when it changes; a broken edit keeps the last good rules serving.

    ``current()`` checks the file's modification time at most every ``check_every`` seconds (one
    ``stat``), so it is cheap enough to call on every decision.
    """

    def __init__(self, path: str | Path | None, *, check_every: float = 1.0, pseudonymiser: Any = None) -> None:
        self.path = Path(path) if path else None
        self.check_every = check_every
        self.pseudonymiser = pseudonymiser  # list entries of personal fields are matched as pseudonyms too
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime: float | None = None
        self.last_error: str | None = None
        self.reloads = 0
        self.refused = 0
        self.rules = RuleSet.empty()
        if self.path is not None:
            self.rules = self._load()  # a bad file at start-up is an error, not a warning
            self._mtime = _mtime(self.path)

    def _load(self) -> RuleSet:
        assert self.path is not None
        rs = RuleSet.load(self.path)
        if self.pseudonymiser is not None:
            rs.add_pseudonyms(self.pseudonymiser)
        return rs

    def current(self) -> RuleSet:
        if self.path is None:
            return self.rules
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return self.rules
        if not self._lock.acquire(blocking=False):
            return self.rules  # another thread is reloading: keep deciding with the rules in force
        try:
            self._checked = now
            m = _mtime(self.path)
            if m != self._mtime:
                self._mtime = m
                if m is None:
                    self.last_error = f"{self.path}: the rule file is missing; the previous rules keep serving"
                    self.refused += 1
                else:
                    self.reload()
        except Exception:  # the check must never fail a decision
            log.exception("rule file check failed")
        finally:
            self._lock.release()
        return self.rules

    def reload(self) -> bool:
        """Load the file now; returns whether the new rules are in force.

        Never raises: *any* failure (bad YAML, nesting, bytes that are not UTF-8, a condition over
        budget, a bug) keeps the last good rules serving and is recorded in ``last_error``."""
        assert self.path is not None
        try:
            rules = self._load()
        except (ValidationFailed, ConfigError) as exc:
            self.last_error = exc.message
            self.refused += 1
            log.error("rule file edit refused, the previous rules keep serving: %s", exc.message)
            return False
        except Exception as exc:  # never expected: still never takes the decision path down
            self.last_error = f"{self.path}: the rule file could not be loaded ({type(exc).__name__})"
            self.refused += 1
            log.exception("rule file edit refused, the previous rules keep serving")
            return False
        self.rules = rules
        self.last_error = None
        self.reloads += 1
        return True


def _mtime(path: Path) -> float | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns + st.st_size  # size too: coarse mtimes miss quick successive edits


# ---------------------------------------------------------------------------------------------------
# Backtest
# ---------------------------------------------------------------------------------------------------
def backtest(rules: RuleSet, rows: Iterable[Mapping[str, Any]], labels: Mapping[str, int] | None = None,
             *, days: float | None = None) -> list[dict[str, Any]]:
    """Apply every rule to every row (all-match, lists ignored) and report per rule: hits, true
    positives, precision against ``labels`` (event_id -> 0/1; unlabelled counts as negative) and alert
    volume per day. A last row ``(any rule)`` counts events at least one rule hit."""
    labels = labels or {}
    stats = {r.name: {"rule": r.name, "action": r.spec.action, "reason": r.spec.reason, "hits": 0, "true_positives": 0}
             for r in rules.rules}
    any_hits = any_tp = n = positives = 0
    for row in rows:
        n += 1
        y = int(labels.get(str(row.get("event_id")), 0))
        positives += y
        hit_any = False
        for r in rules.rules:
            if r.matches(row):
                st = stats[r.name]
                st["hits"] += 1
                st["true_positives"] += y
                hit_any = True
        if hit_any:
            any_hits += 1
            any_tp += y
    out = list(stats.values())
    out.append({"rule": "(any rule)", "action": "", "reason": "", "hits": any_hits, "true_positives": any_tp})
    for st in out:
        st["precision"] = st["true_positives"] / st["hits"] if st["hits"] else None
        st["recall"] = st["true_positives"] / positives if positives else None
        st["alerts_per_day"] = st["hits"] / days if days else None
    return out


def run_backtest(store: Any, rules: RuleSet, *, since: Any = None, until: Any = None) -> dict[str, Any]:
    """Replay stored events through ``rules`` with point-in-time features (no look-ahead).

    Each event's context is its stored fields plus the features the batch engine computes from events
    strictly before it, the same values the online engine gives the service. Precision counts an event
    as abusive when it carries a positive event label (any ``labeled_at``: the backtest grades the
    rule in hindsight). Model scores are not replayed: a rule that needs ``score`` never fires here.
    """
    events = store.events(since=since, until=until)
    note = ""
    try:
        from shopguard.features.batch import compute_features

        feats = compute_features(store, since=since, until=until)
        feat_cols = [c for c in feats.columns if c not in ("ts", "type", "user_id")]
        events = events.join(feats.select(feat_cols), on="event_id", how="left", suffix="_feature")
    except ImportError:
        note = "features unavailable: rules were replayed over event fields only"
    labels = store.query(
        "SELECT entity_id, max(label) AS label FROM labels WHERE entity_kind = 'event' GROUP BY entity_id"
    )
    lab = dict(zip(labels["entity_id"].to_list(), labels["label"].to_list(), strict=True)) if labels.height else {}
    days = None
    if events.height:
        span = (events["ts"].max() - events["ts"].min()).total_seconds() / 86_400  # type: ignore[operator]
        days = max(span, 1 / 24)

    def rows() -> Iterable[dict[str, Any]]:
        for r in events.iter_rows(named=True):
            ts = r.get("ts")
            if ts is not None:
                r.setdefault("hour", ts.hour)
                r.setdefault("weekday", ts.weekday())
            a = r.get("attrs")
            if isinstance(a, str):
                try:
                    import json

                    r["attrs"] = json.loads(a)
                except ValueError:
                    r["attrs"] = {}
            yield r

    report = backtest(rules, rows(), lab, days=days)
    positives = sum(1 for e in events["event_id"].to_list() if lab.get(e) == 1) if events.height else 0
    return {"events": events.height, "days": days or 0.0, "positives": positives, "rules": report, "note": note}
