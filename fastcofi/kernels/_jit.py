"""What every kernel module shares."""

# Reassociation lets the k-long dot products vectorize; tests compare against the dense
# reference at a relative 1e-9, far above the rounding differences it causes.
_FASTMATH = {"reassoc", "contract"}
