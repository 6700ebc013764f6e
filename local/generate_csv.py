"""Generate a realistic `Historical_Data.csv` (Kaggle crypto-history columns, daily OHLCV per coin).

    python -m local.generate_csv --out data/Historical_Data.csv            # the shipped default file
    python -m local.generate_csv --out /tmp/big.csv --rows 1000000         # benchmark input
"""

from __future__ import annotations

import argparse
import math
import random
from datetime import date, timedelta

HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"

# (name, symbol, approximate price in USD at the start date, circulating supply)
COINS = [
    ("Bitcoin", "BTC", 13500.0, 18.0e6), ("Ethereum", "ETH", 740.0, 97.0e6), ("Tether", "USDT", 1.0, 2.0e9),
    ("XRP", "XRP", 2.3, 38.0e9), ("Binance Coin", "BNB", 8.4, 100.0e6), ("Cardano", "ADA", 0.72, 25.9e9),
    ("Solana", "SOL", 1.5, 260.0e6), ("Dogecoin", "DOGE", 0.009, 113.0e9), ("Polkadot", "DOT", 3.0, 800.0e6),
    ("Litecoin", "LTC", 230.0, 54.0e6), ("Chainlink", "LINK", 0.7, 350.0e6), ("Stellar", "XLM", 0.44, 17.9e9),
    ("Bitcoin Cash", "BCH", 2400.0, 16.9e6), ("Uniswap", "UNI", 3.0, 500.0e6), ("Monero", "XMR", 350.0, 15.6e6),
    ("EOS", "EOS", 8.7, 900.0e6), ("TRON", "TRX", 0.05, 65.0e9), ("Tezos", "XTZ", 3.8, 620.0e6),
    ("Cosmos", "ATOM", 7.0, 190.0e6), ("USD Coin", "USDC", 1.0, 800.0e6),
]
START = date(2018, 1, 1)


def coin_rows(index: int, days: int, rng: random.Random):
    """Daily rows (without SNo) for coin `index`; coins past the real list get synthetic names."""
    if index < len(COINS):
        name, symbol, price, supply = COINS[index]
    else:
        name, symbol = f"Synthcoin {index}", f"SYN{index}"
        price, supply = rng.uniform(0.01, 500.0), rng.uniform(1e6, 1e10)
    stable = symbol in ("USDT", "USDC")
    vol = 0.002 if stable else rng.uniform(0.025, 0.045)
    anchor = math.log(price)
    for day in range(days):
        open_ = price
        if stable:
            price = 1.0 + rng.gauss(0, vol)
        else:  # a random walk in log price, pulled gently back toward where the coin started
            price = math.exp(math.log(price) + 0.004 * (anchor - math.log(price)) + rng.gauss(0, vol))
        high = max(open_, price) * (1 + abs(rng.gauss(0, vol / 2)))
        low = min(open_, price) * (1 - min(abs(rng.gauss(0, vol / 2)), 0.5))
        volume = price * supply * rng.uniform(0.01, 0.15)
        stamp = (START + timedelta(days=day)).isoformat() + " 23:59:59"
        yield f"{name},{symbol},{stamp},{high:.8g},{low:.8g},{open_:.8g},{price:.8g},{volume:.2f},{price * supply:.2f}"


def generate(out: str, rows: int | None = None, days: int = 1461, seed: int = 7) -> int:
    """Write the file and return the number of data rows written."""
    rng = random.Random(seed)
    coins = len(COINS) if rows is None else max(1, math.ceil(rows / days))
    target = coins * days if rows is None else rows
    written = 0
    with open(out, "w", encoding="utf-8", newline="") as handle:
        handle.write(HEADER)
        for index in range(coins):
            serial = 0
            buffer = []
            for line in coin_rows(index, min(days, target - written), rng):
                serial += 1
                buffer.append(f"{serial},{line}\n")
            handle.write("".join(buffer))
            written += serial
            if written >= target:
                break
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/Historical_Data.csv")
    parser.add_argument("--rows", type=int, default=None, help="total data rows (default: 20 coins x --days)")
    parser.add_argument("--days", type=int, default=1461, help="days per coin (default: 4 years)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"wrote {generate(args.out, args.rows, args.days, args.seed)} rows to {args.out}")


if __name__ == "__main__":
    main()
