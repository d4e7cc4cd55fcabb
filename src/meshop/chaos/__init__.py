"""`meshop chaos`: the shop under real faults, and the ten invariants that must still hold."""
