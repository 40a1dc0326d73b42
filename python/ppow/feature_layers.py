"""Which of the target's hidden states a feature (EAGLE-3) drafter reads: shared by the trainer's data
stage and the bench's data-engine benchmark (torch-free, below both)."""


def default_layers(n_layer):
    """EAGLE-3's choice of target layers: low, middle and high (hidden_states[2], [n/2], [n-3])."""
    return [min(2, n_layer - 1), n_layer // 2, max(n_layer - 3, 1)]
