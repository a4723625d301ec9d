"""The scanner's own settings (FL_SCAN_*, FL_BLACK_SHEEP_*): defined in `shared.scanning` (the portfolio
backtest replays the scan with them); re-exported here for the scanner and `factoryline config`.
"""

from shared.scanning import ScannerSettings  # noqa: F401
