"""Networks: backbones, depth providers, the fusion block and the dehazer that joins them.

Networks know nothing of training; trainers know nothing of a particular network.
"""
