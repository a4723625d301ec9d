"""`factoryline demo`: the line end to end on the built-in simulated market, offline."""
