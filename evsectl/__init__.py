"""evsectl: command-line client of the evsed D-Bus API."""
