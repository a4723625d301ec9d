"""The procedures that keep the line's positions, against the broker and Redis: the symbol's lock
(`locks`), the protective reconcile (`reconcile`), the one safe exit (`exiting`), settling closes
into the ledger (`settle`), the tick's high-water marks (`hwm`), and the context they all take
(`context.ManagerContext`).

The manager (services/manager: the trade-update consumer, the reconcile timer, the manage tick)
runs them on fills, ticks and timers; `factoryline flatten` (services/ops) runs the same exit and
reconcile, so no service imports another and the operator's flatten cannot drift from the
manager's own exit.
"""
