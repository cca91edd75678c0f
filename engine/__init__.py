"""Pure matching core: ticks, pair specs, orders, book, matching, stops, fees, events, errors.

Nothing here performs I/O, reads the clock or starts threads: time is passed in, and the same
commands always produce the same events.
"""
