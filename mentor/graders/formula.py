"""A multi grader's `calculate_output`: OpenAI's formula language, evaluated safely.

Numbers, the sub-graders' names, `+ - * /`, `^` (power), parentheses and the functions `min`,
`max`, `abs`, `floor`, `ceil`, `exp`, `sqrt` and `log`: parsed with Python's `ast` and walked here,
never `eval`. (`mentor.tasks.arithmetic` evaluates answers exactly, as fractions, without names or
functions; a formula needs both and floats, so it has its own small walker.)
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

from mentor.errors import MentorError

MAX_CHARS = 2000
# the tree is walked recursively (checked, then evaluated per sample): a formula nested deeper than
# this, or with more parts, is refused when the grader is made, never a RecursionError while grading
MAX_DEPTH = 64
MAX_NODES = 1000
MAX_EXPONENT = 1000.0
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {  # name: (function, fewest, most arguments)
    "min": (min, 1, None),
    "max": (max, 1, None),
    "abs": (abs, 1, 1),
    "floor": (lambda x: float(math.floor(x)), 1, 1),
    "ceil": (lambda x: float(math.ceil(x)), 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),  # natural logarithm; log(x, base) too
}
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: _power(a, b)}


class FormulaError(ValueError):
    """The formula cannot be computed for these scores (division by zero, log of 0, overflow)."""


def _power(a: float, b: float) -> float:
    if abs(b) > MAX_EXPONENT:
        raise FormulaError(f"exponent {b:g} is out of range")
    return a**b


def _check_size(root: ast.AST) -> None:
    """MentorError for a tree deeper than MAX_DEPTH or with more than MAX_NODES nodes (walked without
    recursion: 'a+a+...' with a thousand terms is a thousand levels of BinOp, and '-' * 1990 + 'a'
    two thousand of UnaryOp)."""
    stack, nodes = [(root, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise MentorError(f"the formula is nested deeper than {MAX_DEPTH} levels (each operator, sign and call is "
                              "one); write it flatter, as max(a, b, c) or with fewer signs")
        if nodes > MAX_NODES:
            raise MentorError(f"the formula has more than {MAX_NODES} parts")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))


class Formula:
    """A parsed formula: `names` it reads, `evaluate(scores)` its value."""

    def __init__(self, text: str):
        self.text = text
        if len(text) > MAX_CHARS:
            raise MentorError(f"the formula is longer than {MAX_CHARS} characters")
        if "**" in text:  # OpenAI's power is ^; a Python ** would read as ^ twice
            raise MentorError("write powers with ^ (as in 'a ^ 2'), not **")
        try:
            tree = ast.parse(text.replace("^", "**"), mode="eval")
        except SyntaxError as err:
            raise MentorError(f"the formula {text!r} does not parse (at character {err.offset or 0})") from None
        except (RecursionError, MemoryError):  # the parser's own limits on nesting
            raise MentorError(f"the formula is nested deeper than {MAX_DEPTH} levels") from None
        _check_size(tree.body)
        self.names: set[str] = set()
        self._check(tree.body)
        self._tree = tree.body

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise MentorError(f"the formula {self.text!r} holds {node.value!r}: only numbers and grader names")
        elif isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise MentorError(f"the formula {self.text!r} names the function {node.id!r} without calling it")
            self.names.add(node.id)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            self._check(node.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            if node.func.id not in FUNCTIONS:
                raise MentorError(f"the formula {self.text!r} calls {node.func.id!r}; the functions are "
                                  f"{', '.join(FUNCTIONS)}")
            _, fewest, most = FUNCTIONS[node.func.id]
            if len(node.args) < fewest or (most is not None and len(node.args) > most):
                raise MentorError(f"the formula {self.text!r} calls {node.func.id} with {len(node.args)} argument(s)")
            for arg in node.args:
                self._check(arg)
        else:
            what = type(getattr(node, "op", node)).__name__
            raise MentorError(f"the formula {self.text!r} uses {what}: only numbers, grader names, + - * / ^, "
                              f"parentheses and {', '.join(FUNCTIONS)}")

    def evaluate(self, scores: dict[str, float]) -> float:
        """The formula's value; FormulaError when it has none (a name with no score among them too)."""
        try:
            value = self._eval(self._tree, scores)
        except (ZeroDivisionError, OverflowError, ValueError, TypeError) as err:
            if isinstance(err, FormulaError):
                raise
            raise FormulaError(f"the formula {self.text!r} has no value for these scores: {err}") from None
        if isinstance(value, complex) or not math.isfinite(value):
            raise FormulaError(f"the formula {self.text!r} gives {value} for these scores")
        return float(value)

    def _eval(self, node: ast.AST, scores: dict[str, float]) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in scores:
                raise FormulaError(f"the formula names {node.id!r}, which has no score")
            return float(scores[node.id])
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, scores)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](self._eval(node.left, scores), self._eval(node.right, scores))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # _check let nothing else through
        return float(FUNCTIONS[node.func.id][0](*(self._eval(a, scores) for a in node.args)))
