"""Cost accounting: the price book, the meter, the ledger, and the estimator."""

from thrifty.cost.charges import DRIVERS, charges
from thrifty.cost.ledger import Ledger
from thrifty.cost.meter import Usage, metered_run
from thrifty.cost.prices import PriceBook

__all__ = ["DRIVERS", "Ledger", "PriceBook", "Usage", "charges", "metered_run"]
