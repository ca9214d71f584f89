// CnnDistributed: see README for the architecture.
import CnnCore
