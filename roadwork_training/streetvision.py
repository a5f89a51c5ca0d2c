"""What the StreetVision subnet asks of a miner's model repo: `model_card.json`, signed by an SS58 hotkey.

The subnet's validators (`natix/validator/verify_models.py` and `natix/utils/model_format.py` in
`natixnetwork/streetvision-subnet`) fetch `https://huggingface.co/{repo}/resolve/main/model_card.json`, require
the keys `model_name`, `version`, `submitted_by`, `submission_time` (docs/Mining.md adds `description`), compare
`submitted_by` with the miner's hotkey, and read `int(card["submission_time"])` as a Unix timestamp in seconds
(milliseconds are accepted too) between 2000-01-01 and now.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time


# Bitcoin's base58 alphabet, which SS58 uses.
_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX = {c: i for i, c in enumerate(_BASE58_ALPHABET)}
_SS58_CHECKSUM_PREFIX = b"SS58PRE"
_VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+$")
MODEL_CARD_JSON = "model_card.json"
# Bittensor addresses use the generic Substrate prefix 42 (they start with "5").
BITTENSOR_SS58_PREFIX = 42


def base58_decode(text: str) -> bytes:
    """Base58 text -> bytes (leading "1"s are leading zero bytes). Raises ValueError on a character outside it."""
    number = 0
    for position, char in enumerate(text):
        if char not in _BASE58_INDEX:
            raise ValueError(f"character {char!r} at position {position} is not base58")
        number = number * 58 + _BASE58_INDEX[char]
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    leading_zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * leading_zeros + body


def ss58_decode(address: str) -> tuple[int, bytes]:
    """
    An SS58 address of a 32-byte public key -> (network prefix, public key); ValueError saying what is wrong.

    Layout: prefix (1 byte for prefixes 0..63, 2 bytes for 64..16383) + 32-byte key + the first 2 bytes of
    blake2b-512(b"SS58PRE" + prefix + key).
    """
    if not isinstance(address, str) or not address:
        raise ValueError("the address is empty")
    data = base58_decode(address.strip())
    if len(data) == 35:
        if data[0] > 63:
            raise ValueError(f"a 1-byte SS58 prefix is below 64, got {data[0]}")
        prefix, prefix_length = data[0], 1
    elif len(data) == 36:
        if not 64 <= data[0] <= 127:
            raise ValueError(f"a 2-byte SS58 prefix starts with a byte in 64..127, got {data[0]}")
        # Substrate's 2-byte encoding of a 14-bit prefix.
        prefix = ((data[0] & 0x3F) << 2) | (data[1] >> 6) | ((data[1] & 0x3F) << 8)
        prefix_length = 2
    else:
        raise ValueError(
            f"decodes to {len(data)} bytes; an SS58 address of a 32-byte public key has 35 (1-byte prefix) or 36"
        )
    payload, checksum = data[:-2], data[-2:]
    expected = hashlib.blake2b(_SS58_CHECKSUM_PREFIX + payload, digest_size=64).digest()[:2]
    if checksum != expected:
        raise ValueError("its checksum does not match (a mistyped or truncated address?)")
    return prefix, payload[prefix_length:]


def validate_hotkey(address: str, flag: str = "--streetvision_hotkey") -> str:
    """The address, stripped, if it is a valid SS58 address of a 32-byte key; else SystemExit naming the problem."""
    try:
        ss58_decode(address)
    except ValueError as error:
        raise SystemExit(
            f"{flag} {address!r} is not a valid SS58 address: {error}. Copy your miner's hotkey address "
            f"(e.g. `btcli wallet overview`), a 48-character string starting with 5."
        ) from error
    return address.strip()


def validate_version(version: str, flag: str = "--model_version") -> str:
    if not _VERSION_PATTERN.match(str(version)):
        raise SystemExit(f"{flag} {version!r} must be X.Y.Z (three integers, e.g. 1.0.0), as the subnet requires")
    return str(version)


def streetvision_model_card(
    *, model_name: str, description: str, version: str, hotkey: str, submission_time: int | None = None
) -> dict:
    """The subnet's `model_card.json` content; `submission_time` defaults to now (Unix seconds, an integer)."""
    return {
        "model_name": model_name,
        "description": description,
        "version": validate_version(version),
        "submitted_by": validate_hotkey(hotkey),
        "submission_time": int(time.time()) if submission_time is None else int(submission_time),
    }


def write_streetvision_model_card(folder: str | os.PathLike, card: dict) -> str:
    path = os.path.join(folder, MODEL_CARD_JSON)
    with open(path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    return path


__all__ = [
    "BITTENSOR_SS58_PREFIX",
    "MODEL_CARD_JSON",
    "base58_decode",
    "ss58_decode",
    "streetvision_model_card",
    "validate_hotkey",
    "validate_version",
    "write_streetvision_model_card",
]
