"""``single``: one process, no communication; the reference the other strategies are tested against."""

from thrifty.train.strategies.base import Strategy


class Single(Strategy):
    name = "single"
