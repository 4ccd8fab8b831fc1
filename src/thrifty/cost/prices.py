"""The price book: shipped facts (``prices.toml``) merged with the user's own files.

Precedence, lowest first: the shipped file, the per-user file in the platform's config directory
(``prices.toml`` under ``platformdirs.user_config_dir("thrifty")``, or ``$THRIFTY_PRICES``), then
a file given with ``--prices``. A user's file holds only what it changes. Every entry is checked
against the shipped file's shape, so a typo or a bad value is an error that names the entry.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from thrifty.errors import ThriftyError

# Tables whose children are named entries a user may add to (a new accelerator, a new region).
OPEN_TABLES = {"accelerators", "interconnects", "carbon.g_per_kwh"}


def user_file() -> Path:
    if os.environ.get("THRIFTY_PRICES"):
        return Path(os.environ["THRIFTY_PRICES"])
    import platformdirs

    return Path(platformdirs.user_config_dir("thrifty")) / "prices.toml"


def shipped() -> dict:
    return tomllib.loads(resources.files("thrifty.cost").joinpath("prices.toml").read_text())


@dataclass(frozen=True)
class Accelerator:
    key: str
    name: str
    bf16_tflops: float | None
    fp32_tflops: float | None
    memory_gb: float | None
    memory_bandwidth_gbs: float | None
    tdp_w: float | None
    usd_per_hour: float | None

    def need(self, field: str) -> float:
        value = getattr(self, field)
        if value is None:
            raise ThriftyError(f"price book: accelerators.{self.key}.{field} is not known; "
                               f"give it in your own price file (--prices FILE)")
        return value


@dataclass(frozen=True)
class Interconnect:
    key: str
    name: str
    gbit_per_s: float
    latency_us: float

    @property
    def bytes_per_s(self) -> float:
        return self.gbit_per_s * 1e9 / 8


class PriceBook:
    """The merged price book. ``data`` is plain TOML-shaped data, stored with every run so a run
    can be re-priced later; ``files`` says which user files went into it."""

    def __init__(self, data: dict, files: list[str] | None = None):
        self.data = data
        self.files = files or []

    def __getitem__(self, section: str) -> dict:
        return self.data[section]

    def accelerator(self, key: str) -> Accelerator:
        table = self.data["accelerators"]
        if key not in table:
            raise ThriftyError(f"unknown accelerator {key!r}; the price book has: {', '.join(table)}")
        e = table[key]
        return Accelerator(key, e.get("name", key), e.get("bf16_tflops"), e.get("fp32_tflops"),
                           e.get("memory_gb"), e.get("memory_bandwidth_gbs"), e.get("tdp_w"),
                           e.get("usd_per_hour"))

    def interconnect(self, key: str) -> Interconnect:
        table = self.data["interconnects"]
        if key not in table:
            raise ThriftyError(f"unknown interconnect {key!r}; the price book has: {', '.join(table)}")
        e = table[key]
        if "gbit_per_s" not in e or "latency_us" not in e:
            raise ThriftyError(f"price book: interconnects.{key} needs gbit_per_s and latency_us")
        return Interconnect(key, e.get("name", key), e["gbit_per_s"], e["latency_us"])

    def carbon_g_per_kwh(self, region: str | None = None) -> float:
        region = region or self.data["carbon"]["region"]
        table = self.data["carbon"]["g_per_kwh"]
        if region not in table:
            raise ThriftyError(f"unknown carbon region {region!r}; the price book has: {', '.join(table)}")
        return table[region]

    @property
    def pue(self) -> float:
        return self.data["energy"]["pue"]

    @property
    def mfu(self) -> float:
        return self.data["defaults"]["mfu"]


def names_device(fragment: str, device_name: str) -> bool:
    """Whether ``fragment`` (say "L4") names ``device_name`` as torch gives it: as whole words,
    so that "NVIDIA L4" matches and "NVIDIA L40S" or "NVIDIA A10G" do not."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(fragment)}(?![A-Za-z0-9])", device_name) is not None


# torch.cuda.get_device_name() fragments -> price-book keys; more specific names first.
_GPU_KEYS = [("H200", "h200"), ("H100 PCIe", "h100-pcie"), ("H100", "h100-sxm"),
             ("A100-SXM4-80GB", "a100-80gb"), ("A100 80GB", "a100-80gb"), ("A100", "a100-40gb"),
             ("MI300X", "mi300x"), ("L4", "l4"), ("T4", "t4"), ("V100", "v100")]


def accelerator_key(device_name: str) -> str:
    """The price-book key of a device as torch names it; ``cuda:<name>`` when none matches."""
    for fragment, key in _GPU_KEYS:
        if names_device(fragment, device_name):
            return key
    return f"cuda:{device_name}"


def load(path: str | Path | None = None, *, use_user_file: bool = True) -> PriceBook:
    """The shipped book, overlaid by the per-user file (if present) and by ``path``."""
    data, files = shipped(), []
    candidates = []
    if use_user_file:
        user = user_file()
        if user.is_file() or os.environ.get("THRIFTY_PRICES"):
            candidates.append(user)
    if path is not None:
        candidates.append(Path(path))
    for candidate in candidates:
        data = merge(data, read_file(candidate), f"price file {candidate}")
        files.append(str(candidate))
    return PriceBook(data, files)


def from_data(data: dict) -> PriceBook:
    """A price book stored with a run, as it was; entries it predates come from today's book."""
    return PriceBook(_fill(copy.deepcopy(data), shipped()))


def _fill(data: dict, defaults: dict) -> dict:
    for key, value in defaults.items():
        if key not in data:
            data[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(data[key], dict):
            _fill(data[key], value)
    return data


def read_file(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ThriftyError(f"price file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ThriftyError(f"price file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThriftyError(f"price file {path}: not valid TOML ({exc})") from None


def merge(base: dict, override: dict, origin: str) -> dict:
    """``override`` laid over a copy of ``base``; every key must fit the shape of ``base``."""
    out = copy.deepcopy(base)
    _merge_into(out, override, origin, "")
    return out


def _merge_into(base: dict, override: dict, origin: str, prefix: str,
                template: dict | None = None) -> None:
    """Merge one table. ``template`` (for an entry of an open table) lists the keys its entries
    may have, so an entry can gain a field the shipped one lacks (a TDP for tpu-v5e)."""
    where = prefix.rstrip(".")
    for key, value in override.items():
        name = f"{prefix}{key}"
        if key in base and isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ThriftyError(f"{origin}: {name}: expected a table, got {value!r}")
            _merge_into(base[key], value, origin, f"{name}.", template=_entry_template(base, where))
        elif key in base:
            base[key] = _check_leaf(value, base[key], origin, name)
        elif template is not None and key in template:
            base[key] = _check_leaf(value, template[key], origin, name)
        elif where in OPEN_TABLES:
            entry_template = _template(base)
            if entry_template is None:  # a plain name -> number table (carbon regions)
                base[key] = _check_leaf(value, 0.0, origin, name)
            elif not isinstance(value, dict):
                raise ThriftyError(f"{origin}: {name}: expected a table, got {value!r}")
            else:
                base[key] = {}
                _merge_into(base[key], value, origin, f"{name}.", template=entry_template)
        else:
            raise ThriftyError(f"{origin}: {name}: unknown entry")


def _entry_template(parent: dict, where: str) -> dict | None:
    """The keys an entry of ``parent`` may have, when ``parent`` is an open table."""
    return _template(parent) if where in OPEN_TABLES else None


def _template(table: dict) -> dict | None:
    """The union of the keys of an open table's entries, with a sample value for each."""
    entries = [v for v in table.values() if isinstance(v, dict)]
    if not entries:
        return None
    keys: dict = {}
    for entry in entries:
        for k, v in entry.items():
            keys.setdefault(k, v)
    return keys


def _check_leaf(value, like, origin: str, name: str):
    if isinstance(like, bool) or isinstance(like, str):
        if type(value) is not type(like):
            raise ThriftyError(f"{origin}: {name}: expected {type(like).__name__}, got {value!r}")
        return value
    if isinstance(like, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ThriftyError(f"{origin}: {name}: expected a number, got {value!r}")
        if value < 0:
            raise ThriftyError(f"{origin}: {name}: must not be negative, got {value!r}")
        return float(value)
    raise ThriftyError(f"{origin}: {name}: unexpected value {value!r}")  # pragma: no cover
