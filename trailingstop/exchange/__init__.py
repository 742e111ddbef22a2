"""Exchanges: Binance (python-binance) and the simulated exchange, plus Binance's symbol filters."""
